// GPT: embeddings -> pre-LN causal transformer layers -> final LN -> tied logits; the loss
// (vocab-parallel CE) is a separate step. Built for one pipeline stage (pre_process / post_process /
// a range of global layers); with one stage it is the whole model. Two ways to train a micro-batch:
//   outputs, loss separately (the trainer): logits = await model.forward({tokens}, ctx);
//     loss = await model.loss(logits, labels, lossMask); await model.backward(ctx, loss.backward(f))
//   fused (tests): out = await model.forward({tokens, labels, lossMask}, ctx) -> LossOutput;
//     await model.backward(ctx, factor)

import type { Backend } from "../backend/backend.ts";
import type { Communicator, ParallelState } from "../parallel/types.ts";
import type { Param } from "../tensor/param.ts";
import { Tensor } from "../tensor/tensor.ts";
import { TransformerBlock } from "../transformer/block.ts";
import {
  type MicroBatchContext,
  type ModuleEnv,
  newMicroBatchContext,
  tpEnv,
} from "../transformer/common.ts";
import { type GPTConfig, resolveConfig, type ResolvedGPTConfig } from "../transformer/config.ts";
import { Embedding, wordEmbedding } from "../transformer/embedding.ts";
import { LMLogits, type LMLoss, type LossOutput, vocabParallelLMLoss } from "../transformer/lm_head.ts";

export interface GPTStage {
  /** First stage: owns the embeddings and takes token ids. */
  preProcess: boolean;
  /** Last stage: owns the final LayerNorm and the logits. */
  postProcess: boolean;
  /** Global 0-based layer numbers of this stage (or virtual chunk), in order. */
  layers: number[];
}

/** Micro-batch input. First stage: tokens. Other stages: hidden [b, s, h] from the previous stage.
 *  Last stage, fused form only: labels i32 [b, s] and lossMask f32 [b, s]. Tensors must stay alive
 *  until backward. */
export interface GPTInput {
  tokens?: Tensor;
  hidden?: Tensor;
  labels?: Tensor;
  lossMask?: Tensor;
}

interface GPTSaved {
  embOut: Tensor | null; // owned
  blockOut: Tensor | null; // owned when postProcess
  loss: LMLoss | null; // fused form
}

/** Narrow forward's result: the last stage returns a LossOutput, other stages a hidden Tensor. */
export function isLossOutput(x: LossOutput | Tensor): x is LossOutput {
  return !(x instanceof Tensor);
}

/** The default stage of a rank: contiguous equal layer ranges over the pipeline stages. */
export function defaultStage(numLayers: number, ps: ParallelState): GPTStage {
  if (numLayers % ps.ppSize !== 0) {
    throw new Error(`GPTModel: numLayers ${numLayers} is not divisible by pipeline size ${ps.ppSize}`);
  }
  const per = numLayers / ps.ppSize;
  return {
    preProcess: ps.isFirstStage,
    postProcess: ps.isLastStage,
    layers: Array.from({ length: per }, (_, i) => ps.ppRank * per + i),
  };
}

export class GPTModel {
  readonly cfg: ResolvedGPTConfig;
  readonly stage: GPTStage;
  readonly embedding: Embedding | null;
  readonly encoder: TransformerBlock;
  /** Last stage: final LayerNorm + tied logits. */
  readonly head: LMLogits | null;
  /** The tied word embedding on a last stage that is not the first (Param.shared). */
  readonly wordEmbeddingsForHead: Param | null;
  private readonly env: ModuleEnv;

  constructor(
    cfg: GPTConfig,
    readonly backend: Backend,
    readonly ps: ParallelState,
    readonly comm: Communicator,
    stage?: GPTStage,
  ) {
    this.cfg = resolveConfig(cfg, ps.tpSize);
    this.stage = stage ?? defaultStage(this.cfg.numLayers, ps);
    const { layers } = this.stage;
    if (layers.length === 0) throw new Error("GPTModel: a stage needs at least one layer, found none");
    for (const l of layers) {
      if (!Number.isInteger(l) || l < 0 || l >= this.cfg.numLayers) {
        throw new Error(`GPTModel: stage layer ${l} is outside [0, ${this.cfg.numLayers})`);
      }
    }
    this.env = { cfg: this.cfg, backend, ps, comm };
    this.embedding = this.stage.preProcess ? new Embedding(this.env) : null;
    this.encoder = new TransformerBlock(this.env, layers);
    let headWeight: Param | null = null;
    this.wordEmbeddingsForHead = null;
    if (this.stage.postProcess) {
      if (this.embedding) {
        headWeight = this.embedding.wordEmbeddings;
      } else {
        // Same init stream as the first stage's word embeddings, so the copies start equal.
        const copy = wordEmbedding(this.env, "word_embeddings_for_head").weight;
        this.wordEmbeddingsForHead = { ...copy, shared: true };
        headWeight = this.wordEmbeddingsForHead;
      }
    }
    this.vocabStart = ps.tpRank * (this.cfg.vocabSize / ps.tpSize);
    this.head = headWeight ? new LMLogits(this.env, headWeight) : null;
  }

  /** First vocabulary id of this TP rank's logits shard. */
  readonly vocabStart: number;

