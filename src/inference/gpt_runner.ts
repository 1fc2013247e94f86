// Running a trained GPT without the trainer: one rank (TP = PP = 1) GPTModel holding a checkpoint's full
// weights, its logits for whole sequences (the model's own forward: evaluation and the no-cache
// "--recompute" generation), and an incremental forward with a key/value cache for generation.
//
// The cached forward is separate from src/transformer (which keeps whole-sequence activations for
// backward): it reads the same parameters once to the host as f32 and computes one new position per
// step against the cached keys and values, so a token costs O(context) instead of O(context^2). Its
// math is Megatron's GPT layer (pre-LN, [np, 3, hn] fused QKV, scale 1/sqrt(hn), causal softmax, tanh
// GeLU, tied logits); its matrix-vector products run as the backend's GEMMs when one is given (else
// TypeScript with f64 sums); tests compare both with GPTModel's logits. The commands run
// gpt_layout.ts's LayoutGpt instead (every op on the backend, any (TP, PP) layout, CPU or CUDA).

import type { Backend } from "../backend/backend.ts";
import { GPTModel } from "../models/gpt.ts";
import { makeParallelState, SingleRankCommunicator } from "../parallel/types.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { type GenerateOptions, generateTokens } from "../generation/generate.ts";
import { type FullGpt, layerParams } from "./gpt_weights.ts";
import { type GptLayout, LayoutGpt } from "./gpt_layout.ts";
import { fullTensorF32, inferenceConfig, loadParams, toF32, withoutInit } from "./model_load.ts";

/** A one-rank GPTModel with `full`'s weights (dropout off). It runs in f32: half-precision weights are
 *  widened exactly, as transformers does when it loads them into an fp32 model. */
export function buildGptModel(full: FullGpt, backend: Backend): GPTModel {
  const a = full.arch;
  const word = full.tensors.get("language_model.embedding.word_embeddings.weight")!;
  const model = new GPTModel(
    inferenceConfig(a, word.shape[0]),
    withoutInit(backend),
    makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    new SingleRankCommunicator(),
  );
  loadParams(model.params(), (n) => full.tensors.get(n), backend);
  return model;
}

/** Logits [rows, s, paddedVocab] (f32, row-major) of equal-length token rows through GPTModel.forward. */
export async function modelLogits(
  model: GPTModel,
  rows: readonly (readonly number[])[],
): Promise<Float32Array> {
  const b = rows.length, s = rows[0].length;
  if (s > model.cfg.maxPositionEmbeddings) {
    throw new Error(
      `sequence of ${s} tokens is longer than max-position-embeddings ${model.cfg.maxPositionEmbeddings}`,
    );
  }
  const be = model.backend;
  const ids = new Int32Array(b * s);
  rows.forEach((r, i) => {
    if (r.length !== s) throw new Error("modelLogits: rows must have equal lengths");
    ids.set(r, i * s);
  });
  const tokens = be.fromHost("i32", [b, s], ids);
  const ctx = model.newContext({ iteration: 0, firstGlobalSample: 0, training: false });
  const logits = await model.forward({ tokens }, ctx) as Tensor;
  const host = be.toHost(logits);
  const out = host instanceof Float32Array
    ? Float32Array.from(host)
    : toF32(logits.dtype, host as ArrayLike<number>);
  be.free(logits);
  model.discard(ctx);
  be.free(tokens);
  return out;
}

interface LayerWeights {
  ln1g: Float32Array;
  ln1b: Float32Array;
  qkvW: Float32Array;
  qkvB: Float32Array;
  denseW: Float32Array;
  denseB: Float32Array;
  ln2g: Float32Array;
  ln2b: Float32Array;
  h4hW: Float32Array;
  h4hB: Float32Array;
  fhW: Float32Array;
  fhB: Float32Array;
}

/** y[o] = b[o] + sum_k W[o, k] x[k] (W row-major [out, in]), f64 accumulation. */
function matvec(
  w: Float32Array,
  b: Float32Array | null,
  x: Float32Array,
  out: number,
  inD: number,
  y: Float32Array,
) {
  for (let o = 0; o < out; o++) {
    let acc = 0;
    const r = o * inD;
    for (let k = 0; k < inD; k++) acc += w[r + k] * x[k];
    y[o] = acc + (b ? b[o] : 0);
  }
}

function layerNorm(x: Float32Array, g: Float32Array, b: Float32Array, eps: number, y: Float32Array) {
  const h = x.length;
  let m = 0;
  for (let k = 0; k < h; k++) m += x[k];
  m /= h;
  let v = 0;
  for (let k = 0; k < h; k++) v += (x[k] - m) * (x[k] - m);
  const r = 1 / Math.sqrt(v / h + eps);
  for (let k = 0; k < h; k++) y[k] = (x[k] - m) * r * g[k] + b[k];
}

/** Megatron's bias_gelu (tanh approximation). */
function gelu(x: number): number {
  return 0.5 * x * (1 + Math.tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x)));
}

