// Shared helpers for the megatron-deno kernel library: dtype load/store (all arithmetic in f32),
// block reductions, the Philox4x32-10 generator with the addressing of src/rng/philox.ts, and the
// macro lists that instantiate each template under a fixed extern "C" name (<op>_<dtype>...).
#pragma once
#ifndef MD_HOST_EMULATION  // tests/gpu/emulator provides host versions of these types
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#include <stdint.h>

typedef unsigned long long u64;

template <typename T> __device__ __forceinline__ float ldf(const T* p, u64 i);
template <> __device__ __forceinline__ float ldf<float>(const float* p, u64 i) { return p[i]; }
template <> __device__ __forceinline__ float ldf<__half>(const __half* p, u64 i) { return __half2float(p[i]); }
template <> __device__ __forceinline__ float ldf<__nv_bfloat16>(const __nv_bfloat16* p, u64 i) {
  return __bfloat162float(p[i]);
}

// Stores round to nearest even, like the CPU backend's f32ToF16Bits / f32ToBf16Bits.
template <typename T> __device__ __forceinline__ void stf(T* p, u64 i, float v);
template <> __device__ __forceinline__ void stf<float>(float* p, u64 i, float v) { p[i] = v; }
template <> __device__ __forceinline__ void stf<__half>(__half* p, u64 i, float v) { p[i] = __float2half_rn(v); }
template <> __device__ __forceinline__ void stf<__nv_bfloat16>(__nv_bfloat16* p, u64 i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

#define GRID_STRIDE(i, n) \
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

__device__ __forceinline__ float warpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reductions; every thread gets the result. `sh` holds 33 floats. blockDim.x is a
// multiple of 32 (the launcher guarantees it).
__device__ __forceinline__ float blockSum(float v, float* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warpSum(v);
  __syncthreads();  // sh may still be read by a previous reduction
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  float r = 0.f;
  if (warp == 0) {
    r = lane < nw ? sh[lane] : 0.f;
    r = warpSum(r);
    if (lane == 0) sh[32] = r;
  }
  __syncthreads();
  return sh[32];
}
// f64 block sum for the deterministic long reductions (same tree as blockSum); `sh` holds 33 doubles.
__device__ __forceinline__ double warpSumD(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double blockSumD(double v, double* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warpSumD(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  double r = 0.0;
  if (warp == 0) {
    r = lane < nw ? sh[lane] : 0.0;
    r = warpSumD(r);
    if (lane == 0) sh[32] = r;
  }
  __syncthreads();
  return sh[32];
}
__device__ __forceinline__ float blockMax(float v, float* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warpMax(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float r = lane < nw ? sh[lane] : -INFINITY;
    r = warpMax(r);
    if (lane == 0) sh[32] = r;
  }
  __syncthreads();
  return sh[32];
}

// ---- Philox4x32-10, addressing identical to src/rng/philox.ts -------------------------------
#define PHILOX_M0 0xd2511f53u
#define PHILOX_M1 0xcd9e8d57u
#define PHILOX_W0 0x9e3779b9u
#define PHILOX_W1 0xbb67ae85u
#define PHILOX_KEY_HI 0x4d454741u

// Host versions too, so tests/cuda_philox_host.test.ts can check these exact functions against
// src/rng/philox.ts on a machine without a GPU.
__host__ __device__ __forceinline__ uint32_t mulhi32(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return (uint32_t)(((u64)a * (u64)b) >> 32);
#endif
}

__host__ __device__ __forceinline__ uint4 philox10(uint4 c, uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int r = 0; r < 10; r++) {
    if (r > 0) {
      k0 += PHILOX_W0;
      k1 += PHILOX_W1;
    }
    const uint32_t hi0 = mulhi32(PHILOX_M0, c.x), lo0 = PHILOX_M0 * c.x;
    const uint32_t hi1 = mulhi32(PHILOX_M1, c.z), lo1 = PHILOX_M1 * c.z;
    c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
  }
  return c;
}

// Random bits of counter index e for (seed, stream, iteration).
__host__ __device__ __forceinline__ uint32_t philoxBits(u64 e, uint32_t seed, uint32_t stream, uint32_t iteration) {
  const u64 block = e >> 2;
  const uint4 r = philox10(make_uint4((uint32_t)block, (uint32_t)(block >> 32), iteration, stream), seed,
                           PHILOX_KEY_HI);
  switch (e & 3) {
    case 0: return r.x;
    case 1: return r.y;
    case 2: return r.z;
    default: return r.w;
  }
}

// (bits >> 8) * 2^-24: exact in f32, in [0, 1).
__host__ __device__ __forceinline__ float philoxUniform(u64 e, uint32_t seed, uint32_t stream, uint32_t iteration) {
  return (float)(philoxBits(e, seed, stream, iteration) >> 8) * 5.9604644775390625e-8f;
}

// Counter index of flat element i of a tensor viewed as [rows, rowLen] (see RngAddress).
__host__ __device__ __forceinline__ u64 rngIndex(u64 i, u64 base, u64 rowStride, u64 rowLen) {
  return base + (i / rowLen) * rowStride + (i % rowLen);
}

// ---- instantiation lists ----------------------------------------------------------------------
#define FOR_T(M) M(f32, float) M(f16, __half) M(bf16, __nv_bfloat16)
#define FOR_T2(M)                                                                                   \
  M(f32, float, f32, float) M(f32, float, f16, __half) M(f32, float, bf16, __nv_bfloat16)          \
  M(f16, __half, f32, float) M(f16, __half, f16, __half) M(f16, __half, bf16, __nv_bfloat16)       \
  M(bf16, __nv_bfloat16, f32, float) M(bf16, __nv_bfloat16, f16, __half)                           \
  M(bf16, __nv_bfloat16, bf16, __nv_bfloat16)
// Index dtype x float dtype (embedding and cross-entropy targets).
#define FOR_IT(M)                                                                                   \
  M(i32, int32_t, f32, float) M(i32, int32_t, f16, __half) M(i32, int32_t, bf16, __nv_bfloat16)    \
  M(i64, int64_t, f32, float) M(i64, int64_t, f16, __half) M(i64, int64_t, bf16, __nv_bfloat16)
