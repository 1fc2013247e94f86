// Megatron's parallel_lm_logits (logits against the tied, vocab-parallel word embedding, plus an
// optional vocab-parallel bias) and the masked-LM loss over vocab-parallel logits,
// sum(CE * loss_mask) / sum(loss_mask) (BERT's lm loss, T5's loss). Forward returns logits; the loss is
// its own step, so evaluation and generation can use the logits alone.

import {
  copyToTensorParallelRegion,
  createParam,
  linear,
  linearGrad,
  type TPEnv,
  type VocabParallelCESaved,
  vocabParallelCrossEntropy,
  vocabParallelCrossEntropyBackward,
} from "../parallel/tensor_parallel.ts";
import { COLUMN_SPLIT } from "../parallel/tensor_parallel.ts";
import type { DType } from "../tensor/dtype.ts";
import type { Param } from "../tensor/param.ts";
import { assertDType, shapeStr, type Tensor } from "../tensor/tensor.ts";
import { type MicroBatchContext, takeSaved } from "../transformer/common.ts";

export function gradDTypeOf(dt: DType): DType {
  return dt === "f64" ? "f64" : "f32";
}

/** The padded vocabulary split over tensor-parallel ranks: rows [vocabStart, vocabStart + perRank). */
export function vocabShard(tp: TPEnv, vocabSize: number, what: string): { perRank: number; start: number } {
  const p = tp.ps.tpSize;
  if (!Number.isInteger(vocabSize) || vocabSize < 1 || vocabSize % p !== 0) {
    throw new Error(`${what}: vocabulary size ${vocabSize} is not divisible by tensor-parallel size ${p}`);
  }
  const perRank = vocabSize / p;
  return { perRank, start: tp.ps.tpRank * perRank };
}

/** parallel_lm_logits: x [T, h] (replicated) -> logits [T, V/p] = x E_i^T (+ b_i), the input copied to the
 *  TP region (its grad is all-reduced in backward). The bias (when named) is this rank's shard of a
 *  [V] vector, zero at init, no weight decay. */
export class TiedLmLogits {
  readonly bias: Param | null;
  readonly vocabPerRank: number;
  readonly vocabStart: number;

  /** `biasName`: e.g. "lm_head.bias" (BERT, T5), or null for GPT-style logits without a bias. */
  constructor(readonly tp: TPEnv, vocabSize: number, biasName: string | null) {
    const { perRank, start } = vocabShard(tp, vocabSize, "TiedLmLogits");
    this.vocabPerRank = perRank;
    this.vocabStart = start;
    this.bias = biasName === null ? null : createParam(tp, biasName, [perRank], null, COLUMN_SPLIT, true);
  }

  params(): Param[] {
    return this.bias ? [this.bias] : [];
  }

  private checkWord(word: Param, h: number): void {
    const [r, c] = word.value.shape;
    if (word.value.rank !== 2 || r !== this.vocabPerRank || c !== h) {
      throw new Error(
        `TiedLmLogits: word embedding ${word.name} is ${
          shapeStr(word.value.shape)
        }, expected [${this.vocabPerRank}, ${h}]`,
      );
    }
  }

  /** x [T, h] -> logits [T, V/p] in x's dtype (caller owns; keep x alive until backward). */
  forward(x: Tensor, word: Param): Tensor {
    const h = x.shape[x.rank - 1], T = x.size / h;
    this.checkWord(word, h);
    const xi = copyToTensorParallelRegion.forward(this.tp, x.view([T, h]));
    const logits = this.tp.backend.empty(x.dtype, [T, this.vocabPerRank]);
    linear(this.tp.backend, xi, word.value, this.bias?.value ?? null, logits);
    return logits;
  }

