// Megatron 2021's BERT dataset (bert_dataset.py): sample idx is row idx of the samples mapping (a run
// of whole sentences and a target length), turned into [CLS] A [SEP] B [SEP] with sentence-order
// swap, truncation, whole-word n-gram masking and padding, drawing from RandomState((seed+idx) % 2^32).

import {
  createMaskedLmPredictions,
  createTokensAndTokentypes,
  getAAndBSegments,
  type MaskedLmVocab,
  truncateSegments,
} from "./masked_lm.ts";
import { RandomState } from "./numpy_random.ts";
import { getSamplesMapping } from "./samples_mapping.ts";

/** What the BERT/T5 datasets read from a sentence-level indexed dataset (MMapIndexedDataset fits). */
export interface SentenceDataset {
  /** Tokens per sentence. */
  readonly sizes: Int32Array;
  /** Sentence i's token ids. */
  get(i: number): ArrayLike<number>;
}

/** The options BertDataset and T5Dataset share for building their samples mapping. */
export interface SentenceMappingOptions {
  /** "train" | "valid" | "test" (part of the cache name). */
  name: string;
  dataPrefix: string;
  indexed: SentenceDataset;
  /** This split's document boundaries in sentences (doc_idx[start .. end+1]). */
  docs: ArrayLike<number>;
  /** Requested samples (max_num_samples); the mapping covers whole epochs, so it has at least this many. */
  numSamples: number;
  shortSeqProb: number;
  seed: number;
  cache?: boolean;
  log?: (line: string) => void;
}

/** The (cached) samples mapping over one split's whole documents, targets at most maxTarget tokens. */
function sentenceSamplesMapping(
  o: SentenceMappingOptions,
  maxTarget: number,
  minNumSent: 1 | 2,
): Uint32Array {
  return getSamplesMapping({
    name: o.name,
    dataPrefix: o.dataPrefix,
    docs: o.docs,
    sizes: o.indexed.sizes,
    numEpochs: null,
    maxNumSamples: o.numSamples,
    maxSeqLength: maxTarget,
    shortSeqProb: o.shortSeqProb,
    seed: o.seed,
    minNumSent,
    cache: o.cache,
    log: o.log,
  });
}

/** What BertDataset and T5Dataset share: a dataset whose sample idx is row idx of a samples mapping
 *  over one split's sentences. */
export class MappedSentenceDataset {
  readonly name: string;
  readonly dataPrefix: string;
  readonly indexed: SentenceDataset;
  /** Flattened [N, 3] rows (start sentence, end sentence, target length), shuffled. */
  readonly samplesMapping: Uint32Array;
  readonly seed: number;

  constructor(o: SentenceMappingOptions, maxTarget: number, minNumSent: 1 | 2) {
    this.name = o.name;
    this.dataPrefix = o.dataPrefix;
    this.indexed = o.indexed;
    this.seed = o.seed;
    this.samplesMapping = sentenceSamplesMapping(o, maxTarget, minNumSent);
  }

  get length(): number {
    return this.samplesMapping.length / 3;
  }

  /** Row idx's sentences, after checking idx (`kind` names the dataset class in the error). */
  protected rowSentences(kind: string, idx: number): ArrayLike<number>[] {
    if (!Number.isInteger(idx) || idx < 0 || idx >= this.length) {
      throw new Error(`${kind} ${this.name}: expected a sample index in 0..${this.length - 1}, found ${idx}`);
    }
    const m = this.samplesMapping;
    const sentences: ArrayLike<number>[] = [];
    for (let i = m[3 * idx]; i < m[3 * idx + 1]; i++) sentences.push(this.indexed.get(i));
    return sentences;
  }

  /** Runs build(); its error is rethrown naming file, split, sample and sentences, since bad data (an
   *  id outside the vocabulary, an empty segment) is otherwise hard to find. */
  protected inSampleContext<T>(idx: number, build: () => T): T {
    try {
      return build();
    } catch (e) {
      const m = this.samplesMapping;
      throw new Error(
        `${this.dataPrefix}: ${this.name} sample ${idx} (sentences ${m[3 * idx]}..${m[3 * idx + 1] - 1}): ` +
          (e as Error).message,
      );
    }
  }
}

/** One BERT sample with Megatron's field names; arrays have max_seq_length entries. */
export interface BertSample {
  /** [CLS] A [SEP] B [SEP] after masking, then [PAD]. */
  text: Int32Array;
  /** Token types: 0 through the first [SEP], 1 for B and its [SEP], pad id after. */
  types: Int32Array;
  /** The original token at masked positions, -1 elsewhere. */
  labels: Int32Array;
  /** 1 when A and B were swapped (the sentence-order target). */
  is_random: number;
  loss_mask: Int32Array;
  /** 1 on real tokens, 0 on padding. */
  padding_mask: Int32Array;
  /** 1 when the sentences had to be cut to the target length. */
  truncated: number;
}

