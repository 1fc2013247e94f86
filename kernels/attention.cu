// Fused attention (flash-attention style): softmax(scale * q k^T + mask) with attention dropout,
// times v, without materializing the [b, heads, sq, sk] probabilities. Forward keeps a running max
// and sum per query row (online softmax) and saves logsumexp; backward recomputes the probabilities
// from it. Semantics are those of the unfused path (src/transformer/attention.ts on the CPU):
// masked scores are replaced by -10000 (not -inf, so a fully masked row is uniform, and gradients
// flow through masked positions exactly as the unfused softmax backward lets them), dropout draws
// the probability element ((bi * np + hd) * sq + i) * sk + j at its RngAddress, as md_dropout does
// on the [b, np, sq, sk] tensor. All arithmetic f32; one thread per query (forward, dq) or key
// (dk, dv) row, key/query tiles staged in shared memory as f32.
#include "common.cuh"

#define FA_ROWS 64   // threads per block = rows per block
#define FA_TILE 32   // keys (forward, dq) or queries (dk, dv) per shared-memory tile
#define FA_MAXD 128  // largest head dimension

// Strided view of a [b, np, len, hn] operand: element (bi, hd, i, d) at bi*sB + hd*sH + i*ld + d.
struct FaView {
  u64 sB, sH, ld;
  __device__ __forceinline__ u64 at(u64 bi, u64 hd, u64 i) const { return bi * sB + hd * sH + i * ld; }
};

__device__ __forceinline__ bool faMasked(int maskKind, const uint8_t* mask, u64 bi, u64 i, u64 j, u64 sq, u64 sk) {
  if (maskKind == 1) return (long long)j > (long long)i + (long long)sk - (long long)sq;
  if (maskKind == 2) return mask[(bi * sq + i) * sk + j] != 0;
  return false;
}

// Dropout weight of probability (z, i, j): keepScale or 0 (1 without dropout).
__device__ __forceinline__ float faKeep(float p, float keepScale, uint32_t seed, uint32_t stream, uint32_t iteration,
                                        u64 base, u64 rowStride, u64 rowLen, u64 flat) {
  if (!(p > 0.f)) return 1.f;
  return philoxUniform(rngIndex(flat, base, rowStride, rowLen), seed, stream, iteration) >= p ? keepScale : 0.f;
}

// A causal tile [t0, t0 + FA_TILE) of keys that every query row i in [iFirst, iLast] masks, for rows
// that keep at least one key: its probabilities are exp(-10000 - lse) = 0 exactly, so it is skipped.
__device__ __forceinline__ bool faSkipCausal(int maskKind, u64 iFirst, u64 iLast, u64 jFirst, u64 sq, u64 sk) {
  if (maskKind != 1) return false;
  const long long limFirst = (long long)iFirst + (long long)sk - (long long)sq;
  const long long limLast = (long long)iLast + (long long)sk - (long long)sq;
  return limFirst >= 0 && (long long)jFirst > limLast;
}

template <typename T>
__device__ __forceinline__ void faLoadTile(float (*dst)[FA_MAXD], const T* src, FaView v, u64 bi, u64 hd, u64 r0,
                                           u64 len, u64 hn) {
  for (u64 e = threadIdx.x; e < (u64)FA_TILE * hn; e += blockDim.x) {
    const u64 r = e / hn, d = e % hn;
    dst[r][d] = r0 + r < len ? ldf(src, v.at(bi, hd, r0 + r) + d) : 0.f;
  }
}

