// Last-stage head, as two steps: LMLogits (final LayerNorm, logits against the tied vocab-parallel
// word embedding) is part of the model's forward; vocabParallelLMLoss (vocab-parallel cross-entropy,
// loss = sum(CE * mask) / sum(mask)) is the task's loss step and consumes the logits in place (its
// backward writes d logits into the logits' storage). LossHead chains the two (the fused form).

import {
  copyToTensorParallelRegion,
  linear,
  linearGrad,
  type TPEnv,
  vocabParallelCrossEntropy,
  vocabParallelCrossEntropyBackward,
} from "../parallel/tensor_parallel.ts";
import type { Param } from "../tensor/param.ts";
import { assertDType, shapeStr, type Tensor } from "../tensor/tensor.ts";
import { gradDType, type ParamsDType } from "./config.ts";
import { freeAll, type MicroBatchContext, type ModuleEnv, takeSaved, tpEnv } from "./common.ts";
import { LayerNorm } from "./layer_norm.ts";

export interface LossOutput {
  /** sum(CE * mask) / sum(mask) for this micro-batch (unscaled; f64 sum of the per-token losses). */
  loss: number;
  /** sum(CE * mask). */
  lossSum: number;
  /** sum(mask). */
  tokens: number;
}

/** sum(loss * mask) and sum(mask) over a micro-batch's tokens, in f64 on the host (16k tokens of f32
 *  losses: error ~1e-16 relative, where an f32 running sum would be ~1e-6 off). */
export function maskedLossSums(loss: Float64Array, mask: Float64Array): { lossSum: number; maskSum: number } {
  let lossSum = 0, maskSum = 0;
  for (let i = 0; i < loss.length; i++) {
    lossSum += loss[i] * mask[i];
    maskSum += mask[i];
  }
  return { lossSum, maskSum };
}

interface LogitsSaved {
  hShape: readonly number[];
  lnOut: Tensor;
}

/** Final LayerNorm + logits against the tied word-embedding shard: hidden [b, s, h] -> logits
 *  [b, s, V/tp] (vocab-split over TP, Megatron's parallel_lm_logits without the gather). */
export class LMLogits {
  readonly finalLayernorm: LayerNorm;
  private readonly tp: TPEnv;

  /** `wordEmbedding`: the tied embedding shard [V/tp, h] (on a last stage that is not first, its copy). */
  constructor(
    readonly env: ModuleEnv,
    readonly wordEmbedding: Param,
    prefix = "language_model.encoder.final_layernorm.",
  ) {
    this.finalLayernorm = new LayerNorm(env, prefix);
    this.tp = tpEnv(env);
  }

  params(): Param[] {
    return this.finalLayernorm.params();
  }

  /** hidden [b, s, h] (kept alive until backward) -> logits [b, s, V/tp] (caller owns). */
  forward(hidden: Tensor, ctx: MicroBatchContext): Tensor {
    const { backend, cfg } = this.env;
    const [b, s] = hidden.shape;
    const T = b * s, h = cfg.hiddenSize;
    const lnOut = this.finalLayernorm.forward(hidden, ctx);
    // Megatron's parallel_lm_logits: the input is copied to the TP region, logits stay vocab-split.
    const x = copyToTensorParallelRegion.forward(this.tp, lnOut.view([T, h]));
    const V = this.wordEmbedding.value.shape[0];
    const logits = backend.empty(cfg.paramsDtype, [T, V]);
    linear(backend, x, this.wordEmbedding.value, null, logits);
    ctx.saved.set(this, { hShape: hidden.shape, lnOut } satisfies LogitsSaved);
    return logits.view([b, s, V]);
  }

  /** dLogits [b, s, V/tp] (taken over: freed here once used) -> d hidden (caller owns); accumulates
   *  the tied weight's grad. */
  async backward(dLogits: Tensor, ctx: MicroBatchContext): Promise<Tensor> {
    const { backend, cfg } = this.env;
    const sv = takeSaved<LogitsSaved>(ctx, this, "LMLogits.backward");
    const h = cfg.hiddenSize, dt = cfg.paramsDtype;
    const T = sv.lnOut.size / h;
    const dLn = backend.empty(dt, [T, h]);
    const w = this.wordEmbedding;
    linearGrad(backend, dLogits.view([T, w.value.shape[0]]), sv.lnOut.view([T, h]), w.value, w.grad, dLn);
    backend.free(dLogits);
    // The logits GEMM input was copied to the TP region: its grad is summed over ranks.
    await copyToTensorParallelRegion.backward(this.tp, dLn);
    const dx = this.finalLayernorm.backward(dLn, ctx);
    freeAll(backend, [dLn, sv.lnOut]);
    return dx.view(sv.hShape);
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as LogitsSaved | undefined;
    if (sv) this.env.backend.free(sv.lnOut);
    ctx.saved.delete(this);
    this.finalLayernorm.discard(ctx);
  }
}