/** A sample as plain JSON values under Megatron's field names (what inspect-data prints). */
export function bertSampleToJson(s: BertSample): Record<string, number | number[]> {
  return {
    text: Array.from(s.text),
    types: Array.from(s.types),
    labels: Array.from(s.labels),
    is_random: s.is_random,
    loss_mask: Array.from(s.loss_mask),
    padding_mask: Array.from(s.padding_mask),
    truncated: s.truncated,
  };
}

export interface BertSampleOptions {
  /** Length every array is padded to (--seq-length). */
  maxSeqLength: number;
  maskedLmProb: number;
  binaryHead: boolean;
  vocab: MaskedLmVocab;
}

/** bert_dataset.build_training_sample for one row's sentences and target length. */
export function buildBertSample(
  sample: readonly ArrayLike<number>[],
  targetSeqLength: number,
  opts: BertSampleOptions,
  rng: RandomState,
): BertSample {
  if (targetSeqLength > opts.maxSeqLength) {
    throw new Error(
      `BERT sample: target length ${targetSeqLength} exceeds --seq-length ${opts.maxSeqLength}`,
    );
  }
  let a: number[];
  let b: number[];
  let isRandom = false;
  if (opts.binaryHead) {
    ({ a, b, isRandom } = getAAndBSegments(sample, rng));
  } else {
    a = [];
    for (const s of sample) for (let k = 0; k < s.length; k++) a.push(s[k]);
    b = [];
  }
  const truncated = truncateSegments(a, b, targetSeqLength, rng);
  const { tokens, types } = createTokensAndTokentypes(a, b, opts.vocab.cls, opts.vocab.sep);
  const m = createMaskedLmPredictions(tokens, opts.vocab, {
    maskedLmProb: opts.maskedLmProb,
    maxPredictionsPerSeq: opts.maskedLmProb * targetSeqLength,
    maxNgrams: 3,
    geometricDist: false,
    style: "bert",
  }, rng);
  return padBertSample(
    m.tokens,
    types,
    m.positions,
    m.labels,
    opts.vocab.pad,
    opts.maxSeqLength,
    isRandom,
    truncated,
  );
}

/** pad_and_convert_to_numpy (BERT): pad id after the tokens (types too), labels -1 and loss mask 0 off the masked positions. */
export function padBertSample(
  tokens: readonly number[],
  types: readonly number[],
  positions: readonly number[],
  labels: readonly number[],
  pad: number,
  maxSeqLength: number,
  isRandom: boolean,
  truncated: boolean,
): BertSample {
  const n = tokens.length;
  if (n > maxSeqLength) {
    throw new Error(`BERT sample: ${n} tokens do not fit --seq-length ${maxSeqLength}`);
  }
  const text = new Int32Array(maxSeqLength).fill(pad);
  const typesOut = new Int32Array(maxSeqLength).fill(pad);
  const paddingMask = new Int32Array(maxSeqLength);
  text.set(tokens);
  typesOut.set(types);
  paddingMask.fill(1, 0, n);
  const labelsOut = new Int32Array(maxSeqLength).fill(-1);
  const lossMask = new Int32Array(maxSeqLength);
  for (let i = 0; i < positions.length; i++) {
    labelsOut[positions[i]] = labels[i];
    lossMask[positions[i]] = 1;
  }
  return {
    text,
    types: typesOut,
    labels: labelsOut,
    is_random: isRandom ? 1 : 0,
    loss_mask: lossMask,
    padding_mask: paddingMask,
    truncated: truncated ? 1 : 0,
  };
}

export interface BertDatasetOptions extends SentenceMappingOptions {
  /** --seq-length (targets are at most seq_length - 3). */
  maxSeqLength: number;
  maskedLmProb: number;
  binaryHead: boolean;
  vocab: MaskedLmVocab;
}

/** Megatron's BertDataset: length = rows of the samples mapping; getItem(idx) = Megatron's sample idx. */
export class BertDataset extends MappedSentenceDataset {
  readonly #opts: BertSampleOptions;

  constructor(o: BertDatasetOptions) {
    super(o, o.maxSeqLength - 3, o.binaryHead ? 2 : 1); // room for [CLS] and two [SEP]
    this.#opts = {
      maxSeqLength: o.maxSeqLength,
      maskedLmProb: o.maskedLmProb,
      binaryHead: o.binaryHead,
      vocab: o.vocab,
    };
  }

  getItem(idx: number): BertSample {
    const sentences = this.rowSentences("BertDataset", idx);
    const rng = new RandomState((this.seed + idx) % 2 ** 32);
    return this.inSampleContext(
      idx,
      () => buildBertSample(sentences, this.samplesMapping[3 * idx + 2], this.#opts, rng),
    );
  }
}
