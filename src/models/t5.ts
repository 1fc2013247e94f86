// Megatron 2021's T5 (t5_model.py; not the original T5): one word + learned-position embedding shared by
// the encoder and the decoder input, an encoder of num_layers padding-masked layers + final LayerNorm,
// a decoder of num_layers layers (causal self-attention, cross-attention over the encoder output, MLP)
// + final LayerNorm, and T5LMHead (tied logits + vocab-parallel lm_head.bias). Forward returns logits;
// the masked-LM loss is the task's step. Tensor parallelism only: Megatron 2021 had no pipeline
// parallelism for T5, so one chunk is the whole model.

import type { Backend } from "../backend/backend.ts";
import type { Communicator, ParallelState } from "../parallel/types.ts";
import { Purpose } from "../rng/philox.ts";
import type { Param } from "../tensor/param.ts";
import { assertDType, type Tensor } from "../tensor/tensor.ts";
import { TransformerBlock } from "../transformer/block.ts";
import {
  freeAll,
  hiddenDropoutAddr,
  hiddenDropoutP,
  type MicroBatchContext,
  type ModuleEnv,
  takeSaved,
  tpEnv,
} from "../transformer/common.ts";
import {
  resolveConfig,
  type ResolvedTransformerConfig,
  type TransformerConfig,
} from "../transformer/config.ts";
import { Embedding } from "../transformer/embedding.ts";
import { LayerNorm } from "../transformer/layer_norm.ts";
import { T5LMHead } from "./t5_head.ts";

/** A T5 micro-batch on the device (Megatron's get_batch, masks u8 with 1 = masked). */
export interface T5Input {
  /** Encoder tokens i32 [b, se]. */
  textEnc: Tensor;
  /** Decoder input tokens i32 [b, sd]. */
  textDec: Tensor;
  /** Encoder self-attention mask u8 [b, se, se]. */
  encMask: Tensor;
  /** Cross-attention mask u8 [b, sd, se]. */
  encDecMask: Tensor;
}

interface EmbedSaved {
  ids: Tensor; // the caller's tokens, viewed [b*s]
  positions: Tensor; // owned
  s: number;
}

/**
 * One application of the shared embedding: word + position rows, then hidden dropout. The encoder and
 * the decoder input are two applications of one table (Megatron calls language_model.embedding twice),
 * so each has its own dropout stream (`slot`) and its own saved state; both accumulate into the same
 * parameter grads.
 */
class EmbeddingUse {
  constructor(readonly env: ModuleEnv, readonly table: Embedding, readonly slot: number) {}

  async forward(tokens: Tensor, ctx: MicroBatchContext): Promise<Tensor> {
    const { backend, cfg } = this.env;
    assertDType("T5 embedding", tokens, "i32", "tokens");
    const [b, s] = tokens.shape;
    if (tokens.rank !== 2 || s > cfg.maxPositionEmbeddings) {
      throw new Error(
        `T5 embedding: tokens must be [b, s] with s <= max-position-embeddings ${cfg.maxPositionEmbeddings}, ` +
          `found [${tokens.shape.join(", ")}]`,
      );
    }
    const h = cfg.hiddenSize;
    const pos = new Int32Array(b * s);
    for (let i = 0; i < b * s; i++) pos[i] = i % s; // t5_position_ids: 0..s-1 per row
    const positions = backend.fromHost("i32", [b * s], pos);
    const ids = tokens.view([b * s]);
    const word = await this.table.word.forward(ids);
    const posE = backend.empty(cfg.paramsDtype, [b * s, h]);
    backend.embeddingFwd(positions, this.table.positionEmbeddings.value, posE, 0);
    backend.add(word, posE, word);
    const out = backend.empty(cfg.paramsDtype, [b, s, h]);
    backend.dropout(word.view([b, s, h]), hiddenDropoutP(cfg, ctx), this.addr(ctx, s), out);
    freeAll(backend, [word, posE]);
    ctx.saved.set(this, { ids, positions, s } satisfies EmbedSaved);
    return out;
  }

