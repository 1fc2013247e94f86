// One transformer layer, encoder or decoder (Megatron's ParallelTransformerLayer). Each sub-layer is
// LN -> module -> bias-dropout-add(residual): encoder = [self-attention, MLP]; decoder = [self-attention,
// cross-attention, MLP]. The residual is the LayerNorm's input, or its output with
// applyResidualConnectionPostLayernorm (BERT's flag). The layer does not own its input or output; it
// frees its internals in backward.

import type { Backend, RngAddress } from "../backend/backend.ts";
import { Purpose } from "../rng/philox.ts";
import type { Param } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { type AttnMaskType, type BiasedOutput, ParallelAttention } from "./attention.ts";
import {
  hiddenDropoutAddr,
  hiddenDropoutP,
  type MicroBatchContext,
  type ModuleEnv,
  takeSaved,
} from "./common.ts";
import { LayerNorm } from "./layer_norm.ts";
import { ParallelMLP } from "./mlp.ts";

export type LayerType = "encoder" | "decoder";

export interface LayerOptions {
  /** Default "encoder" (GPT's and BERT's layers are encoder layers). */
  layerType?: LayerType;
  /** Self-attention mask; default "causal" (GPT). BERT and the T5 encoder use "padding". */
  selfAttnMaskType?: AttnMaskType;
}

/** Per-micro-batch inputs of a layer besides the hidden state (caller's tensors, alive until backward). */
export interface LayerInputs {
  /** Self-attention padding mask u8 [b, s, s], 1 = masked (selfAttnMaskType "padding"). */
  mask?: Tensor;
  /** Decoder: the encoder output [b, sk, h]. */
  encoderOutput?: Tensor;
  /** Decoder: the cross-attention padding mask u8 [b, s, sk], 1 = masked. */
  encDecMask?: Tensor;
}

/** Where a layer's backward accumulates grads of inputs other than the hidden state. */
export interface LayerGrads {
  /** Decoder: d encoderOutput [b, sk, h], accumulated (+=). */
  dEncoderOutput?: Tensor;
}

interface SubLayer {
  ln: LayerNorm;
  forward(x: Tensor, ctx: MicroBatchContext, inputs: LayerInputs): Promise<BiasedOutput>;
  backward(d: Tensor, ctx: MicroBatchContext, grads: LayerGrads): Promise<Tensor>;
  discard(ctx: MicroBatchContext): void;
  purpose: number;
}

interface LayerSaved {
  /** lnOuts[k]: LayerNorm output of sub-layer k (owned). */
  lnOuts: Tensor[];
  /** hs[k]: input of sub-layer k; hs[0] is the caller's, the others owned. */
  hs: Tensor[];
  s: number;
}

export class TransformerLayer {
  readonly layerType: LayerType;
  readonly inputLayernorm: LayerNorm;
  readonly selfAttention: ParallelAttention;
  readonly postAttentionLayernorm: LayerNorm;
  /** Decoder only: cross-attention and the LayerNorm after it. */
  readonly interAttention: ParallelAttention | null;
  readonly postInterAttentionLayernorm: LayerNorm | null;
  readonly mlp: ParallelMLP;
  private readonly subLayers: SubLayer[];

  /** `globalLayer`: 0-based layer number in the whole model (RNG streams, init; a T5 decoder uses
   *  numbers distinct from its encoder's); `prefix`: state-dict prefix ending with ".", e.g.
   *  "language_model.encoder.layers.3.". */
  constructor(
    readonly env: ModuleEnv,
    readonly globalLayer: number,
    prefix: string,
    opts: LayerOptions = {},
  ) {
    this.layerType = opts.layerType ?? "encoder";
    this.inputLayernorm = new LayerNorm(env, `${prefix}input_layernorm.`);
    this.selfAttention = new ParallelAttention(env, globalLayer, `${prefix}self_attention.`, {
      attnType: "self",
      maskType: opts.selfAttnMaskType ?? "causal",
    });
    this.postAttentionLayernorm = new LayerNorm(env, `${prefix}post_attention_layernorm.`);
    if (this.layerType === "decoder") {
      this.interAttention = new ParallelAttention(env, globalLayer, `${prefix}inter_attention.`, {
        attnType: "cross",
        maskType: "padding",
      });
      this.postInterAttentionLayernorm = new LayerNorm(env, `${prefix}post_inter_attention_layernorm.`);
    } else {
      this.interAttention = this.postInterAttentionLayernorm = null;
    }
    this.mlp = new ParallelMLP(env, globalLayer, `${prefix}mlp.`);
    const self = this.selfAttention, inter = this.interAttention, mlp = this.mlp;
    this.subLayers = [{
      ln: this.inputLayernorm,
      forward: (x, ctx, i) => self.forwardBias(x, ctx, { mask: i.mask }),
      backward: (d, ctx) => self.backward(d, ctx),
      discard: (ctx) => self.discard(ctx),
      purpose: Purpose.attentionOutputDropout,
    }];
    let nextLn = this.postAttentionLayernorm;
    if (inter) {
      this.subLayers.push({
        ln: nextLn,
        forward: (x, ctx, i) =>
          inter.forwardBias(x, ctx, { mask: i.encDecMask, encoderOutput: i.encoderOutput }),
        backward: (d, ctx, g) => inter.backward(d, ctx, g),
        discard: (ctx) => inter.discard(ctx),
        purpose: Purpose.crossAttentionOutputDropout,
      });
      nextLn = this.postInterAttentionLayernorm!;
    }
    this.subLayers.push({
      ln: nextLn,
      forward: (x, ctx) => mlp.forwardBias(x, ctx),
      backward: (d, ctx) => mlp.backward(d, ctx),
      discard: (ctx) => mlp.discard(ctx),
      purpose: Purpose.mlpOutputDropout,
    });
  }

