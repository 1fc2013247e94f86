// Which sample indices each data-parallel rank reads (Megatron's MegatronPretrainingSampler,
// --dataloader-type single, and MegatronPretrainingRandomSampler, --dataloader-type cyclic), and how
// many samples training asks each split for.

import { Mt19937 } from "./numpy_random.ts";

export interface PretrainingSamplerOptions {
  /** Length of the dataset being walked. */
  totalSamples: number;
  /** Samples already consumed (all DP ranks together); resuming continues from here. */
  consumedSamples: number;
  microBatchSize: number;
  dataParallelRank: number;
  dataParallelSize: number;
  /** Drop the final partial block of micro*DP samples (Megatron's default, true). */
  dropLast?: boolean;
}

/**
 * Walks [consumedSamples, totalSamples) in blocks of microBatchSize*dataParallelSize; rank d gets
 * slice [d*micro, (d+1)*micro) of each block. One micro-batch of indices per iteration step.
 */
export class MegatronPretrainingSampler implements Iterable<number[]> {
  readonly totalSamples: number;
  readonly consumedSamples: number;
  readonly microBatchSize: number;
  readonly dataParallelRank: number;
  readonly dataParallelSize: number;
  readonly dropLast: boolean;

  constructor(opts: PretrainingSamplerOptions) {
    const { totalSamples, consumedSamples, microBatchSize, dataParallelRank, dataParallelSize } = opts;
    const int = (v: number) => Number.isSafeInteger(v);
    if (!int(totalSamples) || totalSamples <= 0) {
      throw new Error(`sampler: expected total samples > 0, found ${totalSamples} (no sample to consume)`);
    }
    if (!int(consumedSamples) || consumedSamples < 0 || consumedSamples >= totalSamples) {
      throw new Error(
        `sampler: expected consumed samples in [0, ${totalSamples}), found ${consumedSamples} (no samples left)`,
      );
    }
    if (!int(microBatchSize) || microBatchSize <= 0) {
      throw new Error(`--micro-batch-size: expected an integer > 0, found ${microBatchSize}`);
    }
    if (!int(dataParallelSize) || dataParallelSize <= 0) {
      throw new Error(`sampler: expected data-parallel size > 0, found ${dataParallelSize}`);
    }
    if (!int(dataParallelRank) || dataParallelRank < 0 || dataParallelRank >= dataParallelSize) {
      throw new Error(
        `sampler: expected data-parallel rank in [0, ${dataParallelSize}), found ${dataParallelRank}`,
      );
    }
    this.totalSamples = totalSamples;
    this.consumedSamples = consumedSamples;
    this.microBatchSize = microBatchSize;
    this.dataParallelRank = dataParallelRank;
    this.dataParallelSize = dataParallelSize;
    this.dropLast = opts.dropLast ?? true;
  }

  /** Megatron's __len__: the dataset length, not the number of batches. */
  get length(): number {
    return this.totalSamples;
  }

  /** Number of micro-batches this iterator yields. */
  get numBatches(): number {
    const block = this.microBatchSize * this.dataParallelSize;
    const left = this.totalSamples - this.consumedSamples;
    return Math.floor(left / block) + (!this.dropLast && left % block > 0 ? 1 : 0);
  }

  *[Symbol.iterator](): Generator<number[]> {
    const micro = this.microBatchSize;
    const block = micro * this.dataParallelSize;
    const first = this.dataParallelRank * micro;
    let start = this.consumedSamples;
    for (; start + block <= this.totalSamples; start += block) {
      const out = new Array<number>(micro);
      for (let i = 0; i < micro; i++) out[i] = start + first + i;
      yield out;
    }
    // The partial tail block, sliced the same way (so a rank may get fewer or no indices).
    if (!this.dropLast && start < this.totalSamples) {
      const out: number[] = [];
      for (let i = start + first; i < Math.min(start + first + micro, this.totalSamples); i++) out.push(i);
      yield out;
    }
  }
}

export interface SampleCountOptions {
  trainIters: number;
  globalBatchSize: number;
  evalInterval: number;
  evalIters: number;
  /** --train-samples (sample-based training) overrides trainIters*globalBatchSize for train. */
  trainSamples?: number;
}

/**
 * Samples requested from the train/valid/test datasets (training.py): train = train_iters*global
 * (or --train-samples), valid = (train_iters//eval_interval + 1)*eval_iters*global,
 * test = eval_iters*global. With --train-samples, pass the train_iters the ramp-up computed.
 */
export function trainValidTestNumSamples(opts: SampleCountOptions): [number, number, number] {
  const { trainIters, globalBatchSize, evalInterval, evalIters, trainSamples } = opts;
  const check = (v: number, flag: string, min: number) => {
    if (!Number.isSafeInteger(v) || v < min) {
      throw new Error(`${flag}: expected an integer >= ${min}, found ${v}`);
    }
  };
  check(trainIters, "--train-iters", 0);
  check(globalBatchSize, "--global-batch-size", 1);
  check(evalInterval, "--eval-interval", 1);
  check(evalIters, "--eval-iters", 0);
  if (trainSamples !== undefined) check(trainSamples, "--train-samples", 0);
  const train = trainSamples ?? trainIters * globalBatchSize;
  const evalCount = (Math.floor(trainIters / evalInterval) + 1) * evalIters;
  return [train, evalCount * globalBatchSize, evalIters * globalBatchSize];
}

