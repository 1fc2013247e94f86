// `deno task pretrain:gpt [flags]`: GPT pretraining with Megatron-LM's flags. Without --data-path it
// trains the embedded default: a small GPT (GPT-2 BPE vocabulary) on the bundled State of the Union
// corpus, preprocessed on first use into the cache folder; flags given adjust that default.

import { ensureDefaultCorpus } from "../src/data/corpus.ts";
import type { FlagValues } from "../src/training/config.ts";
import { gptTask } from "../src/training/gpt_task.ts";
import type { TrainingTask } from "../src/training/task.ts";
import { embeddedDefault, type PretrainCommand, runPretrain } from "./pretrain.ts";

/** The embedded default: sized to finish in about 3 minutes on a 2-core CPU with OpenBLAS. */
export const EMBEDDED_DEFAULT: Partial<FlagValues> = {
  numLayers: 4,
  hiddenSize: 128,
  numAttentionHeads: 4,
  seqLength: 128,
  maxPositionEmbeddings: 128,
  microBatchSize: 8,
  globalBatchSize: 8,
  trainIters: 200,
  lr: 1e-3,
  minLr: 1e-4,
  lrDecayStyle: "cosine",
  lrWarmupFraction: 0.1, // 20 iterations of 200; a fraction keeps --train-iters N valid for any N
  weightDecay: 0.01,
  clipGrad: 1.0,
  evalInterval: 50,
  evalIters: 4,
  logInterval: 10,
  split: "90,5,5", // the bundled corpus has 233 documents: keep the test split non-empty
  tokenizerType: "GPT2BPETokenizer",
  seed: 1234,
  save: "checkpoints/gpt-sotu",
};

/** `megatron pretrain-gpt` / `deno task pretrain:gpt`. */
export const PRETRAIN_GPT: PretrainCommand = {
  name: "pretrain_gpt",
  task: gptTask as TrainingTask<unknown>,
  withoutDataPath: embeddedDefault({
    model: "GPT",
    tokenizerType: "GPT2BPETokenizer",
    corpusName: "GPT-2 BPE",
    corpus: (log) => ensureDefaultCorpus({ log }),
    defaults: EMBEDDED_DEFAULT,
  }),
};

/** `megatron pretrain-gpt` and `deno task pretrain:gpt`: a failure is one line and exit code 1. */
export function run(argv: string[]): Promise<void> {
  return runPretrain(PRETRAIN_GPT, argv);
}

if (import.meta.main) await run(Deno.args);
