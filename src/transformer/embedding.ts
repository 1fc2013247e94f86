// Word (vocab-parallel) + learned position (+ optional tokentype, BERT) embeddings, then embedding
// dropout (hidden_dropout).

import { VocabParallelEmbedding } from "../parallel/tensor_parallel.ts";
import { Purpose } from "../rng/philox.ts";
import type { Param } from "../tensor/param.ts";
import { assertDType, type Tensor } from "../tensor/tensor.ts";
import {
  freeAll,
  hiddenDropoutAddr,
  hiddenDropoutP,
  initStream,
  makeParam,
  type MicroBatchContext,
  type ModuleEnv,
  normalInit,
  ParamKind,
  takeSaved,
  tpEnv,
} from "./common.ts";
import { headInit, HeadInitKind, TokentypeEmbedding } from "./tokentype_embedding.ts";

interface EmbeddingSaved {
  tokens: Tensor;
  positions: Tensor;
  b: number;
  s: number;
}

/** The vocab-parallel word embedding of a GPT (also the last stage's tied copy: same init stream). */
export function wordEmbedding(env: ModuleEnv, name: string): VocabParallelEmbedding {
  const { cfg } = env;
  const init = normalInit(env, initStream(-1, ParamKind.wordEmbeddings), cfg.initMethodStd);
  return new VocabParallelEmbedding(tpEnv(env), name, cfg.vocabSize, cfg.hiddenSize, init);
}

export class Embedding {
  readonly word: VocabParallelEmbedding;
  readonly positionEmbeddings: Param;
  /** BERT's segment embedding (numTokentypes > 0), else null (GPT). */
  readonly tokentype: TokentypeEmbedding | null;

  constructor(readonly env: ModuleEnv, prefix = "language_model.embedding.", numTokentypes = 0) {
    const { cfg } = env;
    this.word = wordEmbedding(env, `${prefix}word_embeddings`);
    this.positionEmbeddings = makeParam(
      env,
      `${prefix}position_embeddings.weight`,
      [cfg.maxPositionEmbeddings, cfg.hiddenSize],
      { kind: "normal", std: cfg.initMethodStd, stream: initStream(-1, ParamKind.positionEmbeddings) },
    );
    this.tokentype = numTokentypes > 0
      ? new TokentypeEmbedding(tpEnv(env), {
        numTokentypes,
        hiddenSize: cfg.hiddenSize,
        init: headInit(cfg.seed, cfg.initMethodStd, HeadInitKind.tokentypeEmbeddings),
        prefix,
      })
      : null;
  }

  get wordEmbeddings(): Param {
    return this.word.weight;
  }
  /** First vocabulary row held by this tensor-parallel rank. */
  get vocabStart(): number {
    return this.word.vocabStart;
  }

  params(): Param[] {
    return [this.wordEmbeddings, this.positionEmbeddings, ...(this.tokentype?.params() ?? [])];
  }

  /** tokens i32 [b, s] (and, with a tokentype table, types i32 [b, s]) -> hidden [b, s, h] in the
   *  model dtype (caller owns the result). */
  async forward(tokens: Tensor, ctx: MicroBatchContext, types?: Tensor): Promise<Tensor> {
    const { backend, cfg } = this.env;
    assertDType("Embedding.forward", tokens, "i32", "tokens");
    if (tokens.rank !== 2) {
      throw new Error(`Embedding.forward: tokens must be [b, s], found rank ${tokens.rank}`);
    }
    const [b, s] = tokens.shape;
    if (s > cfg.maxPositionEmbeddings) {
      throw new Error(
        `Embedding.forward: sequence length ${s} exceeds maxPositionEmbeddings ${cfg.maxPositionEmbeddings}`,
      );
    }
    const h = cfg.hiddenSize;
    const dt = cfg.paramsDtype;
    const pos = new Int32Array(b * s);
    for (let i = 0; i < b * s; i++) pos[i] = i % s;
    const positions = backend.fromHost("i32", [b * s], pos);
    const ids = tokens.view([b * s]);
    // Vocab-parallel: each rank contributes its rows, zeros elsewhere (reduce_from forward).
    const word = await this.word.forward(ids);
    const posE = backend.empty(dt, [b * s, h]);
    backend.embeddingFwd(positions, this.positionEmbeddings.value, posE, 0);
    backend.add(word, posE, word);
    if (this.tokentype) {
      if (!types) throw new Error("Embedding.forward: this embedding has token types; pass them, found none");
      this.tokentype.forward(types, word, ctx);
    } else if (types) {
      throw new Error("Embedding.forward: token types given to an embedding without a tokentype table");
    }
    const out = backend.empty(dt, [b, s, h]);
    backend.dropout(word.view([b, s, h]), hiddenDropoutP(cfg, ctx), this.addr(ctx, s), out);
    freeAll(backend, [word, posE]);
    ctx.saved.set(this, { tokens: ids, positions, b, s } satisfies EmbeddingSaved);
    return out;
  }

  /** Accumulates word/position embedding grads from dy [b, s, h] (dy stays the caller's). */
  backward(dy: Tensor, ctx: MicroBatchContext): Promise<void> {
    const { backend, cfg } = this.env;
    const sv = takeSaved<EmbeddingSaved>(ctx, this, "Embedding.backward");
    const rows = sv.b * sv.s;
    let d = dy.view([rows, cfg.hiddenSize]);
    const p = hiddenDropoutP(cfg, ctx);
    const tmp = p > 0 ? backend.empty(dy.dtype, [rows, cfg.hiddenSize]) : null;
    if (tmp !== null) {
      backend.dropout(d, p, this.addr(ctx, sv.s), tmp);
      d = tmp;
    }
    this.word.backward(sv.tokens, d);
    backend.embeddingBwd(sv.positions, d, this.positionEmbeddings.grad, 0);
    this.tokentype?.backward(d, ctx);
    freeAll(backend, [tmp, sv.positions]);
    return Promise.resolve();
  }

  /** Drop what forward saved (forward-only use, e.g. evaluation). */
  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as EmbeddingSaved | undefined;
    if (sv) this.env.backend.free(sv.positions);
    ctx.saved.delete(this);
    this.tokentype?.discard(ctx);
  }

  private addr(ctx: MicroBatchContext, s: number) {
    return hiddenDropoutAddr(this.env.cfg, ctx, Purpose.embeddingDropout, 0, s);
  }
}
