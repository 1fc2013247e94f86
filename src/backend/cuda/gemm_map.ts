// Row-major GEMM on column-major cuBLAS. A row-major matrix with leading dimension ld is the
// column-major transpose with the same ld, so row-major C = op(A) op(B) is computed as the
// column-major C^T = op(B)^T op(A)^T: swap the operands and m/n, keep each operand's own
// transpose flag and leading dimension.

import type { GemmArgs } from "../backend.ts";

export interface CublasGemmShape {
  /** cuBLAS transa/transb: 0 = N, 1 = T. */
  transa: 0 | 1;
  transb: 0 | 1;
  m: number;
  n: number;
  k: number;
  /** Which caller operand is cuBLAS's A (first) and B (second). */
  first: "a" | "b";
  lda: number;
  ldb: number;
  ldc: number;
  strideA: number;
  strideB: number;
  strideC: number;
}

/** Resolved leading dimensions (row strides) of the row-major operands. */
export function rowMajorLds(g: GemmArgs): { lda: number; ldb: number; ldc: number } {
  return {
    lda: g.lda ?? (g.transA ? g.m : g.k),
    ldb: g.ldb ?? (g.transB ? g.k : g.n),
    ldc: g.ldc ?? g.n,
  };
}

export function toCublasGemm(g: GemmArgs): CublasGemmShape {
  const { lda, ldb, ldc } = rowMajorLds(g);
  const batch = g.batch ?? 1;
  return {
    transa: g.transB ? 1 : 0,
    transb: g.transA ? 1 : 0,
    m: g.n,
    n: g.m,
    k: g.k,
    first: "b",
    lda: ldb,
    ldb: lda,
    ldc,
    strideA: batch > 1 ? (g.strideB ?? 0) : 0,
    strideB: batch > 1 ? (g.strideA ?? 0) : 0,
    strideC: batch > 1 ? (g.strideC ?? 0) : 0,
  };
}

/**
 * Checks that every operand fits its tensor (an out-of-bounds GEMM would silently corrupt device
 * memory). Returns an error message, or null when the arguments are consistent.
 */
export function checkGemmBounds(g: GemmArgs, sizes: { a: number; b: number; c: number }): string | null {
  const { lda, ldb, ldc } = rowMajorLds(g);
  const batch = g.batch ?? 1;
  for (const [name, v] of Object.entries({ m: g.m, n: g.n, k: g.k, batch })) {
    if (!Number.isInteger(v) || v < 0) return `gemm: ${name} must be a non-negative integer, got ${v}`;
  }
  const ops = [
    {
      name: "A",
      rows: g.transA ? g.k : g.m,
      cols: g.transA ? g.m : g.k,
      ld: lda,
      stride: g.strideA,
      size: sizes.a,
    },
    {
      name: "B",
      rows: g.transB ? g.n : g.k,
      cols: g.transB ? g.k : g.n,
      ld: ldb,
      stride: g.strideB,
      size: sizes.b,
    },
    { name: "C", rows: g.m, cols: g.n, ld: ldc, stride: g.strideC, size: sizes.c },
  ];
  for (const o of ops) {
    if (o.ld < Math.max(1, o.cols)) {
      return `gemm: ld${o.name.toLowerCase()}=${o.ld} is less than ${o.name}'s ${o.cols} columns`;
    }
    if (o.rows === 0 || o.cols === 0) continue;
    const stride = batch > 1 ? (o.stride ?? 0) : 0;
    const need = (batch - 1) * stride + (o.rows - 1) * o.ld + o.cols;
    if (need > o.size) {
      return `gemm: ${o.name} needs ${need} elements (${batch} x ${o.rows}x${o.cols}, ld ${o.ld}, stride ${stride}) but the tensor has ${o.size}`;
    }
  }
  return null;
}
