// BERT (Megatron 2021 bert_model.py): word + position + tokentype embeddings -> bidirectional
// transformer layers with the padding mask -> final LayerNorm -> BERT LM head (tied logits + bias) and,
// unless --bert-no-binary-head, pooler (tanh(dense) on [CLS]) -> binary (sentence-order) head. Built
// for one pipeline stage (pre_process / post_process / global layers) like GPTModel; the losses
// (masked LM, SOP) are the task's step (src/training/bert_task.ts).

import type { Backend } from "../backend/backend.ts";
import type { Communicator, ParallelState } from "../parallel/types.ts";
import type { Param } from "../tensor/param.ts";
import { assertDType, shapeStr, type Tensor } from "../tensor/tensor.ts";
import { TransformerBlock } from "../transformer/block.ts";
import { freeAll, type MicroBatchContext, type ModuleEnv, takeSaved, tpEnv } from "../transformer/common.ts";
import {
  resolveConfig,
  type ResolvedTransformerConfig,
  type TransformerConfig,
} from "../transformer/config.ts";
import { Embedding, wordEmbedding } from "../transformer/embedding.ts";
import { LayerNorm } from "../transformer/layer_norm.ts";
import { headInit, HeadInitKind } from "../transformer/tokentype_embedding.ts";
import { BertLMHead, BinaryHead, Pooler } from "./bert_heads.ts";
import type { GPTStage } from "./gpt.ts";

export interface BertOptions {
  /** Megatron's add_binary_head (false with --bert-no-binary-head): also no pooler. */
  binaryHead: boolean;
  /** The language model of Megatron's Classification / MultipleChoice (add_pooler, no lm_head or
   *  binary_head): the last stage returns [pooled [b, h]] and backward takes its gradient. */
  pooledOutput?: boolean;
}

/** Micro-batch input. First stage: text and types i32 [b, s]; others: hidden [b, s, h]. Every stage:
 *  the extended attention mask u8 [b, s, s] (1 = masked). Tensors stay alive until backward. */
export interface BertInput {
  text?: Tensor;
  types?: Tensor;
  hidden?: Tensor;
  mask: Tensor;
}

interface BertSaved {
  embOut: Tensor | null; // owned
  blockOut: Tensor | null; // owned on the last stage
  lnOut: Tensor | null; // owned on the last stage (the LM head and pooler read it)
  pooled: Tensor | null; // owned (the binary head keeps it for backward)
}

export class BertModel {
  readonly cfg: ResolvedTransformerConfig;
  readonly embedding: Embedding | null;
  readonly encoder: TransformerBlock;
  readonly finalLayernorm: LayerNorm | null;
  readonly pooler: Pooler | null;
  readonly lmHead: BertLMHead | null;
  readonly binaryHead: BinaryHead | null;
  /** The tied word embedding on a last stage that is not the first (Param.shared). */
  readonly wordEmbeddingsForHead: Param | null;
  private readonly env: ModuleEnv;