  /** All parameters of this stage in Megatron state-dict order. */
  params(): Param[] {
    return [
      ...(this.embedding?.params() ?? []),
      ...this.encoder.params(),
      ...(this.head?.params() ?? []),
      ...(this.wordEmbeddingsForHead ? [this.wordEmbeddingsForHead] : []),
    ];
  }

  /** The word-embedding copy to all-reduce over the "embedding" group (first or last stage), else null. */
  tiedEmbeddingParam(): Param | null {
    return this.embedding?.wordEmbeddings ?? this.wordEmbeddingsForHead;
  }

  zeroGrads(): void {
    for (const p of this.params()) this.backend.fill(p.grad, 0);
  }

  newContext(opts: { iteration: number; firstGlobalSample: number; training?: boolean }): MicroBatchContext {
    return newMicroBatchContext(opts);
  }

  /**
   * Last stage: logits [b, s, V/tp] (caller owns them; pass them to `loss`), or, with labels and
   * lossMask (fused form), the micro-batch loss. Other stages: the output hidden [b, s, h] (caller
   * owns it).
   */
  async forward(input: GPTInput | Tensor, ctx: MicroBatchContext): Promise<LossOutput | Tensor> {
    const inp: GPTInput = input instanceof Tensor ? { hidden: input } : input;
    let h: Tensor;
    let embOut: Tensor | null = null;
    if (this.embedding) {
      if (!inp.tokens) throw new Error("GPTModel.forward: the first stage needs tokens, found none");
      embOut = await this.embedding.forward(inp.tokens, ctx);
      h = embOut;
    } else {
      if (!inp.hidden) {
        throw new Error("GPTModel.forward: a non-first stage needs the hidden state, found none");
      }
      if (inp.hidden.rank !== 3 || inp.hidden.shape[2] !== this.cfg.hiddenSize) {
        throw new Error(
          `GPTModel.forward: hidden must be [b, s, ${this.cfg.hiddenSize}], found [${
            inp.hidden.shape.join(", ")
          }]`,
        );
      }
      if (inp.hidden.dtype !== this.cfg.paramsDtype) {
        throw new Error(
          `GPTModel.forward: hidden has dtype ${inp.hidden.dtype}, expected ${this.cfg.paramsDtype}`,
        );
      }
      h = inp.hidden;
    }
    const out = await this.encoder.forward(h, ctx);
    if (!this.head) {
      ctx.saved.set(this, { embOut, blockOut: null, loss: null } satisfies GPTSaved);
      return out;
    }
    if ((inp.labels === undefined) !== (inp.lossMask === undefined)) {
      throw new Error("GPTModel.forward: the last stage needs both labels and lossMask, or neither");
    }
    const logits = this.head.forward(out, ctx);
    if (!inp.labels) {
      ctx.saved.set(this, { embOut, blockOut: out, loss: null } satisfies GPTSaved);
      return logits;
    }
    const loss = await this.loss(logits, inp.labels, inp.lossMask!);
    ctx.saved.set(this, { embOut, blockOut: out, loss } satisfies GPTSaved);
    return loss.out;
  }

  /** The loss step: masked mean vocab-parallel CE of this stage's logits (taken over: its backward
   *  writes d logits into their storage; `discard` frees them). */
  loss(logits: Tensor, labels: Tensor, lossMask: Tensor): Promise<LMLoss> {
    return vocabParallelLMLoss(tpEnv(this.env), logits, labels, lossMask, this.vocabStart);
  }

  /**
   * `arg`: the gradient of this stage's output (logits on the last stage: taken over; the hidden
   * state elsewhere: the caller's), or on a last stage run in the fused form the loss factor (loss
   * scale / num micro-batches). Returns the input-hidden gradient on a non-first stage (caller owns
   * it), null on the first. Parameter grads accumulate; activations of `ctx` are freed.
   */
  async backward(ctx: MicroBatchContext, arg: number | Tensor): Promise<Tensor | null> {
    const sv = ctx.saved.get(this) as GPTSaved | undefined;
    if (!sv) throw new Error("GPTModel.backward: no forward was run in this context");
    ctx.saved.delete(this);
    let d: Tensor;
    if (this.head) {
      let dLogits: Tensor;
      if (typeof arg === "number") {
        if (!sv.loss) {
          throw new Error(
            "GPTModel.backward: a loss factor needs the fused forward (labels and lossMask); pass d logits",
          );
        }
        dLogits = sv.loss.backward(arg);
      } else {
        dLogits = arg;
      }
      d = await this.head.backward(dLogits, ctx);
      this.backend.free(sv.blockOut!);
    } else {
      if (typeof arg === "number") {
        throw new Error(
          "GPTModel.backward: a non-last stage takes the output gradient tensor, found a number",
        );
      }
      d = arg;
    }
    const dx = await this.encoder.backward(d, ctx);
    if (this.head) this.backend.free(d);
    if (this.embedding) {
      await this.embedding.backward(dx, ctx);
      this.backend.free(dx);
      this.backend.free(sv.embOut!);
      return null;
    }
    return dx;
  }

  /** Free what a forward saved without running backward (evaluation). */
  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as GPTSaved | undefined;
    if (!sv) return;
    ctx.saved.delete(this);
    sv.loss?.discard();
    this.head?.discard(ctx);
    this.encoder.discard(ctx);
    this.embedding?.discard(ctx);
    if (sv.blockOut) this.backend.free(sv.blockOut);
    if (sv.embOut) this.backend.free(sv.embOut);
  }
}
