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
  /** A preallocated f64 [1] accumulator, to avoid allocating every step. */
  scratch?: Tensor;
}

export interface ClipOptions extends GradNormOptions {
  /** `--clip-grad` (> 0). */
  maxNorm: number;
}

/** sumSquares or countZeros of every tensor into one f64 accumulator on the device (each backend
 *  reduces in a fixed order), read once; 0 for none. The caller reduces it over the group. */
function localSum(
  backend: Backend,
  tensors: readonly Tensor[],
  op: "sumSquares" | "countZeros",
  scratch?: Tensor,
): number {
  if (tensors.length === 0) return 0;
  const acc = scratch ?? backend.zeros("f64", [1]);
  try {
    tensors.forEach((t, i) => backend[op](t, acc, i > 0));
    return backend.toF64(acc)[0];
  } finally {
    if (!scratch) backend.free(acc);
  }
}

/** The global gradient norm (L2 or inf) over the counted grads, reduced over the model-parallel group.
 *  L2: per-rank f64 sums of squares (see Backend.sumSquares), summed over the group in group order. */
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
  const local = localSum(backend, counted.map((p) => p.grad), "sumSquares", opts.scratch);
  return Math.sqrt(await reducer.allReduceSum(local));
}

/** `--log-params-norm` (Megatron's calc_params_l2_norm): the L2 norm of the model's parameter values,
 *  each counted once over the model-parallel group (as the grad norm). */
export async function globalParamNorm(
  backend: Backend,
  params: readonly Param[],
  opts: Omit<GradNormOptions, "normType"> = {},
): Promise<number> {
  const counted = params.filter((p) => countsForGradNorm(p, opts.tpRank ?? 0));
  const local = localSum(backend, counted.map((p) => p.value), "sumSquares", opts.scratch);
  return Math.sqrt(await (opts.reducer ?? identityReducer()).allReduceSum(local));
}

/** `--log-num-zeros-in-grad` (Megatron's count_zeros_fp32): gradient elements exactly zero, each
 *  gradient counted once over the model-parallel group. */
export async function countGradZeros(
  backend: Backend,
  params: readonly Param[],
  opts: Omit<GradNormOptions, "normType"> = {},
): Promise<number> {
  const counted = params.filter((p) => countsForGradNorm(p, opts.tpRank ?? 0));
  const local = localSum(backend, counted.map((p) => p.grad), "countZeros", opts.scratch);
  return await (opts.reducer ?? identityReducer()).allReduceSum(local);
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
