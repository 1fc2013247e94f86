// Megatron 2021's T5 dataset (t5_dataset.py): a samples-mapping row's sentences are joined and cut to
// the target length, whole-word spans with geometric lengths are masked, and each span becomes one
// sentinel: encoder = kept text with sentinels, decoder input = [BOS] + (sentinel, span)..., labels =
// (sentinel, span)... + [EOS]; masks are outer products of "id >= 1" (the decoder's also causal).
// Per-sample draws come from RandomState(seed + idx).

import { MappedSentenceDataset, type SentenceMappingOptions } from "./bert_dataset.ts";
import { createMaskedLmPredictions, type MaskedLmVocab, type MaskedSpan } from "./masked_lm.ts";
import { RandomState } from "./numpy_random.ts";

/** One T5 sample with Megatron's field names. Masks are row-major 0/1 matrices. */
export interface T5Sample {
  /** Encoder input, encoder seq length entries. */
  text_enc: Int32Array;
  /** Decoder input, decoder seq length entries. */
  text_dec: Int32Array;
  /** Decoder targets, -1 on padding. */
  labels: Int32Array;
  /** 1 over the decoder input's length (padding excluded). */
  loss_mask: Int32Array;
  truncated: number;
  /** [encLen x encLen]. */
  enc_mask: Uint8Array;
  /** [decLen x decLen], causal. */
  dec_mask: Uint8Array;
  /** [decLen x encLen]. */
  enc_dec_mask: Uint8Array;
}

function rows(m: Uint8Array, cols: number): number[][] {
  const out: number[][] = [];
  for (let r = 0; r * cols < m.length; r++) out.push(Array.from(m.subarray(r * cols, (r + 1) * cols)));
  return out;
}

/** A sample as plain JSON values under Megatron's field names, masks as 2-D lists (what inspect-data prints). */
export function t5SampleToJson(s: T5Sample): Record<string, number | number[] | number[][]> {
  const enc = s.text_enc.length;
  return {
    text_enc: Array.from(s.text_enc),
    text_dec: Array.from(s.text_dec),
    labels: Array.from(s.labels),
    loss_mask: Array.from(s.loss_mask),
    truncated: s.truncated,
    enc_mask: rows(s.enc_mask, enc),
    dec_mask: rows(s.dec_mask, s.text_dec.length),
    enc_dec_mask: rows(s.enc_dec_mask, enc),
  };
}

/** make_attention_mask: mask[i][j] = (source[i] >= 1) && (target[j] >= 1), [source x target] row-major. */
export function makeAttentionMask(source: ArrayLike<number>, target: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(source.length * target.length);
  for (let i = 0; i < source.length; i++) {
    if (source[i] < 1) continue;
    for (let j = 0; j < target.length; j++) out[i * target.length + j] = target[j] >= 1 ? 1 : 0;
  }
  return out;
}

/** make_history_mask: lower triangle including the diagonal, [n x n]. */
export function makeHistoryMask(n: number): Uint8Array {
  const out = new Uint8Array(n * n);
  for (let i = 0; i < n; i++) out.fill(1, i * n, i * n + i + 1);
  return out;
}

export interface T5SampleOptions {
  /** --encoder-seq-length (or --seq-length). */
  maxSeqLength: number;
  /** --decoder-seq-length. */
  maxSeqLengthDec: number;
  maskedLmProb: number;
  vocab: MaskedLmVocab;
}

/** t5_dataset.build_training_sample for one row's sentences and target length. */
export function buildT5Sample(
  sample: readonly ArrayLike<number>[],
  targetSeqLength: number,
  opts: T5SampleOptions,
  rng: RandomState,
): T5Sample {
  if (targetSeqLength > opts.maxSeqLength) {
    throw new Error(
      `T5 sample: target length ${targetSeqLength} exceeds the encoder length ${opts.maxSeqLength}`,
    );
  }
  const all: number[] = [];
  for (const s of sample) for (let k = 0; k < s.length; k++) all.push(s[k]);
  const truncated = all.length > targetSeqLength;
  const tokens = all.slice(0, targetSeqLength);
  const m = createMaskedLmPredictions(tokens, opts.vocab, {
    maskedLmProb: opts.maskedLmProb,
    maxPredictionsPerSeq: opts.maskedLmProb * targetSeqLength,
    maxNgrams: 10,
    geometricDist: true,
    style: "t5",
  }, rng);
  return padT5Sample(m.tokens, m.spans, opts, truncated);
}

