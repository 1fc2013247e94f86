// GPT pretraining samples in exactly Megatron 2021's order (gpt_dataset.py + helpers.cpp):
// documents are tiled over epochs and shuffled (doc_idx), cut into seq_length+1-token samples that
// share one boundary token (sample_idx), and the samples are shuffled (shuffle_idx). All three maps are
// cached as .npy files next to the data, with Megatron's file names, so caches are interchangeable.

import { BlendableDataset, getDatasetsWeightsAndNumSamples, type SampleDataset } from "./blendable.ts";
import { type NpyData, readNpySync, writeNpySync } from "./npy.ts";
import { RandomState } from "./numpy_random.ts";
import { getTrainValidTestSplit } from "./split.ts";

/** What GPT sampling needs from an indexed dataset (MMapIndexedDataset satisfies it). */
export interface TokenDataset {
  readonly sizes: Int32Array;
  get(i: number, offset?: number, length?: number): ArrayLike<number>;
}

/** shuffle_idx is uint32, or int64 when the sample count reaches 2^32 - 2 (as Megatron). */
export type ShuffleIdx = Uint32Array | BigInt64Array;

export interface IndexMappings {
  /** Document ids, tiled over epochs and shuffled. */
  docIdx: Int32Array;
  /** Flattened [S+1, 2]: (position in docIdx, token offset) where sample k starts. */
  sampleIdx: Int32Array;
  /** Sample order, length S. */
  shuffleIdx: ShuffleIdx;
}

export interface MappingPlan {
  tokensPerEpoch: number;
  numEpochs: number;
  separateLastEpoch: boolean;
  /** S: samples available from numEpochs epochs. */
  totalSamples: number;
  /** Samples shuffled together (S, or those of the first numEpochs-1 epochs when separate). */
  firstShuffleSamples: number;
}

/** sum(sizes[documents]). */
export function numTokens(documents: Int32Array, sizes: Int32Array): number {
  let t = 0;
  for (let i = 0; i < documents.length; i++) t += sizes[documents[i]];
  return t;
}

/** Smallest e with (e*tpe - 1) // seqLength >= numSamples. */
export function numEpochs(tokensPerEpoch: number, seqLength: number, numSamples: number): number {
  if (tokensPerEpoch < 2) {
    throw new Error(`GPT dataset: expected at least 2 tokens per epoch, found ${tokensPerEpoch}`);
  }
  let e = 0;
  let total = 0;
  for (;;) {
    e++;
    total += tokensPerEpoch;
    if (Math.floor((total - 1) / seqLength) >= numSamples) return e;
  }
}

/** Epoch count, the separate-last-epoch rule and sample counts, without building anything. */
export function planIndexMappings(
  documents: Int32Array,
  sizes: Int32Array,
  numSamples: number,
  seqLength: number,
): MappingPlan {
  if (!Number.isInteger(seqLength) || seqLength < 2) {
    throw new Error(`--seq-length: expected an integer >= 2, found ${seqLength}`);
  }
  if (!Number.isSafeInteger(numSamples) || numSamples < 0) {
    throw new Error(`GPT dataset: expected a requested sample count >= 0, found ${numSamples}`);
  }
  const tokensPerEpoch = numTokens(documents, sizes);
  const e = numEpochs(tokensPerEpoch, seqLength, numSamples);
  const totalSamples = Math.floor((e * tokensPerEpoch - 1) / seqLength);
  let separateLastEpoch = false;
  let firstShuffleSamples = totalSamples;
  if (e > 1) {
    const fromFirst = Math.floor(((e - 1) * tokensPerEpoch - 1) / seqLength);
    const last = numSamples - fromFirst;
    const perEpoch = Math.floor((tokensPerEpoch - 1) / seqLength);
    // Megatron: a last epoch that contributes under 80% of an epoch's samples is shuffled on its own,
    // so its few samples are not spread over the whole run.
    separateLastEpoch = last < Math.trunc(0.8 * perEpoch);
    if (separateLastEpoch) firstShuffleSamples = fromFirst;
  }
  return { tokensPerEpoch, numEpochs: e, separateLastEpoch, totalSamples, firstShuffleSamples };
}

