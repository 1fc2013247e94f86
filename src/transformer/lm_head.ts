// Last-stage head: final LayerNorm, logits against the tied (vocab-parallel) word embedding, and
// vocab-parallel cross-entropy; loss = sum(CE * mask) / sum(mask).

import {
  copyToTensorParallelRegion,
  linear,
  linearGrad,
  type TPEnv,
  type VocabParallelCESaved,
  vocabParallelCrossEntropy,
  vocabParallelCrossEntropyBackward,
} from "../parallel/tensor_parallel.ts";
import type { Param } from "../tensor/param.ts";
import { assertDType, shapeStr, type Tensor } from "../tensor/tensor.ts";
import { gradDType } from "./config.ts";
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

interface HeadSaved {
  hShape: readonly number[];
  lnOut: Tensor;
  ce: VocabParallelCESaved; // logits [T, V_local] (owned), labels [T] i32 (caller's)
  mask: Float64Array;
  maskSum: number;
}

export class LossHead {
  readonly finalLayernorm: LayerNorm;
  private readonly tp: TPEnv;

  /** `wordEmbedding`: the tied embedding shard [V/tp, h] (on a last stage that is not first, its copy). */
  constructor(
    readonly env: ModuleEnv,
    readonly wordEmbedding: Param,
    readonly vocabStart: number,
    prefix = "language_model.encoder.final_layernorm.",
  ) {
    this.finalLayernorm = new LayerNorm(env, prefix);
    this.tp = tpEnv(env);
  }

  params(): Param[] {
    return this.finalLayernorm.params();
  }

  /** hidden [b, s, h] (kept alive until backward), labels i32 [b, s], lossMask f32 [b, s]. */
  async forward(
    hidden: Tensor,
    labels: Tensor,
    lossMask: Tensor,
    ctx: MicroBatchContext,
  ): Promise<LossOutput> {
    const { backend, cfg } = this.env;
    const [b, s] = hidden.shape;
    const T = b * s;
    assertDType("LossHead.forward", labels, "i32", "labels");
    if (labels.size !== T || lossMask.size !== T) {
      throw new Error(
        `LossHead.forward: labels ${shapeStr(labels.shape)} and lossMask ${
          shapeStr(lossMask.shape)
        } must have ` +
          `${T} elements to match hidden ${shapeStr(hidden.shape)}`,
      );
    }
    const h = cfg.hiddenSize;
    const lnOut = this.finalLayernorm.forward(hidden, ctx);
    // Megatron's parallel_lm_logits: the input is copied to the TP region, logits stay vocab-split.
    const x = copyToTensorParallelRegion.forward(this.tp, lnOut.view([T, h]));
    const logits = backend.empty(cfg.paramsDtype, [T, this.wordEmbedding.value.shape[0]]);
    linear(backend, x, this.wordEmbedding.value, null, logits);
    const ce = await vocabParallelCrossEntropy(this.tp, logits, labels.view([T]), this.vocabStart);
    const lossHost = backend.toF64(ce.loss);
    const mask = backend.toF64(lossMask);
    backend.free(ce.loss);
    const { lossSum, maskSum } = maskedLossSums(lossHost, mask);
    ctx.saved.set(
      this,
      {
        hShape: hidden.shape,
        lnOut,
        ce: ce.saved,
        mask,
        maskSum,
      } satisfies HeadSaved,
    );
    // An all-masked micro-batch contributes nothing (Megatron would divide by zero).
    return { loss: maskSum > 0 ? lossSum / maskSum : 0, lossSum, tokens: maskSum };
  }

  /** Starts backward with dloss[i] = mask[i] / sum(mask) * factor; returns d hidden (caller owns). */
  async backward(ctx: MicroBatchContext, factor: number): Promise<Tensor> {
    const { backend, cfg } = this.env;
    const sv = takeSaved<HeadSaved>(ctx, this, "LossHead.backward");
    const T = sv.mask.length, h = cfg.hiddenSize, dt = cfg.paramsDtype;
    const dl = new Float64Array(T);
    if (sv.maskSum > 0) { for (let i = 0; i < T; i++) dl[i] = (sv.mask[i] / sv.maskSum) * factor; }
    const dloss = backend.fromHost(gradDType(dt), [T], dl);
    const dlogits = vocabParallelCrossEntropyBackward(this.tp, sv.ce, dloss);
    backend.free(dloss); // dlogits reuses sv.ce.logits' storage
    const dLn = backend.empty(dt, [T, h]);
    const w = this.wordEmbedding;
    linearGrad(backend, dlogits, sv.lnOut.view([T, h]), w.value, w.grad, dLn);
    backend.free(dlogits);
    // The logits GEMM input was copied to the TP region: its grad is summed over ranks.
    await copyToTensorParallelRegion.backward(this.tp, dLn);
    const dx = this.finalLayernorm.backward(dLn, ctx);
    freeAll(backend, [dLn, sv.lnOut]);
    return dx.view(sv.hShape);
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as HeadSaved | undefined;
    if (sv) freeAll(this.env.backend, [sv.lnOut, sv.ce.logits, sv.ce.globalMax, sv.ce.sumExp]);
    ctx.saved.delete(this);
    this.finalLayernorm.discard(ctx);
  }
}
