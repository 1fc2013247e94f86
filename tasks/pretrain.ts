// The pretraining command line shared by every model (Megatron's pretrain_<model>.py scripts): parse
// the task's flags, optionally fill an embedded default, take the --save lock, pick the backend, run
// pretrain(task), print the summary. A model registers a command with a PretrainCommand (see
// tasks/pretrain_gpt.ts) and an entry in cli.ts.

import { selectBackend } from "../src/backend/cuda/select.ts";
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
import { devicePeak } from "../src/training/peak.ts";
import type { TrainingTask } from "../src/training/task.ts";
import { pretrain } from "../src/training/train.ts";
import { detectRank, type RankInfo, RankSourceError } from "../src/distributed/rank_source.ts";
import { joinTrainingWorld, type ProcessWorld } from "../src/training/process_world.ts";
import { watchNpmWrapper } from "./launcher_watch.ts";
import { holdSaveLock, signalStopRequest } from "./run_control.ts";
import { resolveTrainingPaths, userCwd } from "./user_paths.ts";

export interface PretrainCommand {
  /** Prefix of error lines and the lock's command ("pretrain_gpt"). */
  readonly name: string;
  readonly task: TrainingTask<unknown>;
  /** When the task depends on the validated flags (BERT's --bert-no-binary-head): the task to run;
   *  its flags must be `task.flags`. */
  readonly taskFor?: (cfg: Config) => TrainingTask<unknown>;
  /** Without --data-path: the config to train instead (an embedded default adjusted by the given
   *  flags), or undefined to leave --data-path required. May throw ConfigError. */
  readonly withoutDataPath?: (cfg: Config) => Promise<Config>;
}

/** What a model trains on when the user gives no --data-path: a bundled corpus and flag defaults. */
export interface EmbeddedDefault {
  /** "GPT", "BERT", "T5" (for the log line). */
  readonly model: string;
  /** The tokenizer the bundled corpus was tokenized with; other tokenizer flags are refused. */
  readonly tokenizerType: NonNullable<FlagValues["tokenizerType"]>;
  /** How the error line names the corpus ("GPT-2 BPE", "bert-base-uncased"). */
  readonly corpusName: string;
  /** Builds the corpus on first use (cached) and returns its --data-path prefix. */
  readonly corpus: (log: (line: string) => void) => Promise<{ prefix: string }>;
  readonly defaults: Partial<FlagValues>;
}

/** A PretrainCommand's withoutDataPath for an embedded default: the user's flags win, the default fills
 *  the rest, and the log line says which flags came from the command line. */
export function embeddedDefault(d: EmbeddedDefault): (cfg: Config) => Promise<Config> {
  return async (cfg) => {
    for (const k of ["tokenizerType", "vocabFile", "mergeFile", "vocabSize"] as const) {
      if (cfg.explicit.has(k) && !(k === "tokenizerType" && cfg[k] === d.tokenizerType)) {
        throw new ConfigError(
          `${flagName(k)}: the embedded default trains on the bundled ${d.corpusName} corpus; give ` +
            `--data-path to train on other data`,
        );
      }
    }
    const { prefix } = await d.corpus((l) => console.log(l));
    const given = [...cfg.explicit].map((k) => {
      const v = (cfg as unknown as Record<string, unknown>)[k];
      return flagName(k) + (v === true ? "" : ` ${Array.isArray(v) ? v.join(" ") : String(v)}`);
    });
    const out = withDefaults(cfg, { ...d.defaults, tokenizerType: d.tokenizerType, dataPath: [prefix] });
    console.log(
      `> no --data-path: training the embedded default ${d.model} on ${prefix}` +
        (given.length > 0 ? `; from the command line: ${given.join(", ")}` : ""),
    );
    return out;
  };
}

function fail(name: string, msg: string, code: number): never {
  console.error(`${name}: ${msg}`);
  Deno.exit(code);
}

/** Set once this process knows it is one rank of several: error lines then name the rank. */
interface ProcessRank {
  rank: number | null;
}

