// Global gradient-norm clipping as Megatron's clip_grad_norm_fp32: the norm counts each gradient
// once across the model-parallel group (not the last stage's tied-embedding copy, not TP replicas
// beyond TP rank 0), the scaling then applies to every gradient. DP ranks hold identical grads
// after the DP all-reduce, so only the model-parallel group is reduced.

import type { Backend } from "../backend/backend.ts";
import type { Param } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";

/** Scalar reductions over the model-parallel (TP x PP) group; the parallelism layer supplies them
 *  from its Communicator. Single-rank runs use the identity. */
export interface ModelParallelReducer {
  allReduceSum(x: number): Promise<number>;
  allReduceMax(x: number): Promise<number>;
}

export function identityReducer(): ModelParallelReducer {
  return { allReduceSum: (x) => Promise.resolve(x), allReduceMax: (x) => Promise.resolve(x) };
}

export type NormType = 2 | "inf";

/** Whether a parameter's gradient counts in the global norm on this TP rank. */
export function countsForGradNorm(p: Param, tpRank: number): boolean {
  return !p.shared && (p.tensorParallel !== null || tpRank === 0);
}

export interface GradNormOptions {
  normType?: NormType;
  /** This rank's tensor-parallel rank (replicated params count on rank 0 only). */
  tpRank?: number;
  reducer?: ModelParallelReducer;
  /** Preallocated [1] accumulators (f32 for f32 grads, f64 for f64 grads) to avoid allocating. */
  scratch?: { f32?: Tensor; f64?: Tensor };
}

export interface ClipOptions extends GradNormOptions {
  /** `--clip-grad` (> 0). */
  maxNorm: number;
}

/** The global gradient norm (L2 or inf) over the counted grads, reduced over the model-parallel group. */
export async function globalGradNorm(
  backend: Backend,
  params: readonly Param[],
  opts: GradNormOptions = {},
): Promise<number> {
  const tpRank = opts.tpRank ?? 0;
  const reducer = opts.reducer ?? identityReducer();
  const counted = params.filter((p) => countsForGradNorm(p, tpRank));
  if ((opts.normType ?? 2) === "inf") {
    // The Backend has no abs-max op; norm_type inf is never used by Megatron's training loop, so a
    // host read is acceptable here.
    let m = 0;
    for (const p of counted) {
      for (const x of backend.toF64(p.grad)) {
        const a = Math.abs(x);
        if (a > m || Number.isNaN(a)) m = a;
      }
    }
    return await reducer.allReduceMax(m);
  }
  let local = 0;
  for (const dtype of ["f32", "f64"] as const) {
    const group = counted.filter((p) => (dtype === "f64") === (p.grad.dtype === "f64"));
    if (group.length === 0) continue;
    const given = opts.scratch?.[dtype];
    const acc = given ?? backend.zeros(dtype, [1]);
    try {
      backend.fill(acc, 0);
      for (const p of group) backend.sumSquares(p.grad, acc, true);
      local += backend.toF64(acc)[0];
    } finally {
      if (!given) backend.free(acc);
    }
  }
  const total = await reducer.allReduceSum(local);
  return Math.sqrt(total);
}

/** Clip all grads in place so the global norm is at most maxNorm; returns the norm before clipping. */
export async function clipGradNorm(
  backend: Backend,
  params: readonly Param[],
  opts: ClipOptions,
): Promise<number> {
  if (!(opts.maxNorm > 0)) throw new Error(`clip: --clip-grad must be > 0, found ${opts.maxNorm}`);
  const norm = await globalGradNorm(backend, params, opts);
  const coeff = opts.maxNorm / (norm + 1e-6);
  // A NaN norm gives a NaN coefficient, which fails this test: grads stay as they are (as Megatron).
  if (coeff < 1) {
    for (const p of params) backend.scale(p.grad, coeff, p.grad);
  }
  return norm;
}
