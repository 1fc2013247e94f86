// TypeScript GEMM fallback (no BLAS): row-major C = alpha op(A) op(B) + beta C on one matrix.
// op(B) is packed panel by panel into a contiguous buffer so the inner loop walks unit-stride
// memory (i-k-j order); blocking over k and n keeps the packed panel in cache. Storing into a
// Float32Array C rounds every partial sum to f32, i.e. the accumulation is f32.

type F = Float32Array | Float64Array;

const KB = 128;
const NB = 512;

/** Scratch for packed panels, owned by the caller (one per backend) so ops do not allocate. */
export interface GemmScratch {
  f32: Float32Array;
  f64: Float64Array;
}

export function newGemmScratch(): GemmScratch {
  return { f32: new Float32Array(KB * NB), f64: new Float64Array(KB * NB) };
}

export function gemmTs(
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: F,
  aOff: number,
  lda: number,
  b: F,
  bOff: number,
  ldb: number,
  beta: number,
  c: F,
  cOff: number,
  ldc: number,
  scratch: GemmScratch,
): void {
  // beta == 0 ignores C's old contents (even NaN), as BLAS does.
  for (let i = 0; i < m; i++) {
    const r = cOff + i * ldc;
    if (beta === 0) c.fill(0, r, r + n);
    else if (beta !== 1) { for (let j = 0; j < n; j++) c[r + j] = beta * c[r + j]; }
  }
  if (k === 0 || alpha === 0) return;
  const bp: F = c instanceof Float64Array ? scratch.f64 : scratch.f32;
  for (let j0 = 0; j0 < n; j0 += NB) {
    const nb = Math.min(NB, n - j0);
    for (let p0 = 0; p0 < k; p0 += KB) {
      const kb = Math.min(KB, k - p0);
      // Pack op(B)[p0:p0+kb, j0:j0+nb] row-major with row stride nb.
      if (!transB) {
        for (let p = 0; p < kb; p++) {
          const src = bOff + (p0 + p) * ldb + j0;
          const dst = p * nb;
          for (let j = 0; j < nb; j++) bp[dst + j] = b[src + j];
        }
      } else {
        for (let j = 0; j < nb; j++) {
          const src = bOff + (j0 + j) * ldb + p0;
          for (let p = 0; p < kb; p++) bp[p * nb + j] = b[src + p];
        }
      }
      // Micro-kernel: 4 rows of C x 2 k-steps per pass over the packed rows, so each loaded B
      // value feeds 4 multiply-adds and each C element is loaded/stored once per 2 k-steps.
      const aAt = (i: number, p: number): number =>
        transA ? alpha * a[aOff + (p0 + p) * lda + i] : alpha * a[aOff + i * lda + p0 + p];
      let i = 0;
      for (; i + 4 <= m; i += 4) {
        const c0 = cOff + i * ldc + j0, c1 = c0 + ldc, c2 = c1 + ldc, c3 = c2 + ldc;
        let p = 0;
        for (; p + 2 <= kb; p += 2) {
          const a00 = aAt(i, p), a01 = aAt(i, p + 1), a10 = aAt(i + 1, p), a11 = aAt(i + 1, p + 1);
          const a20 = aAt(i + 2, p), a21 = aAt(i + 2, p + 1), a30 = aAt(i + 3, p), a31 = aAt(i + 3, p + 1);
          const r0 = p * nb, r1 = r0 + nb;
          for (let j = 0; j < nb; j++) {
            const b0 = bp[r0 + j], b1 = bp[r1 + j];
            c[c0 + j] += a00 * b0 + a01 * b1;
            c[c1 + j] += a10 * b0 + a11 * b1;
            c[c2 + j] += a20 * b0 + a21 * b1;
            c[c3 + j] += a30 * b0 + a31 * b1;
          }
        }
        for (; p < kb; p++) {
          const a0 = aAt(i, p), a1 = aAt(i + 1, p), a2 = aAt(i + 2, p), a3 = aAt(i + 3, p);
          const r0 = p * nb;
          for (let j = 0; j < nb; j++) {
            const b0 = bp[r0 + j];
            c[c0 + j] += a0 * b0;
            c[c1 + j] += a1 * b0;
            c[c2 + j] += a2 * b0;
            c[c3 + j] += a3 * b0;
          }
        }
      }
      for (; i < m; i++) {
        const cr = cOff + i * ldc + j0;
        for (let p = 0; p < kb; p++) {
          const s = aAt(i, p);
          const br = p * nb;
          for (let j = 0; j < nb; j++) c[cr + j] += s * bp[br + j];
        }
      }
    }
  }
}