// HD > 0: the head dimension as a compile-time constant (loops unrolled, per-row arrays in registers);
// HD = 0: any hn <= FA_MAXD at run time (arrays in local memory).
// grid (ceil(sq / FA_ROWS), b * np), block FA_ROWS. o: [b, np, sq, hn] view; lse f32 [b * np * sq].
template <typename T, int HD>
__device__ __forceinline__ void faFwdImpl(const T* q, const T* k, const T* v, T* o, float* lse, const uint8_t* mask,
                                          int maskKind, float scale, float p, float keepScale, uint32_t seed,
                                          uint32_t stream, uint32_t iteration, u64 base, u64 rowStride, u64 rowLen,
                                          u64 np, u64 sq, u64 sk, u64 hn, FaView qv, FaView kv, FaView vv, FaView ov) {
  __shared__ float ks[FA_TILE][FA_MAXD];
  __shared__ float vs[FA_TILE][FA_MAXD];
  const u64 z = blockIdx.y, bi = z / np, hd = z % np;
  const u64 dn = HD > 0 ? (u64)HD : hn;
  const u64 i0 = (u64)blockIdx.x * FA_ROWS, i = i0 + threadIdx.x;
  const u64 iLast = i0 + FA_ROWS - 1 < sq - 1 ? i0 + FA_ROWS - 1 : sq - 1;
  const bool active = i < sq;
  float qr[FA_MAXD], acc[FA_MAXD], sc[FA_TILE];
  _Pragma("unroll") for (u64 d = 0; d < dn; d++) {
    qr[d] = active ? ldf(q, qv.at(bi, hd, i) + d) : 0.f;
    acc[d] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (u64 t0 = 0; t0 < sk; t0 += FA_TILE) {
    if (faSkipCausal(maskKind, i0, iLast, t0, sq, sk)) break;  // later tiles are masked too
    __syncthreads();  // the previous tile is no longer read
    faLoadTile(ks, k, kv, bi, hd, t0, sk, hn);
    faLoadTile(vs, v, vv, bi, hd, t0, sk, hn);
    __syncthreads();
    if (!active) continue;
    const u64 n = sk - t0 < FA_TILE ? sk - t0 : FA_TILE;
    float tm = m;
    for (u64 jj = 0; jj < n; jj++) {
      float s = -10000.f;
      if (!faMasked(maskKind, mask, bi, i, t0 + jj, sq, sk)) {
        float dot = 0.f;
        _Pragma("unroll") for (u64 d = 0; d < dn; d++) dot += qr[d] * ks[jj][d];
        s = scale * dot;
      }
      sc[jj] = s;
      tm = fmaxf(tm, s);
    }
    const float corr = expf(m - tm);  // 0 on the first tile (m = -inf)
    l *= corr;
    _Pragma("unroll") for (u64 d = 0; d < dn; d++) acc[d] *= corr;
    m = tm;
    const u64 flat0 = (z * sq + i) * sk + t0;
    for (u64 jj = 0; jj < n; jj++) {
      const float e = expf(sc[jj] - m);
      l += e;
      const float w = e * faKeep(p, keepScale, seed, stream, iteration, base, rowStride, rowLen, flat0 + jj);
      if (w != 0.f) {
        _Pragma("unroll") for (u64 d = 0; d < dn; d++) acc[d] += w * vs[jj][d];
      }
    }
  }
  if (active) {
    const float inv = 1.f / l;
    _Pragma("unroll") for (u64 d = 0; d < dn; d++) stf(o, ov.at(bi, hd, i) + d, acc[d] * inv);
    lse[z * sq + i] = m + logf(l);
  }
}

// dq, and delta = rowsum(dO * O) for the dk/dv kernel. grid and block as the forward.
template <typename T, int HD>
__device__ __forceinline__ void faBwdDqImpl(const T* q, const T* k, const T* v, const T* o, const T* dout, T* dq,
                                            const float* lse, float* delta, const uint8_t* mask, int maskKind,
                                            float scale, float p, float keepScale, uint32_t seed, uint32_t stream,
                                            uint32_t iteration, u64 base, u64 rowStride, u64 rowLen, u64 np, u64 sq,
                                            u64 sk, u64 hn, FaView qv, FaView kv, FaView vv, FaView ov) {
  __shared__ float ks[FA_TILE][FA_MAXD];
  __shared__ float vs[FA_TILE][FA_MAXD];
  const u64 z = blockIdx.y, bi = z / np, hd = z % np;
  const u64 dn = HD > 0 ? (u64)HD : hn;
  const u64 i0 = (u64)blockIdx.x * FA_ROWS, i = i0 + threadIdx.x;
  const u64 iLast = i0 + FA_ROWS - 1 < sq - 1 ? i0 + FA_ROWS - 1 : sq - 1;
  const bool active = i < sq;
  float qr[FA_MAXD], dor[FA_MAXD], acc[FA_MAXD];
  float D = 0.f, L = 0.f;
  if (active) {
    _Pragma("unroll") for (u64 d = 0; d < dn; d++) {
      qr[d] = ldf(q, qv.at(bi, hd, i) + d);
      dor[d] = ldf(dout, ov.at(bi, hd, i) + d);
      D += dor[d] * ldf(o, ov.at(bi, hd, i) + d);
      acc[d] = 0.f;
    }
    L = lse[z * sq + i];
    delta[z * sq + i] = D;
  }
  for (u64 t0 = 0; t0 < sk; t0 += FA_TILE) {
    if (faSkipCausal(maskKind, i0, iLast, t0, sq, sk)) break;
    __syncthreads();
    faLoadTile(ks, k, kv, bi, hd, t0, sk, hn);
    faLoadTile(vs, v, vv, bi, hd, t0, sk, hn);
    __syncthreads();
    if (!active) continue;
    const u64 n = sk - t0 < FA_TILE ? sk - t0 : FA_TILE;
    const u64 flat0 = (z * sq + i) * sk + t0;
    for (u64 jj = 0; jj < n; jj++) {
      float s = -10000.f;
      if (!faMasked(maskKind, mask, bi, i, t0 + jj, sq, sk)) {
        float dot = 0.f;
        _Pragma("unroll") for (u64 d = 0; d < dn; d++) dot += qr[d] * ks[jj][d];
        s = scale * dot;
      }
      const float pij = expf(s - L);
      float dpd = 0.f;
      _Pragma("unroll") for (u64 d = 0; d < dn; d++) dpd += dor[d] * vs[jj][d];
      const float w = faKeep(p, keepScale, seed, stream, iteration, base, rowStride, rowLen, flat0 + jj);
      const float ds = pij * (dpd * w - D);
      if (ds != 0.f) {
        _Pragma("unroll") for (u64 d = 0; d < dn; d++) acc[d] += ds * ks[jj][d];
      }
    }
  }
  if (active) {
    _Pragma("unroll") for (u64 d = 0; d < dn; d++) stf(dq, qv.at(bi, hd, i) + d, scale * acc[d]);
  }
}

// dk, dv: one thread per key row j. grid (ceil(sk / FA_ROWS), b * np), block FA_ROWS.
template <typename T, int HD>
__device__ __forceinline__ void faBwdDkvImpl(const T* q, const T* k, const T* v, const T* dout, T* dk, T* dv,
                                             const float* lse, const float* delta, const uint8_t* mask, int maskKind,
                                             float scale, float p, float keepScale, uint32_t seed, uint32_t stream,
                                             uint32_t iteration, u64 base, u64 rowStride, u64 rowLen, u64 np,
                                             u64 sq, u64 sk, u64 hn, FaView qv, FaView kv, FaView vv, FaView ov) {
  __shared__ float qs[FA_TILE][FA_MAXD];
  __shared__ float dos[FA_TILE][FA_MAXD];
  __shared__ float Ls[FA_TILE], Ds[FA_TILE];
  const u64 z = blockIdx.y, bi = z / np, hd = z % np;
  const u64 dn = HD > 0 ? (u64)HD : hn;
  const u64 j0 = (u64)blockIdx.x * FA_ROWS, j = j0 + threadIdx.x;
  const bool active = j < sk;
  float kr[FA_MAXD], vr[FA_MAXD], dka[FA_MAXD], dva[FA_MAXD];
  _Pragma("unroll") for (u64 d = 0; d < dn; d++) {
    kr[d] = active ? ldf(k, kv.at(bi, hd, j) + d) : 0.f;
    vr[d] = active ? ldf(v, vv.at(bi, hd, j) + d) : 0.f;
    dka[d] = dva[d] = 0.f;
  }
  for (u64 t0 = 0; t0 < sq; t0 += FA_TILE) {
    const u64 n = sq - t0 < FA_TILE ? sq - t0 : FA_TILE;
    // Query rows of this tile all mask every key of this block (and keep some key): skip.
    if (faSkipCausal(maskKind, t0, t0 + n - 1, j0, sq, sk)) continue;
    __syncthreads();
    faLoadTile(qs, q, qv, bi, hd, t0, sq, hn);
    faLoadTile(dos, dout, ov, bi, hd, t0, sq, hn);
    if (threadIdx.x < FA_TILE) {
      Ls[threadIdx.x] = t0 + threadIdx.x < sq ? lse[z * sq + t0 + threadIdx.x] : 0.f;
      Ds[threadIdx.x] = t0 + threadIdx.x < sq ? delta[z * sq + t0 + threadIdx.x] : 0.f;
    }
    __syncthreads();
    if (!active) continue;
    for (u64 ii = 0; ii < n; ii++) {
      const u64 i = t0 + ii;
      float s = -10000.f;
      if (!faMasked(maskKind, mask, bi, i, j, sq, sk)) {
        float dot = 0.f;
        _Pragma("unroll") for (u64 d = 0; d < dn; d++) dot += qs[ii][d] * kr[d];
        s = scale * dot;
      }
      const float pij = expf(s - Ls[ii]);
      if (pij == 0.f) continue;
      const float w = faKeep(p, keepScale, seed, stream, iteration, base, rowStride, rowLen, (z * sq + i) * sk + j);
      float dpd = 0.f;
      _Pragma("unroll") for (u64 d = 0; d < dn; d++) dpd += dos[ii][d] * vr[d];
      const float pw = pij * w, ds = pij * (dpd * w - Ds[ii]);
      _Pragma("unroll") for (u64 d = 0; d < dn; d++) {
        dva[d] += pw * dos[ii][d];
        dka[d] += ds * qs[ii][d];
      }
    }
  }
  if (active) {
    _Pragma("unroll") for (u64 d = 0; d < dn; d++) {
      stf(dk, kv.at(bi, hd, j) + d, scale * dka[d]);
      stf(dv, vv.at(bi, hd, j) + d, dva[d]);
    }
  }
}

// The explicit parameter lists above are what tests/cuda_backend_host.test.ts checks against kernels.ts.
#define FA_RNG_ARGS                                                                                   \
  maskKind, scale, p, keepScale, seed, stream, iteration, base, rowStride, rowLen, np, sq, sk, hn,   \
      FaView{qB, qH, qL}, FaView{kB, kH, kL}, FaView{vB, vH, vL}, FaView{oB, oH, oL}
#define FA_INST_D(n_, t, sfx, HD)                                                                      \
  extern "C" __global__ void md_flash_attn_fwd_##n_##sfx(const t* q, const t* k, const t* v, t* o, float* lse, \
                                                         const uint8_t* mask, \
      int maskKind, float scale, float p, float keepScale, uint32_t seed, uint32_t stream,                    \
      uint32_t iteration, u64 base, u64 rowStride, u64 rowLen, u64 np, u64 sq, u64 sk, u64 hn, u64 qB,        \
      u64 qH, u64 qL, u64 kB, u64 kH, u64 kL, u64 vB, u64 vH, u64 vL, u64 oB, u64 oH, u64 oL) {        \
    faFwdImpl<t, HD>(q, k, v, o, lse, mask, FA_RNG_ARGS);                                            \
  }                                                                                                   \
  extern "C" __global__ void md_flash_attn_bwd_dq_##n_##sfx(const t* q, const t* k, const t* v, const t* o, \
                                                            const t* dout, t* dq, const float* lse,   \
                                                            float* delta, const uint8_t* mask, \
      int maskKind, float scale, float p, float keepScale, uint32_t seed, uint32_t stream,                    \
      uint32_t iteration, u64 base, u64 rowStride, u64 rowLen, u64 np, u64 sq, u64 sk, u64 hn, u64 qB,        \
      u64 qH, u64 qL, u64 kB, u64 kH, u64 kL, u64 vB, u64 vH, u64 vL, u64 oB, u64 oH, u64 oL) { \
    faBwdDqImpl<t, HD>(q, k, v, o, dout, dq, lse, delta, mask, FA_RNG_ARGS);                         \
  }                                                                                                   \
  extern "C" __global__ void md_flash_attn_bwd_dkv_##n_##sfx(const t* q, const t* k, const t* v, const t* dout, \
                                                             t* dk, t* dv, const float* lse,          \
                                                             const float* delta, const uint8_t* mask, \
      int maskKind, float scale, float p, float keepScale, uint32_t seed, uint32_t stream,                    \
      uint32_t iteration, u64 base, u64 rowStride, u64 rowLen, u64 np, u64 sq, u64 sk, u64 hn, u64 qB,        \
      u64 qH, u64 qL, u64 kB, u64 kH, u64 kL, u64 vB, u64 vH, u64 vL, u64 oB, u64 oH, u64 oL) {                         \
    faBwdDkvImpl<t, HD>(q, k, v, dout, dk, dv, lse, delta, mask, FA_RNG_ARGS);                       \
  }
// Generic head dimension, and hn = 64 (GPT-345M, GPT-3 and most Megatron configs) specialized.
#define FA_INST(n_, t) FA_INST_D(n_, t, , 0) FA_INST_D(n_, t, _d64, 64)
FOR_T(FA_INST)