/** Incremental GPT forward with a key/value cache: feed tokens one at a time, get the next-token
 *  logits over the padded vocabulary. Memory: 2 x layers x positions x hidden f32. */
export class KvCacheGpt {
  readonly h: number;
  readonly np: number;
  readonly hn: number;
  readonly ffn: number;
  readonly vocabRows: number;
  private readonly layers: LayerWeights[];
  private readonly wte: Float32Array;
  private readonly wpe: Float32Array;
  private readonly lnfG: Float32Array;
  private readonly lnfB: Float32Array;
  private readonly eps: number;
  private readonly maxLen: number;
  /** Per layer: keys and values [maxLen, h] (heads side by side). */
  private readonly keys: Float32Array[];
  private readonly values: Float32Array[];
  private len = 0;

  /** Weight matrices on `backend` (the GEMV path), keyed by the host array they were uploaded from. */
  private readonly device = new Map<Float32Array, Tensor>();

  /** With a backend, the matrix-vector products (QKV, dense, MLP, logits) run as its GEMMs (BLAS on the
   *  CPU) against weights uploaded once; without one, in TypeScript. Call `close()` to free them. */
  constructor(full: FullGpt, private readonly backend?: Backend) {
    const a = full.arch;
    const w = (n: string) => {
      const t = full.tensors.get(n);
      if (!t) throw new Error(`checkpoint: missing parameter ${n}`);
      return fullTensorF32(t);
    };
    this.h = a.hiddenSize;
    this.np = a.numAttentionHeads;
    this.hn = this.h / this.np;
    this.eps = a.layernormEpsilon;
    this.maxLen = a.maxPositionEmbeddings;
    this.wte = w("language_model.embedding.word_embeddings.weight");
    this.vocabRows = this.wte.length / this.h;
    this.wpe = w("language_model.embedding.position_embeddings.weight");
    this.lnfG = w("language_model.encoder.final_layernorm.weight");
    this.lnfB = w("language_model.encoder.final_layernorm.bias");
    this.layers = [];
    for (let l = 0; l < a.numLayers; l++) this.layers.push(layerParams(l, w));
    this.ffn = this.layers[0]?.h4hB.length ?? 4 * this.h;
    if (backend) {
      const up = (w: Float32Array, rows: number) =>
        this.device.set(w, backend.fromHost("f32", [rows, w.length / rows], w));
      up(this.wte, this.vocabRows);
      for (const L of this.layers) {
        up(L.qkvW, 3 * this.h);
        up(L.denseW, this.h);
        up(L.h4hW, this.ffn);
        up(L.fhW, this.h);
      }
    }
    this.keys = this.layers.map(() => new Float32Array(this.maxLen * this.h));
    this.values = this.layers.map(() => new Float32Array(this.maxLen * this.h));
  }

  /** Positions cached so far. */
  get length(): number {
    return this.len;
  }

  reset(): void {
    this.len = 0;
  }

  /** Free the backend copies of the weights. */
  close(): void {
    for (const t of this.device.values()) this.backend!.free(t);
    this.device.clear();
  }

  /** y = W x + b for W [out, in] (row-major). */
  private mv(
    w: Float32Array,
    b: Float32Array | null,
    x: Float32Array,
    out: number,
    inD: number,
    y: Float32Array,
  ) {
    const dw = this.device.get(w);
    if (!dw) {
      matvec(w, b, x, out, inD, y);
      return;
    }
    const be = this.backend!;
    const xt = be.fromHost("f32", [1, inD], x), yt = be.empty("f32", [1, out]);
    be.gemm({ transA: false, transB: true, m: 1, n: out, k: inD, a: xt, b: dw, c: yt });
    y.set(be.toHost(yt) as Float32Array);
    be.free(xt);
    be.free(yt);
    if (b) { for (let o = 0; o < out; o++) y[o] += b[o]; }
  }