/** t5_dataset.pad_and_convert_to_numpy: spans to sentinels, padding, labels, loss mask and masks. */
export function padT5Sample(
  tokens: readonly number[],
  spans: readonly MaskedSpan[],
  opts: T5SampleOptions,
  truncated: boolean,
): T5Sample {
  const { vocab } = opts;
  if (spans.length > vocab.sentinels.length) {
    throw new Error(
      `T5 sample: ${spans.length} masked spans need as many sentinels, found ${vocab.sentinels.length} ` +
        `(--vocab-extra-ids)`,
    );
  }
  const enc: number[] = [];
  const decIn: number[] = [vocab.bos];
  const decOut: number[] = [];
  let start = 0;
  spans.forEach((span, k) => {
    const flag = vocab.sentinels[k];
    decIn.push(flag, ...span.label);
    decOut.push(flag, ...span.label);
    for (let i = start; i < span.index[0]; i++) enc.push(tokens[i]);
    enc.push(flag);
    start = span.index[span.index.length - 1] + 1;
  });
  decOut.push(vocab.eos);
  for (let i = start; i < tokens.length; i++) enc.push(tokens[i]);
  const encLen = opts.maxSeqLength;
  const decLen = opts.maxSeqLengthDec;
  if (enc.length > encLen) {
    throw new Error(`T5 sample: ${enc.length} encoder tokens do not fit the encoder length ${encLen}`);
  }
  if (decIn.length > decLen) {
    throw new Error(
      `T5 sample: ${decIn.length} decoder tokens do not fit --decoder-seq-length ${decLen}`,
    );
  }
  const textEnc = new Int32Array(encLen).fill(vocab.pad);
  textEnc.set(enc);
  const textDec = new Int32Array(decLen).fill(vocab.pad);
  textDec.set(decIn);
  const labels = new Int32Array(decLen).fill(-1);
  labels.set(decOut);
  const lossMask = new Int32Array(decLen);
  lossMask.fill(1, 0, decIn.length);
  const decMask = makeAttentionMask(textDec, textDec);
  const history = makeHistoryMask(decLen);
  for (let i = 0; i < decMask.length; i++) decMask[i] &= history[i];
  return {
    text_enc: textEnc,
    text_dec: textDec,
    labels,
    loss_mask: lossMask,
    truncated: truncated ? 1 : 0,
    enc_mask: makeAttentionMask(textEnc, textEnc),
    dec_mask: decMask,
    enc_dec_mask: makeAttentionMask(textDec, textEnc),
  };
}

export interface T5DatasetOptions extends SentenceMappingOptions {
  /** Encoder length (targets are at most this - 2). */
  maxSeqLength: number;
  maxSeqLengthDec: number;
  maskedLmProb: number;
  vocab: MaskedLmVocab;
}

/** Megatron's T5Dataset: length = rows of the samples mapping; getItem(idx) = Megatron's sample idx. */
export class T5Dataset extends MappedSentenceDataset {
  readonly #opts: T5SampleOptions;

  constructor(o: T5DatasetOptions) {
    if (o.vocab.sentinels.length === 0) {
      throw new Error("T5 dataset: expected sentinel tokens, found none (pass --vocab-extra-ids 100)");
    }
    super(o, o.maxSeqLength - 2, 1);
    this.#opts = {
      maxSeqLength: o.maxSeqLength,
      maxSeqLengthDec: o.maxSeqLengthDec,
      maskedLmProb: o.maskedLmProb,
      vocab: o.vocab,
    };
  }

  getItem(idx: number): T5Sample {
    const sentences = this.rowSentences("T5Dataset", idx);
    const seed = this.seed + idx;
    // numpy rejects seeds of 2^32 and more (T5 has no modulo, unlike BERT).
    if (seed > 0xffffffff) {
      throw new Error(`T5Dataset ${this.name}: seed + index = ${seed} exceeds 2^32 - 1 (numpy's seed range)`);
    }
    return this.inSampleContext(
      idx,
      () => buildT5Sample(sentences, this.samplesMapping[3 * idx + 2], this.#opts, new RandomState(seed)),
    );
  }
}