  constructor(
    cfg: TransformerConfig,
    readonly backend: Backend,
    readonly ps: ParallelState,
    readonly comm: Communicator,
    readonly stage: GPTStage,
    readonly opts: BertOptions,
  ) {
    this.cfg = resolveConfig(cfg, ps.tpSize);
    if (stage.layers.length === 0) throw new Error("BertModel: a stage needs at least one layer, found none");
    for (const l of stage.layers) {
      if (!Number.isInteger(l) || l < 0 || l >= this.cfg.numLayers) {
        throw new Error(`BertModel: stage layer ${l} is outside [0, ${this.cfg.numLayers})`);
      }
    }
    const env: ModuleEnv = { cfg: this.cfg, backend, ps, comm };
    this.env = env;
    // Megatron's BERT has two token types (sentence A, sentence B).
    this.embedding = stage.preProcess ? new Embedding(env, "language_model.embedding.", 2) : null;
    this.encoder = new TransformerBlock(env, stage.layers, "language_model.encoder.", {
      layerType: "encoder",
      selfAttnMaskType: "padding",
    });
    const tp = tpEnv(env), c = this.cfg;
    const post = stage.postProcess;
    const pretraining = !opts.pooledOutput;
    if (opts.pooledOutput && opts.binaryHead) {
      throw new Error("BertModel: pooledOutput (a finetuning model) has no binary head");
    }
    this.finalLayernorm = post ? new LayerNorm(env, "language_model.encoder.final_layernorm.") : null;
    this.pooler = post && (opts.binaryHead || opts.pooledOutput)
      ? new Pooler(tp, {
        hiddenSize: c.hiddenSize,
        init: headInit(c.seed, c.initMethodStd, HeadInitKind.pooler),
      })
      : null;
    this.lmHead = post && pretraining
      ? new BertLMHead(tp, {
        hiddenSize: c.hiddenSize,
        vocabSize: c.vocabSize,
        init: headInit(c.seed, c.initMethodStd, HeadInitKind.lmHeadDense),
        layernormEpsilon: c.layernormEpsilon,
      })
      : null;
    this.binaryHead = post && opts.binaryHead
      ? new BinaryHead(tp, {
        hiddenSize: c.hiddenSize,
        init: headInit(c.seed, c.initMethodStd, HeadInitKind.binaryHead),
      })
      : null;
    this.wordEmbeddingsForHead = null;
    if (post && pretraining && !this.embedding) {
      // Same init stream as the first stage's word embeddings, so the copies start equal.
      const copy = wordEmbedding(env, "word_embeddings_for_head").weight;
      this.wordEmbeddingsForHead = { ...copy, shared: true };
    }
  }

  /** The word embedding the LM head's logits are tied to (last stage). */
  private get headWord(): Param {
    return this.embedding?.wordEmbeddings ?? this.wordEmbeddingsForHead!;
  }

  /** First vocabulary id of this TP rank's logits shard. */
  get vocabStart(): number {
    return this.ps.tpRank * (this.cfg.vocabSize / this.ps.tpSize);
  }

  /** In Megatron's state-dict order: language_model (embedding, encoder, pooler), lm_head,
   *  binary_head, word_embeddings_for_head. */
  params(): Param[] {
    return [
      ...(this.embedding?.params() ?? []),
      ...this.encoder.params(),
      ...(this.finalLayernorm?.params() ?? []),
      ...(this.pooler?.params() ?? []),
      ...(this.lmHead?.params() ?? []),
      ...(this.binaryHead?.params() ?? []),
      ...(this.wordEmbeddingsForHead ? [this.wordEmbeddingsForHead] : []),
    ];
  }

  tiedEmbeddingParam(): Param | null {
    return this.embedding?.wordEmbeddings ?? this.wordEmbeddingsForHead;
  }

