// Generation on a (TP, PP) layout: the checkpoint's full weights split onto the ranks of an in-process
// LocalWorld (shardLayout, the weight-name table's splits), one GPTModel stage per rank, and a next-token
// step that runs every rank as a coroutine.
//
// Per step, as Megatron 2021's generate_samples: the tokens to feed are broadcast over the embedding
// group from the last stage (where the previous token was sampled) to the first; each stage runs its
// layers and sends the hidden state to the next; the last stage's vocab-parallel logits are gathered
// over the tensor group, and the caller samples once from them (the same Philox RNG for every layout).
//
// With the key/value cache (default) each rank keeps keys and values of its own heads ([positions,
// heads/TP x hn] per layer, on the backend) and runs one position at a time with backend ops only
// (GEMM, LayerNorm, softmax, bias-GeLU, bias-add, embedding), so the same code runs on the CPU and on
// CUDA; the row-parallel outputs are all-reduced over the tensor group as in GPTModel. Without the cache
// (--recompute) every rank runs GPTModel.forward over the whole prefix.

import type { Backend, RngAddress } from "../backend/backend.ts";
import { GPTModel } from "../models/gpt.ts";
import { LocalWorld } from "../parallel/local_comm.ts";
import { linear } from "../parallel/tensor_parallel.ts";
import { type Communicator, globalRankOf, type ParallelState } from "../parallel/types.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { type FullGpt, layerParams, shardLayout } from "./gpt_weights.ts";
import { inferenceConfig, loadParams, withoutInit } from "./model_load.ts";

export interface GptLayout {
  /** Tensor-parallel size (default 1). */
  tp?: number;
  /** Pipeline-parallel size (default 1). */
  pp?: number;
}

/** Checks that `full` can be split into (tp, pp); one line naming the flag otherwise. */
export function checkLayout(full: FullGpt, tp: number, pp: number): void {
  const a = full.arch;
  if (!Number.isInteger(tp) || tp < 1) throw new Error(`--tensor-model-parallel-size ${tp}: expected >= 1`);
  if (!Number.isInteger(pp) || pp < 1) throw new Error(`--pipeline-model-parallel-size ${pp}: expected >= 1`);
  if (a.numAttentionHeads % tp !== 0) {
    throw new Error(
      `--tensor-model-parallel-size ${tp}: the model's ${a.numAttentionHeads} attention heads are not divisible by it`,
    );
  }
  if (a.numLayers % pp !== 0) {
    throw new Error(
      `--pipeline-model-parallel-size ${pp}: the model's ${a.numLayers} layers are not divisible by it`,
    );
  }
}

/** Tensors of one layer of a rank (views of its GPTModel parameters) and its key/value cache. */
interface CachedLayer {
  ln1g: Tensor;
  ln1b: Tensor;
  qkvW: Tensor;
  qkvB: Tensor;
  denseW: Tensor;
  denseB: Tensor;
  ln2g: Tensor;
  ln2b: Tensor;
  h4hW: Tensor;
  h4hB: Tensor;
  fhW: Tensor;
  fhB: Tensor;
  /** [maxLen, np/tp * hn]: position-major, this rank's heads side by side. */
  keys: Tensor;
  values: Tensor;
}

/** One rank's cached forward, backend ops only: T new positions per call (a prompt at once, then one
 *  token at a time), attending to the cached ones and causally among themselves. */
class CachedStage {
  private readonly layers: CachedLayer[];
  private readonly h: number;
  private readonly npl: number;
  private readonly hn: number;
  private readonly ffl: number;
  private readonly maxLen: number;
  private readonly eps: number;
  private readonly scratch: Tensor[] = [];
  // Row buffers with room for maxLen positions; a call uses the first T rows.
  private readonly x: Tensor;
  private readonly x2: Tensor;
  private readonly ln: Tensor;
  private readonly mean: Tensor;
  private readonly rstd: Tensor;
  private readonly qkv: Tensor;
  private readonly qT: Tensor;
  /** Scores and probabilities of one position ([np/tp, maxLen]); a prompt allocates its own. */
  private readonly scores: Tensor;
  private readonly probs: Tensor;
  private readonly ctx: Tensor;
  private readonly out: Tensor;
  private readonly pre: Tensor;
  private readonly act: Tensor;
  private readonly logits: Tensor | null;
  private readonly gathered: Tensor | null;
  /** Bias-dropout-add with p = 0 reads no random numbers; the address only has to be well formed. */
  private readonly noDropout: RngAddress;