/** _build_doc_idx: documents tiled numEpochs times, shuffled (the last epoch apart when separate). */
export function buildDocIdx(
  documents: Int32Array,
  epochs: number,
  rng: RandomState,
  separateLastEpoch: boolean,
): Int32Array {
  const n = documents.length;
  const out = new Int32Array(epochs * n);
  for (let e = 0; e < epochs; e++) out.set(documents, e * n);
  if (!separateLastEpoch || epochs === 1) {
    rng.shuffle(out);
  } else {
    rng.shuffle(out.subarray(0, (epochs - 1) * n));
    rng.shuffle(out.subarray((epochs - 1) * n));
  }
  return out;
}

/**
 * helpers.cpp build_sample_idx. Each sample takes seqLength+1 tokens; when a document ends inside a
 * sample, the next sample starts on that sample's last token (offset + remaining + doc_len - 1).
 */
export function buildSampleIdx(
  sizes: Int32Array,
  docIdx: Int32Array,
  seqLength: number,
  epochs: number,
  tokensPerEpoch: number,
): Int32Array {
  const numSamples = Math.floor((epochs * tokensPerEpoch - 1) / seqLength);
  const out = new Int32Array(2 * (numSamples + 1));
  let docPos = 0;
  let docOffset = 0;
  // Row 0 is (0, 0).
  for (let k = 1; k <= numSamples; k++) {
    let remaining = seqLength + 1;
    while (remaining !== 0) {
      if (docPos >= docIdx.length) {
        throw new Error(`build_sample_idx: ran past doc_idx (length ${docIdx.length}) at sample ${k}`);
      }
      const docLength = sizes[docIdx[docPos]] - docOffset;
      remaining -= docLength;
      if (remaining <= 0) {
        docOffset += remaining + docLength - 1;
        remaining = 0;
      } else {
        docPos++;
        docOffset = 0;
      }
    }
    out[2 * k] = docPos;
    out[2 * k + 1] = docOffset;
  }
  return out;
}

/** _build_shuffle_idx: shuffled [0, numSamples) followed by a separately shuffled [numSamples, total). */
export function buildShuffleIdx(numSamples: number, totalSize: number, rng: RandomState): ShuffleIdx {
  if (totalSize >= 0xffffffff - 1) {
    const out = new BigInt64Array(totalSize);
    for (let i = 0; i < totalSize; i++) out[i] = BigInt(i);
    rng.shuffle(out.subarray(0, numSamples));
    if (numSamples !== totalSize) rng.shuffle(out.subarray(numSamples));
    return out;
  }
  const out = new Uint32Array(totalSize);
  for (let i = 0; i < totalSize; i++) out[i] = i;
  rng.shuffle(out.subarray(0, numSamples));
  if (numSamples !== totalSize) rng.shuffle(out.subarray(numSamples));
  return out;
}

/** Builds the three maps in memory with one RandomState(seed): doc_idx draws first, then shuffle_idx. */
export function computeIndexMappings(
  documents: Int32Array,
  sizes: Int32Array,
  numSamples: number,
  seqLength: number,
  seed: number,
): IndexMappings & { plan: MappingPlan } {
  const plan = planIndexMappings(documents, sizes, numSamples, seqLength);
  const rng = new RandomState(seed);
  const docIdx = buildDocIdx(documents, plan.numEpochs, rng, plan.separateLastEpoch);
  const sampleIdx = buildSampleIdx(sizes, docIdx, seqLength, plan.numEpochs, plan.tokensPerEpoch);
  const shuffleIdx = buildShuffleIdx(plan.firstShuffleSamples, plan.totalSamples, rng);
  return { docIdx, sampleIdx, shuffleIdx, plan };
}

