// The sample-building steps BERT and T5 share, as Megatron 2021's dataset_utils does them with one
// numpy RandomState per sample: A/B segments with the order swap, truncation, [CLS] A [SEP] B [SEP],
// and whole-word n-gram masking (BERT: n <= 3 with p ~ 1/n, 80/10/10; T5: geometric span lengths,
// always [MASK], spans kept for sentinels). Every draw is made in NumPy's order, so the samples are
// Megatron's for the same data and seed.

import type { RandomState } from "./numpy_random.ts";
import { pythonRound } from "./split.ts";

/** The token ids masking needs, and which ids start a word (WordPiece "##" pieces do not). */
export interface MaskedLmVocab {
  /** Every id of the tokenizer in its inverse-vocab order; random replacements draw from it. */
  readonly vocabIdList: Int32Array;
  /** startsWord[id] = 1 unless the token text begins with "##"; ids without a token are 255. */
  readonly startsWord: Uint8Array;
  readonly cls: number;
  readonly sep: number;
  readonly mask: number;
  readonly pad: number;
  /** [BOS] / [EOS] (T5's decoder input start and label end). */
  readonly bos: number;
  readonly eos: number;
  /** `<extra_id_i>` ids (`--vocab-extra-ids`), in order; span k of a T5 sample becomes sentinels[k]. */
  readonly sentinels: Int32Array;
}

/** What maskedLmVocab reads from a tokenizer (BertWordPieceTokenizer has all of it). */
export interface WordPieceVocabSource {
  /** token -> id in vocabulary order, including the appended [BOS]/[EOS]/<extra_id_i>. */
  readonly vocab: ReadonlyMap<string, number>;
  readonly cls: number;
  readonly sep: number;
  readonly mask: number;
  readonly pad: number;
  readonly bos: number;
  readonly eos: number;
  readonly additionalSpecialTokensIds: readonly number[];
}

const NO_TOKEN = 255;

/** Megatron's vocab_id_list (list(inv_vocab.keys())) and the "##" test, from a WordPiece tokenizer. */
export function maskedLmVocab(t: WordPieceVocabSource): MaskedLmVocab {
  let maxId = -1;
  for (const id of t.vocab.values()) maxId = Math.max(maxId, id);
  // inv_vocab = {id: token}: a later duplicate id overwrites the token but keeps its first position.
  const idToToken = new Map<number, string>();
  for (const [tok, id] of t.vocab) idToToken.set(id, tok);
  const startsWord = new Uint8Array(maxId + 1).fill(NO_TOKEN);
  for (const [id, tok] of idToToken) startsWord[id] = tok.startsWith("##") ? 0 : 1;
  return {
    vocabIdList: Int32Array.from(idToToken.keys()),
    startsWord,
    cls: t.cls,
    sep: t.sep,
    mask: t.mask,
    pad: t.pad,
    bos: t.bos,
    eos: t.eos,
    sentinels: Int32Array.from(t.additionalSpecialTokensIds),
  };
}

/**
 * get_a_and_b_segments: A is sentences [0, a_end) with a_end = randint(1, n) when n >= 3 (else 1),
 * B the rest; with probability 1/2 they are swapped (is_random: sentence-order prediction).
 */
export function getAAndBSegments(
  sample: readonly ArrayLike<number>[],
  rng: RandomState,
): { a: number[]; b: number[]; isRandom: boolean } {
  const n = sample.length;
  if (n < 2) throw new Error(`BERT sample: expected at least 2 sentences with the binary head, found ${n}`);
  const aEnd = n >= 3 ? rng.randint(1, n) : 1;
  let a: number[] = [];
  let b: number[] = [];
  for (let j = 0; j < aEnd; j++) for (let k = 0; k < sample[j].length; k++) a.push(sample[j][k]);
  for (let j = aEnd; j < n; j++) for (let k = 0; k < sample[j].length; k++) b.push(sample[j][k]);
  let isRandom = false;
  if (rng.random() < 0.5) {
    isRandom = true;
    [a, b] = [b, a];
  }
  return { a, b, isRandom };
}

/**
 * truncate_segments: while too long, drop one token from the longer segment (B on ties), from its
 * front or back with probability 1/2 each. Returns whether anything was dropped.
 */
export function truncateSegments(a: number[], b: number[], maxNumTokens: number, rng: RandomState): boolean {
  if (a.length === 0) throw new Error("BERT sample: segment A is empty (an empty sentence in the data?)");
  let lenA = a.length;
  let lenB = b.length;
  if (lenA + lenB <= maxNumTokens) return false;
  while (lenA + lenB > maxNumTokens) {
    let tokens: number[];
    if (lenA > lenB) {
      lenA--;
      tokens = a;
    } else {
      lenB--;
      tokens = b;
    }
    if (rng.random() < 0.5) tokens.shift();
    else tokens.pop();
  }
  return true;
}

/** create_tokens_and_tokentypes: [CLS] A [SEP] (types 0) then B [SEP] (types 1) when B is not empty. */
export function createTokensAndTokentypes(
  a: readonly number[],
  b: readonly number[],
  cls: number,
  sep: number,
): { tokens: number[]; types: number[] } {
  const tokens = [cls, ...a, sep];
  const types = new Array<number>(tokens.length).fill(0);
  if (b.length > 0) {
    for (const t of b) {
      tokens.push(t);
      types.push(1);
    }
    tokens.push(sep);
    types.push(1);
  }
  return { tokens, types };
}

