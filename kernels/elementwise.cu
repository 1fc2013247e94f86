// Elementwise ops, casts, transpose12 and column sums. Names: md_<op>_<dtypes>.
#include "common.cuh"

template <typename A, typename B>
__device__ __forceinline__ void copyImpl(const A* x, B* y, u64 n) {
  GRID_STRIDE(i, n) stf(y, i, ldf(x, i));
}
#define COPY_INST(na, ta, nb, tb) \
  extern "C" __global__ void md_copy_##na##_##nb(const ta* x, tb* y, u64 n) { copyImpl(x, y, n); }
FOR_T2(COPY_INST)

template <typename T>
__device__ __forceinline__ void fillImpl(T* y, u64 n, float v) {
  GRID_STRIDE(i, n) stf(y, i, v);
}
#define FILL_INST(n_, t) \
  extern "C" __global__ void md_fill_##n_(t* y, u64 n, float v) { fillImpl(y, n, v); }
FOR_T(FILL_INST)
extern "C" __global__ void md_fill_i32(int32_t* y, u64 n, int32_t v) {
  GRID_STRIDE(i, n) y[i] = v;
}

#define SCALE_INST(na, ta, nb, tb)                                                    \
  extern "C" __global__ void md_scale_##na##_##nb(const ta* x, tb* y, u64 n, float a) { \
    GRID_STRIDE(i, n) stf(y, i, a * ldf(x, i));                                       \
  }
FOR_T2(SCALE_INST)

// out = alpha * a + beta * b; any float dtype for each operand.
#define ADD_INST(na, ta, nb, tb, no, to)                                                              \
  extern "C" __global__ void md_add_##na##_##nb##_##no(const ta* a, const tb* b, to* out, u64 n,     \
                                                       float alpha, float beta) {                      \
    GRID_STRIDE(i, n) stf(out, i, alpha * ldf(a, i) + beta * ldf(b, i));                              \
  }
#define ADD_INST3(na, ta, nb, tb) \
  ADD_INST(na, ta, nb, tb, f32, float) ADD_INST(na, ta, nb, tb, f16, __half) ADD_INST(na, ta, nb, tb, bf16, __nv_bfloat16)
FOR_T2(ADD_INST3)

// [A, B, C, D] -> [A, C, B, D]; a pure byte mover, instantiated per element width.
template <typename W>
__device__ __forceinline__ void transpose12Impl(const W* x, W* y, u64 A, u64 B, u64 C, u64 D) {
  const u64 n = A * B * C * D;
  GRID_STRIDE(o, n) {
    // o indexes the output [a, c, b, d]
    const u64 d = o % D;
    u64 t = o / D;
    const u64 b = t % B;
    t /= B;
    const u64 c = t % C;
    const u64 a = t / C;
    y[o] = x[((a * B + b) * C + c) * D + d];
  }
}
#define T12_INST(w, t)                                                                            \
  extern "C" __global__ void md_transpose12_b##w(const t* x, t* y, u64 A, u64 B, u64 C, u64 D) { \
    transpose12Impl(x, y, A, B, C, D);                                                            \
  }
T12_INST(1, uint8_t)
T12_INST(2, uint16_t)
T12_INST(4, uint32_t)
T12_INST(8, u64)

// Column sums of x [rows, cols] in two deterministic passes: partial[s, c] over a slice of rows
// (block 32 x 8, grid (ceil(cols/32), S)), then out[c] (+)= sum_s partial[s, c].
template <typename T>
__device__ __forceinline__ void colPartialImpl(const T* x, float* partial, u64 rows, u64 cols) {
  __shared__ float sh[8][33];
  const u64 c = (u64)blockIdx.x * 32 + threadIdx.x;
  float acc = 0.f;
  if (c < cols) {
    for (u64 r = (u64)blockIdx.y * 8 + threadIdx.y; r < rows; r += (u64)gridDim.y * 8) acc += ldf(x, r * cols + c);
  }
  sh[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float s = 0.f;
    for (int k = 0; k < 8; k++) s += sh[k][threadIdx.x];
    partial[(u64)blockIdx.y * cols + c] = s;
  }
}
#define COLP_INST(n_, t)                                                                        \
  extern "C" __global__ void md_colpartial_##n_(const t* x, float* partial, u64 rows, u64 cols) { \
    colPartialImpl(x, partial, rows, cols);                                                     \
  }
FOR_T(COLP_INST)

