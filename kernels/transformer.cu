// LayerNorm, bias-GeLU, scaled masked softmax, dropout and bias-dropout-add. One block per row
// for row-wise ops (blockDim a multiple of 32); f32 arithmetic throughout.
#include "common.cuh"

// ---- LayerNorm -------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void lnFwdImpl(const T* x, const T* gamma, const T* beta, float eps, T* y,
                                          float* mean, float* rstd, u64 h) {
  __shared__ float sh[33];
  const u64 row = blockIdx.x;
  const T* xr = x + row * h;
  T* yr = y + row * h;
  float s = 0.f;
  for (u64 j = threadIdx.x; j < h; j += blockDim.x) s += ldf(xr, j);
  const float mu = blockSum(s, sh) / (float)h;
  // Two-pass variance (mean of squared deviations), as the reference does.
  float v = 0.f;
  for (u64 j = threadIdx.x; j < h; j += blockDim.x) {
    const float d = ldf(xr, j) - mu;
    v += d * d;
  }
  const float var = blockSum(v, sh) / (float)h;
  const float rs = 1.f / sqrtf(var + eps);
  for (u64 j = threadIdx.x; j < h; j += blockDim.x) {
    stf(yr, j, (ldf(xr, j) - mu) * rs * ldf(gamma, j) + ldf(beta, j));
  }
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}
#define LNF_INST(n_, t)                                                                              \
  extern "C" __global__ void md_layernorm_fwd_##n_(const t* x, const t* gamma, const t* beta, float eps, \
                                                   t* y, float* mean, float* rstd, u64 h) {             \
    lnFwdImpl(x, gamma, beta, eps, y, mean, rstd, h);                                                 \
  }
FOR_T(LNF_INST)

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma.
template <typename T>
__device__ __forceinline__ void lnBwdDxImpl(const T* dy, const T* x, const T* gamma, const float* mean,
                                            const float* rstd, T* dx, u64 h) {
  __shared__ float sh[33];
  const u64 row = blockIdx.x;
  const T* dyr = dy + row * h;
  const T* xr = x + row * h;
  T* dxr = dx + row * h;
  const float mu = mean[row], rs = rstd[row];
  float a = 0.f, b = 0.f;
  for (u64 j = threadIdx.x; j < h; j += blockDim.x) {
    const float g = ldf(dyr, j) * ldf(gamma, j);
    const float xh = (ldf(xr, j) - mu) * rs;
    a += g;
    b += g * xh;
  }
  const float ma = blockSum(a, sh) / (float)h;
  const float mb = blockSum(b, sh) / (float)h;
  for (u64 j = threadIdx.x; j < h; j += blockDim.x) {
    const float g = ldf(dyr, j) * ldf(gamma, j);
    const float xh = (ldf(xr, j) - mu) * rs;
    stf(dxr, j, rs * (g - ma - xh * mb));
  }
}
#define LNB_INST(n_, t)                                                                                   \
  extern "C" __global__ void md_layernorm_bwd_dx_##n_(const t* dy, const t* x, const t* gamma,             \
                                                      const float* mean, const float* rstd, t* dx, u64 h) { \
    lnBwdDxImpl(dy, x, gamma, mean, rstd, dx, h);                                                          \
  }
FOR_T(LNB_INST)

// Partial column sums of dy * xhat and dy (block 32 x 8, grid (ceil(h/32), S)); finished by
// md_colfinish_f32 from elementwise.cu into dgamma / dbeta.
template <typename T>
__device__ __forceinline__ void lnBwdParamsImpl(const T* dy, const T* x, const float* mean, const float* rstd,
                                                float* pgamma, float* pbeta, u64 rows, u64 h) {
  __shared__ float sg[8][33];
  __shared__ float sb[8][33];
  const u64 c = (u64)blockIdx.x * 32 + threadIdx.x;
  float ag = 0.f, ab = 0.f;
  if (c < h) {
    for (u64 r = (u64)blockIdx.y * 8 + threadIdx.y; r < rows; r += (u64)gridDim.y * 8) {
      const float d = ldf(dy, r * h + c);
      ag += d * (ldf(x, r * h + c) - mean[r]) * rstd[r];
      ab += d;
    }
  }
  sg[threadIdx.y][threadIdx.x] = ag;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && c < h) {
    float g = 0.f, b = 0.f;
    for (int k = 0; k < 8; k++) {
      g += sg[k][threadIdx.x];
      b += sb[k][threadIdx.x];
    }
    pgamma[(u64)blockIdx.y * h + c] = g;
    pbeta[(u64)blockIdx.y * h + c] = b;
  }
}
#define LNP_INST(n_, t)                                                                                   \
  extern "C" __global__ void md_layernorm_bwd_params_##n_(const t* dy, const t* x, const float* mean,      \
                                                          const float* rstd, float* pgamma, float* pbeta,  \
                                                          u64 rows, u64 h) {                               \
    lnBwdParamsImpl(dy, x, mean, rstd, pgamma, pbeta, rows, h);                                            \
  }