/** Megatron's cache file names: <prefix>_<name>_indexmap_<N>ns_<seq>sl_<seed>s_{doc,sample,shuffle}_idx.npy */
export function indexMapFilenames(
  dataPrefix: string,
  name: string,
  numSamples: number,
  seqLength: number,
  seed: number,
): { docIdx: string; sampleIdx: string; shuffleIdx: string } {
  const base = `${dataPrefix}_${name}_indexmap_${numSamples}ns_${seqLength}sl_${seed}s`;
  return {
    docIdx: `${base}_doc_idx.npy`,
    sampleIdx: `${base}_sample_idx.npy`,
    shuffleIdx: `${base}_shuffle_idx.npy`,
  };
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

// Returns why a cached set does not fit this request, or null when it does.
function cacheProblem(
  doc: { descr: string; shape: number[]; data: NpyData },
  sample: { descr: string; shape: number[]; data: NpyData },
  shuffle: { descr: string; shape: number[]; data: NpyData },
  plan: MappingPlan,
  nDocs: number,
  nItems: number,
): string | null {
  const s = plan.totalSamples;
  if (doc.descr !== "<i4" || doc.shape.length !== 1 || doc.shape[0] !== plan.numEpochs * nDocs) {
    return `doc_idx is ${doc.descr} ${JSON.stringify(doc.shape)}, expected <i4 [${plan.numEpochs * nDocs}]`;
  }
  if (
    sample.descr !== "<i4" || sample.shape.length !== 2 || sample.shape[0] !== s + 1 || sample.shape[1] !== 2
  ) {
    return `sample_idx is ${sample.descr} ${JSON.stringify(sample.shape)}, expected <i4 [${s + 1},2]`;
  }
  const shuffleDescr = s >= 0xffffffff - 1 ? "<i8" : "<u4";
  if (shuffle.descr !== shuffleDescr || shuffle.shape.length !== 1 || shuffle.shape[0] !== s) {
    return `shuffle_idx is ${shuffle.descr} ${
      JSON.stringify(shuffle.shape)
    }, expected ${shuffleDescr} [${s}]`;
  }
  const d = doc.data as Int32Array;
  for (let i = 0; i < d.length; i++) {
    if (d[i] < 0 || d[i] >= nItems) return `doc_idx[${i}]=${d[i]} is not an item of the dataset`;
  }
  const si = sample.data as Int32Array;
  for (let k = 0; k <= s; k++) {
    if (si[2 * k] < 0 || si[2 * k] >= d.length || si[2 * k + 1] < 0) {
      return `sample_idx row ${k} = (${si[2 * k]}, ${si[2 * k + 1]}) is out of range`;
    }
  }
  for (let k = 0; k < s; k++) {
    if (Number(shuffle.data[k]) >= s) return `shuffle_idx[${k}]=${shuffle.data[k]} >= ${s}`;
  }
  return null;
}

export interface IndexMappingOptions {
  /** "train" | "valid" | "test" (part of the cache name). */
  name: string;
  /** Dataset prefix; the caches go next to it. */
  dataPrefix: string;
  /** Item ids of this split (contiguous [start, end) for GPT). */
  documents: Int32Array;
  sizes: Int32Array;
  numSamples: number;
  seqLength: number;
  seed: number;
  /** Read and write the .npy caches (default true). */
  cache?: boolean;
  log?: (line: string) => void;
}

/**
 * _build_index_mappings: loads the cached maps when present and consistent with this request,
 * otherwise builds them (and saves them when caching). In a multi-rank job, let one rank call this
 * first so the others only load.
 */
export function buildIndexMappings(opts: IndexMappingOptions): IndexMappings & { plan: MappingPlan } {
  const log = opts.log ?? (() => {});
  const { documents, sizes, numSamples, seqLength, seed } = opts;
  const plan = planIndexMappings(documents, sizes, numSamples, seqLength);
  const files = indexMapFilenames(opts.dataPrefix, opts.name, numSamples, seqLength, seed);
  const cache = opts.cache ?? true;
  if (cache && exists(files.docIdx) && exists(files.sampleIdx) && exists(files.shuffleIdx)) {
    let problem: string | null;
    try {
      const doc = readNpySync(files.docIdx);
      const sample = readNpySync(files.sampleIdx);
      const shuffle = readNpySync(files.shuffleIdx);
      problem = cacheProblem(doc, sample, shuffle, plan, documents.length, sizes.length);
      if (problem === null) {
        log(` > loaded ${opts.name} index mappings from ${files.docIdx} (and _sample_idx, _shuffle_idx)`);
        return {
          docIdx: doc.data as Int32Array,
          sampleIdx: sample.data as Int32Array,
          shuffleIdx: shuffle.data as ShuffleIdx,
          plan,
        };
      }
    } catch (e) {
      problem = (e as Error).message;
    }
    log(` > WARNING: ${opts.name} index map cache is inconsistent (${problem}); rebuilding`);
  } else if (cache) {
    log(` > could not find ${opts.name} index map files (${files.docIdx} ...); building them`);
  }
  const t0 = performance.now();
  const built = computeIndexMappings(documents, sizes, numSamples, seqLength, seed);
  log(
    ` > built ${opts.name} index mappings in ${((performance.now() - t0) / 1000).toFixed(3)} s: ` +
      `${plan.numEpochs} epoch(s), ${plan.tokensPerEpoch} tokens/epoch, ${plan.totalSamples} samples, ` +
      `separate last epoch: ${plan.separateLastEpoch}`,
  );
  if (cache) {
    try {
      writeNpySync(files.docIdx, built.docIdx);
      writeNpySync(files.sampleIdx, built.sampleIdx, [plan.totalSamples + 1, 2]);
      writeNpySync(files.shuffleIdx, built.shuffleIdx);
    } catch (e) {
      log(` > WARNING: could not save ${opts.name} index mappings next to ${opts.dataPrefix}: ${e}`);
    }
  }
  return built;
}

export interface GPTDatasetOptions {
  name: string;
  dataPrefix: string;
  /** Item ids [start, end) of the split. */
  documents: Int32Array;
  indexed: TokenDataset;
  numSamples: number;
  seqLength: number;
  seed: number;
  /**
   * The model's (padded) vocabulary size: getItem() fails on a token id outside 0..vocabSize-1 instead
   * of letting it reach the embedding. Omitted: no check.
   */
  vocabSize?: number;
  cache?: boolean;
  log?: (line: string) => void;
}

/** One split of one dataset: getItem(i) is Megatron's sample i (seq_length+1 tokens). */
export class GPTDataset implements SampleDataset<Int32Array> {
  readonly name: string;
  readonly dataPrefix: string;
  readonly indexed: TokenDataset;
  readonly seqLength: number;
  readonly vocabSize: number | null;
  readonly docIdx: Int32Array;
  readonly sampleIdx: Int32Array;
  readonly shuffleIdx: ShuffleIdx;
  readonly plan: MappingPlan;

  constructor(opts: GPTDatasetOptions) {
    const n = opts.indexed.sizes.length;
    for (let i = 0; i < opts.documents.length; i++) {
      const d = opts.documents[i];
      if (d < 0 || d >= n) {
        throw new Error(`${opts.dataPrefix}: ${opts.name} documents must be in 0..${n - 1}, found ${d}`);
      }
    }
    if (opts.vocabSize !== undefined && !(Number.isSafeInteger(opts.vocabSize) && opts.vocabSize >= 1)) {
      throw new Error(`GPTDataset ${opts.name}: expected a vocabulary size >= 1, found ${opts.vocabSize}`);
    }
    this.name = opts.name;
    this.dataPrefix = opts.dataPrefix;
    this.indexed = opts.indexed;
    this.seqLength = opts.seqLength;
    this.vocabSize = opts.vocabSize ?? null;
    const m = buildIndexMappings({ ...opts, sizes: opts.indexed.sizes });
    this.docIdx = m.docIdx;
    this.sampleIdx = m.sampleIdx;
    this.shuffleIdx = m.shuffleIdx;
    this.plan = m.plan;
  }

  /** Number of samples available (all epochs), at least the requested count. */
  get length(): number {
    return this.sampleIdx.length / 2 - 1;
  }

  /** Tokens of sample idx: rows k and k+1 of sample_idx, inclusive end (seq_length+1 tokens). */
  getItem(idx: number): Int32Array {
    if (!Number.isInteger(idx) || idx < 0 || idx >= this.length) {
      throw new Error(
        `GPTDataset ${this.name}: expected a sample index in 0..${this.length - 1}, found ${idx}`,
      );
    }
    const k = Number(this.shuffleIdx[idx]);
    const si = this.sampleIdx;
    const docF = si[2 * k];
    const offF = si[2 * k + 1];
    const docL = si[2 * k + 2];
    const offL = si[2 * k + 3];
    const out = new Int32Array(this.seqLength + 1);
    const vocab = this.vocabSize ?? Infinity;
    let n = 0;
    // Copies one document's tokens, then checks them: a min/max over the just-copied (cached) ids,
    // unmeasurable next to the copy (bench/gpt_dataset_getitem.bench.ts).
    const put = (doc: number, offset: number, tokens: ArrayLike<number>) => {
      if (n + tokens.length > out.length) {
        throw new Error(`GPTDataset ${this.name}: sample ${idx} has more than ${out.length} tokens`);
      }
      const start = n;
      out.set(tokens, n); // one native copy from the mmapped typed array
      n += tokens.length;
      let lo = 0, hi = 0;
      for (let i = start; i < n; i++) {
        const t = out[i];
        if (t < lo) lo = t;
        if (t > hi) hi = t;
      }
      if (lo < 0 || hi >= vocab) this.#badToken(doc, offset, tokens, vocab);
    };
    if (docF === docL) {
      put(this.docIdx[docF], offF, this.indexed.get(this.docIdx[docF], offF, offL - offF + 1));
    } else {
      put(this.docIdx[docF], offF, this.indexed.get(this.docIdx[docF], offF));
      for (let p = docF + 1; p < docL; p++) put(this.docIdx[p], 0, this.indexed.get(this.docIdx[p]));
      put(this.docIdx[docL], 0, this.indexed.get(this.docIdx[docL], 0, offL + 1));
    }
    if (n !== out.length) {
      throw new Error(`GPTDataset ${this.name}: sample ${idx} has ${n} tokens, expected ${out.length}`);
    }
    return out;
  }

  #badToken(doc: number, offset: number, tokens: ArrayLike<number>, vocab: number): never {
    let i = 0;
    while (i < tokens.length && tokens[i] >= 0 && tokens[i] < vocab) i++;
    const range = Number.isFinite(vocab) ? `0..${vocab - 1} (padded vocabulary size ${vocab})` : "0 or more";
    throw new Error(
      `${this.dataPrefix}: document ${doc} has token id ${tokens[i]} at position ${offset + i}, ` +
        `expected ids in ${range}; was the data preprocessed with another tokenizer?`,
    );
  }
}