  /** Accumulates the table's grads from dy [b, s, h] (stays the caller's). */
  backward(dy: Tensor, ctx: MicroBatchContext): void {
    const { backend, cfg } = this.env;
    const sv = takeSaved<EmbedSaved>(ctx, this, "T5 embedding backward");
    const rows = sv.ids.size;
    let d = dy.view([rows, cfg.hiddenSize]);
    const p = hiddenDropoutP(cfg, ctx);
    const tmp = p > 0 ? backend.empty(dy.dtype, [rows, cfg.hiddenSize]) : null;
    if (tmp) {
      backend.dropout(d, p, this.addr(ctx, sv.s), tmp);
      d = tmp;
    }
    this.table.word.backward(sv.ids, d);
    backend.embeddingBwd(sv.positions, d, this.table.positionEmbeddings.grad, 0);
    freeAll(backend, [tmp, sv.positions]);
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as EmbedSaved | undefined;
    if (sv) this.env.backend.free(sv.positions);
    ctx.saved.delete(this);
  }

  private addr(ctx: MicroBatchContext, s: number) {
    return hiddenDropoutAddr(this.env.cfg, ctx, Purpose.embeddingDropout, this.slot, s);
  }
}

interface T5Saved {
  encEmb: Tensor; // owned
  encOut: Tensor; // encoder block output, owned
  encFinal: Tensor; // after the encoder's final LayerNorm (the decoder's memory), owned
  decEmb: Tensor; // owned
  decOut: Tensor; // owned
  decFinal: Tensor; // owned (the head keeps a view until backward)
  inputs: T5Input;
}

export class T5Model {
  readonly cfg: ResolvedTransformerConfig;
  readonly embedding: Embedding;
  readonly encoder: TransformerBlock;
  readonly encoderFinalLayernorm: LayerNorm;
  readonly decoder: TransformerBlock;
  readonly decoderFinalLayernorm: LayerNorm;
  readonly lmHead: T5LMHead;
  private readonly env: ModuleEnv;
  private readonly encEmbed: EmbeddingUse;
  private readonly decEmbed: EmbeddingUse;

  /** `cfg.seqLength` is the encoder length; the decoder length only has to fit the position table. */
  constructor(
    cfg: TransformerConfig,
    readonly backend: Backend,
    readonly ps: ParallelState,
    readonly comm: Communicator,
  ) {
    if (ps.ppSize !== 1) {
      throw new Error(
        `T5Model: pipeline parallelism is not supported for T5 (as in Megatron 2021), found ${ps.ppSize} stages`,
      );
    }
    this.cfg = resolveConfig(cfg, ps.tpSize);
    const env: ModuleEnv = { cfg: this.cfg, backend, ps, comm };
    this.env = env;
    const L = this.cfg.numLayers;
    this.embedding = new Embedding(env);
    this.encEmbed = new EmbeddingUse(env, this.embedding, 0);
    this.decEmbed = new EmbeddingUse(env, this.embedding, 1);
    const layers = Array.from({ length: L }, (_, i) => i);
    this.encoder = new TransformerBlock(env, layers, "language_model.encoder.", {
      layerType: "encoder",
      selfAttnMaskType: "padding",
    });
    this.encoderFinalLayernorm = new LayerNorm(env, "language_model.encoder.final_layernorm.");
    // Decoder layers get global numbers L..2L-1: their own init and dropout streams.
    this.decoder = new TransformerBlock(env, layers.map((i) => L + i), "language_model.decoder.", {
      layerType: "decoder",
      // Megatron's dec_mask is causal AND padding; the two differ only on padded query rows (at the end),
      // which reach no position the loss counts, so the causal kernel gives the same loss and grads.
      selfAttnMaskType: "causal",
    });
    this.decoderFinalLayernorm = new LayerNorm(env, "language_model.decoder.final_layernorm.");
    this.lmHead = new T5LMHead(tpEnv(env), {
      hiddenSize: this.cfg.hiddenSize,
      vocabSize: this.cfg.vocabSize,
    });
  }

  /** First vocabulary id of this TP rank's logits shard. */
  get vocabStart(): number {
    return this.lmHead.vocabStart;
  }

  /** Megatron's state-dict order: embedding, encoder, decoder, lm_head.bias. */
  params(): Param[] {
    return [
      ...this.embedding.params(),
      ...this.encoder.params(),
      ...this.encoderFinalLayernorm.params(),
      ...this.decoder.params(),
      ...this.decoderFinalLayernorm.params(),
      ...this.lmHead.params(),
    ];
  }

