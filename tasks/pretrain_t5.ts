// `deno task pretrain:t5 [flags]`: T5 pretraining with Megatron-LM 2021's flags (pretrain_t5.py):
// --encoder-seq-length (or --seq-length), --decoder-seq-length, --vocab-extra-ids, --mask-prob,
// --short-seq-prob, a BERT WordPiece tokenizer and a sentence-level dataset (preprocess
// --split-sentences). Tensor and data parallelism; no pipeline parallelism (Megatron 2021 had none).
// Without --data-path it trains a small T5 on the bundled State of the Union corpus, split into
// sentences and BERT-tokenized on first use (the same cached build as pretrain:bert's default).

import { ensureBertCorpus } from "../src/data/corpus.ts";
import type { FlagValues } from "../src/training/config.ts";
import { t5Task } from "../src/training/t5_task.ts";
import type { TrainingTask } from "../src/training/task.ts";
import { embeddedDefault, type PretrainCommand, runPretrain } from "./pretrain.ts";

/** The embedded default: Megatron's T5 example scaled down to about a minute on a 2-core CPU. */
export const EMBEDDED_DEFAULT: Partial<FlagValues> = {
  numLayers: 2,
  hiddenSize: 128,
  numAttentionHeads: 4,
  kvChannels: 32,
  ffnHiddenSize: 384,
  encoderSeqLength: 128,
  decoderSeqLength: 32,
  maxPositionEmbeddings: 128,
  microBatchSize: 8,
  globalBatchSize: 16,
  trainIters: 20,
  lr: 1e-3,
  minLr: 1e-4,
  lrDecayStyle: "linear",
  lrWarmupFraction: 0.1,
  weightDecay: 0.01,
  clipGrad: 1.0,
  vocabExtraIds: 100,
  evalInterval: 10,
  evalIters: 2,
  logInterval: 5,
  split: "949,50,1",
  seed: 1234,
  save: "checkpoints/t5-sotu",
};

/** `megatron pretrain-t5` / `deno task pretrain:t5`. */
export const PRETRAIN_T5: PretrainCommand = {
  name: "pretrain_t5",
  task: t5Task as TrainingTask<unknown>,
  withoutDataPath: embeddedDefault({
    model: "T5",
    tokenizerType: "BertWordPieceLowerCase",
    corpusName: "bert-base-uncased",
    corpus: (log) => ensureBertCorpus({ log }),
    defaults: EMBEDDED_DEFAULT,
  }),
};

/** A bad flag is one line and exit code 2, a failure one line and exit code 1. */
export function run(argv: string[]): Promise<void> {
  return runPretrain(PRETRAIN_T5, argv);
}

if (import.meta.main) await run(Deno.args);
