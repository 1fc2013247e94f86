// Data-parallel gradient averaging as Megatron's local DDP: every parameter's gradient lives in one
// contiguous fp32 buffer (fp64 in gradient-check models), so the step's all-reduce runs over a few
// large buckets instead of one call per tensor. Grads are divided by the DP size, then summed.
// Also: the model-parallel scalar reducer for the optimizer, and the tied-embedding all-reduce.

import type { Backend } from "../backend/backend.ts";
import type { DType } from "../tensor/dtype.ts";
import type { Param } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";
import type { Communicator, GroupName, ParallelState } from "./types.ts";

/** Default bucket: 40M elements (Megatron's --DDP-impl local reduces the whole buffer at once). */
export const DEFAULT_BUCKET_ELEMENTS = 40_000_000;

export class GradBuffer {
  readonly buffer: Tensor;
  readonly numel: number;

  /** Moves every param's grad into one contiguous buffer (zeroed), replacing Param.grad with views. */
  constructor(
    readonly backend: Backend,
    params: readonly Param[],
    readonly bucketElements = DEFAULT_BUCKET_ELEMENTS,
  ) {
    if (params.length === 0) throw new Error("GradBuffer: no parameters");
    const dtype: DType = params[0].grad.dtype;
    for (const p of params) {
      if (p.grad.dtype !== dtype) {
        throw new Error(
          `GradBuffer: ${p.name} has grad dtype ${p.grad.dtype}, expected ${dtype} like the others`,
        );
      }
    }
    this.numel = params.reduce((s, p) => s + p.grad.size, 0);
    this.buffer = backend.zeros(dtype, [this.numel]);
    let off = 0;
    for (const p of params) {
      const view = this.buffer.flat(off, p.grad.size).view(p.grad.shape);
      backend.copy(p.grad, view);
      backend.free(p.grad);
      p.grad = view;
      off += view.size;
    }
  }

  zero(): void {
    this.backend.fill(this.buffer, 0);
  }

  /** grads = sum over the data-parallel group of grads / dpSize. */
  async allReduceMean(comm: Communicator, dpSize: number): Promise<void> {
    if (dpSize === 1) return;
    this.backend.scale(this.buffer, 1 / dpSize, this.buffer);
    for (let off = 0; off < this.numel; off += this.bucketElements) {
      const len = Math.min(this.bucketElements, this.numel - off);
      await comm.allReduce(this.buffer.flat(off, len), "sum", "data");
    }
  }

  free(): void {
    this.backend.free(this.buffer);
  }
}

/** Scalar sum/max over a group, through a one-element f64 tensor (the optimizer's reducer). */
export function scalarReducer(backend: Backend, comm: Communicator, ps: ParallelState, group: GroupName) {
  const reduce = async (x: number, op: "sum" | "max"): Promise<number> => {
    if (ps.group(group).size === 1) return x;
    const t = backend.fromHost("f64", [1], [x]);
    try {
      await comm.allReduce(t, op, group);
      return backend.toF64(t)[0];
    } finally {
      backend.free(t);
    }
  };
  return {
    allReduceSum: (x: number) => reduce(x, "sum"),
    allReduceMax: (x: number) => reduce(x, "max"),
  };
}

/** Sum the tied word-embedding gradient of the first and last pipeline stages (embedding group). */
export async function allReduceTiedEmbedding(
  comm: Communicator,
  ps: ParallelState,
  param: Param | null,
): Promise<void> {
  if (ps.ppSize === 1 || param === null) return;
  if (ps.group("embedding").rank < 0) return;
  await comm.allReduce(param.grad, "sum", "embedding");
}
