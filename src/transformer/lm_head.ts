// Last-stage head: final LayerNorm, logits against the tied (vocab-parallel) word embedding, and
// vocab-parallel cross-entropy; loss = sum(CE * mask) / sum(mask).

import type { Param } from "../tensor/param.ts";
import { assertDType, shapeStr, type Tensor } from "../tensor/tensor.ts";
import { gradDType } from "./config.ts";
import { freeAll, type MicroBatchContext, type ModuleEnv, takeSaved } from "./common.ts";
import { LayerNorm } from "./layer_norm.ts";

export interface LossOutput {
  /** sum(CE * mask) / sum(mask) for this micro-batch (unscaled; f64 sum of the per-token losses). */
  loss: number;
  /** sum(CE * mask). */
  lossSum: number;
  /** sum(mask). */
  tokens: number;
}

interface HeadSaved {
  hShape: readonly number[];
  lnOut: Tensor;
  logits: Tensor; // [T, V_local]
  labels: Tensor; // [T] i32 (caller's)
  globalMax: Tensor;
  sumExp: Tensor;
  mask: Float64Array;
  maskSum: number;
}

export class LossHead {
  readonly finalLayernorm: LayerNorm;

  /** `wordEmbedding`: the tied embedding shard [V/tp, h] (on a last stage that is not first, its copy). */
  constructor(
    readonly env: ModuleEnv,
    readonly wordEmbedding: Param,
    readonly vocabStart: number,
    prefix = "language_model.encoder.final_layernorm.",
  ) {
    this.finalLayernorm = new LayerNorm(env, prefix);
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
    const { backend, cfg, comm } = this.env;
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
    const sd = gradDType(cfg.paramsDtype);
    const h = cfg.hiddenSize;
    const lnOut = this.finalLayernorm.forward(hidden, ctx);
    const vl = this.wordEmbedding.value.shape[0];
    const logits = backend.empty(cfg.paramsDtype, [T, vl]);
    backend.gemm({
      transA: false,
      transB: true,
      m: T,
      n: vl,
      k: h,
      a: lnOut.view([T, h]),
      b: this.wordEmbedding.value,
      c: logits,
    });
    const tgt = labels.view([T]);
    const globalMax = backend.empty(sd, [T]);
    const targetLogit = backend.empty(sd, [T]);
    backend.ceStats(logits, tgt, this.vocabStart, globalMax, targetLogit);
    await comm.allReduce(globalMax, "max", "tensor");
    await comm.allReduce(targetLogit, "sum", "tensor");
    const sumExp = backend.empty(sd, [T]);
    backend.ceSumExp(logits, globalMax, sumExp);
    await comm.allReduce(sumExp, "sum", "tensor");
    const perToken = backend.empty(sd, [T]);
    backend.ceLoss(globalMax, sumExp, targetLogit, perToken);
    const lossHost = backend.toF64(perToken);
    const mask = backend.toF64(lossMask);
    freeAll(backend, [perToken, targetLogit]);
    let lossSum = 0, maskSum = 0;
    for (let i = 0; i < T; i++) {
      lossSum += lossHost[i] * mask[i];
      maskSum += mask[i];
    }
    ctx.saved.set(
      this,
      {
        hShape: hidden.shape,
        lnOut,
        logits,
        labels: tgt,
        globalMax,
        sumExp,
        mask,
        maskSum,
      } satisfies HeadSaved,
    );
    // An all-masked micro-batch contributes nothing (Megatron would divide by zero).
    return { loss: maskSum > 0 ? lossSum / maskSum : 0, lossSum, tokens: maskSum };
  }

  /** Starts backward with dloss[i] = mask[i] / sum(mask) * factor; returns d hidden (caller owns). */
  async backward(ctx: MicroBatchContext, factor: number): Promise<Tensor> {
    const { backend, cfg, comm } = this.env;
    const sv = takeSaved<HeadSaved>(ctx, this, "LossHead.backward");
    const T = sv.mask.length, h = cfg.hiddenSize, dt = cfg.paramsDtype;
    const sd = gradDType(dt);
    const dl = new Float64Array(T);
    if (sv.maskSum > 0) { for (let i = 0; i < T; i++) dl[i] = (sv.mask[i] / sv.maskSum) * factor; }
    const dloss = backend.fromHost(sd, [T], dl);
    const dlogits = backend.empty(dt, sv.logits.shape);
    backend.ceBwd(sv.logits, sv.labels, this.vocabStart, sv.globalMax, sv.sumExp, dloss, dlogits);
    freeAll(backend, [dloss, sv.logits, sv.globalMax, sv.sumExp]);
    const vl = this.wordEmbedding.value.shape[0];
    const dLn = backend.empty(dt, [T, h]);
    backend.gemm({
      transA: false,
      transB: false,
      m: T,
      n: h,
      k: vl,
      a: dlogits,
      b: this.wordEmbedding.value,
      c: dLn,
    });
    backend.gemm({
      transA: true,
      transB: false,
      m: vl,
      n: h,
      k: T,
      a: dlogits,
      b: sv.lnOut.view([T, h]),
      c: this.wordEmbedding.grad,
      beta: 1,
    });
    backend.free(dlogits);
    // The logits GEMM input is copied to the TP region: its grad is summed over ranks.
    await comm.allReduce(dLn, "sum", "tensor");
    const dx = this.finalLayernorm.backward(dLn, ctx);
    freeAll(backend, [dLn, sv.lnOut]);
    return dx.view(sv.hShape);
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as HeadSaved | undefined;
    if (sv) freeAll(this.env.backend, [sv.lnOut, sv.logits, sv.globalMax, sv.sumExp]);
    ctx.saved.delete(this);
    this.finalLayernorm.discard(ctx);
  }
}
