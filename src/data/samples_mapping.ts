// BERT/T5 samples mapping exactly as Megatron 2021 builds it (helpers.cpp build_mapping and
// dataset_utils.get_samples_mapping): each row is (first sentence, end sentence, target length);
// rows are cut from documents epoch after epoch until enough exist, then shuffled. The result is
// cached as a .npy next to the data under Megatron's file name, so caches are interchangeable.

import { readNpySync, writeNpySync } from "./npy.ts";
import { Mt19937, Mt19937_64 } from "./numpy_random.ts";

/** Documents with more than one sentence are skipped when any sentence is longer than this. */
export const LONG_SENTENCE_LEN = 512;

/** What the mapping needs from a sentence-level indexed dataset (sizes are per sentence). */
export interface SentenceSizes {
  readonly sizes: Int32Array;
}

export interface SamplesMappingOptions {
  /** Document boundaries in sentences for this split: docs[d]..docs[d+1] (absolute sentence ids). */
  docs: ArrayLike<number>;
  /** Tokens per sentence (the whole dataset). */
  sizes: Int32Array;
  /** null: as many epochs as needed (Megatron's int32 max - 1). */
  numEpochs: number | null;
  /** null: no sample cap (then numEpochs is required). */
  maxNumSamples: number | null;
  /** Longest target: seq_length - 3 (BERT) or - 2 (T5). */
  maxSeqLength: number;
  shortSeqProb: number;
  seed: number;
  /** 2 with BERT's binary head (segments A and B), else 1. */
  minNumSent: 1 | 2;
}

const INT32_MAX = 2147483647;

/** get_target_sample_len: one 32-bit draw per call; a short target with probability ~1/ratio. */
function targetLen(ratio: number, maxLen: number, rng: Mt19937): number {
  if (ratio === 0) return maxLen;
  const r = rng.nextUint32();
  // helpers.cpp does unsigned `%` on the raw word (no rejection), so this is exactly its draw.
  if (r % ratio === 0) return 2 + (r % (maxLen - 1));
  return maxLen;
}

/** C++ round(1.0 / p) (half away from zero; 1/p > 0 here, where Math.round agrees). */
function shortSeqRatio(p: number): number {
  return p > 0 ? Math.round(1 / p) : 0;
}

function validate(o: SamplesMappingOptions): void {
  if (!Number.isInteger(o.maxSeqLength) || o.maxSeqLength <= 1) {
    throw new Error(`samples mapping: expected a maximum target length > 1, found ${o.maxSeqLength}`);
  }
  if (!(o.shortSeqProb >= 0 && o.shortSeqProb <= 1)) {
    throw new Error(`--short-seq-prob: expected a probability in [0, 1], found ${o.shortSeqProb}`);
  }
  // helpers.cpp asserts seed > 0 (and takes it as int32).
  if (!Number.isInteger(o.seed) || o.seed <= 0 || o.seed > INT32_MAX - 1) {
    throw new Error(
      `--seed: the BERT/T5 samples mapping needs a seed in 1..${INT32_MAX - 1}, found ${o.seed}`,
    );
  }
  if (o.numEpochs === null && o.maxNumSamples === null) {
    throw new Error(
      "samples mapping: expected a number of epochs or a maximum number of samples, found neither",
    );
  }
  if (o.numEpochs !== null && (!Number.isInteger(o.numEpochs) || o.numEpochs <= 0)) {
    throw new Error(`samples mapping: expected a number of epochs >= 1, found ${o.numEpochs}`);
  }
  if (o.maxNumSamples !== null && (!Number.isSafeInteger(o.maxNumSamples) || o.maxNumSamples <= 0)) {
    throw new Error(`samples mapping: expected a maximum number of samples >= 1, found ${o.maxNumSamples}`);
  }
  const n = o.sizes.length;
  for (let d = 0; d < o.docs.length; d++) {
    const v = o.docs[d];
    if (!Number.isInteger(v) || v < 0 || v > n || (d > 0 && v < o.docs[d - 1])) {
      throw new Error(
        `samples mapping: doc_idx[${d}]=${v} is not a non-decreasing sentence index in 0..${n}`,
      );
    }
  }
}

/**
 * The passes of build_mapping over (epoch, document, sentence). `emit` is called per row; one fresh
 * std::mt19937(seed) per pass, one draw at each eligible document's start and after each row.
 */