/** The loss step of a vocab-parallel LM head for one micro-batch. */
export interface LMLoss {
  readonly out: LossOutput;
  /** d logits for dloss[i] = mask[i] / sum(mask) * factor, written into the logits' storage
   *  (caller owns the result; call once). */
  backward(factor: number): Tensor;
  /** Free the saved state without a backward (evaluation). */
  discard(): void;
}

/** Masked mean vocab-parallel cross-entropy of `logits` [b, s, V/tp] (taken over: freed by backward's
 *  caller or discard), labels i32 [b, s] and lossMask f32 [b, s] (the caller's). */
export async function vocabParallelLMLoss(
  tp: TPEnv,
  logits: Tensor,
  labels: Tensor,
  lossMask: Tensor,
  vocabStart: number,
): Promise<LMLoss> {
  const backend = tp.backend;
  const T = logits.size / logits.shape[logits.rank - 1];
  assertDType("vocabParallelLMLoss", labels, "i32", "labels");
  if (labels.size !== T || lossMask.size !== T) {
    throw new Error(
      `LossHead.forward: labels ${shapeStr(labels.shape)} and lossMask ${
        shapeStr(lossMask.shape)
      } must have ` +
        `${T} elements to match logits ${shapeStr(logits.shape)}`,
    );
  }
  const ce = await vocabParallelCrossEntropy(
    tp,
    logits.view([T, logits.shape[logits.rank - 1]]),
    labels.view([T]),
    vocabStart,
  );
  const lossHost = backend.toF64(ce.loss);
  const mask = backend.toF64(lossMask);
  backend.free(ce.loss);
  const { lossSum, maskSum } = maskedLossSums(lossHost, mask);
  let live = true;
  const take = (what: string) => {
    if (!live) throw new Error(`vocabParallelLMLoss: ${what} after the loss was already consumed`);
    live = false;
  };
  return {
    // An all-masked micro-batch contributes nothing (Megatron would divide by zero).
    out: { loss: maskSum > 0 ? lossSum / maskSum : 0, lossSum, tokens: maskSum },
    backward(factor: number): Tensor {
      take("backward");
      const dl = new Float64Array(T);
      if (maskSum > 0) { for (let i = 0; i < T; i++) dl[i] = (mask[i] / maskSum) * factor; }
      const dloss = backend.fromHost(gradDType(tp.dtype as ParamsDType), [T], dl);
      const dlogits = vocabParallelCrossEntropyBackward(tp, ce.saved, dloss);
      backend.free(dloss); // dlogits reuses the logits' storage
      return dlogits.view(logits.shape);
    },
    discard(): void {
      if (!live) return;
      live = false;
      freeAll(backend, [ce.saved.logits, ce.saved.globalMax, ce.saved.sumExp]);
    },
  };
}

/** The fused form (LMLogits then vocabParallelLMLoss) with the old one-call interface. */
export class LossHead {
  readonly logits: LMLogits;
  readonly finalLayernorm: LayerNorm;
  private readonly tp: TPEnv;
  private readonly losses = new WeakMap<MicroBatchContext, LMLoss>();

  constructor(
    readonly env: ModuleEnv,
    readonly wordEmbedding: Param,
    readonly vocabStart: number,
    prefix = "language_model.encoder.final_layernorm.",
  ) {
    this.logits = new LMLogits(env, wordEmbedding, prefix);
    this.finalLayernorm = this.logits.finalLayernorm;
    this.tp = tpEnv(env);
  }

  params(): Param[] {
    return this.logits.params();
  }

  /** hidden [b, s, h] (kept alive until backward), labels i32 [b, s], lossMask f32 [b, s]. */
  async forward(
    hidden: Tensor,
    labels: Tensor,
    lossMask: Tensor,
    ctx: MicroBatchContext,
  ): Promise<LossOutput> {
    const T = hidden.shape[0] * hidden.shape[1];
    assertDType("LossHead.forward", labels, "i32", "labels");
    if (labels.size !== T || lossMask.size !== T) {
      throw new Error(
        `LossHead.forward: labels ${shapeStr(labels.shape)} and lossMask ${
          shapeStr(lossMask.shape)
        } must have ` +
          `${T} elements to match hidden ${shapeStr(hidden.shape)}`,
      );
    }
    const logits = this.logits.forward(hidden, ctx);
    const loss = await vocabParallelLMLoss(this.tp, logits, labels, lossMask, this.vocabStart);
    this.losses.set(ctx, loss);
    return loss.out;
  }

  /** Starts backward with dloss[i] = mask[i] / sum(mask) * factor; returns d hidden (caller owns). */
  async backward(ctx: MicroBatchContext, factor: number): Promise<Tensor> {
    const loss = this.losses.get(ctx);
    if (!loss) {
      throw new Error("LossHead.backward: backward called without a matching forward in this context");
    }
    this.losses.delete(ctx);
    const dlogits = loss.backward(factor);
    return await this.logits.backward(dlogits, ctx);
  }

  discard(ctx: MicroBatchContext): void {
    this.losses.get(ctx)?.discard();
    this.losses.delete(ctx);
    this.logits.discard(ctx);
  }
}