async function main(cmd: PretrainCommand, argv: string[], me: ProcessRank): Promise<void> {
  let cfg: Config;
  let task: TrainingTask<unknown>;
  let info: RankInfo;
  try {
    info = detectRank((k) => Deno.env.get(k), argv);
  } catch (e) {
    if (e instanceof RankSourceError) fail(cmd.name, e.message, 2);
    throw e;
  }
  if (info.worldSize > 1) me.rank = info.rank;
  try {
    cfg = parseArgs(argv);
    if (cfg.help) {
      console.log(helpText());
      return;
    }
    // One process per rank: the data-parallel size is what the world leaves after TP * PP (Megatron's
    // world_size // (tp * pp)) unless given.
    if (
      info.worldSize > 1 && cfg.distributedBackend !== "local" && !cfg.explicit.has("worldSize") &&
      !cfg.explicit.has("dataParallelSize")
    ) {
      const mp = cfg.tensorModelParallelSize * cfg.pipelineModelParallelSize;
      if (info.worldSize % mp !== 0) {
        throw new ConfigError(
          `world size ${info.worldSize} (rank source ${info.source}) is not divisible by ` +
            `--tensor-model-parallel-size (${cfg.tensorModelParallelSize}) * --pipeline-model-parallel-size ` +
            `(${cfg.pipelineModelParallelSize})`,
        );
      }
      cfg = parseArgs([...argv, "--world-size", String(info.worldSize)]);
    }
    if (cfg.dataPath === undefined && cmd.withoutDataPath) cfg = await cmd.withoutDataPath(cfg);
    cfg = validateForTraining(resolveTrainingPaths(cfg, userCwd()), cmd.task.flags);
    task = cmd.taskFor?.(cfg) ?? cmd.task;
    // The task's own flag checks are usage errors too (exit 2), reported before anything starts.
    task.validate?.(cfg);
  } catch (e) {
    if (e instanceof ConfigError) fail(cmd.name, e.message, 2);
    throw e;
  }

  const watch = watchNpmWrapper((l) => console.log(l));
  // Start-up lines from rank 0, the closing summary from the last rank (which holds the losses).
  const rank0 = info.worldSize === 1 || info.rank === 0;
  const lastRank = info.worldSize === 1 || info.rank === info.worldSize - 1;

  const { backend, note } = await selectBackend(cfg.device as "cpu" | "cuda" | "auto", {
    log: (l) => rank0 && console.log(l),
    // One process per GPU: each takes its node-local GPU.
    localRank: info.worldSize > 1 ? info.localRank : 0,
  });
  if (rank0) console.log(note);

  // Multi-process: check the world against the layout and agree on every flag (rank 0's store).
  const procWorld: ProcessWorld | null = await joinTrainingWorld(cfg, backend.name, {
    argv,
    log: (l) => console.log(l),
  });

  if (cfg.save && rank0) {
    // One process per rank: rank 0 holds the lock for the job (the others never write the tracker and
    // write their shards only inside rank 0's save); a per-process lock would make ranks fight.
    holdSaveLock(cfg.save, [cmd.name, ...argv], (l) => console.log(l));
  }
  // The others start only once rank 0 holds the lock (if it cannot, its exit fails this barrier).
  await procWorld?.store?.barrier("save-lock");

  const tty = Deno.stdout.isTerminal() && !cfg.noProgress;
  const enc = new TextEncoder();
  let statusShown = false;
  const clearStatus = () => {
    if (statusShown) Deno.stdout.writeSync(enc.encode("\r\x1b[2K"));
    statusShown = false;
  };
  const log = (line: string) => {
    clearStatus();
    console.log(line);
  };
  const progress = tty
    ? (s: string) => {
      Deno.stdout.writeSync(enc.encode(`\r\x1b[2K${s}`));
      statusShown = true;
    }
    : undefined;

  const peak = devicePeak(backend, cfg.paramsDtype);
  if (rank0) log(`> MFU is measured against ${peak.what}: ${(peak.flops / 1e12).toFixed(3)} TFLOP/s`);
  const result = await pretrain(task, cfg, {
    backend,
    log,
    progress,
    stopRequest: signalStopRequest(cfg.exitSignalHandler),
    peak,
    processWorld: procWorld,
  });
  clearStatus();
  const last = result.validation.at(-1);
  const first = result.validation[0];
  if (lastRank) {
    log(
      `done: ${result.iteration} iterations, ${result.tokensPerSecond.toFixed(0)} tokens/s` +
        (first && last && result.validation.length > 1
          ? `, validation loss ${first.loss.toFixed(3)} -> ${last.loss.toFixed(3)}`
          : last
          ? `, validation loss ${last.loss.toFixed(3)}`
          : ""),
    );
  }
  if (result.savedTo && rank0) log(`checkpoint saved in ${result.savedTo} (resume with --load ${cfg.save})`);
  watch.stop();
  if (cfg.exitSignalHandler) Deno.exit(0); // signal listeners would keep the process alive
}

/** Runs a pretraining command line: a bad flag is one line and exit code 2, a failure one line and 1. */
export async function runPretrain(cmd: PretrainCommand, argv: string[]): Promise<void> {
  const me: ProcessRank = { rank: null };
  try {
    await main(cmd, argv, me);
  } catch (e) {
    // One process per rank: the line names the rank that failed.
    fail(cmd.name, (me.rank === null ? "" : `rank ${me.rank}: `) + (e as Error).message, 1);
  }
}
