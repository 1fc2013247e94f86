// Blending several datasets by weight (`--data-path w1 p1 w2 p2 ...`), with Megatron 2021's greedy
// assignment so a blended run sees the same (dataset, sample) sequence as Megatron.

/** Anything indexable that yields samples. */
export interface SampleDataset<T> {
  readonly length: number;
  getItem(idx: number): T;
}

/** NumPy's float64 sum (np.sum / add.reduce on a contiguous array): pairwise with 8 accumulators. */
export function numpySum(a: ArrayLike<number>, start = 0, n = a.length): number {
  if (n < 8) {
    let res = 0;
    for (let i = 0; i < n; i++) res += a[start + i];
    return res;
  }
  if (n <= 128) {
    const r = [0, 0, 0, 0, 0, 0, 0, 0];
    for (let j = 0; j < 8; j++) r[j] = a[start + j];
    let i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (let j = 0; j < 8; j++) r[j] += a[start + i + j];
    }
    let res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += a[start + i];
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return numpySum(a, start, n2) + numpySum(a, start + n2, n - n2);
}

/**
 * helpers.cpp build_blending_indices: sample k goes to the dataset with the largest
 * w_i * max(k, 1) - used_i (first index wins ties). weights must already be normalized.
 */
export function buildBlendingIndices(
  weights: ArrayLike<number>,
  size: number,
): { datasetIndex: Uint8Array; datasetSampleIndex: Float64Array } {
  const m = weights.length;
  if (m < 1 || m >= 255) throw new Error(`blending: expected 1..254 datasets, found ${m}`);
  if (!Number.isSafeInteger(size) || size < 0) throw new Error(`blending: expected size >= 0, found ${size}`);
  const datasetIndex = new Uint8Array(size);
  const datasetSampleIndex = new Float64Array(size);
  const used = new Float64Array(m);
  for (let k = 0; k < size; k++) {
    const kk = Math.max(k, 1);
    let best = 0;
    let bestErr = weights[0] * kk - used[0];
    for (let i = 1; i < m; i++) {
      const err = weights[i] * kk - used[i];
      if (err > bestErr) {
        bestErr = err;
        best = i;
      }
    }
    datasetIndex[k] = best;
    datasetSampleIndex[k] = used[best];
    used[best] += 1;
  }
  return { datasetIndex, datasetSampleIndex };
}

/** Megatron's BlendableDataset: length = sum of the parts' lengths, order from buildBlendingIndices. */
export class BlendableDataset<T> implements SampleDataset<T> {
  readonly datasets: readonly SampleDataset<T>[];
  readonly weights: Float64Array;
  readonly length: number;
  readonly datasetIndex: Uint8Array;
  readonly datasetSampleIndex: Float64Array;

  constructor(datasets: readonly SampleDataset<T>[], weights: ArrayLike<number>) {
    if (datasets.length !== weights.length) {
      throw new Error(
        `BlendableDataset: expected one weight per dataset, found ${datasets.length} datasets and ${weights.length} weights`,
      );
    }
    this.datasets = datasets;
    let size = 0;
    for (const d of datasets) size += d.length;
    this.length = size;
    const w = Float64Array.from(weights);
    const sum = numpySum(w);
    if (!(sum > 0)) throw new Error(`BlendableDataset: expected weights with a positive sum, found ${sum}`);
    for (let i = 0; i < w.length; i++) w[i] /= sum;
    this.weights = w;
    const idx = buildBlendingIndices(w, size);
    this.datasetIndex = idx.datasetIndex;
    this.datasetSampleIndex = idx.datasetSampleIndex;
  }

  getItem(idx: number): T {
    if (!Number.isInteger(idx) || idx < 0 || idx >= this.length) {
      throw new Error(`BlendableDataset: expected a sample index in 0..${this.length - 1}, found ${idx}`);
    }
    return this.datasets[this.datasetIndex[idx]].getItem(this.datasetSampleIndex[idx]);
  }
}

/**
 * dataset_utils.get_datasets_weights_and_num_samples: parses ["w1", "p1", "w2", "p2", ...], normalizes
 * the weights and asks each dataset for ceil(n * w * 1.005) samples (0.5% headroom for blending).
 */
export function getDatasetsWeightsAndNumSamples(
  dataPrefix: readonly string[],
  trainValidTestNumSamples: readonly [number, number, number],
): { prefixes: string[]; weights: number[]; numSamples: [number, number, number][] } {
  if (dataPrefix.length % 2 !== 0) {
    throw new Error(
      `--data-path: expected "weight prefix" pairs, found an odd count (${dataPrefix.length}): ${
        dataPrefix.join(" ")
      }`,
    );
  }
  const weights: number[] = [];
  const prefixes: string[] = [];
  for (let i = 0; i < dataPrefix.length; i += 2) {
    const w = dataPrefix[i].trim();
    if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(w)) {
      throw new Error(`--data-path: expected a weight at position ${i + 1}, found '${dataPrefix[i]}'`);
    }
    weights.push(Number(w));
    prefixes.push(dataPrefix[i + 1].trim());
  }
  let sum = 0;
  for (const w of weights) sum += w;
  if (!(sum > 0)) throw new Error(`--data-path: expected weights with a positive sum, found ${sum}`);
  const norm = weights.map((w) => w / sum);
  const numSamples = norm.map((w) =>
    trainValidTestNumSamples.map((n) => Math.ceil(n * w * 1.005)) as [number, number, number]
  );
  return { prefixes, weights: norm, numSamples };
}