export interface BuildDatasetsOptions {
  /** Megatron's --data-path list: one prefix, or "w1 p1 w2 p2 ..." pairs. */
  dataPrefix: readonly string[];
  /** --split, e.g. "969, 30, 1". */
  splitString: string;
  trainValidTestNumSamples: readonly [number, number, number];
  seqLength: number;
  seed: number;
  /** Opens <prefix> as an indexed dataset (e.g. MMapIndexedDataset). */
  open: (prefix: string) => TokenDataset;
  /** The model's padded vocabulary size; every sample's ids are checked against it as it is read. */
  vocabSize?: number;
  cache?: boolean;
  log?: (line: string) => void;
}

export type GPTSplitDataset = GPTDataset | BlendableDataset<Int32Array>;

export interface TrainValidTestDatasets {
  train: GPTSplitDataset | null;
  valid: GPTSplitDataset | null;
  test: GPTSplitDataset | null;
}

const SPLIT_NAMES = ["train", "valid", "test"] as const;

function buildSingle(
  prefix: string,
  opts: BuildDatasetsOptions,
  numSamples: readonly [number, number, number],
): [GPTDataset | null, GPTDataset | null, GPTDataset | null] {
  const log = opts.log ?? (() => {});
  const indexed = opts.open(prefix);
  const total = indexed.sizes.length;
  const bounds = getTrainValidTestSplit(opts.splitString, total);
  log(` > dataset split for ${prefix}:`);
  const out: (GPTDataset | null)[] = [];
  for (let s = 0; s < 3; s++) {
    const [a, b] = [bounds[s], bounds[s + 1]];
    log(`    ${SPLIT_NAMES[s]}: document indices in [${a}, ${b}) total of ${b - a} documents`);
    if (b <= a) {
      out.push(null);
      continue;
    }
    const documents = new Int32Array(b - a);
    for (let i = 0; i < documents.length; i++) documents[i] = a + i;
    out.push(
      new GPTDataset({
        name: SPLIT_NAMES[s],
        dataPrefix: prefix,
        documents,
        indexed,
        numSamples: numSamples[s],
        seqLength: opts.seqLength,
        seed: opts.seed,
        ...(opts.vocabSize !== undefined ? { vocabSize: opts.vocabSize } : {}),
        cache: opts.cache,
        log: opts.log,
      }),
    );
  }
  return [out[0], out[1], out[2]];
}

