// A trainable parameter as the model, optimizer, DDP and checkpointing all see it.

import type { Tensor } from "./tensor.ts";

export interface TensorParallelInfo {
  /** Dimension along which the full (TP = 1) weight is split: 0 = rows (column-parallel, vocab), 1 = cols. */
  readonly partitionDim: 0 | 1;
  /** Megatron's partition_stride (1 for every GPT parameter). */
  readonly stride: number;
}

export interface Param {
  /** Megatron state-dict name, e.g. language_model.encoder.layers.0.mlp.dense_h_to_4h.weight. */
  readonly name: string;
  /** The model's copy, in the model dtype (f32, f16, bf16, or f64 in gradient checks). */
  readonly value: Tensor;
  /** Gradient accumulation buffer: f32 (f64 for f64 models), summed over micro-batches. May be
   *  replaced by a view into a contiguous DP bucket. */
  grad: Tensor;
  /** f32 master copy when `value` is half precision (what the optimizer updates); else null. */
  main: Tensor | null;
  /** Biases and LayerNorm parameters get no weight decay. */
  readonly noWeightDecay: boolean;
  /** Set when this rank holds a shard of a tensor-parallel parameter; null when replicated. */
  readonly tensorParallel: TensorParallelInfo | null;
  /** The last pipeline stage's copy of the tied word embedding: not counted in the grad norm. */
  readonly shared: boolean;
}