  /**
   * Last stage: [lm logits [b*s, V/tp]] plus, with the binary head, [b, 2] sentence-order logits
   * (caller owns them); with pooledOutput [pooled [b, h]]. Other stages: [hidden [b, s, h]] (caller
   * owns).
   */
  async forward(input: BertInput, ctx: MicroBatchContext): Promise<Tensor[]> {
    const { cfg } = this;
    assertDType("BertModel.forward", input.mask, "u8", "mask");
    let h: Tensor;
    let embOut: Tensor | null = null;
    if (this.embedding) {
      if (!input.text || !input.types) {
        throw new Error("BertModel.forward: the first stage needs text and types, found none");
      }
      embOut = await this.embedding.forward(input.text, ctx, input.types);
      h = embOut;
    } else {
      if (!input.hidden) {
        throw new Error("BertModel.forward: a non-first stage needs the hidden state, found none");
      }
      if (input.hidden.rank !== 3 || input.hidden.shape[2] !== cfg.hiddenSize) {
        throw new Error(
          `BertModel.forward: hidden must be [b, s, ${cfg.hiddenSize}], found ${
            shapeStr(input.hidden.shape)
          }`,
        );
      }
      h = input.hidden;
    }
    const [b, s] = h.shape;
    if (input.mask.size !== b * s * s) {
      throw new Error(`BertModel.forward: mask ${shapeStr(input.mask.shape)} is not [${b}, ${s}, ${s}]`);
    }
    const out = await this.encoder.forward(h, ctx, { mask: input.mask.view([b, s, s]) });
    if (this.opts.pooledOutput && this.finalLayernorm) {
      const lnOut = this.finalLayernorm.forward(out, ctx);
      const pooled = this.pooler!.forward(lnOut, ctx, 0);
      ctx.saved.set(this, { embOut, blockOut: out, lnOut, pooled: null } satisfies BertSaved);
      return [pooled];
    }
    if (!this.lmHead) {
      ctx.saved.set(this, { embOut, blockOut: null, lnOut: null, pooled: null } satisfies BertSaved);
      return [out];
    }
    const lnOut = this.finalLayernorm!.forward(out, ctx);
    const logits = this.lmHead.forward(lnOut, this.headWord, ctx);
    let pooled: Tensor | null = null;
    const outputs = [logits];
    if (this.pooler && this.binaryHead) {
      pooled = this.pooler.forward(lnOut, ctx, 0);
      outputs.push(this.binaryHead.forward(pooled, ctx));
    }
    ctx.saved.set(this, { embOut, blockOut: out, lnOut, pooled } satisfies BertSaved);
    return outputs;
  }

  /**
   * `grads`: on the last stage the gradients of forward's outputs (lm logits, binary logits; taken
   * over and freed here), elsewhere [d output hidden] (the caller's). Returns the input-hidden gradient
   * on a non-first stage (caller owns), null on the first. Parameter grads accumulate.
   */
  async backward(ctx: MicroBatchContext, grads: Tensor[]): Promise<Tensor | null> {
    const be = this.backend;
    const sv = takeSaved<BertSaved>(ctx, this, "BertModel.backward");
    let d: Tensor;
    const last = this.finalLayernorm !== null;
    if (this.opts.pooledOutput && last) {
      if (grads.length !== 1) {
        throw new Error(`BertModel.backward: expected 1 output gradient, found ${grads.length}`);
      }
      const dLn = be.zeros(sv.lnOut!.dtype, sv.lnOut!.shape);
      this.pooler!.backward(grads[0], ctx, dLn);
      d = this.finalLayernorm!.backward(dLn, ctx);
      freeAll(be, [...grads, dLn, sv.lnOut, sv.blockOut]);
    } else if (this.lmHead) {
      const want = this.binaryHead ? 2 : 1;
      if (grads.length !== want) {
        throw new Error(`BertModel.backward: expected ${want} output gradients, found ${grads.length}`);
      }
      const dLn = await this.lmHead.backward(grads[0], this.headWord, ctx);
      if (this.binaryHead && this.pooler) {
        const dPooled = this.binaryHead.backward(grads[1], ctx);
        this.pooler.backward(dPooled, ctx, dLn);
        be.free(dPooled);
      }
      d = this.finalLayernorm!.backward(dLn, ctx);
      freeAll(be, [...grads, dLn, sv.lnOut, sv.pooled, sv.blockOut]);
    } else {
      d = grads[0];
    }
    const dx = await this.encoder.backward(d, ctx);
    if (last) be.free(d);
    if (this.embedding) {
      await this.embedding.backward(dx, ctx);
      freeAll(be, [dx, sv.embOut]);
      return null;
    }
    return dx;
  }

  /** Free what a forward saved without running backward (evaluation). */
  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as BertSaved | undefined;
    if (!sv) return;
    ctx.saved.delete(this);
    this.binaryHead?.discard(ctx);
    this.pooler?.discard(ctx);
    this.lmHead?.discard(ctx);
    this.finalLayernorm?.discard(ctx);
    this.encoder.discard(ctx);
    this.embedding?.discard(ctx);
    freeAll(this.backend, [sv.pooled, sv.lnOut, sv.blockOut, sv.embOut]);
  }
}
