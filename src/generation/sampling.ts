// Next-token choice as Megatron 2021 does it (megatron/text_generation_utils.py, sample_sequence_batch):
// greedy = argmax; otherwise logits (as f32) / temperature, then top-k (every logit below the k-th
// largest becomes -inf; ties with the k-th are kept), then top-p (sort descending, cumulative softmax,
// drop the tokens whose cumulative probability exceeds p, shifted right by one so the first token that
// crosses p stays), then softmax and one multinomial draw. Top-k and top-p can both apply.
//
// The draw is deterministic: the uniform number comes from Philox (src/rng/philox.ts) addressed by
// (seed, generation stream, step, row), so a sample does not depend on the batch it runs in, on
// the parallel layout, or on anything drawn before.
//
// Where Megatron's result depends on unspecified behaviour we fix it: torch.sort's order among equal
// logits (we put the lower token id first) and torch.argmax among equal maxima (the lowest id).

import { PhiloxStream, Purpose, streamId } from "../rng/philox.ts";

export interface SamplingOptions {
  /** --greedy: argmax, no randomness. */
  greedy?: boolean;
  /** --temperature (default 1.0; must be > 0). */
  temperature?: number;
  /** --top_k (default 0 = off). */
  topK?: number;
  /** --top_p (default 0.0 = off; in (0, 1]). */
  topP?: number;
  /** Consider only ids below this (the real vocabulary; Megatron's padded rows are never valid). */
  vocabSize?: number;
}

/** The stream of generation draws: one of the Purpose.user range, unused elsewhere. */
export const GENERATION_STREAM = streamId(Purpose.user + 15, 0);

/** Check the flags as Megatron's generate_samples_gpt would need them; one line naming the flag. */
export function validateSampling(o: SamplingOptions): void {
  const t = o.temperature ?? 1;
  if (!(t > 0) || !Number.isFinite(t)) throw new Error(`--temperature ${t}: expected a number > 0`);
  const k = o.topK ?? 0;
  if (!Number.isInteger(k) || k < 0) throw new Error(`--top_k ${k}: expected an integer >= 0`);
  const p = o.topP ?? 0;
  if (!(p >= 0 && p <= 1)) throw new Error(`--top_p ${p}: expected a number in [0, 1]`);
  if (o.vocabSize !== undefined && (!Number.isInteger(o.vocabSize) || o.vocabSize <= 0)) {
    throw new Error(`vocabSize ${o.vocabSize}: expected a positive integer`);
  }
}

/** Index of the largest value (lowest index among ties). */
export function argmax(x: ArrayLike<number>, n = x.length): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** Megatron's temperature + top_k_logits on one row: a new f64 array, removed entries -Infinity. */
export function filterLogits(logits: ArrayLike<number>, o: SamplingOptions = {}): Float64Array {
  validateSampling(o);
  const n = o.vocabSize ?? logits.length;
  if (n > logits.length) throw new Error(`vocabSize ${n} exceeds the ${logits.length} logits`);
  const t = Math.fround(o.temperature ?? 1);
  const x = new Float64Array(n);
  // logits.float() / temperature, in f32 as Megatron computes it.
  for (let i = 0; i < n; i++) x[i] = Math.fround(Math.fround(logits[i]) / t);
  const k = o.topK ?? 0;
  if (k > 0) {
    const kth = kthLargest(x, Math.min(k, n));
    for (let i = 0; i < n; i++) if (x[i] < kth) x[i] = -Infinity;
  }
  const p = o.topP ?? 0;
  if (p > 0) {
    // Sort the values (native typed-array sort), find how many sorted positions survive the shifted
    // cumulative cut, then keep every id above the last kept value and, among ids equal to it, the
    // lowest ones: the same set as a descending sort that breaks ties by id.
    const sorted = x.filter((v) => v !== -Infinity).sort().reverse();
    const probs = softmax(sorted);
    let keep = sorted.length, cum = 0;
    for (let j = 0; j < sorted.length; j++) {
      cum += probs[j];
      if (cum > p) {
        keep = j + 1; // position j crosses p and stays; every later one goes
        break;
      }
    }
    if (keep < sorted.length) {
      const last = sorted[keep - 1];
      let equalKept = 0;
      for (let j = 0; j < keep; j++) if (sorted[j] === last) equalKept++;
      for (let i = 0; i < n; i++) {
        if (x[i] < last) x[i] = -Infinity;
        else if (x[i] === last && equalKept-- <= 0) x[i] = -Infinity;
      }
    }
  }
  return x;
}