  /** Tokens and masks (the caller's, alive until backward) -> logits [b * sd, V/tp] (caller owns; hand
   *  them to the masked-LM loss). */
  async forward(inp: T5Input, ctx: MicroBatchContext): Promise<Tensor> {
    const [b, se] = inp.textEnc.shape, sd = inp.textDec.shape[1];
    for (
      const [what, t, shape] of [["enc_mask", inp.encMask, [b, se, se]], ["enc_dec_mask", inp.encDecMask, [
        b,
        sd,
        se,
      ]]] as const
    ) {
      assertDType("T5Model.forward", t, "u8", what);
      if (t.shape.join() !== shape.join()) {
        throw new Error(
          `T5Model.forward: ${what} is [${t.shape.join(", ")}], expected [${shape.join(", ")}]`,
        );
      }
    }
    if (inp.textDec.shape[0] !== b) {
      throw new Error(`T5Model.forward: ${b} encoder rows but ${inp.textDec.shape[0]} decoder rows`);
    }
    const encEmb = await this.encEmbed.forward(inp.textEnc, ctx);
    const encOut = await this.encoder.forward(encEmb, ctx, { mask: inp.encMask });
    const encFinal = this.encoderFinalLayernorm.forward(encOut, ctx);
    const decEmb = await this.decEmbed.forward(inp.textDec, ctx);
    const decOut = await this.decoder.forward(decEmb, ctx, {
      encoderOutput: encFinal,
      encDecMask: inp.encDecMask,
    });
    const decFinal = this.decoderFinalLayernorm.forward(decOut, ctx);
    const logits = this.lmHead.forward(decFinal, this.embedding.wordEmbeddings, ctx);
    ctx.saved.set(
      this,
      { encEmb, encOut, encFinal, decEmb, decOut, decFinal, inputs: inp } satisfies T5Saved,
    );
    return logits;
  }

  /** dLogits [b * sd, V/tp] (the caller's) -> accumulates every parameter grad; frees the activations. */
  async backward(ctx: MicroBatchContext, dLogits: Tensor): Promise<void> {
    const be = this.backend;
    const sv = takeSaved<T5Saved>(ctx, this, "T5Model.backward");
    const word = this.embedding.wordEmbeddings;
    const dDecFinal = await this.lmHead.backward(dLogits, word, ctx);
    be.free(sv.decFinal);
    const dDecOut = this.decoderFinalLayernorm.backward(dDecFinal, ctx);
    be.free(dDecFinal);
    be.free(sv.decOut);
    // Every decoder layer's cross-attention adds its share of d(encoder output) here.
    const dEncFinal = be.empty(sv.encFinal.dtype, sv.encFinal.shape);
    be.fill(dEncFinal, 0);
    const dDecEmb = await this.decoder.backward(dDecOut, ctx, { dEncoderOutput: dEncFinal });
    be.free(dDecOut);
    this.decEmbed.backward(dDecEmb, ctx);
    freeAll(be, [dDecEmb, sv.decEmb]);
    const dEncOut = this.encoderFinalLayernorm.backward(dEncFinal, ctx);
    freeAll(be, [dEncFinal, sv.encFinal, sv.encOut]);
    const dEncEmb = await this.encoder.backward(dEncOut, ctx);
    be.free(dEncOut);
    this.encEmbed.backward(dEncEmb, ctx);
    freeAll(be, [dEncEmb, sv.encEmb]);
  }

  /** Free what forward saved without a backward (evaluation). */
  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as T5Saved | undefined;
    if (!sv) return;
    ctx.saved.delete(this);
    this.lmHead.discard(ctx);
    this.decoderFinalLayernorm.discard(ctx);
    this.decoder.discard(ctx);
    this.decEmbed.discard(ctx);
    this.encoderFinalLayernorm.discard(ctx);
    this.encoder.discard(ctx);
    this.encEmbed.discard(ctx);
    freeAll(this.backend, [sv.encEmb, sv.encOut, sv.encFinal, sv.decEmb, sv.decOut, sv.decFinal]);
  }
}