template <typename O>
__device__ __forceinline__ void colFinishImpl(const float* partial, O* out, u64 splits, u64 cols, int accumulate) {
  GRID_STRIDE(c, cols) {
    float s = 0.f;
    for (u64 k = 0; k < splits; k++) s += partial[k * cols + c];
    stf(out, c, accumulate ? ldf(out, c) + s : s);
  }
}
#define COLF_INST(n_, t)                                                                              \
  extern "C" __global__ void md_colfinish_##n_(const float* partial, t* out, u64 splits, u64 cols,     \
                                               int accumulate) {                                       \
    colFinishImpl(partial, out, splits, cols, accumulate);                                            \
  }
FOR_T(COLF_INST)

// Long reductions (sum of squares for the grad/param norm, zero counts) in f64, deterministic and
// independent of the grid: x is cut into chunks of MD_REDUCE_CHUNK elements (the CPU backend uses the
// same chunks, REDUCE_CHUNK in src/backend/backend.ts); one block reduces one chunk in a fixed thread
// tree into partial[chunk], and md_sumpartials adds the partials in a fixed tree. Squares of f32/half
// values are exact in f64, so the only rounding is the f64 additions.
#define MD_REDUCE_CHUNK 16384
template <typename T>
__device__ __forceinline__ void sumSquaresImpl(const T* x, double* partial, u64 n) {
  __shared__ double sh[33];
  const u64 chunks = (n + MD_REDUCE_CHUNK - 1) / MD_REDUCE_CHUNK;
  for (u64 c = blockIdx.x; c < chunks; c += gridDim.x) {
    const u64 end = (c + 1) * MD_REDUCE_CHUNK < n ? (c + 1) * MD_REDUCE_CHUNK : n;
    double acc = 0.0;
    for (u64 i = c * MD_REDUCE_CHUNK + threadIdx.x; i < end; i += blockDim.x) {
      const double v = (double)ldf(x, i);
      acc += v * v;
    }
    acc = blockSumD(acc, sh);
    if (threadIdx.x == 0) partial[c] = acc;
  }
}
#define SS_INST(n_, t)                                                                          \
  extern "C" __global__ void md_sumsquares_##n_(const t* x, double* partial, u64 n) { sumSquaresImpl(x, partial, n); }
FOR_T(SS_INST)

// Exactly-zero elements (either sign; NaN is not zero), per chunk as above (counts are exact in f64).
template <typename T>
__device__ __forceinline__ void countZerosImpl(const T* x, double* partial, u64 n) {
  __shared__ double sh[33];
  const u64 chunks = (n + MD_REDUCE_CHUNK - 1) / MD_REDUCE_CHUNK;
  for (u64 c = blockIdx.x; c < chunks; c += gridDim.x) {
    const u64 end = (c + 1) * MD_REDUCE_CHUNK < n ? (c + 1) * MD_REDUCE_CHUNK : n;
    double acc = 0.0;
    for (u64 i = c * MD_REDUCE_CHUNK + threadIdx.x; i < end; i += blockDim.x) acc += ldf(x, i) == 0.f ? 1.0 : 0.0;
    acc = blockSumD(acc, sh);
    if (threadIdx.x == 0) partial[c] = acc;
  }
}
#define CZ_INST(n_, t)                                                                          \
  extern "C" __global__ void md_countzeros_##n_(const t* x, double* partial, u64 n) { countZerosImpl(x, partial, n); }
FOR_T(CZ_INST)

// out[0] (+)= sum of partial[0, chunks): one block, thread t adds partials t, t + blockDim.x, ... in
// order, then the block tree.
extern "C" __global__ void md_sumpartials(const double* partial, double* out, u64 chunks, int accumulate) {
  __shared__ double sh[33];
  double acc = 0.0;
  for (u64 i = threadIdx.x; i < chunks; i += blockDim.x) acc += partial[i];
  acc = blockSumD(acc, sh);
  if (threadIdx.x == 0) out[0] = accumulate ? out[0] + acc : acc;
}

template <typename T>
__device__ __forceinline__ void nonFiniteImpl(const T* x, float* flag, u64 n) {
  int bad = 0;
  GRID_STRIDE(i, n) bad |= !isfinite(ldf(x, i));
  if (__syncthreads_or(bad) && threadIdx.x == 0 && !(flag[0] >= 1.f)) flag[0] = 1.f;
}
#define NF_INST(n_, t) \
  extern "C" __global__ void md_nonfinite_##n_(const t* x, float* flag, u64 n) { nonFiniteImpl(x, flag, n); }
FOR_T(NF_INST)