FOR_T(LNP_INST)

// ---- bias + GeLU (tanh approximation) ---------------------------------------------------------
#define GELU_K0 0.7978845608028654f  // sqrt(2/pi)
#define GELU_K1 0.044715f

template <typename T>
__device__ __forceinline__ void biasGeluFwdImpl(const T* x, const T* bias, T* y, u64 n, u64 f) {
  GRID_STRIDE(i, n) {
    const float u = ldf(x, i) + ldf(bias, i % f);
    stf(y, i, 0.5f * u * (1.f + tanhf(GELU_K0 * u * (1.f + GELU_K1 * u * u))));
  }
}
template <typename T>
__device__ __forceinline__ void biasGeluBwdImpl(const T* dy, const T* x, const T* bias, T* dx, u64 n, u64 f) {
  GRID_STRIDE(i, n) {
    const float u = ldf(x, i) + ldf(bias, i % f);
    const float t = tanhf(GELU_K0 * u * (1.f + GELU_K1 * u * u));
    // d/du [0.5 u (1 + t)] = 0.5 (1 + t) + 0.5 u (1 - t^2) K0 (1 + 3 K1 u^2)
    const float d = 0.5f * (1.f + t) + 0.5f * u * (1.f - t * t) * GELU_K0 * (1.f + 3.f * GELU_K1 * u * u);
    stf(dx, i, ldf(dy, i) * d);
  }
}
#define GELU_INST(n_, t)                                                                                 \
  extern "C" __global__ void md_bias_gelu_fwd_##n_(const t* x, const t* bias, t* y, u64 n, u64 f) {     \
    biasGeluFwdImpl(x, bias, y, n, f);                                                                  \
  }                                                                                                     \
  extern "C" __global__ void md_bias_gelu_bwd_##n_(const t* dy, const t* x, const t* bias, t* dx, u64 n, \
                                                   u64 f) {                                             \
    biasGeluBwdImpl(dy, x, bias, dx, n, f);                                                             \
  }
FOR_T(GELU_INST)

// ---- tanh (kind 0) and exact erf GeLU (kind 1), elementwise ---------------------------------------
__device__ __forceinline__ float actFwdF(int kind, float v) {
  return kind == 0 ? tanhf(v) : 0.5f * v * erfcf(-v * 0.70710678118654752f);
}
__device__ __forceinline__ float actGradF(int kind, float v) {
  if (kind == 0) {
    const float t = tanhf(v);
    return 1.f - t * t;
  }
  // Phi(v) + v phi(v)
  return 0.5f * erfcf(-v * 0.70710678118654752f) + v * 0.39894228040143268f * expf(-0.5f * v * v);
}
#define ACT_INST(n_, t)                                                                                 \
  extern "C" __global__ void md_act_fwd_##n_(const t* x, t* y, u64 n, int kind) {                       \
    GRID_STRIDE(i, n) stf(y, i, actFwdF(kind, ldf(x, i)));                                              \
  }                                                                                                     \
  extern "C" __global__ void md_act_bwd_##n_(const t* dy, const t* x, t* dx, u64 n, int kind) {         \
    GRID_STRIDE(i, n) stf(dx, i, ldf(dy, i) * actGradF(kind, ldf(x, i)));                               \
  }
FOR_T(ACT_INST)

// ---- scaled masked softmax -------------------------------------------------------------------
// scores [b, np, sq, sk]; one block per row r = ((bi * np + hd) * sq + i). maskKind: 0 none,
// 1 causal (j > i + sk - sq masked, i.e. aligned to the last key), 2 padding (u8 mask [b, sq, sk], 1 = masked). Masked -> -10000.
template <typename A, typename B>
__device__ __forceinline__ void softmaxFwdImpl(const A* x, B* y, const uint8_t* mask, int maskKind, float scale,
                                               u64 np, u64 sq, u64 sk) {
  __shared__ float sh[33];
  const u64 row = blockIdx.x;
  const u64 i = row % sq;
  const u64 bi = row / (np * sq);
  const long long lim = (long long)i + (long long)sk - (long long)sq;
  const A* xr = x + row * sk;
  B* yr = y + row * sk;
  const uint8_t* mr = maskKind == 2 ? mask + (bi * sq + i) * sk : nullptr;
  float mx = -INFINITY;
  for (u64 j = threadIdx.x; j < sk; j += blockDim.x) {
    const bool masked = maskKind == 1 ? (long long)j > lim : (maskKind == 2 ? mr[j] != 0 : false);
    mx = fmaxf(mx, masked ? -10000.f : scale * ldf(xr, j));
  }
  mx = blockMax(mx, sh);
  float s = 0.f;
  for (u64 j = threadIdx.x; j < sk; j += blockDim.x) {
    const bool masked = maskKind == 1 ? (long long)j > lim : (maskKind == 2 ? mr[j] != 0 : false);
    s += expf((masked ? -10000.f : scale * ldf(xr, j)) - mx);
  }
  const float sum = blockSum(s, sh);
  for (u64 j = threadIdx.x; j < sk; j += blockDim.x) {
    const bool masked = maskKind == 1 ? (long long)j > lim : (maskKind == 2 ? mr[j] != 0 : false);
    stf(yr, j, expf((masked ? -10000.f : scale * ldf(xr, j)) - mx) / sum);
  }
}
#define SMF_INST(na, ta, nb, tb)                                                                       \
  extern "C" __global__ void md_softmax_fwd_##na##_##nb(const ta* x, tb* y, const uint8_t* mask,       \
                                                        int maskKind, float scale, u64 np, u64 sq,     \
                                                        u64 sk) {                                     \
    softmaxFwdImpl(x, y, mask, maskKind, scale, np, sq, sk);                                          \
  }
