// Megatron's tokentype (segment) embedding: a small replicated table [numTokentypes, h] whose rows are
// added to word + position embeddings before the embedding dropout (BERT: 2 types, A and B). Also the
// init addressing of the BERT/T5 head weights, so each draws its own Philox stream.

import type { NormalInit, TPEnv } from "../parallel/tensor_parallel.ts";
import { createParam, initWeightShard, ROW_SPLIT } from "../parallel/tensor_parallel.ts";
import { Purpose, streamId } from "../rng/philox.ts";
import type { Param } from "../tensor/param.ts";
import { assertDType, shapeStr, type Tensor } from "../tensor/tensor.ts";
import { type MicroBatchContext, takeSaved } from "./common.ts";

/** Init stream ids of the BERT/T5 weights outside the transformer layers. They share the embeddings'
 *  id range (global layer -1: ids 0..15, where word = 0 and position = 1) at ids the GPT modules do
 *  not use, so adding them leaves every GPT weight unchanged. */
export const HeadInitKind = {
  tokentypeEmbeddings: 10,
  pooler: 11,
  lmHeadDense: 12,
  binaryHead: 13,
} as const;

/** N(0, std) init of a head weight from the run's seed (Megatron's init_method_normal(std)). */
export function headInit(seed: number, std: number, kind: number): NormalInit {
  return { seed, stream: streamId(Purpose.init, kind), std };
}

/** A replicated (not TP-split) [rows, cols] weight drawn by global coordinates (same on every rank). */
export function replicatedWeight(
  tp: TPEnv,
  name: string,
  rows: number,
  cols: number,
  init: NormalInit,
): Param {
  // A one-rank split draws the full weight: element (r, c) uses Philox counter r * cols + c.
  const w = initWeightShard(rows, cols, ROW_SPLIT, 0, 1, init);
  return createParam(tp, name, w.shape, w.fill, null, false);
}

export interface TokentypeEmbeddingOptions {
  numTokentypes: number;
  hiddenSize: number;
  /** Normally headInit(seed, initMethodStd, HeadInitKind.tokentypeEmbeddings). */
  init: NormalInit;
  /** Ends with "."; the weight is `${prefix}tokentype_embeddings.weight`. */
  prefix?: string;
}

interface TokentypeSaved {
  ids: Tensor; // i32 [n] (owned)
}

export class TokentypeEmbedding {
  readonly weight: Param;
  readonly numTokentypes: number;
  readonly hiddenSize: number;

  constructor(readonly tp: TPEnv, opts: TokentypeEmbeddingOptions) {
    const { numTokentypes, hiddenSize } = opts;
    if (!Number.isInteger(numTokentypes) || numTokentypes < 1) {
      throw new Error(`TokentypeEmbedding: numTokentypes must be a positive integer, found ${numTokentypes}`);
    }
    this.numTokentypes = numTokentypes;
    this.hiddenSize = hiddenSize;
    const prefix = opts.prefix ?? "language_model.embedding.";
    this.weight = replicatedWeight(
      tp,
      `${prefix}tokentype_embeddings.weight`,
      numTokentypes,
      hiddenSize,
      opts.init,
    );
  }

  params(): Param[] {
    return [this.weight];
  }

  /** Adds the rows of `types` (i32 [b, s], each in [0, numTokentypes)) into `sum` ([b, s, h] or
   *  [b * s, h], the word + position embeddings before dropout), in place. */
  forward(types: Tensor, sum: Tensor, ctx: MicroBatchContext): void {
    const be = this.tp.backend, h = this.hiddenSize;
    assertDType("TokentypeEmbedding.forward", types, "i32", "types");
    if (sum.size !== types.size * h) {
      throw new Error(
        `TokentypeEmbedding.forward: types ${shapeStr(types.shape)} do not match embeddings ${
          shapeStr(sum.shape)
        } (hidden ${h})`,
      );
    }
    // The backend gives a zero row for an id outside the table (vocab-parallel semantics): check here.
    const host = be.toHost(types) as Int32Array;
    for (let i = 0; i < host.length; i++) {
      if (host[i] < 0 || host[i] >= this.numTokentypes) {
        throw new Error(
          `TokentypeEmbedding.forward: token type ${
            host[i]
          } at position ${i} is outside [0, ${this.numTokentypes})`,
        );
      }
    }
    const n = types.size;
    const ids = be.empty("i32", [n]);
    be.copy(types.view([n]), ids);
    const rows = be.empty(sum.dtype, [n, h]);
    be.embeddingFwd(ids, this.weight.value, rows, 0);
    const s2 = sum.view([n, h]);
    be.add(s2, rows, s2);
    be.free(rows);
    ctx.saved.set(this, { ids } satisfies TokentypeSaved);
  }

  /** dSum: the grad of the pre-dropout embedding sum ([b, s, h] or [b * s, h]; stays the caller's).
   *  Accumulates the table grad. */
  backward(dSum: Tensor, ctx: MicroBatchContext): void {
    const sv = takeSaved<TokentypeSaved>(ctx, this, "TokentypeEmbedding.backward");
    const be = this.tp.backend;
    be.embeddingBwd(sv.ids, dSum.view([sv.ids.size, this.hiddenSize]), this.weight.grad, 0);
    be.free(sv.ids);
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as TokentypeSaved | undefined;
    if (sv) this.tp.backend.free(sv.ids);
    ctx.saved.delete(this);
  }
}