  /** dLogits [T, V/p] (stays the caller's) -> dx [T, h] summed over TP (caller owns). Accumulates the
   *  word embedding's and the bias's grads. */
  async backward(dLogits: Tensor, x: Tensor, word: Param): Promise<Tensor> {
    const be = this.tp.backend;
    const h = x.shape[x.rank - 1], T = x.size / h;
    this.checkWord(word, h);
    if (this.bias) be.sumRows(dLogits, this.bias.grad, true);
    const dx = be.empty(x.dtype, [T, h]);
    linearGrad(be, dLogits.view([T, this.vocabPerRank]), x.view([T, h]), word.value, word.grad, dx);
    return await copyToTensorParallelRegion.backward(this.tp, dx);
  }
}

export interface LmLossOutput {
  /** sum(CE * mask) / sum(mask) (0 when the mask is all zero; Megatron would give NaN). */
  loss: number;
  /** sum(CE * mask), in f64. */
  lossSum: number;
  /** sum(mask). */
  tokens: number;
}

interface LmLossSaved {
  ce: VocabParallelCESaved;
  mask: Float64Array;
  maskSum: number;
  dtype: DType;
}

/** Masked language-model loss over vocab-parallel logits: per-token vocab-parallel cross entropy,
 *  then sum(CE * mask) / sum(mask) in f64 on the host. Labels at unmasked positions may be anything
 *  (BERT's are -1): they are outside every vocabulary shard, and their weight is 0. */
export class MaskedLmLoss {
  constructor(readonly tp: TPEnv, readonly vocabStart: number) {}

  /** logits [T, V/p]: ownership passes to the loss (backward reuses the storage for dlogits;
   *  discard frees it). labels i32 [T] (kept alive until backward), lossMask [T] as a float tensor or
   *  host values. */
  async forward(
    logits: Tensor,
    labels: Tensor,
    lossMask: Tensor | ArrayLike<number>,
    ctx: MicroBatchContext,
  ): Promise<LmLossOutput> {
    const be = this.tp.backend;
    const T = logits.shape[0];
    assertDType("MaskedLmLoss.forward", labels, "i32", "labels");
    const mask = Float64Array.from("dtype" in lossMask ? be.toF64(lossMask) : lossMask);
    if (labels.size !== T || mask.length !== T) {
      throw new Error(
        `MaskedLmLoss.forward: ${labels.size} labels and ${mask.length} loss-mask values for ${T} rows of logits`,
      );
    }
    const ce = await vocabParallelCrossEntropy(this.tp, logits, labels.view([T]), this.vocabStart);
    const loss = be.toF64(ce.loss);
    be.free(ce.loss);
    let lossSum = 0, maskSum = 0;
    for (let i = 0; i < T; i++) {
      // A masked-out token's CE is finite (its label is merely outside the shards), weight 0.
      if (mask[i] !== 0) lossSum += loss[i] * mask[i];
      maskSum += mask[i];
    }
    ctx.saved.set(this, { ce: ce.saved, mask, maskSum, dtype: logits.dtype } satisfies LmLossSaved);
    return { loss: maskSum > 0 ? lossSum / maskSum : 0, lossSum, tokens: maskSum };
  }

  /** d(factor * loss)/dlogits [T, V/p] (caller owns; written over the logits forward took). */
  backward(ctx: MicroBatchContext, factor: number): Tensor {
    const be = this.tp.backend;
    const sv = takeSaved<LmLossSaved>(ctx, this, "MaskedLmLoss.backward");
    const T = sv.mask.length;
    const dl = new Float64Array(T);
    if (sv.maskSum > 0) { for (let i = 0; i < T; i++) dl[i] = (sv.mask[i] / sv.maskSum) * factor; }
    const dloss = be.fromHost(gradDTypeOf(sv.dtype), [T], dl);
    const dlogits = vocabParallelCrossEntropyBackward(this.tp, sv.ce, dloss);
    be.free(dloss);
    return dlogits;
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as LmLossSaved | undefined;
    if (sv) { for (const t of [sv.ce.logits, sv.ce.globalMax, sv.ce.sumExp]) this.tp.backend.free(t); }
    ctx.saved.delete(this);
  }
}
