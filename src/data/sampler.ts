// Which sample indices each data-parallel rank reads (Megatron's MegatronPretrainingSampler,
// --dataloader-type single), and how many samples training asks each split for.

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
