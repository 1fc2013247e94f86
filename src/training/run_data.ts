// What a training run reads, computed from its flags alone: the tokenizer and padded vocabulary, the
// train/valid/test sample counts the datasets are built for, how many of them the run consumes, and
// which dataset index the run reads at each position of a split. pretrain() (train.ts) and
// `inspect-data` (tasks/inspect_data.ts) both use these, so what inspect-data shows is what training
// reads.

import { padVocabSize } from "../models/mod.ts";
import { MegatronPretrainingRandomSampler, trainValidTestNumSamples } from "../data/sampler.ts";
import { buildNumMicroBatchesCalculator, computeTrainIters } from "../optimizer/microbatches.ts";
import { buildTokenizer } from "../tokenizer/mod.ts";
import type { Config } from "./config.ts";
import type { TaskContext } from "./task.ts";

/** The tokenizer the flags name and the vocabulary padded for TP, as the task sees them. */
export async function buildTaskContext(cfg: Config, log: (line: string) => void): Promise<TaskContext> {
  const tokenizer = await buildTokenizer({
    tokenizerType: cfg.tokenizerType as never,
    vocabFile: cfg.vocabFile,
    mergeFile: cfg.mergeFile,
    vocabExtraIds: cfg.vocabExtraIds,
    vocabSize: cfg.vocabSize,
  });
  const paddedVocab = padVocabSize(
    tokenizer.vocabSize,
    cfg.makeVocabSizeDivisibleBy,
    cfg.tensorModelParallelSize,
  );
  log(
    `> padded vocab (size: ${tokenizer.vocabSize}) with ${paddedVocab - tokenizer.vocabSize} dummy tokens ` +
      `(new size: ${paddedVocab})`,
  );
  return { cfg, paddedVocab, tokenizer, log };
}

export type Subset = "train" | "valid" | "test";

export interface RunSampleCounts {
  /** Iterations of the run (--train-iters, or derived from --train-samples and the ramp-up). */
  trainIters: number;
  /** What the datasets are built for (Megatron's train_val_test_num_samples). */
  requested: [number, number, number];
  /** Samples the run actually reads from each split, from its first position on: train, the sum of
   *  the global batches of every iteration; valid, eval-iters global batches per evaluation (every
   *  --eval-interval iterations and once at the end unless the last iteration evaluated); test, one
   *  evaluation. */
  consumed: Record<Subset, number>;
}

/** The sample counts of a run with these (validated) flags, as pretrain() computes them. */
export function runSampleCounts(cfg: Config): RunSampleCounts {
  const gbs = cfg.globalBatchSize!;
  const mbArgs = {
    globalBatchSize: gbs,
    microBatchSize: cfg.microBatchSize!,
    dataParallelSize: cfg.dataParallelSize,
    rampupBatchSize: cfg.rampupBatchSize ?? null,
  };
  const trainIters = computeTrainIters({
    ...mbArgs,
    trainIters: cfg.trainIters,
    trainSamples: cfg.trainSamples,
  });
  const requested = trainValidTestNumSamples({
    trainIters,
    globalBatchSize: gbs,
    evalInterval: cfg.evalInterval,
    evalIters: cfg.evalIters,
    trainSamples: cfg.trainSamples,
  });
  // The loop's batches, ramp-up included.
  const calc = buildNumMicroBatchesCalculator(mbArgs);
  let train = 0;
  for (let it = 0; it < trainIters; it++) {
    calc.update(train, false);
    train += calc.currentGlobalBatchSize;
  }
  const evals = Math.floor(trainIters / cfg.evalInterval) + (trainIters % cfg.evalInterval === 0 ? 0 : 1);
  return {
    trainIters,
    requested,
    consumed: { train, valid: evals * cfg.evalIters * gbs, test: cfg.evalIters * gbs },
  };
}

/**
 * The dataset index the run reads at each position of one split: Megatron's samplers
 * (--dataloader-type single: position k is index k; cyclic: MegatronPretrainingRandomSampler's
 * per-rank permutations). Positions run over the global batches in order, each global batch as
 * micro-batch, then data-parallel rank, then sample within the micro-batch.
 */
export class SplitOrder {
  readonly #micro: number;
  readonly #dp: number;
  readonly #random: MegatronPretrainingRandomSampler | null;

  constructor(cfg: Config, length: number, name: string) {
    this.#micro = cfg.microBatchSize!;
    this.#dp = cfg.dataParallelSize;
    this.#random = cfg.dataloaderType === "cyclic"
      ? new MegatronPretrainingRandomSampler({
        totalSamples: length,
        microBatchSize: this.#micro,
        dataParallelSize: this.#dp,
        name,
      })
      : null;
  }

  /** Sample i of DP rank d's micro-batch read after `consumed` samples (a multiple of micro*dp). */
  index(consumed: number, d: number, i: number): number {
    if (!this.#random) return consumed + d * this.#micro + i; // single: sequential blocks of micro*dp
    return this.#random.sampleIndex(consumed, d, i);
  }

  /** The index at global position k of the split. */
  at(k: number): number {
    const block = this.#micro * this.#dp;
    const r = k % block;
    return this.index(k - r, Math.floor(r / this.#micro), r % this.#micro);
  }
}