/**
 * Consumed sample counts when resuming a checkpoint that predates their recording (training.py):
 * zero counts at iteration > 0 are reconstructed from the iteration (iteration-based runs only).
 */
export function resumeConsumedSamples(opts: {
  iteration: number;
  consumedTrainSamples: number;
  consumedValidSamples: number;
  globalBatchSize: number;
  evalInterval: number;
  evalIters: number;
  trainSamples?: number;
}): { consumedTrainSamples: number; consumedValidSamples: number } {
  let { consumedTrainSamples, consumedValidSamples } = opts;
  const iterationBased = opts.trainSamples === undefined;
  if (opts.iteration > 0 && consumedTrainSamples === 0) {
    if (!iterationBased) {
      throw new Error(
        "checkpoint: consumed train samples are 0 at iteration > 0; only iteration-based runs can be reconstructed",
      );
    }
    consumedTrainSamples = opts.iteration * opts.globalBatchSize;
  }
  if (opts.iteration > 0 && consumedValidSamples === 0 && iterationBased) {
    consumedValidSamples = Math.floor(opts.iteration / opts.evalInterval) * opts.evalIters *
      opts.globalBatchSize;
  }
  return { consumedTrainSamples, consumedValidSamples };
}

/**
 * torch.randperm(n, generator=g) on the CPU after g.manual_seed(seed): the identity permutation
 * shuffled front to back, swapping position i with i + (draw % (n - i)) for 32-bit MT19937 draws
 * (torch's CPU generator is MT19937 seeded as init_genrand(seed)).
 */
export function torchRandperm(n: number, seed: number): Int32Array {
  if (!Number.isSafeInteger(n) || n < 0 || n > 0x7fffffff) {
    throw new Error(`randperm: expected a length in [0, 2^31), found ${n}`);
  }
  const r = new Int32Array(n);
  for (let i = 0; i < n; i++) r[i] = i;
  const mt = new Mt19937(seed);
  for (let i = 0; i < n - 1; i++) {
    const z = i + (mt.nextUint32() % (n - i));
    const t = r[i];
    r[i] = r[z];
    r[z] = t;
  }
  return r;
}

export interface RandomSamplerOptions {
  totalSamples: number;
  microBatchSize: number;
  dataParallelSize: number;
  /** For error messages (e.g. "train"). */
  name?: string;
}

/**
 * Megatron's (2021) MegatronPretrainingRandomSampler, for --dataloader-type cyclic: each DP rank owns
 * a contiguous bucket of (total // (micro*dp)) * micro samples and walks it in the order of
 * torch.randperm(bucket, seed=epoch); an epoch is (total // (micro*dp)) * micro*dp consumed samples,
 * after which the data iterator starts over with the next epoch's permutation (cyclic_iter).
 */
export class MegatronPretrainingRandomSampler {
  readonly totalSamples: number;
  readonly microBatchSize: number;
  readonly dataParallelSize: number;
  /** Samples per DP rank per epoch. */
  readonly bucketSize: number;
  /** Samples consumed (all ranks) per epoch: total minus the last partial block. */
  readonly activeTotalSamples: number;
  #epoch = -1;
  #perm: Int32Array = new Int32Array(0);

  constructor(opts: RandomSamplerOptions) {
    const { totalSamples, microBatchSize, dataParallelSize } = opts;
    const block = microBatchSize * dataParallelSize;
    if (!Number.isSafeInteger(totalSamples) || totalSamples < block) {
      throw new Error(
        `--dataloader-type cyclic: the ${opts.name ?? ""}${opts.name ? " " : ""}split has ${totalSamples} ` +
          `samples, fewer than --micro-batch-size * data-parallel size = ${block}`,
      );
    }
    this.totalSamples = totalSamples;
    this.microBatchSize = microBatchSize;
    this.dataParallelSize = dataParallelSize;
    this.bucketSize = Math.floor(totalSamples / block) * microBatchSize;
    this.activeTotalSamples = totalSamples - (totalSamples % block);
  }

  /** The i-th sample index of the micro-batch DP rank `dpRank` reads after `consumed` samples (all
   *  ranks together; a multiple of micro*dp) were consumed. */
  sampleIndex(consumed: number, dpRank: number, i: number): number {
    const block = this.microBatchSize * this.dataParallelSize;
    const epoch = Math.floor(consumed / this.activeTotalSamples);
    const inEpoch = consumed % this.activeTotalSamples;
    if (inEpoch % block !== 0) {
      throw new Error(
        `cyclic sampler: consumed samples ${consumed} are not a multiple of micro*dp = ${block}`,
      );
    }
    if (epoch !== this.#epoch) {
      this.#perm = torchRandperm(this.bucketSize, epoch);
      this.#epoch = epoch;
    }
    return dpRank * this.bucketSize + this.#perm[inEpoch / this.dataParallelSize + i];
  }
}