function mappingPass(
  o: SamplesMappingOptions,
  emit: (start: number, end: number, target: number) => void,
): number {
  const rng = new Mt19937(o.seed);
  const ratio = shortSeqRatio(o.shortSeqProb);
  const epochs = o.numEpochs ?? INT32_MAX - 1;
  const cap = o.maxNumSamples ?? Number.MAX_SAFE_INTEGER;
  const { docs, sizes, minNumSent } = o;
  let count = 0;
  for (let epoch = 0; epoch < epochs; epoch++) {
    if (count >= cap) break;
    const before = count;
    for (let doc = 0; doc + 1 < docs.length; doc++) {
      const first = docs[doc];
      const last = docs[doc + 1];
      let remain = last - first;
      let long = false;
      if (remain > 1) {
        for (let s = first; s < last; s++) {
          if (sizes[s] > LONG_SENTENCE_LEN) {
            long = true;
            break;
          }
        }
      }
      if (remain < minNumSent || long) continue;
      let prevStart = first;
      let seqLen = 0;
      let numSent = 0;
      let target = targetLen(ratio, o.maxSeqLength, rng);
      for (let s = first; s < last; s++) {
        seqLen += sizes[s];
        numSent++;
        remain--;
        if ((seqLen >= target && remain > 1 && numSent >= minNumSent) || remain === 0) {
          emit(prevStart, s + 1, target);
          count++;
          prevStart = s + 1;
          target = targetLen(ratio, o.maxSeqLength, rng);
          seqLen = 0;
          numSent = 0;
        }
      }
    }
    // Megatron would loop for 2^31 epochs here; no document qualifies, so no sample can ever exist.
    if (count === before) {
      throw new Error(
        `samples mapping: no document has at least ${minNumSent} sentence(s) without a sentence over ` +
          `${LONG_SENTENCE_LEN} tokens, so no sample can be built (was the data preprocessed with --split-sentences?)`,
      );
    }
  }
  return count;
}

/**
 * helpers.cpp build_mapping: a [N, 3] uint32 array (flattened) of (start sentence, end sentence,
 * target length), shuffled by std::mt19937_64(seed + 1) with j = gen() % (i + 1) from the end.
 */
export function buildSamplesMapping(o: SamplesMappingOptions): Uint32Array {
  validate(o);
  if (o.sizes.length > 0xffffffff) {
    throw new Error(`samples mapping: more than 2^32 sentences (${o.sizes.length}) is not supported`);
  }
  const n = mappingPass(o, () => {});
  const maps = new Uint32Array(3 * n);
  let k = 0;
  mappingPass(o, (start, end, target) => {
    maps[k++] = start;
    maps[k++] = end;
    maps[k++] = target;
  });
  const rng = new Mt19937_64(o.seed + 1);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.nextMod(i + 1);
    for (let c = 0; c < 3; c++) {
      const t = maps[3 * i + c];
      maps[3 * i + c] = maps[3 * j + c];
      maps[3 * j + c] = t;
    }
  }
  return maps;
}

/** Python's '{:0.2f}': correctly rounded, ties (only x = m/8 with m odd) to even. */
export function formatFixed2(x: number): string {
  const m = x * 8;
  if (Number.isInteger(m) && Math.abs(m) % 2 === 1) {
    // x*100 is an exact half here; round it to the even neighbour.
    const h = x * 100;
    let r = Math.floor(h);
    if (r % 2 !== 0) r += 1;
    const sign = r < 0 ? "-" : "";
    const a = Math.abs(r);
    return `${sign}${Math.floor(a / 100)}.${String(a % 100).padStart(2, "0")}`;
  }
  return x.toFixed(2);
}

/** Megatron's cache name: <prefix>_<name>_indexmap_[<ep>ep_][<mns>mns_]<msl>msl_<ssp:.2f>ssp_<seed>s.npy */
export function samplesMappingFilename(
  dataPrefix: string,
  name: string,
  numEpochs: number | null,
  maxNumSamples: number | null,
  maxSeqLength: number,
  shortSeqProb: number,
  seed: number,
): string {
  let f = `${dataPrefix}_${name}_indexmap`;
  if (numEpochs !== null) f += `_${numEpochs}ep`;
  if (maxNumSamples !== null) f += `_${maxNumSamples}mns`;
  return f + `_${maxSeqLength}msl_${formatFixed2(shortSeqProb)}ssp_${seed}s.npy`;
}

