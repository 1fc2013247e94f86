// One pre-LN transformer layer: x -> LN -> attention -> bias-dropout-add(x) -> LN -> MLP ->
// bias-dropout-add. The layer does not own its input or output; it frees its internals in backward.

import type { Backend, RngAddress } from "../backend/backend.ts";
import { Purpose } from "../rng/philox.ts";
import type { Param } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { ParallelAttention } from "./attention.ts";
import {
  hiddenDropoutAddr,
  hiddenDropoutP,
  type MicroBatchContext,
  type ModuleEnv,
  takeSaved,
} from "./common.ts";
import { LayerNorm } from "./layer_norm.ts";
import { ParallelMLP } from "./mlp.ts";

interface LayerSaved {
  ln1Out: Tensor;
  mid: Tensor; // residual after attention [b, s, h]
  ln2Out: Tensor;
  s: number;
}

export class TransformerLayer {
  readonly inputLayernorm: LayerNorm;
  readonly selfAttention: ParallelAttention;
  readonly postAttentionLayernorm: LayerNorm;
  readonly mlp: ParallelMLP;

  /** `globalLayer`: 0-based layer number in the whole model (RNG streams, init);
   *  `prefix`: state-dict prefix ending with ".", e.g. "language_model.encoder.layers.3.". */
  constructor(readonly env: ModuleEnv, readonly globalLayer: number, prefix: string) {
    this.inputLayernorm = new LayerNorm(env, `${prefix}input_layernorm.`);
    this.selfAttention = new ParallelAttention(env, globalLayer, `${prefix}self_attention.`);
    this.postAttentionLayernorm = new LayerNorm(env, `${prefix}post_attention_layernorm.`);
    this.mlp = new ParallelMLP(env, globalLayer, `${prefix}mlp.`);
  }

  params(): Param[] {
    return [
      ...this.inputLayernorm.params(),
      ...this.selfAttention.params(),
      ...this.postAttentionLayernorm.params(),
      ...this.mlp.params(),
    ];
  }

  /** x [b, s, h] -> y [b, s, h] (caller owns y; x must stay alive until backward). */
  async forward(x: Tensor, ctx: MicroBatchContext): Promise<Tensor> {
    const { backend, cfg } = this.env;
    const s = x.shape[1];
    const ln1Out = this.inputLayernorm.forward(x, ctx);
    const attnOut = await this.selfAttention.forward(ln1Out, ctx);
    const mid = backend.empty(x.dtype, x.shape);
    backend.biasDropoutAdd(
      attnOut,
      this.selfAttention.dense.bias!.value,
      x,
      hiddenDropoutP(cfg, ctx),
      this.addr(ctx, Purpose.attentionOutputDropout, s),
      mid,
    );
    backend.free(attnOut);
    const ln2Out = this.postAttentionLayernorm.forward(mid, ctx);
    const mlpOut = await this.mlp.forward(ln2Out, ctx);
    const y = backend.empty(x.dtype, x.shape);
    backend.biasDropoutAdd(
      mlpOut,
      this.mlp.dense4hH.bias!.value,
      mid,
      hiddenDropoutP(cfg, ctx),
      this.addr(ctx, Purpose.mlpOutputDropout, s),
      y,
    );
    backend.free(mlpOut);
    ctx.saved.set(this, { ln1Out, mid, ln2Out, s } satisfies LayerSaved);
    return y;
  }

  /** dy [b, s, h] (caller's) -> dx [b, s, h] (caller owns dx). */
  async backward(dy: Tensor, ctx: MicroBatchContext): Promise<Tensor> {
    const { backend, cfg } = this.env;
    const sv = takeSaved<LayerSaved>(ctx, this, "TransformerLayer.backward");
    const p = hiddenDropoutP(cfg, ctx);
    // MLP branch: y = mid + dropout(mlpOut + bias)
    // (the 4h->h bias grad is accumulated by the MLP's row-parallel backward; likewise attention's)
    const dMlp = dropoutBwd(backend, dy, p, this.addr(ctx, Purpose.mlpOutputDropout, sv.s));
    const dLn2 = await this.mlp.backward(dMlp, ctx);
    if (dMlp !== dy) backend.free(dMlp);
    const dMidLn = this.postAttentionLayernorm.backward(dLn2, ctx);
    backend.free(dLn2);
    const dMid = dMidLn; // total grad of mid = dy (residual) + through LN2
    backend.add(dMidLn, dy, dMid);
    backend.free(sv.ln2Out);
    backend.free(sv.mid);
    // Attention branch: mid = x + dropout(attnOut + bias)
    const dAttn = dropoutBwd(backend, dMid, p, this.addr(ctx, Purpose.attentionOutputDropout, sv.s));
    const dLn1 = await this.selfAttention.backward(dAttn, ctx);
    if (dAttn !== dMid) backend.free(dAttn);
    const dx = this.inputLayernorm.backward(dLn1, ctx);
    backend.free(dLn1);
    backend.add(dx, dMid, dx);
    backend.free(dMid);
    backend.free(sv.ln1Out);
    return dx;
  }

  /** Drop everything forward saved (recompute or forward-only). */
  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as LayerSaved | undefined;
    if (sv) { for (const t of [sv.ln1Out, sv.mid, sv.ln2Out]) this.env.backend.free(t); }
    ctx.saved.delete(this);
    this.inputLayernorm.discard(ctx);
    this.selfAttention.discard(ctx);
    this.postAttentionLayernorm.discard(ctx);
    this.mlp.discard(ctx);
  }

  private addr(ctx: MicroBatchContext, purpose: number, s: number): RngAddress {
    return hiddenDropoutAddr(this.env.cfg, ctx, purpose, this.globalLayer, s);
  }
}

/** Gradient through dropout: the same mask and scale (returns dy itself when p = 0). */
export function dropoutBwd(backend: Backend, dy: Tensor, p: number, addr: RngAddress): Tensor {
  if (p === 0) return dy;
  const d = backend.empty(dy.dtype, dy.shape);
  backend.dropout(dy, p, addr, d);
  return d;
}
