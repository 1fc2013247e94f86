// dataset_utils.build_train_valid_test_datasets for BERT and T5: --split divides the DOCUMENTS of a
// sentence-level indexed dataset (doc_idx) into train/valid/test; each split gets its own samples
// mapping over its documents' sentences; several weighted prefixes are blended as for GPT.

import type { SampleDataset } from "./blendable.ts";
import { BertDataset, type BertSample, type SentenceDataset } from "./bert_dataset.ts";
import { buildSplitsOrBlend } from "./gpt_dataset.ts";
import type { MaskedLmVocab } from "./masked_lm.ts";
import { getTrainValidTestSplit } from "./split.ts";
import { T5Dataset, type T5Sample } from "./t5_dataset.ts";

/** A sentence-level indexed dataset with its document boundaries (MMapIndexedDataset fits). */
export interface DocumentDataset extends SentenceDataset {
  /** Document d is sentences docIdx[d] .. docIdx[d+1]; length = documents + 1. */
  readonly docIdx: ArrayLike<number>;
}

interface CommonOptions {
  /** --data-path: one prefix, or "w1 p1 w2 p2 ..." pairs. */
  dataPrefix: readonly string[];
  /** --split, e.g. "949,50,1" (over documents). */
  splitString: string;
  /** Requested samples for train, valid, test (train_val_test_num_samples). */
  trainValidTestNumSamples: readonly [number, number, number];
  /** --mask-prob (Megatron's default 0.15). */
  maskedLmProb: number;
  /** --short-seq-prob (default 0.1). */
  shortSeqProb: number;
  seed: number;
  /** From maskedLmVocab(tokenizer). */
  vocab: MaskedLmVocab;
  open: (prefix: string) => DocumentDataset;
  cache?: boolean;
  log?: (line: string) => void;
}

export interface BertDatasetsOptions extends CommonOptions {
  /** --seq-length. */
  seqLength: number;
  /** false with --bert-no-binary-head. */
  binaryHead: boolean;
}

export interface T5DatasetsOptions extends CommonOptions {
  /** --encoder-seq-length (Megatron: --seq-length). */
  encoderSeqLength: number;
  /** --decoder-seq-length. */
  decoderSeqLength: number;
}

export interface MaskedLmSplits<T> {
  train: SampleDataset<T> | null;
  valid: SampleDataset<T> | null;
  test: SampleDataset<T> | null;
}

const SPLIT_NAMES = ["train", "valid", "test"] as const;

type MakeSplit<T> = (
  prefix: string,
  name: string,
  indexed: DocumentDataset,
  docs: ArrayLike<number>,
  numSamples: number,
) => SampleDataset<T>;

function buildSingle<T>(
  prefix: string,
  opts: CommonOptions,
  numSamples: readonly [number, number, number],
  make: MakeSplit<T>,
): (SampleDataset<T> | null)[] {
  const log = opts.log ?? (() => {});
  const indexed = opts.open(prefix);
  const docIdx = indexed.docIdx;
  const numDocs = docIdx.length - 1;
  if (numDocs < 1 || docIdx[0] !== 0 || docIdx[numDocs] !== indexed.sizes.length) {
    throw new Error(
      `${prefix}: expected doc_idx to run from 0 to the ${indexed.sizes.length} sentences, found ` +
        `${docIdx.length} entries ending at ${docIdx[numDocs]}`,
    );
  }
  const bounds = getTrainValidTestSplit(opts.splitString, numDocs);
  log(` > dataset split for ${prefix}:`);
  const out: (SampleDataset<T> | null)[] = [];
  for (let s = 0; s < 3; s++) {
    const [a, b] = [bounds[s], bounds[s + 1]];
    log(
      `    ${SPLIT_NAMES[s]}: document indices in [${a}, ${b}) total of ${b - a} documents, ` +
        `sentence indices in [${docIdx[a]}, ${docIdx[b]})`,
    );
    // Megatron cannot build a mapping for zero requested samples (it raises); an empty request or an
    // empty range gives no dataset for that split.
    if (b <= a || numSamples[s] === 0) {
      out.push(null);
      continue;
    }
    const docs = Array.prototype.slice.call(docIdx, a, b + 1) as number[];
    out.push(make(prefix, SPLIT_NAMES[s], indexed, docs, numSamples[s]));
  }
  return out;
}

function buildAll<T>(opts: CommonOptions, make: MakeSplit<T>): MaskedLmSplits<T> {
  return buildSplitsOrBlend<SampleDataset<T>, T>(
    opts.dataPrefix,
    opts.trainValidTestNumSamples,
    (prefix, numSamples) => buildSingle(prefix, opts, numSamples, make),
  );
}

function checkCommon(opts: CommonOptions): void {
  if (!(opts.maskedLmProb >= 0 && opts.maskedLmProb <= 1)) {
    throw new Error(`--mask-prob: expected a probability in [0, 1], found ${opts.maskedLmProb}`);
  }
}

/** BERT train/valid/test datasets (samples as bert_dataset.BertDataset). */
export function buildBertDatasets(opts: BertDatasetsOptions): MaskedLmSplits<BertSample> {
  checkCommon(opts);
  // Targets are at most seq_length - 3 and must be > 1 (helpers.cpp asserts it).
  if (!Number.isInteger(opts.seqLength) || opts.seqLength < 5) {
    throw new Error(`--seq-length: BERT needs an integer >= 5, found ${opts.seqLength}`);
  }
  return buildAll<BertSample>(opts, (prefix, name, indexed, docs, numSamples) =>
    new BertDataset({
      name,
      dataPrefix: prefix,
      indexed,
      docs,
      numSamples,
      maxSeqLength: opts.seqLength,
      maskedLmProb: opts.maskedLmProb,
      shortSeqProb: opts.shortSeqProb,
      seed: opts.seed,
      binaryHead: opts.binaryHead,
      vocab: opts.vocab,
      cache: opts.cache,
      log: opts.log,
    }));
}

/** T5 train/valid/test datasets (samples as t5_dataset.T5Dataset). */
export function buildT5Datasets(opts: T5DatasetsOptions): MaskedLmSplits<T5Sample> {
  checkCommon(opts);
  if (!Number.isInteger(opts.encoderSeqLength) || opts.encoderSeqLength < 4) {
    throw new Error(`--encoder-seq-length: T5 needs an integer >= 4, found ${opts.encoderSeqLength}`);
  }
  if (!Number.isInteger(opts.decoderSeqLength) || opts.decoderSeqLength < 1) {
    throw new Error(`--decoder-seq-length: expected an integer >= 1, found ${opts.decoderSeqLength}`);
  }
  if (opts.vocab.sentinels.length === 0) {
    throw new Error("--vocab-extra-ids: T5 needs sentinel tokens, found none (Megatron uses 100)");
  }
  return buildAll<T5Sample>(opts, (prefix, name, indexed, docs, numSamples) =>
    new T5Dataset({
      name,
      dataPrefix: prefix,
      indexed,
      docs,
      numSamples,
      maxSeqLength: opts.encoderSeqLength,
      maxSeqLengthDec: opts.decoderSeqLength,
      maskedLmProb: opts.maskedLmProb,
      shortSeqProb: opts.shortSeqProb,
      seed: opts.seed,
      vocab: opts.vocab,
      cache: opts.cache,
      log: opts.log,
    }));
}
