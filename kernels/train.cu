// Embedding, cross-entropy pieces and optimizer steps. f32 arithmetic; targets/ids i32 or i64.
#include "common.cuh"

// ---- embedding -------------------------------------------------------------------------------
template <typename I, typename T>
__device__ __forceinline__ void embFwdImpl(const I* ids, const T* table, T* out, u64 rows, u64 h, u64 vocab,
                                           long long vocabStart) {
  const u64 n = rows * h;
  GRID_STRIDE(i, n) {
    const long long id = (long long)ids[i / h] - vocabStart;
    stf(out, i, (id >= 0 && (u64)id < vocab) ? ldf(table, (u64)id * h + i % h) : 0.f);
  }
}
template <typename I, typename T>
__device__ __forceinline__ void embBwdImpl(const I* ids, const T* dout, float* dtable, u64 rows, u64 h,
                                           u64 vocab, long long vocabStart) {
  const u64 n = rows * h;
  GRID_STRIDE(i, n) {
    const long long id = (long long)ids[i / h] - vocabStart;
    if (id >= 0 && (u64)id < vocab) atomicAdd(dtable + (u64)id * h + i % h, ldf(dout, i));
  }
}
#define EMB_INST(ni, ti, nt, tt)                                                                          \
  extern "C" __global__ void md_embedding_fwd_##ni##_##nt(const ti* ids, const tt* table, tt* out,        \
                                                          u64 rows, u64 h, u64 vocab, long long vocabStart) { \
    embFwdImpl(ids, table, out, rows, h, vocab, vocabStart);                                             \
  }                                                                                                      \
  extern "C" __global__ void md_embedding_bwd_##ni##_##nt(const ti* ids, const tt* dout, float* dtable,   \
                                                          u64 rows, u64 h, u64 vocab, long long vocabStart) { \
    embBwdImpl(ids, dout, dtable, rows, h, vocab, vocabStart);                                           \
  }
FOR_IT(EMB_INST)

// ---- cross-entropy (one block per row of logits [rows, V]) -----------------------------------
template <typename I, typename T>
__device__ __forceinline__ void ceStatsImpl(const T* logits, const I* targets, long long vocabStart, float* rowMax,
                                            float* targetLogit, u64 V) {
  __shared__ float sh[33];
  const u64 row = blockIdx.x;
  const T* lr = logits + row * V;
  float mx = -INFINITY;
  for (u64 j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, ldf(lr, j));
  mx = blockMax(mx, sh);
  if (threadIdx.x == 0) {
    rowMax[row] = mx;
    const long long t = (long long)targets[row] - vocabStart;
    targetLogit[row] = (t >= 0 && (u64)t < V) ? ldf(lr, (u64)t) : 0.f;
  }
}
template <typename I, typename T>
__device__ __forceinline__ void ceBwdImpl(const T* logits, const I* targets, long long vocabStart,
                                          const float* gmax, const float* sumExp, const float* dloss, T* dlogits,
                                          u64 V) {
  const u64 row = blockIdx.x;
  const T* lr = logits + row * V;
  T* dr = dlogits + row * V;
  const long long t = (long long)targets[row] - vocabStart;
  const float mx = gmax[row], inv = 1.f / sumExp[row], g = dloss[row];
  for (u64 j = threadIdx.x; j < V; j += blockDim.x) {
    const float p = expf(ldf(lr, j) - mx) * inv;
    stf(dr, j, g * (p - ((long long)j == t ? 1.f : 0.f)));
  }
}
#define CE_INST(ni, ti, nt, tt)                                                                           \
  extern "C" __global__ void md_ce_stats_##ni##_##nt(const tt* logits, const ti* targets,                 \
                                                     long long vocabStart, float* rowMax, float* targetLogit, \
                                                     u64 V) {                                            \
    ceStatsImpl(logits, targets, vocabStart, rowMax, targetLogit, V);                                   \
  }                                                                                                      \
  extern "C" __global__ void md_ce_bwd_##ni##_##nt(const tt* logits, const ti* targets, long long vocabStart, \
                                                   const float* gmax, const float* sumExp,               \
                                                   const float* dloss, tt* dlogits, u64 V) {             \
    ceBwdImpl(logits, targets, vocabStart, gmax, sumExp, dloss, dlogits, V);                            \
  }
FOR_IT(CE_INST)

template <typename T>
__device__ __forceinline__ void ceSumExpImpl(const T* logits, const float* gmax, float* sumExp, u64 V) {
  __shared__ float sh[33];
  const u64 row = blockIdx.x;
  const T* lr = logits + row * V;
  const float mx = gmax[row];
  float s = 0.f;
  for (u64 j = threadIdx.x; j < V; j += blockDim.x) s += expf(ldf(lr, j) - mx);
  s = blockSum(s, sh);
  if (threadIdx.x == 0) sumExp[row] = s;
}
#define CES_INST(n_, t)                                                                                 \
  extern "C" __global__ void md_ce_sumexp_##n_(const t* logits, const float* gmax, float* sumExp, u64 V) { \
    ceSumExpImpl(logits, gmax, sumExp, V);                                                             \
  }
FOR_T(CES_INST)

extern "C" __global__ void md_ce_loss(const float* gmax, const float* sumExp, const float* targetLogit,
                                      float* loss, u64 rows) {
  GRID_STRIDE(i, rows) loss[i] = logf(sumExp[i]) + gmax[i] - targetLogit[i];
}