  constructor(private readonly model: GPTModel, private readonly comm: Communicator) {
    const be = model.backend, cfg = model.cfg, ps = model.ps;
    const byName = new Map(model.params().map((p) => [p.name, p.value]));
    const w = (n: string) => {
      const t = byName.get(n);
      if (!t) throw new Error(`generation: rank ${ps.globalRank} has no parameter ${n}`);
      return t;
    };
    this.h = cfg.hiddenSize;
    this.npl = cfg.numAttentionHeads / ps.tpSize;
    this.hn = cfg.kvChannels;
    this.ffl = cfg.ffnHiddenSize / ps.tpSize;
    this.maxLen = cfg.maxPositionEmbeddings;
    this.eps = cfg.layernormEpsilon;
    const P = this.npl * this.hn, M = this.maxLen;
    const mk = (shape: number[]) => {
      const t = be.empty("f32", shape);
      this.scratch.push(t);
      return t;
    };
    this.layers = model.stage.layers.map((_, l) => {
      return {
        ...layerParams(l, w),
        keys: mk([M, P]),
        values: mk([M, P]),
      };
    });
    this.x = mk([M, this.h]);
    this.x2 = mk([M, this.h]);
    this.ln = mk([M, this.h]);
    this.mean = mk([M]);
    this.rstd = mk([M]);
    this.qkv = mk([M, 3 * P]);
    this.qT = mk([3 * M * P]);
    this.scores = mk([this.npl * M]);
    this.probs = mk([this.npl * M]);
    this.ctx = mk([M, P]);
    this.out = mk([M, this.h]);
    this.pre = mk([M, this.ffl]);
    this.act = mk([M, this.ffl]);
    const vl = cfg.vocabSize / ps.tpSize;
    this.logits = model.head ? mk([1, vl]) : null;
    this.gathered = model.head && ps.tpSize > 1 ? mk([ps.tpSize * vl]) : null;
    this.noDropout = { seed: 0, stream: 0, iteration: 0, base: 0, rowStride: this.h, rowLen: this.h };
  }

  /** The first `T` rows of a row buffer. */
  private static rows(t: Tensor, T: number): Tensor {
    const cols = t.size / (t.shape.length > 1 ? t.shape[0] : t.size);
    return t.flat(0, T * cols).view(t.shape.length > 1 ? [T, cols] : [T]);
  }

  /** First stage: the embeddings of `tokens` at positions pos0.. into x (word rows of this shard,
   *  all-reduced over the tensor group as VocabParallelEmbedding does, plus the position rows). */
  async embed(tokens: readonly number[], pos0: number): Promise<void> {
    const m = this.model, be = m.backend, T = tokens.length;
    const word = m.embedding!;
    const x = CachedStage.rows(this.x, T), tmp = CachedStage.rows(this.ln, T);
    const ids = be.fromHost("i32", [T], tokens);
    const at = be.fromHost("i32", [T], Array.from({ length: T }, (_, i) => pos0 + i));
    be.embeddingFwd(ids, word.wordEmbeddings.value, x, word.vocabStart);
    if (m.ps.tpSize > 1) await this.comm.allReduce(x, "sum", "tensor");
    be.embeddingFwd(at, word.positionEmbeddings.value, tmp, 0);
    be.add(x, tmp, x);
    be.free(ids);
    be.free(at);
  }

  /** y [T, out] = x W^T (+ b). One row: the bias copied in first, then the GEMM with beta = 1; more
   *  rows: tensor_parallel's linear (the bias broadcast as a rank-1 GEMM). */
  private linear(x: Tensor, w: Tensor, b: Tensor | null, y: Tensor): void {
    const be = this.model.backend, T = x.size / w.shape[1];
    if (T > 1) return linear(be, x, w, b, y);
    if (b) be.copy(b, y.view([b.size]));
    be.gemm({
      transA: false,
      transB: true,
      m: 1,
      n: w.shape[0],
      k: w.shape[1],
      a: x,
      b: w,
      c: y,
      beta: b ? 1 : 0,
    });
  }

