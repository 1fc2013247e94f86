// `deno task pretrain:gpt [flags]`: GPT pretraining with Megatron-LM's flags. Without --data-path it
// trains the embedded default: a small GPT (GPT-2 BPE vocabulary) on the bundled State of the Union
// corpus, preprocessed on first use into the cache folder; flags given adjust that default.

import { ensureDefaultCorpus } from "../src/data/corpus.ts";
import { type Config, ConfigError, flagName, type FlagValues, withDefaults } from "../src/training/config.ts";
import { gptTask } from "../src/training/gpt_task.ts";
import type { TrainingTask } from "../src/training/task.ts";
import { type PretrainCommand, runPretrain } from "./pretrain.ts";

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

/** No data of the user's: the embedded default, adjusted by whatever flags were given. */
async function embeddedDefault(cfg: Config): Promise<Config> {
  for (const k of ["tokenizerType", "vocabFile", "mergeFile", "vocabSize"] as const) {
    if (cfg.explicit.has(k) && !(k === "tokenizerType" && cfg[k] === "GPT2BPETokenizer")) {
      throw new ConfigError(
        `${flagName(k)}: the embedded default trains on the bundled GPT-2 BPE corpus; give --data-path ` +
          `to train on other data`,
      );
    }
  }
  const { prefix } = await ensureDefaultCorpus({ log: (l) => console.log(l) });
  const given = [...cfg.explicit].map((k) => {
    const v = (cfg as unknown as Record<string, unknown>)[k];
    return flagName(k) + (v === true ? "" : ` ${Array.isArray(v) ? v.join(" ") : String(v)}`);
  });
  cfg = withDefaults(cfg, { ...EMBEDDED_DEFAULT, dataPath: [prefix] });
  console.log(
    `> no --data-path: training the embedded default GPT on ${prefix}` +
      (given.length > 0 ? `; from the command line: ${given.join(", ")}` : ""),
  );
  return cfg;
}

/** `megatron pretrain-gpt` / `deno task pretrain:gpt`. */
export const PRETRAIN_GPT: PretrainCommand = {
  name: "pretrain_gpt",
  task: gptTask as TrainingTask<unknown>,
  withoutDataPath: embeddedDefault,
};

/** `megatron pretrain-gpt` and `deno task pretrain:gpt`: a failure is one line and exit code 1. */
export function run(argv: string[]): Promise<void> {
  return runPretrain(PRETRAIN_GPT, argv);
}

if (import.meta.main) await run(Deno.args);