export interface MaskedSpan {
  /** Positions of the span in the input, ascending. */
  index: number[];
  /** The original tokens at those positions. */
  label: number[];
}

export interface MaskedLmPredictions {
  /** The input with masked positions replaced. */
  tokens: number[];
  /** Masked positions ascending, and their original tokens. */
  positions: number[];
  labels: number[];
  /** Masked spans ordered by first position (T5 turns each into one sentinel). */
  spans: MaskedSpan[];
}

export interface MaskingOptions {
  maskedLmProb: number;
  /** masked_lm_prob * target length (a float, as Megatron passes it). */
  maxPredictionsPerSeq: number;
  /** 3 for BERT, 10 for T5. */
  maxNgrams: number;
  /** T5: span length min(geometric(0.2), maxNgrams) instead of n ~ 1/n. */
  geometricDist: boolean;
  /** "bert": 80% [MASK], 10% kept, 10% random id; "t5": always [MASK]. */
  style: "bert" | "t5";
}

// pvals = 1/arange(1, n+1) normalised, then renormalised over the first k as choice() receives it;
// each step is the same f64 operation NumPy performs.
function ngramProbabilities(maxNgrams: number): Float64Array {
  const p = new Float64Array(maxNgrams);
  for (let i = 0; i < maxNgrams; i++) p[i] = 1 / (i + 1);
  let s = 0;
  for (let i = 0; i < maxNgrams; i++) s += p[i];
  for (let i = 0; i < maxNgrams; i++) p[i] /= s;
  let s2 = 0;
  for (let i = 0; i < maxNgrams; i++) s2 += p[i];
  for (let i = 0; i < maxNgrams; i++) p[i] /= s2;
  return p;
}

/**
 * create_masked_lm_predictions with whole-word masking on, favor_longer_ngram and do_permutation off.
 * Candidates are words (a "##" piece joins the word before it; [CLS]/[SEP] are never candidates). Each
 * candidate start gets n-grams of 1..maxNgrams words; the list is shuffled and walked, picking n,
 * shortening it while it would exceed the budget, skipping spans that overlap earlier ones.
 */
export function createMaskedLmPredictions(
  tokens: readonly number[],
  vocab: MaskedLmVocab,
  opts: MaskingOptions,
  rng: RandomState,
): MaskedLmPredictions {
  const cand: number[][] = [];
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (t === vocab.cls || t === vocab.sep) continue;
    const starts = t >= 0 && t < vocab.startsWord.length ? vocab.startsWord[t] : NO_TOKEN;
    if (starts === NO_TOKEN) {
      throw new Error(`masking: token id ${t} at position ${i} is not in the vocabulary`);
    }
    if (cand.length >= 1 && starts === 0) cand[cand.length - 1].push(i);
    else cand.push([i]);
  }
  const out = tokens.slice();
  if (opts.maskedLmProb === 0) return { tokens: out, positions: [], labels: [], spans: [] };
  const numToPredict = Math.min(
    opts.maxPredictionsPerSeq,
    Math.max(1, pythonRound(tokens.length * opts.maskedLmProb)),
  );
  const pvals = opts.geometricDist ? null : ngramProbabilities(opts.maxNgrams);
  // ngram_indexes[idx][n-1] = cand[idx : idx+n] (shorter near the end); shuffled as a Python list.
  const ngramIndexes: number[][][][] = [];
  for (let idx = 0; idx < cand.length; idx++) {
    const grams: number[][][] = [];
    for (let n = 1; n <= opts.maxNgrams; n++) grams.push(cand.slice(idx, idx + n));
    ngramIndexes.push(grams);
  }
  rng.shuffle(ngramIndexes as unknown as number[]);
  const flat = (words: number[][]) => words.flat();
  const masked: { index: number; label: number }[] = [];
  const spans: MaskedSpan[] = [];
  const covered = new Set<number>();
  for (const candSet of ngramIndexes) {
    if (masked.length >= numToPredict) break;
    // (Megatron's "skip covered pieces" loop here only continues itself: no effect, no draws.)
    let n = pvals === null
      ? Math.min(rng.geometric(0.2), opts.maxNgrams)
      : rng.choice(candSet.length, pvals.subarray(0, candSet.length)) + 1;
    let indexSet = flat(candSet[n - 1]);
    n -= 1;
    while (masked.length + indexSet.length > numToPredict) {
      if (n === 0) break;
      indexSet = flat(candSet[n - 1]);
      n -= 1;
    }
    if (masked.length + indexSet.length > numToPredict) continue;
    if (indexSet.some((i) => covered.has(i))) continue;
    for (const index of indexSet) {
      covered.add(index);
      let replacement: number;
      if (opts.style === "bert") {
        if (rng.random() < 0.8) {
          replacement = vocab.mask;
        } else if (rng.random() < 0.5) {
          replacement = tokens[index];
        } else {
          replacement = vocab.vocabIdList[rng.randint(0, vocab.vocabIdList.length)];
        }
      } else {
        replacement = vocab.mask;
      }
      out[index] = replacement;
      masked.push({ index, label: tokens[index] });
    }
    spans.push({ index: indexSet, label: indexSet.map((i) => tokens[i]) });
  }
  // Megatron shuffles the n-gram list once more (for the permutation it does not do): same draws.
  rng.shuffle(ngramIndexes as unknown as number[]);
  masked.sort((x, y) => x.index - y.index);
  spans.sort((x, y) => x.index[0] - y.index[0]);
  return {
    tokens: out,
    positions: masked.map((m) => m.index),
    labels: masked.map((m) => m.label),
    spans,
  };
}
