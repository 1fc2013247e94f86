// `deno task finetune --task RACE|MNLI|QQP --train-data PATH... --valid-data PATH...
// --pretrained-checkpoint DIR --epochs N <training flags>`: Megatron 2021's tasks/main.py finetuning
// of a BERT on RACE (multiple choice) or MNLI / QQP (classification). The task flags are Megatron's
// (tasks/main.py); the rest are the training flags. Without architecture flags the model's shape and
// tokenizer come from the checkpoint (--load when it has one, else --pretrained-checkpoint).
// A bad flag is one line and exit code 2, a failure one line and exit code 1.

import { resolve } from "node:path";
import { selectBackend } from "../src/backend/cuda/select.ts";
import { evaluationOnlyProblem, finetune, type FinetuneOptions } from "../src/finetune/finetune.ts";
import { FINETUNE_FLAGS, FINETUNE_TASKS, type FinetuneTaskName } from "../src/finetune/task.ts";
import { iterDirName, rankDirName, readTracker } from "../src/training/checkpoint.ts";
import {
  type Config,
  ConfigError,
  flagName,
  type FlagValues,
  helpText,
  parseArgs,
  validateForTraining,
  withDefaults,
} from "../src/training/config.ts";
import { holdSaveLock, signalStopRequest } from "./run_control.ts";
import { resolveTrainingPaths, userCwd } from "./user_paths.ts";

const NAME = "finetune";

/** tasks/main.py's own flags. */
const TASK_FLAGS = [
  "--task",
  "--train-data",
  "--valid-data",
  "--pretrained-checkpoint",
  "--epochs",
  "--keep-last",
];

/** Training flags that a finetuning run derives itself or does not read. */
const NOT_HERE: Partial<Record<keyof FlagValues, string>> = {
  trainIters: "the iterations are --epochs x (training samples / --global-batch-size)",
  trainSamples: "the iterations are --epochs x (training samples / --global-batch-size)",
  rampupBatchSize: "finetuning uses one --global-batch-size",
  dataPath: "finetuning reads --train-data and --valid-data",
  split: "finetuning reads --train-data and --valid-data",
  evalIters: "evaluation covers every --valid-data sample",
  dataloaderType: "each epoch is a shuffle of the training samples (seeded by --seed + epoch)",
  finetune: "start from a pretrained BERT with --pretrained-checkpoint; --load resumes a finetuning run",
  bertNoBinaryHead: "the finetuning model has the pooler and a task head, no binary head",
  tensorboardDir: "finetune logs to the console and --metrics-file (JSON lines), not TensorBoard",
  logTimersToTensorboard: "finetune writes no TensorBoard events",
  logBatchSizeToTensorboard: "finetune writes no TensorBoard events",
  logValidationPplToTensorboard: "finetune writes no TensorBoard events",
  tensorboardLogInterval: "finetune writes no TensorBoard events",
  tensorboardQueueSize: "finetune writes no TensorBoard events",
  noLogLearnigRateToTensorboard: "finetune writes no TensorBoard events",
  noLogLossScaleToTensorboard: "finetune writes no TensorBoard events",
};

/** Fields a checkpoint's args give the run when their flags are not on the command line. */
const FROM_CHECKPOINT: readonly (keyof FlagValues)[] = [
  "numLayers",
  "hiddenSize",
  "numAttentionHeads",
  "ffnHiddenSize",
  "kvChannels",
  "maxPositionEmbeddings",
  "makeVocabSizeDivisibleBy",
  "layernormEpsilon",
  "applyResidualConnectionPostLayernorm",
  "tokenizerType",
  "vocabFile",
  "seqLength",
  "tensorModelParallelSize",
  "pipelineModelParallelSize",
];

