// Number of micro-batches per step: global batch / (micro batch * DP), either constant or following
// `--rampup-batch-size <start> <increment> <samples>`, where the global batch grows by `increment`
// every samples/((global - start)/increment) consumed samples until `samples` have been consumed.
// Also the iteration count of a sample-based run (Megatron's update_train_iters).

export interface NumMicroBatchesCalculator {
  /** Micro-batches per step for the consumed-sample count of the last update(). */
  readonly numMicroBatches: number;
  readonly currentGlobalBatchSize: number;
  /** Recompute for `consumedSamples`; with consistencyCheck (default true) the global batch must be a
   *  multiple of micro batch * DP. */
  update(consumedSamples: number, consistencyCheck?: boolean): void;
}

function fail(msg: string): never {
  throw new Error(`microbatches: ${msg}`);
}

function posInt(what: string, x: number): number {
  if (!Number.isInteger(x) || x <= 0) fail(`${what} must be an integer >= 1, found ${x}`);
  return x;
}

export class ConstantNumMicroBatches implements NumMicroBatchesCalculator {
  readonly numMicroBatches: number;
  readonly currentGlobalBatchSize: number;

  constructor(globalBatchSize: number, microBatchSize: number, dataParallelSize: number) {
    posInt("--global-batch-size", globalBatchSize);
    posInt("--micro-batch-size", microBatchSize);
    posInt("data-parallel size", dataParallelSize);
    const perStep = microBatchSize * dataParallelSize;
    if (globalBatchSize % perStep !== 0) {
      fail(
        `global batch size (${globalBatchSize}) is not divisible by micro batch size (${microBatchSize}) ` +
          `times data parallel size (${dataParallelSize})`,
      );
    }
    this.numMicroBatches = globalBatchSize / perStep;
    this.currentGlobalBatchSize = globalBatchSize;
  }

  update(_consumedSamples: number, _consistencyCheck = true): void {}
}

export class RampupBatchsizeNumMicroBatches implements NumMicroBatchesCalculator {
  readonly startBatchSize: number;
  readonly batchSizeIncrement: number;
  readonly rampupSamples: number;
  readonly globalBatchSize: number;
  readonly microBatchSize: number;
  readonly dataParallelSize: number;
  /** Consumed samples per increment of the global batch (a float, as in Megatron). */
  readonly rampupSamplesPerIncrement: number;
  #numMicroBatches = 0;
  #current = 0;

  constructor(
    startBatchSize: number,
    batchSizeIncrement: number,
    rampupSamples: number,
    globalBatchSize: number,
    microBatchSize: number,
    dataParallelSize: number,
  ) {
    this.startBatchSize = posInt("--rampup-batch-size start", startBatchSize);
    this.batchSizeIncrement = posInt("--rampup-batch-size increment", batchSizeIncrement);
    if (!Number.isInteger(rampupSamples) || rampupSamples < 0) {
      fail(`--rampup-batch-size samples must be an integer >= 0, found ${rampupSamples}`);
    }
    this.rampupSamples = rampupSamples;
    this.globalBatchSize = posInt("--global-batch-size", globalBatchSize);
    this.microBatchSize = posInt("--micro-batch-size", microBatchSize);
    this.dataParallelSize = posInt("data-parallel size", dataParallelSize);
    const diff = globalBatchSize - startBatchSize;
    if (diff < 0) {
      fail(`--rampup-batch-size start (${startBatchSize}) exceeds --global-batch-size (${globalBatchSize})`);
    }
    if (diff % batchSizeIncrement !== 0) {
      fail(
        `expected global batch size interval (${diff}) to be divisible by global batch size increment ` +
          `(${batchSizeIncrement})`,
      );
    }
    const increments = diff / batchSizeIncrement;
    // Megatron divides by zero here (start == global); say so instead.
    if (increments === 0) {
      fail(`--rampup-batch-size start (${startBatchSize}) equals --global-batch-size; nothing to ramp`);
    }
    this.rampupSamplesPerIncrement = rampupSamples / increments;
    this.update(0, false);
  }

  get numMicroBatches(): number {
    return this.#numMicroBatches;
  }

  get currentGlobalBatchSize(): number {
    return this.#current;
  }

  update(consumedSamples: number, consistencyCheck = true): void {
    if (!Number.isFinite(consumedSamples) || consumedSamples < 0) {
      fail(`consumed samples must be >= 0, found ${consumedSamples}`);
    }
    if (consumedSamples > this.rampupSamples) {
      this.#current = this.globalBatchSize;
    } else {
      const steps = Math.trunc(consumedSamples / this.rampupSamplesPerIncrement);
      this.#current = this.startBatchSize + steps * this.batchSizeIncrement;
      if (this.#current > this.globalBatchSize) {
        fail(`ramp-up batch size ${this.#current} exceeds --global-batch-size ${this.globalBatchSize}`);
      }
    }
    const perStep = this.microBatchSize * this.dataParallelSize;
    if (consistencyCheck && this.#current % perStep !== 0) {
      fail(
        `current global batch size (${this.#current}) is not divisible by micro-batch-size ` +
          `(${this.microBatchSize}) times data parallel size (${this.dataParallelSize})`,
      );
    }
    this.#numMicroBatches = Math.floor(this.#current / perStep);
  }
}

/** Flag values (names as in src/training/config.ts). */
export interface MicroBatchArgs {
  globalBatchSize: number;
  microBatchSize: number;
  dataParallelSize: number;
  /** [start, increment, samples] or absent. */
  rampupBatchSize?: readonly number[] | null;
}

export function buildNumMicroBatchesCalculator(args: MicroBatchArgs): NumMicroBatchesCalculator {
  const r = args.rampupBatchSize;
  if (r === undefined || r === null) {
    return new ConstantNumMicroBatches(args.globalBatchSize, args.microBatchSize, args.dataParallelSize);
  }
  if (r.length !== 3) {
    fail(
      `--rampup-batch-size: expected <start batch size> <batch size increment> <ramp-up samples>, found ${r.length} values`,
    );
  }
  return new RampupBatchsizeNumMicroBatches(
    r[0],
    r[1],
    r[2],
    args.globalBatchSize,
    args.microBatchSize,
    args.dataParallelSize,
  );
}

/** Training iterations: --train-iters as given, else Megatron's simulation for --train-samples
 *  (ramp-up steps while consumed <= ramp-up samples, then whole global batches; a partial last batch
 *  is dropped). */
export function computeTrainIters(
  args: MicroBatchArgs & { trainIters?: number | null; trainSamples?: number | null },
): number {
  if (args.trainIters !== undefined && args.trainIters !== null && args.trainIters > 0) {
    return args.trainIters;
  }
  const samples = args.trainSamples;
  if (samples === undefined || samples === null || !Number.isInteger(samples) || samples <= 0) {
    fail(`either --train-iters or --train-samples (an integer >= 1) is needed, found ${samples}`);
  }
  const r = args.rampupBatchSize;
  if (r === undefined || r === null) return Math.floor(samples / args.globalBatchSize);
  const calc = buildNumMicroBatchesCalculator(args);
  let iterations = 0;
  let consumed = 0;
  while (consumed <= r[2]) {
    calc.update(consumed, false);
    consumed += calc.currentGlobalBatchSize;
    iterations += 1;
  }
  // Megatron floors toward -inf here (Python //); it only matters if the ramp overshoots train-samples.
  return iterations + Math.floor((samples - consumed) / args.globalBatchSize);
}