export interface GetSamplesMappingOptions extends SamplesMappingOptions {
  /** Split name: "train" | "valid" | "test" (part of the cache name). */
  name: string;
  dataPrefix: string;
  /** Read and write the .npy cache (default true). */
  cache?: boolean;
  log?: (line: string) => void;
}

// Why a cached mapping cannot be this split's, or null when its rows fit. Megatron's name omits the
// binary head, so the sentence counts are checked too: with min 2 sentences no row may have one.
function cacheProblem(
  descr: string,
  shape: number[],
  data: Uint32Array,
  o: GetSamplesMappingOptions,
): string | null {
  if (descr !== "<u4" || shape.length !== 2 || shape[1] !== 3 || shape[0] < 1) {
    return `it is ${descr} ${JSON.stringify(shape)}, expected <u4 [N,3]`;
  }
  if (o.maxNumSamples !== null && shape[0] < o.maxNumSamples) {
    return `it has ${shape[0]} samples, fewer than the ${o.maxNumSamples} requested`;
  }
  const lo = o.docs[0];
  const hi = o.docs[o.docs.length - 1];
  for (let r = 0; r < shape[0]; r++) {
    const [s, e, t] = [data[3 * r], data[3 * r + 1], data[3 * r + 2]];
    if (s < lo || e > hi || e <= s || t < 2 || t > o.maxSeqLength) {
      return `row ${r} = (${s}, ${e}, ${t}) does not fit sentences [${lo}, ${hi}) and length ${o.maxSeqLength}`;
    }
    if (o.minNumSent === 2 && e - s < 2) {
      return `row ${r} has one sentence (built without the binary head?)`;
    }
  }
  return null;
}

function hasOneSentenceRow(m: Uint32Array): boolean {
  for (let r = 0; 3 * r < m.length; r++) if (m[3 * r + 1] - m[3 * r] === 1) return true;
  return false;
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function sameArray(a: Uint32Array, b: Uint32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * get_samples_mapping: loads the cache when it fits this split, else builds the mapping (and saves it
 * atomically when caching). Returns the flattened [N, 3] rows.
 */
export function getSamplesMapping(o: GetSamplesMappingOptions): Uint32Array {
  validate(o);
  const log = o.log ?? (() => {});
  const cache = o.cache ?? true;
  const file = samplesMappingFilename(
    o.dataPrefix,
    o.name,
    o.numEpochs,
    o.maxNumSamples,
    o.maxSeqLength,
    o.shortSeqProb,
    o.seed,
  );
  let cached: Uint32Array | null = null;
  if (cache && exists(file)) {
    let problem: string | null;
    try {
      const a = readNpySync(file);
      problem = a.data instanceof Uint32Array
        ? cacheProblem(a.descr, a.shape, a.data, o)
        : `it is ${a.descr}`;
      if (problem === null) cached = a.data as Uint32Array;
    } catch (e) {
      problem = (e as Error).message;
    }
    if (cached === null) {
      log(` > WARNING: ${file} does not fit this ${o.name} split (${problem}); rebuilding`);
    }
  } else if (cache) {
    log(` > could not find index map file ${file}, building it`);
  }
  // A one-sentence row proves a min-1 build; without one, a min-2 build (same name) cannot be told
  // apart, so that case is rebuilt and compared.
  if (cached !== null && (o.minNumSent === 2 || hasOneSentenceRow(cached))) {
    log(` > loaded ${o.name} samples mapping from ${file}: ${cached.length / 3} samples`);
    return cached;
  }
  const t0 = performance.now();
  let built: Uint32Array;
  try {
    built = buildSamplesMapping(o);
  } catch (e) {
    // Name the data: "samples mapping: ..." alone does not say which file or split.
    const msg = (e as Error).message;
    if (msg.startsWith("samples mapping:")) throw new Error(`${o.dataPrefix} (${o.name} split): ${msg}`);
    throw e;
  }
  log(
    ` > built ${o.name} samples mapping in ${((performance.now() - t0) / 1000).toFixed(3)} s: ` +
      `${built.length / 3} samples`,
  );
  if (cached !== null && sameArray(cached, built)) return cached;
  if (cached !== null) log(` > WARNING: ${file} differs from this ${o.name} split's mapping; replacing it`);
  if (cache) {
    try {
      writeNpySync(file, built, [built.length / 3, 3]);
    } catch (e) {
      log(` > WARNING: could not save ${file}: ${e}`);
    }
  }
  return built;
}