  /** Run this stage's layers on x's first T rows, positions pos0..pos0+T-1 (caching their keys and
   *  values). */
  async layersAt(pos0: number, T: number): Promise<void> {
    const be = this.model.backend, tp = this.model.ps.tpSize;
    const { npl, hn } = this;
    const P = npl * hn, n = pos0 + T;
    const R = (t: Tensor) => CachedStage.rows(t, T);
    let x = R(this.x), x2 = R(this.x2);
    const ln = R(this.ln), mean = R(this.mean), rstd = R(this.rstd), qkv = R(this.qkv), ctx = R(this.ctx);
    const out = R(this.out), pre = R(this.pre), act = R(this.act);
    const qT = this.qT.flat(0, 3 * T * P);
    const one = T === 1;
    const scores = one ? this.scores.flat(0, npl * n) : be.empty("f32", [npl * T * n]);
    const probs = one ? this.probs.flat(0, npl * n) : be.empty("f32", [npl * T * n]);
    // New position pos0 + i sees cached and new positions j <= pos0 + i (1 = masked, as the padding
    // mask's; -10000 as GPTModel's causal softmax). One position sees everything: no mask.
    let mask: Tensor | null = null;
    if (!one) {
      const m = new Uint8Array(T * n);
      for (let i = 0; i < T; i++) m.fill(1, i * n + pos0 + i + 1, (i + 1) * n);
      mask = be.fromHost("u8", [1, T, n], m);
    }
    try {
      for (const L of this.layers) {
        be.layerNormFwd(x, L.ln1g, L.ln1b, this.eps, ln, mean, rstd);
        this.linear(ln, L.qkvW, L.qkvB, qkv);
        // [T np, 3, hn] -> [3, T np, hn]: q, k and v of this rank's heads, each position-major with
        // row stride P, so the new keys and values are one contiguous block of the cache.
        be.transpose12(qkv.view([1, T * npl, 3, hn]), qT.view([1, 3, T * npl, hn]));
        be.copy(qT.flat(T * P, T * P), L.keys.flat(pos0 * P, T * P));
        be.copy(qT.flat(2 * T * P, T * P), L.values.flat(pos0 * P, T * P));
        // Per head: q [T, hn] (row stride P) against the cached keys [n, hn] (row stride P).
        be.gemm({
          transA: false,
          transB: true,
          m: T,
          n,
          k: hn,
          a: qT,
          b: L.keys,
          c: scores,
          lda: P,
          ldb: P,
          ldc: n,
          batch: npl,
          strideA: hn,
          strideB: hn,
          strideC: T * n,
        });
        be.softmaxFwd(
          scores.view([1, npl, T, n]),
          1 / Math.sqrt(hn),
          mask ? { kind: "padding", mask } : { kind: "none" },
          probs.view([1, npl, T, n]),
        );
        // Context per head: probs [T, n] x values [n, hn], written as the merged [T, np * hn].
        be.gemm({
          transA: false,
          transB: false,
          m: T,
          n: hn,
          k: n,
          a: probs,
          b: L.values,
          c: ctx,
          lda: n,
          ldb: P,
          ldc: P,
          batch: npl,
          strideA: T * n,
          strideB: hn,
          strideC: hn,
        });
        // Row-parallel dense: partial sums over this rank's heads, all-reduced; its bias added once.
        this.linear(ctx, L.denseW, null, out);
        if (tp > 1) await this.comm.allReduce(out, "sum", "tensor");
        be.biasDropoutAdd(out, L.denseB, x, 0, this.noDropout, x2);
        [x, x2] = [x2, x];
        be.layerNormFwd(x, L.ln2g, L.ln2b, this.eps, ln, mean, rstd);
        this.linear(ln, L.h4hW, null, pre);
        be.biasGeluFwd(pre, L.h4hB, act);
        this.linear(act, L.fhW, null, out);
        if (tp > 1) await this.comm.allReduce(out, "sum", "tensor");
        be.biasDropoutAdd(out, L.fhB, x, 0, this.noDropout, x2);
        [x, x2] = [x2, x];
      }
      if (x.storage !== this.x.storage) be.copy(x, R(this.x));
    } finally {
      if (!one) {
        be.free(scores);
        be.free(probs);
        be.free(mask!);
      }
    }
  }