FOR_T2(SMF_INST)

template <typename T>
__device__ __forceinline__ void softmaxBwdImpl(const T* dp, const T* p, float scale, T* dx, u64 sk) {
  __shared__ float sh[33];
  const u64 row = blockIdx.x;
  const T* dpr = dp + row * sk;
  const T* pr = p + row * sk;
  T* dxr = dx + row * sk;
  float s = 0.f;
  for (u64 j = threadIdx.x; j < sk; j += blockDim.x) s += ldf(dpr, j) * ldf(pr, j);
  s = blockSum(s, sh);
  for (u64 j = threadIdx.x; j < sk; j += blockDim.x) stf(dxr, j, scale * ldf(pr, j) * (ldf(dpr, j) - s));
}
#define SMB_INST(n_, t)                                                                                  \
  extern "C" __global__ void md_softmax_bwd_##n_(const t* dp, const t* p, float scale, t* dx, u64 sk) { \
    softmaxBwdImpl(dp, p, scale, dx, sk);                                                               \
  }
FOR_T(SMB_INST)

// ---- dropout ---------------------------------------------------------------------------------
// Element (r, c) of x viewed as [rows, rowLen] uses counter index base + r * rowStride + c.
template <typename T>
__device__ __forceinline__ void dropoutImpl(const T* x, T* y, u64 n, float p, float keepScale, uint32_t seed,
                                            uint32_t stream, uint32_t iteration, u64 base, u64 rowStride,
                                            u64 rowLen) {
  GRID_STRIDE(i, n) {
    const u64 e = rngIndex(i, base, rowStride, rowLen);
    const bool keep = philoxUniform(e, seed, stream, iteration) >= p;
    stf(y, i, keep ? ldf(x, i) * keepScale : 0.f);
  }
}
#define DROP_INST(n_, t)                                                                                  \
  extern "C" __global__ void md_dropout_##n_(const t* x, t* y, u64 n, float p, float keepScale,          \
                                             uint32_t seed, uint32_t stream, uint32_t iteration, u64 base, \
                                             u64 rowStride, u64 rowLen) {                                \
    dropoutImpl(x, y, n, p, keepScale, seed, stream, iteration, base, rowStride, rowLen);                \
  }
FOR_T(DROP_INST)

// out = residual + dropout(x + bias); x/bias dtype A, residual/out dtype B; bias may be null.
template <typename A, typename B>
__device__ __forceinline__ void biasDropoutAddImpl(const A* x, const A* bias, const B* res, B* out, u64 n, u64 h,
                                                   float p, float keepScale, uint32_t seed, uint32_t stream,
                                                   uint32_t iteration, u64 base, u64 rowStride, u64 rowLen) {
  GRID_STRIDE(i, n) {
    const float v = ldf(x, i) + (bias ? ldf(bias, i % h) : 0.f);
    float d = v;
    if (p > 0.f) {
      const u64 e = rngIndex(i, base, rowStride, rowLen);
      // Separate rounded multiply and add (no FMA contraction), as the reference computes it.
      d = philoxUniform(e, seed, stream, iteration) >= p ? __fmul_rn(v, keepScale) : 0.f;
    }
    stf(out, i, __fadd_rn(ldf(res, i), d));
  }
}
#define BDA_INST(na, ta, nb, tb)                                                                         \
  extern "C" __global__ void md_bias_dropout_add_##na##_##nb(                                            \
      const ta* x, const ta* bias, const tb* res, tb* out, u64 n, u64 h, float p, float keepScale,       \
      uint32_t seed, uint32_t stream, uint32_t iteration, u64 base, u64 rowStride, u64 rowLen) {         \
    biasDropoutAddImpl(x, bias, res, out, n, h, p, keepScale, seed, stream, iteration, base, rowStride,  \
                       rowLen);                                                                         \
  }
FOR_T2(BDA_INST)