/** Train/valid/test datasets of one model's samples: plain ones, or blends of them. */
export interface SplitDatasets<D, T> {
  train: D | BlendableDataset<T> | null;
  valid: D | BlendableDataset<T> | null;
  test: D | BlendableDataset<T> | null;
}

/**
 * The outer step of build_train_valid_test_datasets, shared by GPT, BERT and T5: one prefix gives
 * buildSingle's datasets as they are; weighted prefixes give one BlendableDataset per split, each part
 * asked for ceil(n * w * 1.005) samples.
 */
export function buildSplitsOrBlend<D extends SampleDataset<T>, T>(
  dataPrefix: readonly string[],
  trainValidTestNumSamples: readonly [number, number, number],
  buildSingle: (prefix: string, numSamples: readonly [number, number, number]) => readonly (D | null)[],
): SplitDatasets<D, T> {
  if (dataPrefix.length === 0) throw new Error("--data-path: expected at least one prefix, found none");
  if (dataPrefix.length === 1) {
    const [train, valid, test] = buildSingle(dataPrefix[0], trainValidTestNumSamples);
    return { train, valid, test };
  }
  const { prefixes, weights, numSamples } = getDatasetsWeightsAndNumSamples(
    dataPrefix,
    trainValidTestNumSamples,
  );
  const parts: D[][] = [[], [], []];
  for (let i = 0; i < prefixes.length; i++) {
    const ds = buildSingle(prefixes[i], numSamples[i]);
    for (let s = 0; s < 3; s++) {
      const d = ds[s];
      if (d !== null) parts[s].push(d);
    }
  }
  const blend = (s: number) => {
    if (parts[s].length === 0) return null;
    if (parts[s].length !== weights.length) {
      // Megatron asserts here too: a split that is empty in some datasets cannot be weighted.
      throw new Error(
        `--data-path: the ${SPLIT_NAMES[s]} split is empty in ${
          weights.length - parts[s].length
        } of ${weights.length} datasets; adjust --split`,
      );
    }
    return new BlendableDataset<T>(parts[s], weights);
  };
  return { train: blend(0), valid: blend(1), test: blend(2) };
}

/**
 * build_train_valid_test_datasets: one prefix gives plain GPTDatasets; weighted prefixes give one
 * BlendableDataset per split, each part asked for ceil(n * w * 1.005) samples.
 */
export function buildTrainValidTestDatasets(opts: BuildDatasetsOptions): TrainValidTestDatasets {
  return buildSplitsOrBlend<GPTDataset, Int32Array>(
    opts.dataPrefix,
    opts.trainValidTestNumSamples,
    (prefix, numSamples) => buildSingle(prefix, opts, numSamples),
  );
}