  /** The hidden state of T positions [T, h] (sent to the next stage, or received into). */
  hidden(T: number): Tensor {
    return CachedStage.rows(this.x, T);
  }

  /** Last stage: final LayerNorm of position T-1 and its logits against the tied embedding, gathered
   *  over the tensor group into the full padded vocabulary (f32, host; read by the first TP rank only,
   *  the others return null). */
  async logitsOut(T: number): Promise<Float32Array | null> {
    const m = this.model, be = m.backend;
    const head = m.head!;
    const ln = head.finalLayernorm;
    const last = this.x.flat((T - 1) * this.h, this.h).view([1, this.h]);
    const y = CachedStage.rows(this.ln, 1);
    be.layerNormFwd(
      last,
      ln.weight.value,
      ln.bias.value,
      this.eps,
      y,
      this.mean.flat(0, 1),
      this.rstd.flat(0, 1),
    );
    const word = m.tiedEmbeddingParam()!.value;
    this.linear(y, word, null, this.logits!);
    let out = this.logits!;
    if (this.gathered) {
      await this.comm.allGather(this.logits!.view([this.logits!.size]), this.gathered, "tensor");
      out = this.gathered;
    }
    return m.ps.tpRank === 0 ? Float32Array.from(be.toHost(out) as Float32Array) : null;
  }

  close(): void {
    for (const t of this.scratch) this.model.backend.free(t);
    this.scratch.length = 0;
  }
}

/** One rank: its model stage, communicator and (with the cache) cached forward; `seq` is the first
 *  stage's copy of the tokens so far (the recompute path feeds it whole). */
interface Rank {
  ps: ParallelState;
  comm: Communicator;
  model: GPTModel;
  cached: CachedStage | null;
  seq: number[];
  pos: number;
}

/**
 * A GPT split over (tp, pp) ranks of one in-process world on `backend`, fed tokens and returning the
 * next-token logits over the padded vocabulary. `next(tokens)` takes the whole sequence so far: tokens
 * past those already fed run through the layout; a sequence that does not extend the previous one (a new
 * prompt) starts over.
 */
export class LayoutGpt {
  readonly tp: number;
  readonly pp: number;
  /** Columns of the returned logits (the vocabulary padded for `tp`). */
  readonly paddedVocab: number;
  private readonly world: LocalWorld;
  private readonly ranks: Rank[];
  private readonly lastRank: number;
  private seen: number[] = [];

  constructor(full: FullGpt, readonly backend: Backend, opts: GptLayout & { cache?: boolean } = {}) {
    const tp = this.tp = opts.tp ?? 1, pp = this.pp = opts.pp ?? 1;
    checkLayout(full, tp, pp);
    const a = full.arch;
    const { paddedVocab, ranks: shards } = shardLayout(full, tp, pp);
    this.paddedVocab = paddedVocab;
    this.world = new LocalWorld(backend, { tp, pp, dp: 1 });
    this.lastRank = globalRankOf(0, 0, pp - 1, tp, 1);
    this.ranks = this.world.states.map((ps) => {
      const comm = this.world.communicator(ps.globalRank);
      const model = new GPTModel(
        inferenceConfig(a, paddedVocab),
        withoutInit(backend),
        ps,
        comm,
      );
      const shard = shards[ps.tpRank][ps.ppRank];
      loadParams(
        model.params(),
        (n) => shard.get(n),
        backend,
        ` (TP rank ${ps.tpRank}, stage ${ps.ppRank})`,
      );
      const cached = opts.cache === false ? null : new CachedStage(model, comm);
      return { ps, comm, model, cached, seq: [], pos: 0 };
    });
  }

