// `deno task pretrain:bert [flags]`: BERT pretraining with Megatron-LM's flags (pretrain_bert.py).
// Without --data-path it trains a small BERT (bert-base-uncased vocabulary) on the bundled State of
// the Union corpus, split into sentences and BERT-tokenized on first use into the cache folder; flags
// given adjust that default.

import { ensureBertCorpus } from "../src/data/corpus.ts";
import { bertTask, bertTaskFor } from "../src/training/bert_task.ts";
import type { FlagValues } from "../src/training/config.ts";
import type { TrainingTask } from "../src/training/task.ts";
import { embeddedDefault, type PretrainCommand, runPretrain } from "./pretrain.ts";

/** The embedded default: a few minutes on a 2-core CPU. */
export const EMBEDDED_DEFAULT: Partial<FlagValues> = {
  numLayers: 2,
  hiddenSize: 128,
  numAttentionHeads: 4,
  seqLength: 128,
  maxPositionEmbeddings: 128,
  microBatchSize: 8,
  globalBatchSize: 8,
  trainIters: 100,
  lr: 1e-3,
  minLr: 1e-4,
  lrDecayStyle: "linear",
  lrWarmupFraction: 0.01,
  weightDecay: 0.01,
  clipGrad: 1.0,
  evalInterval: 50,
  evalIters: 4,
  logInterval: 10,
  split: "90,5,5",
  tokenizerType: "BertWordPieceLowerCase",
  seed: 1234,
  save: "checkpoints/bert-sotu",
};

/** `megatron pretrain-bert` / `deno task pretrain:bert`. */
export const PRETRAIN_BERT: PretrainCommand = {
  name: "pretrain_bert",
  task: bertTask as TrainingTask<unknown>,
  taskFor: (cfg) => bertTaskFor(cfg) as TrainingTask<unknown>,
  withoutDataPath: embeddedDefault({
    model: "BERT",
    tokenizerType: "BertWordPieceLowerCase",
    corpusName: "bert-base-uncased",
    corpus: (log) => ensureBertCorpus({ log }),
    defaults: EMBEDDED_DEFAULT,
  }),
};

/** A failure is one line and exit code 1, a bad flag exit code 2. */
export function run(argv: string[]): Promise<void> {
  return runPretrain(PRETRAIN_BERT, argv);
}

if (import.meta.main) await run(Deno.args);
