// Word (vocab-parallel) + learned position embeddings, then embedding dropout (hidden_dropout).

import { Purpose } from "../rng/philox.ts";
import type { Param } from "../tensor/param.ts";
import { assertDType, type Tensor } from "../tensor/tensor.ts";
import {
  COLUMN,
  freeAll,
  hiddenDropoutAddr,
  hiddenDropoutP,
  initStream,
  makeParam,
  type MicroBatchContext,
  type ModuleEnv,
  ParamKind,
  takeSaved,
} from "./common.ts";

interface EmbeddingSaved {
  tokens: Tensor;
  positions: Tensor;
  b: number;
  s: number;
}

export class Embedding {
  readonly wordEmbeddings: Param;
  readonly positionEmbeddings: Param;
  /** First vocabulary row held by this tensor-parallel rank. */
  readonly vocabStart: number;

  constructor(readonly env: ModuleEnv, prefix = "language_model.embedding.") {
    const { cfg, ps } = env;
    const std = cfg.initMethodStd;
    this.wordEmbeddings = makeParam(
      env,
      `${prefix}word_embeddings.weight`,
      [cfg.vocabSize, cfg.hiddenSize],
      COLUMN,
      {
        kind: "normal",
        std,
        stream: initStream(-1, ParamKind.wordEmbeddings),
      },
    );
    this.positionEmbeddings = makeParam(
      env,
      `${prefix}position_embeddings.weight`,
      [cfg.maxPositionEmbeddings, cfg.hiddenSize],
      null,
      { kind: "normal", std, stream: initStream(-1, ParamKind.positionEmbeddings) },
    );
    this.vocabStart = ps.tpRank * (cfg.vocabSize / ps.tpSize);
  }

  params(): Param[] {
    return [this.wordEmbeddings, this.positionEmbeddings];
  }

  /** tokens i32 [b, s] -> hidden [b, s, h] in the model dtype (caller owns the result). */
  async forward(tokens: Tensor, ctx: MicroBatchContext): Promise<Tensor> {
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
    const word = backend.empty(dt, [b * s, h]);
    backend.embeddingFwd(ids, this.wordEmbeddings.value, word, this.vocabStart);
    // Vocab-parallel: each rank contributes its rows, zeros elsewhere (reduce_from forward).
    await this.env.comm.allReduce(word, "sum", "tensor");
    const posE = backend.empty(dt, [b * s, h]);
    backend.embeddingFwd(positions, this.positionEmbeddings.value, posE, 0);
    backend.add(word, posE, word);
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
    backend.embeddingBwd(sv.tokens, d, this.wordEmbeddings.grad, this.vocabStart);
    backend.embeddingBwd(sv.positions, d, this.positionEmbeddings.grad, 0);
    freeAll(backend, [tmp, sv.positions]);
    return Promise.resolve();
  }

  /** Drop what forward saved (forward-only use, e.g. evaluation). */
  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as EmbeddingSaved | undefined;
    if (sv) this.env.backend.free(sv.positions);
    ctx.saved.delete(this);
  }

  private addr(ctx: MicroBatchContext, s: number) {
    return hiddenDropoutAddr(this.env.cfg, ctx, Purpose.embeddingDropout, 0, s);
  }
}