  /** Megatron state-dict order. */
  params(): Param[] {
    return [
      ...this.inputLayernorm.params(),
      ...this.selfAttention.params(),
      ...this.postAttentionLayernorm.params(),
      ...(this.interAttention?.params() ?? []),
      ...(this.postInterAttentionLayernorm?.params() ?? []),
      ...this.mlp.params(),
    ];
  }

  /** x [b, s, h] -> y [b, s, h] (caller owns y; x and the inputs must stay alive until backward). */
  async forward(x: Tensor, ctx: MicroBatchContext, inputs: LayerInputs = {}): Promise<Tensor> {
    const { backend, cfg } = this.env;
    const s = x.shape[1];
    const postLn = cfg.applyResidualConnectionPostLayernorm;
    const lnOuts: Tensor[] = [], hs: Tensor[] = [x];
    let h = x;
    for (const [k, sub] of this.subLayers.entries()) {
      const a = sub.ln.forward(h, ctx);
      lnOuts.push(a);
      const { out, bias } = await sub.forward(a, ctx, inputs);
      if (!bias) throw new Error("TransformerLayer: a sub-layer returned no bias for bias-dropout-add");
      const next = backend.empty(x.dtype, x.shape);
      backend.biasDropoutAdd(
        out,
        bias,
        postLn ? a : h,
        hiddenDropoutP(cfg, ctx),
        this.addr(ctx, sub.purpose, s),
        next,
      );
      backend.free(out);
      if (k < this.subLayers.length - 1) hs.push(next);
      h = next;
    }
    ctx.saved.set(this, { lnOuts, hs, s } satisfies LayerSaved);
    return h;
  }

  /** dy [b, s, h] (caller's) -> dx [b, s, h] (caller owns dx). A decoder adds d encoderOutput into
   *  `grads.dEncoderOutput`. */
  async backward(dy: Tensor, ctx: MicroBatchContext, grads: LayerGrads = {}): Promise<Tensor> {
    const { backend, cfg } = this.env;
    const sv = takeSaved<LayerSaved>(ctx, this, "TransformerLayer.backward");
    const p = hiddenDropoutP(cfg, ctx);
    const postLn = cfg.applyResidualConnectionPostLayernorm;
    let dh = dy;
    for (let k = this.subLayers.length - 1; k >= 0; k--) {
      const sub = this.subLayers[k];
      // h_{k+1} = residual + dropout(out + bias); residual = h_k, or ln_k(h_k) with postLn.
      // (each output projection's bias grad is accumulated by its row-parallel backward)
      const dOut = dropoutBwd(backend, dh, p, this.addr(ctx, sub.purpose, sv.s));
      const dA = await sub.backward(dOut, ctx, grads);
      if (dOut !== dh) backend.free(dOut);
      if (postLn) backend.add(dA, dh, dA);
      const dH = sub.ln.backward(dA, ctx);
      backend.free(dA);
      if (!postLn) backend.add(dH, dh, dH);
      backend.free(sv.lnOuts[k]);
      if (dh !== dy) backend.free(dh);
      if (k > 0) backend.free(sv.hs[k]);
      dh = dH;
    }
    return dh;
  }

  /** Drop everything forward saved (recompute or forward-only). */
  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as LayerSaved | undefined;
    if (sv) {
      for (const t of sv.lnOuts) this.env.backend.free(t);
      for (const t of sv.hs.slice(1)) this.env.backend.free(t);
    }
    ctx.saved.delete(this);
    for (const sub of this.subLayers) {
      sub.ln.discard(ctx);
      sub.discard(ctx);
    }
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
