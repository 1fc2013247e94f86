// Normal initialization on the device, bit-equal to src/rng/philox.ts (PhiloxStream.normal with
// logU32 / circleU32): the same f64 operations in the same order, each one correctly rounded
// (__d*_rn: never contracted into an FMA), so every weight equals the CPU backend's.
#pragma once
#include "common.cuh"

// log((k + 0.5) 2^-32): log(m 2^e), m in [sqrt(1/2), sqrt(2)], log(m) = 2 atanh((m-1)/(m+1)).
__device__ __forceinline__ double mdLogU32(uint32_t k) {
  const double t = __dadd_rn((double)k, 0.5);
  int e = 31 - __clz((int)k);  // __clz(0) = 32: e = -1, t = 0.5
  double m = e >= 0 ? __ddiv_rn(t, (double)(1u << e)) : __dmul_rn(t, 2.0);
  if (m > 1.4142135623730951) {
    m = __dmul_rn(m, 0.5);
    e = e + 1;
  }
  const double s = __ddiv_rn(__dsub_rn(m, 1.0), __dadd_rn(m, 1.0));
  const double z = __dmul_rn(s, s);
  double p = 0.043478260869565216;
  p = __dadd_rn(__dmul_rn(p, z), 0.047619047619047616);
  p = __dadd_rn(__dmul_rn(p, z), 0.05263157894736842);
  p = __dadd_rn(__dmul_rn(p, z), 0.058823529411764705);
  p = __dadd_rn(__dmul_rn(p, z), 0.06666666666666667);
  p = __dadd_rn(__dmul_rn(p, z), 0.07692307692307693);
  p = __dadd_rn(__dmul_rn(p, z), 0.09090909090909091);
  p = __dadd_rn(__dmul_rn(p, z), 0.1111111111111111);
  p = __dadd_rn(__dmul_rn(p, z), 0.14285714285714285);
  p = __dadd_rn(__dmul_rn(p, z), 0.2);
  p = __dadd_rn(__dmul_rn(p, z), 0.3333333333333333);
  const double logm = __dmul_rn(2.0, __dadd_rn(s, __dmul_rn(s, __dmul_rn(z, p))));
  const double E = (double)(e - 32);
  return __dadd_rn(__dmul_rn(E, 0.6931471803691238), __dadd_rn(__dmul_rn(E, 1.9082149292705877e-10), logm));
}

// sin (sine) or cos of 2 pi (j + 0.5) 2^-32: quadrant from the top two bits, the rest folded to
// [0, pi/4], Taylor polynomials.
__device__ __forceinline__ double mdCircleU32(uint32_t j, bool sine) {
  const uint32_t q = j >> 30, f = j & 0x3fffffffu;
  const bool fold = f >= 0x20000000u;
  const double a = fold ? __dsub_rn((double)(0x40000000u - f), 0.5) : __dadd_rn((double)f, 0.5);
  const double x = __dmul_rn(a, 1.4629180792671596e-9);
  const double z = __dmul_rn(x, x);
  double ps = -8.22063524662433e-18;
  ps = __dadd_rn(__dmul_rn(ps, z), 2.8114572543455206e-15);
  ps = __dadd_rn(__dmul_rn(ps, z), -7.647163731819816e-13);
  ps = __dadd_rn(__dmul_rn(ps, z), 1.6059043836821613e-10);
  ps = __dadd_rn(__dmul_rn(ps, z), -2.505210838544172e-8);
  ps = __dadd_rn(__dmul_rn(ps, z), 2.7557319223985893e-6);
  ps = __dadd_rn(__dmul_rn(ps, z), -0.0001984126984126984);
  ps = __dadd_rn(__dmul_rn(ps, z), 0.008333333333333333);
  ps = __dadd_rn(__dmul_rn(ps, z), -0.16666666666666666);
  const double sx = __dadd_rn(x, __dmul_rn(x, __dmul_rn(z, ps)));
  double pc = -1.5619206968586225e-16;
  pc = __dadd_rn(__dmul_rn(pc, z), 4.779477332387385e-14);
  pc = __dadd_rn(__dmul_rn(pc, z), -1.1470745597729725e-11);
  pc = __dadd_rn(__dmul_rn(pc, z), 2.08767569878681e-9);
  pc = __dadd_rn(__dmul_rn(pc, z), -2.755731922398589e-7);
  pc = __dadd_rn(__dmul_rn(pc, z), 2.48015873015873e-5);
  pc = __dadd_rn(__dmul_rn(pc, z), -0.001388888888888889);
  pc = __dadd_rn(__dmul_rn(pc, z), 0.041666666666666664);
  pc = __dadd_rn(__dmul_rn(pc, z), -0.5);
  const double cx = __dadd_rn(1.0, __dmul_rn(z, pc));
  const double s = fold ? cx : sx, c = fold ? sx : cx;
  switch (q) {
    case 0: return sine ? s : c;
    case 1: return sine ? c : -s;
    case 2: return sine ? -s : -c;
    default: return sine ? -c : s;
  }
}

// Standard normal of counter index e (Box-Muller on the block's lane pair), as PhiloxStream.normal.
__device__ __forceinline__ double mdNormal(u64 e, uint32_t seed, uint32_t stream, uint32_t iteration) {
  const u64 block = e >> 2;
  const uint4 r = philox10(make_uint4((uint32_t)block, (uint32_t)(block >> 32), iteration, stream), seed,
                           PHILOX_KEY_HI);
  const unsigned lane = (unsigned)(e & 3);
  const uint32_t b0 = lane < 2 ? r.x : r.z, b1 = lane < 2 ? r.y : r.w;
  const double rad = __dsqrt_rn(__dmul_rn(-2.0, mdLogU32(b0)));
  return __dmul_rn(rad, mdCircleU32(b1, (lane & 1) != 0));
}

// Stores an f64 value as the CPU backend's fromHost does: f64 -> f32 (RNE) -> f16/bf16 (RNE).
template <typename T> __device__ __forceinline__ void stInit(T* p, u64 i, double v) {
  stf(p, i, __double2float_rn(v));
}
template <> __device__ __forceinline__ void stInit<double>(double* p, u64 i, double v) { p[i] = v; }