  /** Append one token at the next position; returns the logits [vocabRows] for the position after it. */
  step(token: number): Float32Array {
    const { h, np, hn, ffn } = this;
    const pos = this.len;
    if (pos >= this.maxLen) {
      throw new Error(`KV cache: position ${pos} exceeds max-position-embeddings ${this.maxLen}`);
    }
    if (!Number.isInteger(token) || token < 0 || token >= this.vocabRows) {
      throw new Error(`KV cache: token ${token} is outside the vocabulary [0, ${this.vocabRows})`);
    }
    const x = new Float32Array(h);
    for (let k = 0; k < h; k++) x[k] = this.wte[token * h + k] + this.wpe[pos * h + k];
    const ln = new Float32Array(h), qkv = new Float32Array(3 * h), ctx = new Float32Array(h);
    const att = new Float32Array(h), inter = new Float32Array(ffn), mlp = new Float32Array(h);
    const scores = new Float64Array(pos + 1);
    const scale = 1 / Math.sqrt(hn);
    this.layers.forEach((L, l) => {
      layerNorm(x, L.ln1g, L.ln1b, this.eps, ln);
      this.mv(L.qkvW, L.qkvB, ln, 3 * h, h, qkv);
      const K = this.keys[l], V = this.values[l];
      for (let n = 0; n < np; n++) {
        // Rows of head n: [q(hn), k(hn), v(hn)] (checkpoint_version 3 order).
        const base = n * 3 * hn;
        for (let d = 0; d < hn; d++) {
          K[pos * h + n * hn + d] = qkv[base + hn + d];
          V[pos * h + n * hn + d] = qkv[base + 2 * hn + d];
        }
        let max = -Infinity;
        for (let j = 0; j <= pos; j++) {
          let dot = 0;
          for (let d = 0; d < hn; d++) dot += qkv[base + d] * K[j * h + n * hn + d];
          scores[j] = Math.fround(Math.fround(dot) * scale);
          if (scores[j] > max) max = scores[j];
        }
        let z = 0;
        for (let j = 0; j <= pos; j++) z += scores[j] = Math.exp(scores[j] - max);
        for (let d = 0; d < hn; d++) {
          let acc = 0;
          for (let j = 0; j <= pos; j++) acc += scores[j] * V[j * h + n * hn + d];
          ctx[n * hn + d] = acc / z;
        }
      }
      this.mv(L.denseW, L.denseB, ctx, h, h, att);
      for (let k = 0; k < h; k++) x[k] += att[k];
      layerNorm(x, L.ln2g, L.ln2b, this.eps, ln);
      this.mv(L.h4hW, L.h4hB, ln, ffn, h, inter);
      for (let k = 0; k < ffn; k++) inter[k] = gelu(inter[k]);
      this.mv(L.fhW, L.fhB, inter, h, ffn, mlp);
      for (let k = 0; k < h; k++) x[k] += mlp[k];
    });
    this.len = pos + 1;
    layerNorm(x, this.lnfG, this.lnfB, this.eps, ln);
    const logits = new Float32Array(this.vocabRows);
    this.mv(this.wte, null, ln, this.vocabRows, h, logits);
    return logits;
  }
}

/** A next-token callback for generateTokens over one sequence. With a backend (what generate-gpt passes):
 *  LayoutGpt on it, TP = PP = 1 unless `tp` / `pp` say otherwise, with its key/value cache (`cache`) or
 *  GPTModel's full forward of the whole prefix at every step (Megatron's --recompute). Without one:
 *  KvCacheGpt in TypeScript (the host reference; `cache` must be true), or `model`'s full forward. */
export function nextLogitsFn(
  full: FullGpt,
  opts: { cache: boolean; backend?: Backend; model?: GPTModel } & GptLayout,
): (tokens: readonly number[]) => Promise<Float32Array> {
  const tp = opts.tp ?? 1, pp = opts.pp ?? 1;
  if (opts.backend && !opts.model) {
    const gpt = new LayoutGpt(full, opts.backend, { tp, pp, cache: opts.cache });
    return (tokens) => gpt.next(tokens);
  }
  if (opts.cache) {
    if (tp > 1 || pp > 1) throw new Error("generation: a (TP, PP) layout needs a backend");
    const kv = new KvCacheGpt(full);
    let last: Float32Array = new Float32Array(0);
    let seen: number[] = [];
    return (tokens) => {
      // A different prefix (a new prompt) starts the cache over.
      if (tokens.length < seen.length || seen.some((t, i) => tokens[i] !== t)) {
        kv.reset();
        seen = [];
      }
      for (let i = seen.length; i < tokens.length; i++) last = kv.step(tokens[i]);
      seen = tokens.slice();
      return Promise.resolve(last);
    };
  }
  const model = opts.model ?? buildGptModel(full, opts.backend!);
  const V = model.cfg.vocabSize;
  return async (tokens) => {
    const logits = await modelLogits(model, [tokens]);
    return logits.subarray((tokens.length - 1) * V, tokens.length * V);
  };
}

export interface StreamOptions extends Omit<GenerateOptions, "vocabSize">, GptLayout {
  /** Use the key/value cache (default true). */
  cache?: boolean;
  /** The backend the model runs on (CPU or CUDA); required without the cache or for a layout. Without
   *  it the cached forward runs in TypeScript. */
  backend?: Backend;
}

/** Streaming generation for library users: an async iterator of new token ids after `context`
 *  (Megatron's sampling; stops at `eod` or the length bound). */
export function streamGpt(
  full: FullGpt,
  context: readonly number[],
  opts: StreamOptions,
): AsyncGenerator<number> {
  const next = nextLogitsFn(full, {
    cache: opts.cache ?? true,
    backend: opts.backend,
    tp: opts.tp,
    pp: opts.pp,
  });
  return generateTokens(context, next, { ...opts, vocabSize: full.arch.vocabSize });
}