export const USAGE = [
  "usage: deno task finetune --task RACE|MNLI|QQP --train-data PATH... --valid-data PATH...",
  "         [--pretrained-checkpoint DIR] --epochs N [--keep-last] <training flags>",
  "",
  "finetuning (tasks/main.py):",
  "  --task {RACE,MNLI,QQP}     RACE: multiple choice (4 options); MNLI: 3 classes; QQP: 2 classes",
  "  --train-data PATH...       MNLI/QQP .tsv files, or RACE folders of *.txt (e.g. RACE/train/middle)",
  "  --valid-data PATH...       validation sets, each reported on its own (accuracy per epoch)",
  "  --pretrained-checkpoint D  a megatron-deno BERT checkpoint: its language model and pooler",
  "  --epochs N                 passes over the training data (0: evaluate --load on --valid-data only,",
  "                             writing Megatron's predictions_<sets>.pt into the --load folder)",
  "  --keep-last                keep the last partial global batch of an epoch (filled from its start)",
  "",
  "The best epoch's checkpoint is kept in <save>/best/ (best.json says which epoch and accuracy).",
  "",
].join("\n");

export interface FinetuneArgs {
  opts: FinetuneOptions;
  rest: string[];
}

/** Take tasks/main.py's flags out of argv; the rest are training flags. */
export function splitArgs(argv: readonly string[], cwd: string): FinetuneArgs {
  const rest: string[] = [];
  let task: string | undefined, pretrained: string | undefined, epochs: number | undefined;
  let train: string[] | undefined, valid: string[] | undefined, keepLast = false;
  const values = (i: number, flag: string) => {
    const out: string[] = [];
    while (i + 1 < argv.length && !argv[i + 1].startsWith("--")) out.push(argv[++i]);
    if (out.length === 0) throw new ConfigError(`${flag}: missing value`);
    return { out, i };
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, eq] = argv[i].includes("=") ? argv[i].split(/=(.*)/s, 2) : [argv[i], undefined];
    if (!TASK_FLAGS.includes(flag)) {
      rest.push(argv[i]);
      continue;
    }
    if (flag === "--keep-last") {
      if (eq !== undefined) throw new ConfigError(`--keep-last: takes no value, found ${JSON.stringify(eq)}`);
      keepLast = true;
      continue;
    }
    let vals: string[];
    if (eq !== undefined) vals = [eq];
    else ({ out: vals, i } = values(i, flag));
    const many = flag === "--train-data" || flag === "--valid-data";
    if (!many && vals.length > 1) {
      throw new ConfigError(`${flag}: expected one value, found ${vals.join(" ")}`);
    }
    if (flag === "--task") task = vals[0];
    else if (flag === "--pretrained-checkpoint") pretrained = resolve(cwd, vals[0]);
    else if (flag === "--epochs") {
      if (!/^\d+$/.test(vals[0])) {
        throw new ConfigError(
          `--epochs: expected a non-negative integer (0: evaluate --load only), found ${
            JSON.stringify(vals[0])
          }`,
        );
      }
      epochs = Number(vals[0]);
    } else if (flag === "--train-data") train = [...(train ?? []), ...vals.map((v) => resolve(cwd, v))];
    else valid = [...(valid ?? []), ...vals.map((v) => resolve(cwd, v))];
  }
  if (task === undefined) throw new ConfigError("--task is required (RACE, MNLI or QQP)");
  if (!(FINETUNE_TASKS as readonly string[]).includes(task)) {
    throw new ConfigError(
      `--task: expected one of ${FINETUNE_TASKS.join(", ")}, found ${JSON.stringify(task)}`,
    );
  }
  if (epochs === undefined) throw new ConfigError("--epochs is required");
  if (train === undefined && epochs > 0) throw new ConfigError("--train-data is required");
  return {
    opts: {
      task: task as FinetuneTaskName,
      trainData: train ?? [],
      validData: valid ?? [],
      ...(pretrained !== undefined ? { pretrainedCheckpoint: pretrained } : {}),
      epochs,
      keepLast,
    },
    rest,
  };
}

/** The args of a checkpoint folder's newest iteration (TP rank 0, first stage), or null. */
function checkpointArgs(dir: string, flag: string): Record<string, unknown> | null {
  const t = readTracker(dir);
  if (t === null) return null;
  const iter = `${dir}/${iterDirName(t.release ? "release" : t.iteration)}`;
  for (const ppSize of [1, 2]) {
    const meta = `${iter}/${rankDirName(0, 0, ppSize)}/meta.json`;
    try {
      return (JSON.parse(Deno.readTextFileSync(meta)).args ?? {}) as Record<string, unknown>;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue;
      throw new Error(`${flag} ${dir}: ${meta}: ${(e as Error).message}`);
    }
  }
  throw new Error(`${flag} ${dir}: ${iter} has no mp_rank_00 or mp_rank_00_000 folder`);
}