/** The k-th largest value (1-based) by a size-k min-heap, O(n log k). */
function kthLargest(x: Float64Array, k: number): number {
  const heap = new Float64Array(k);
  let size = 0;
  const down = (i: number) => {
    for (;;) {
      const l = 2 * i + 1, r = l + 1;
      let m = i;
      if (l < size && heap[l] < heap[m]) m = l;
      if (r < size && heap[r] < heap[m]) m = r;
      if (m === i) return;
      const t = heap[i];
      heap[i] = heap[m], heap[m] = t;
      i = m;
    }
  };
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    if (size < k) {
      let j = size++;
      heap[j] = v;
      while (j > 0 && heap[(j - 1) >> 1] > heap[j]) {
        const p = (j - 1) >> 1, t = heap[p];
        heap[p] = heap[j], heap[j] = t;
        j = p;
      }
    } else if (v > heap[0]) {
      heap[0] = v;
      down(0);
    }
  }
  return heap[0];
}

/** Softmax in f64 (max-subtracted); -Infinity entries get probability 0. */
export function softmax(x: ArrayLike<number>): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > m) m = x[i];
  const out = new Float64Array(x.length);
  let s = 0;
  for (let i = 0; i < x.length; i++) s += out[i] = x[i] === -Infinity ? 0 : Math.exp(x[i] - m);
  for (let i = 0; i < x.length; i++) out[i] /= s;
  return out;
}

/** The distribution a non-greedy step samples from: softmax(filterLogits(...)). */
export function samplingDistribution(logits: ArrayLike<number>, o: SamplingOptions = {}): Float64Array {
  return softmax(filterLogits(logits, o));
}

/** A uniform double in [0, 1) with 53 random bits, from Philox at (seed, step, row). */
export function generationUniform(seed: number, step: number, row: number): number {
  const g = new PhiloxStream(seed, GENERATION_STREAM, step);
  const hi = g.bits(2 * row) >>> 5; // 27 bits
  const lo = g.bits(2 * row + 1) >>> 6; // 26 bits
  return (hi * 67108864 + lo) / 9007199254740992;
}

/** Inverse-CDF draw: the first id whose cumulative probability exceeds u (skipping zero mass). */
export function multinomial(probs: ArrayLike<number>, u: number): number {
  let cum = 0, last = -1;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] <= 0) continue;
    cum += probs[i];
    last = i;
    if (u < cum) return i;
  }
  if (last < 0) throw new Error("multinomial: no token has positive probability");
  return last; // u beyond the rounded total
}

/** One generation step for one row: greedy argmax, or Megatron's filtered sampling with the
 *  counter-based draw for (seed, step, row). */
export function sampleNextToken(
  logits: ArrayLike<number>,
  o: SamplingOptions,
  seed: number,
  step: number,
  row = 0,
): number {
  validateSampling(o);
  if (o.greedy) {
    const n = o.vocabSize ?? logits.length;
    return argmax(logits, n);
  }
  return multinomial(samplingDistribution(logits, o), generationUniform(seed, step, row));
}

/** Megatron's generation length bound: min(seq_length - 1, context length + --out-seq-length). */
export function generationMaxLength(contextLength: number, outSeqLength: number, seqLength: number): number {
  return Math.min(seqLength - 1, contextLength + outSeqLength);
}