// ---- optimizers (f32 state; grad f32/f16/bf16) -------------------------------------------------
// AdamW with decoupled decay: p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p). bc1/bc2 = 1 - beta^step
// and ob1/ob2 = 1 - beta are rounded to f32 on the host. Every product and sum is rounded on its
// own (no FMA contraction), in the CPU reference's order, so the two agree to the last bit.
// One element's AdamW update (shared by the per-tensor and the multi-tensor kernels, so both give
// the same bits). Returns the new parameter.
__device__ __forceinline__ float adamElem(float* p, float gi, float* m, float* v, u64 i, float lr, float b1, float b2,
                                          float eps, float wd, float bc1, float bc2) {
  const float ob1 = 1.f - b1, ob2 = 1.f - b2;
  const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(ob1, gi));
  const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(ob2, gi), gi));
  m[i] = mi;
  v[i] = vi;
  const float pi = p[i];
  const float upd = __fadd_rn(__fdiv_rn(__fdiv_rn(mi, bc1), __fadd_rn(__fsqrt_rn(__fdiv_rn(vi, bc2)), eps)),
                              __fmul_rn(wd, pi));
  const float np_ = __fsub_rn(pi, __fmul_rn(lr, upd));
  p[i] = np_;
  return np_;
}
template <typename G>
__device__ __forceinline__ void adamImpl(float* p, const G* g, float* m, float* v, u64 n, float lr, float b1,
                                         float b2, float eps, float wd, float bc1, float bc2) {
  GRID_STRIDE(i, n) { adamElem(p, ldf(g, i), m, v, i, lr, b1, b2, eps, wd, bc1, bc2); }
}
#define ADAM_INST(n_, t)                                                                              \
  extern "C" __global__ void md_adam_##n_(float* p, const t* g, float* m, float* v, u64 n, float lr,    \
                                          float b1, float b2, float eps, float wd, float bc1, float bc2) { \
    adamImpl(p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2);                                           \
  }
FOR_T(ADAM_INST)

// Multi-tensor AdamW: one launch over many parameters. `table` holds, per block, 6 u64: param, grad,
// m, v, out (0: none) pointers, already offset to the block's chunk, and the chunk's length. With
// out, the new parameter is also stored there in O (the bf16/f16 model copy of an f32 main param,
// rounded as md_copy rounds it).
template <typename G, typename O>
__device__ __forceinline__ void adamMultiImpl(const u64* table, float lr, float b1, float b2, float eps, float wd,
                                              float bc1, float bc2) {
  const u64* e = table + (u64)blockIdx.x * 6;
  float* p = (float*)e[0];
  const G* g = (const G*)e[1];
  float* m = (float*)e[2];
  float* v = (float*)e[3];
  O* out = (O*)e[4];
  const u64 n = e[5];
  for (u64 i = threadIdx.x; i < n; i += blockDim.x) {
    const float np_ = adamElem(p, ldf(g, i), m, v, i, lr, b1, b2, eps, wd, bc1, bc2);
    if (out) stf(out, i, np_);
  }
}
#define ADAMM_INST(ng, tg, no, to)                                                                     \
  extern "C" __global__ void md_adam_multi_##ng##_##no(const u64* table, float lr, float b1, float b2,  \
                                                      float eps, float wd, float bc1, float bc2) {      \
    adamMultiImpl<tg, to>(table, lr, b1, b2, eps, wd, bc1, bc2);                                       \
  }
FOR_T2(ADAMM_INST)

// torch SGD: d = g + wd * p; buf = first ? d : momentum * buf + d; p -= lr * buf (unfused, like the reference).
template <typename G>
__device__ __forceinline__ void sgdImpl(float* p, const G* g, float* buf, u64 n, float lr, float momentum,
                                        float wd, int first) {
  GRID_STRIDE(i, n) {
    // The buffer is kept even with momentum 0 (then buf = d), as the CPU reference does.
    float d = __fadd_rn(ldf(g, i), __fmul_rn(wd, p[i]));
    d = first ? d : __fadd_rn(__fmul_rn(momentum, buf[i]), d);
    buf[i] = d;
    p[i] = __fsub_rn(p[i], __fmul_rn(lr, d));
  }
}
#define SGD_INST(n_, t)                                                                                 \
  extern "C" __global__ void md_sgd_##n_(float* p, const t* g, float* buf, u64 n, float lr, float momentum, \
                                         float wd, int first) {                                         \
    sgdImpl(p, g, buf, n, lr, momentum, wd, first);                                                     \
  }
FOR_T(SGD_INST)

// ---- normal initialization (bit-equal to the CPU's, see init_normal.cuh) ---------------------
// out[i] = std * normal(base + (i / rowLen) * rowStride + i % rowLen), rounded to out's dtype.
#include "init_normal.cuh"
template <typename T>
__device__ __forceinline__ void initNormalImpl(T* out, u64 n, double std, uint32_t seed, uint32_t stream,
                                               uint32_t iteration, u64 base, u64 rowStride, u64 rowLen) {
  GRID_STRIDE(i, n) {
    stInit(out, i, __dmul_rn(std, mdNormal(rngIndex(i, base, rowStride, rowLen), seed, stream, iteration)));
  }
}
#define INIT_INST(n_, t)                                                                                   \
  extern "C" __global__ void md_init_normal_##n_(t* out, u64 n, double std, uint32_t seed, uint32_t stream, \
                                                 uint32_t iteration, u64 base, u64 rowStride, u64 rowLen) { \
    initNormalImpl(out, n, std, seed, stream, iteration, base, rowStride, rowLen);                         \
  }
FOR_T(INIT_INST)
INIT_INST(f64, double)