  /** Next-token logits (f32 [paddedVocab]) after `tokens`. */
  async next(tokens: readonly number[]): Promise<Float32Array> {
    if (tokens.length === 0) throw new Error("generation: no tokens to continue");
    const s = this.seen;
    const extends_ = tokens.length > s.length && s.every((t, i) => tokens[i] === t);
    const reset = !extends_;
    const feed = tokens.slice(reset ? 0 : s.length);
    const max = this.ranks[0].model.cfg.maxPositionEmbeddings;
    if (tokens.length > max) {
      throw new Error(`sequence of ${tokens.length} tokens is longer than max-position-embeddings ${max}`);
    }
    for (const t of feed) {
      if (!Number.isInteger(t) || t < 0 || t >= this.paddedVocab) {
        throw new Error(`generation: token ${t} is outside the vocabulary [0, ${this.paddedVocab})`);
      }
    }
    const out = await this.world.run((r) => this.stepRank(this.ranks[r], feed, reset));
    this.seen = tokens.slice();
    return out[this.lastRank]!;
  }

  /** One rank's part of a step. The fed tokens are the last stage's (they were sampled there) and
   *  reach the first stage through a broadcast over the embedding group. */
  private async stepRank(rank: Rank, feed: readonly number[], reset: boolean): Promise<Float32Array | null> {
    const { ps, comm, model } = rank;
    const be = this.backend;
    if (reset) {
      rank.seq = [];
      rank.pos = 0;
    }
    const emb = ps.group("embedding");
    let ids = feed as number[];
    if (emb.size > 1 && (ps.isFirstStage || ps.isLastStage)) {
      const t = be.fromHost("i32", [feed.length], ps.isLastStage ? feed : new Int32Array(feed.length));
      await comm.broadcast(t, emb.size - 1, "embedding");
      if (ps.isFirstStage) ids = Array.from(be.toHost(t) as Int32Array);
      be.free(t);
    }
    if (ps.isFirstStage) rank.seq.push(...ids);
    const pipe = ps.group("pipeline");
    const prev = ps.isFirstStage ? -1 : pipe.ranks[ps.ppRank - 1];
    const next = ps.isLastStage ? -1 : pipe.ranks[ps.ppRank + 1];
    if (rank.cached) {
      // All fed positions at once (a prompt is one batch of rows); logits only for the newest: the
      // prompt's other positions are never sampled from.
      const c = rank.cached, T = feed.length, pos0 = rank.pos;
      rank.pos += T;
      if (ps.isFirstStage) await c.embed(ids, pos0);
      else await comm.recv(c.hidden(T), prev, `gen:${pos0}+${T}`);
      await c.layersAt(pos0, T);
      if (!ps.isLastStage) {
        await comm.send(c.hidden(T), next, `gen:${pos0}+${T}`);
        return null;
      }
      return await c.logitsOut(T);
    }
    // --recompute: GPTModel's full forward of the whole prefix on every stage.
    const s = rank.pos += feed.length;
    const ctx = model.newContext({ iteration: 0, firstGlobalSample: 0, training: false });
    let input: Tensor;
    if (ps.isFirstStage) input = be.fromHost("i32", [1, s], rank.seq);
    else {
      input = be.empty("f32", [1, s, model.cfg.hiddenSize]);
      await comm.recv(input, prev, `gen:${s}`);
    }
    const out = await model.forward(ps.isFirstStage ? { tokens: input } : { hidden: input }, ctx) as Tensor;
    let logits: Float32Array | null = null;
    if (!ps.isLastStage) await comm.send(out, next, `gen:${s}`);
    else {
      const vl = model.cfg.vocabSize / ps.tpSize;
      const last = out.flat((s - 1) * vl, vl);
      if (ps.tpSize > 1) {
        const all = be.empty("f32", [ps.tpSize * vl]);
        await comm.allGather(last, all, "tensor");
        if (ps.tpRank === 0) logits = Float32Array.from(be.toHost(all) as Float32Array);
        be.free(all);
      } else logits = Float32Array.from(be.toHost(last) as Float32Array);
    }
    be.free(out);
    model.discard(ctx);
    be.free(input);
    return logits;
  }

  /** Free the cached forwards' buffers (the models' parameters are left to the backend). */
  close(): void {
    for (const r of this.ranks) r.cached?.close();
  }
}