/** The validated training config: flags, then the checkpoint's architecture for what is not given. */
export function finetuneConfig(a: FinetuneArgs, cwd: string): Config {
  let cfg = parseArgs(a.rest);
  for (const k of Object.keys(NOT_HERE) as (keyof FlagValues)[]) {
    if (cfg.explicit.has(k)) throw new ConfigError(`${flagName(k)}: not a flag of finetune; ${NOT_HERE[k]}`);
  }
  cfg = resolveTrainingPaths(cfg, cwd);
  const problem = a.opts.epochs === 0 ? evaluationOnlyProblem(cfg.load, a.opts.validData) : null;
  if (problem) throw new ConfigError(problem);
  const load = cfg.load && readTracker(cfg.load) !== null ? cfg.load : undefined;
  const source = load ?? a.opts.pretrainedCheckpoint;
  const args = source ? checkpointArgs(source, load ? "--load" : "--pretrained-checkpoint") : null;
  if (source && !load && args === null) {
    throw new Error(
      `--pretrained-checkpoint ${source}: no checkpoint there (no latest_checkpointed_iteration.txt)`,
    );
  }
  const base: Partial<FlagValues> = { trainIters: 1, dataPath: a.opts.trainData };
  // Evaluation only (--epochs 0) takes no optimizer step: --lr is not needed.
  if (a.opts.epochs === 0) base.lr = 0;
  if (args) {
    for (const k of FROM_CHECKPOINT) {
      if (args[k] !== undefined && args[k] !== null) (base as Record<string, unknown>)[k] = args[k];
    }
  }
  const tt = args?.tokenizerType;
  if (source && typeof tt === "string" && !tt.startsWith("Bert") && !cfg.explicit.has("tokenizerType")) {
    throw new Error(
      `${load ? "--load" : "--pretrained-checkpoint"} ${source}: a ${tt} model; finetuning needs a BERT ` +
        `(BertWordPieceLowerCase or BertWordPieceCase)`,
    );
  }
  base.tokenizerType ??= "BertWordPieceLowerCase";
  return validateForTraining(withDefaults(cfg, base), FINETUNE_FLAGS);
}

function fail(msg: string, code: number): never {
  console.error(`${NAME}: ${msg}`);
  Deno.exit(code);
}

async function run(argv: string[]): Promise<void> {
  const cwd = userCwd();
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(USAGE + helpText().replace(/^usage:.*\n/, "training flags:\n"));
    return;
  }
  let cfg: Config, a: FinetuneArgs;
  try {
    a = splitArgs(argv, cwd);
    cfg = finetuneConfig(a, cwd);
  } catch (e) {
    if (e instanceof ConfigError) fail(e.message, 2);
    throw e;
  }
  if (cfg.save) holdSaveLock(cfg.save, [NAME, ...argv], (l) => console.log(l));
  const { backend, note } = await selectBackend(cfg.device as "cpu" | "cuda" | "auto", {
    log: (l) => console.log(l),
  });
  console.log(note);
  const r = await finetune(cfg, a.opts, {
    backend,
    log: (l) => console.log(l),
    stopRequest: signalStopRequest(cfg.exitSignalHandler),
  });
  console.log(
    r.predictionsFile
      ? `done: evaluated the checkpoint of iteration ${r.iteration}`
      : `done: ${r.iteration} iterations (${r.itersPerEpoch} per epoch)`,
  );
  if (cfg.exitSignalHandler) Deno.exit(0);
}

/** `megatron finetune` / `deno task finetune`. */
export async function main(argv: string[]): Promise<number> {
  try {
    await run(argv);
  } catch (e) {
    fail((e as Error).message, e instanceof ConfigError ? 2 : 1);
  }
  return 0;
}

if (import.meta.main) await main(Deno.args);
