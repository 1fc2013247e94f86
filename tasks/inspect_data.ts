// `deno task inspect-data --dataset-type gpt|bert|t5 <pretraining flags> --subset train|valid|test
// --num-samples N [--start I] [--output samples.jsonl] [--decode]`: the samples a training run with
// those flags reads, in the order it reads them, one JSON object per line under Megatron's field names
// (the task's sampleJson). The datasets are built for the sample counts pretrain() asks for and indexed
// through the same sampler (src/training/run_data.ts), so the output is what the model is fed.

import { resolve } from "node:path";
import {
  type Config,
  ConfigError,
  editDistance,
  flagKeys,
  flagName,
  helpText,
  parseArgs,
  type TaskFlags,
  validateForTraining,
} from "../src/training/config.ts";
import { processToken } from "../src/training/process.ts";
import { buildTaskContext, runSampleCounts, SplitOrder, type Subset } from "../src/training/run_data.ts";
import type { TrainingTask } from "../src/training/task.ts";
import { resolveTrainingPaths, userCwd } from "./user_paths.ts";

/** A --dataset-type's task; `forConfig` picks a variant from the validated flags (BERT's
 *  --bert-no-binary-head) after `task.flags` validated them. */
export interface LoadedTask {
  task: TrainingTask<unknown>;
  forConfig?: (cfg: Config) => TrainingTask<unknown>;
}

/** Loads the task of one --dataset-type; null when its module is not part of this checkout. */
export type TaskLoader = () => Promise<LoadedTask | null>;

/** A task module that may be absent: null only when that very file is missing (a module that is there
 *  but fails to load is an error of its own). */
async function optionalTask(
  path: string,
  taskExport: string,
  forConfigExport?: string,
): Promise<LoadedTask | null> {
  const url = new URL(path, import.meta.url).href;
  let mod: Record<string, unknown>;
  try {
    // A computed specifier: the type-check does not require the file to exist.
    mod = await import(url);
  } catch (e) {
    const err = e as Error & { code?: string };
    if (err.code === "ERR_MODULE_NOT_FOUND" && err.message.includes(`"${url}"`)) return null;
    throw e;
  }
  const task = mod[taskExport] as TrainingTask<unknown> | undefined;
  if (!task) throw new Error(`${path}: exports no ${taskExport}`);
  const forConfig = forConfigExport ? mod[forConfigExport] as LoadedTask["forConfig"] : undefined;
  return { task, ...(forConfig ? { forConfig } : {}) };
}

/** --dataset-type -> task. A new model adds one line. */
export const DATASET_TYPES: Record<string, TaskLoader> = {
  gpt: async () => ({ task: (await import("../src/training/gpt_task.ts")).gptTask as TrainingTask<unknown> }),
  bert: () => optionalTask("../src/training/bert_task.ts", "bertTask", "bertTaskFor"),
  t5: () => optionalTask("../src/training/t5_task.ts", "t5Task"),
};

const SUBSETS: readonly Subset[] = ["train", "valid", "test"];

export interface InspectOptions {
  subset: Subset;
  numSamples: number;
  start: number;
  decode: boolean;
}

/** One sample as inspect-data reads it: its position in the split's order, its dataset index, and
 *  the task's JSON of it. */
export interface InspectedSample {
  position: number;
  index: number;
  json: Record<string, unknown>;
}

/**
 * The samples at positions [start, start + numSamples) of a split of the run `cfg` (validated) describes,
 * passed to `each` in order. Fails before the first one when the range is outside what the run reads.
 */
export async function inspectSamples(
  task: TrainingTask<unknown>,
  cfg: Config,
  opts: InspectOptions,
  log: (line: string) => void,
  each: (s: InspectedSample) => void,
): Promise<{ subsetSize: number }> {
  const sampleJson = task.sampleJson;
  if (!sampleJson) throw new ConfigError(`--dataset-type ${task.name}: this task has no sampleJson`);
  const ctx = await buildTaskContext(cfg, log);
  const counts = runSampleCounts(cfg);
  const size = counts.consumed[opts.subset];
  const why = opts.subset === "train" ? "" : size === 0 ? ` (--eval-iters ${cfg.evalIters})` : "";
  if (opts.start >= size) {
    throw new ConfigError(
      `--start ${opts.start}: beyond the ${opts.subset} subset, which has ${size} samples${why}`,
    );
  }
  if (opts.start + opts.numSamples > size) {
    throw new ConfigError(
      `--num-samples ${opts.numSamples}: from --start ${opts.start} it runs past the ${opts.subset} subset, ` +
        `which has ${size} samples`,
    );
  }
  const data = task.buildDatasets(ctx, counts.requested);
  try {
    const source = data[opts.subset];
    if (!source) {
      throw new ConfigError(
        `--subset ${opts.subset}: --split ${cfg.split} leaves the ${opts.subset} split empty`,
      );
    }
    const order = new SplitOrder(cfg, source.length, opts.subset === "valid" ? "validation" : opts.subset);
    for (let k = opts.start; k < opts.start + opts.numSamples; k++) {
      const index = order.at(k);
      each({
        position: k,
        index,
        json: sampleJson.call(task, ctx, source.getItem(index), { decode: opts.decode }),
      });
    }
  } finally {
    data.close();
  }
  return { subsetSize: size };
}

interface OwnFlags extends InspectOptions {
  datasetType: string;
  output: string | null;
  help: boolean;
}

const OWN_HELP = [
  "usage: deno task inspect-data --dataset-type gpt|bert|t5 <pretraining flags> --subset train|valid|test",
  "                              --num-samples N [--start I] [--output FILE] [--decode]",
  "",
  "Prints the samples the training run with these flags reads, in its order, one JSON object per line",
  "(Megatron's field names). The pretraining flags are the pretrain command's own and are required as",
  "there; the sample counts follow --train-iters/--train-samples, --eval-interval, --eval-iters and the",
  "batch sizes exactly as in training.",
  "",
  "  --dataset-type TYPE   which model's samples: " + Object.keys(DATASET_TYPES).join(", "),
  "  --subset NAME         train, valid or test",
  "  --num-samples N       how many samples to print (an integer >= 1)",
  "  --start I             first position in the subset's order (default 0)",
  "  --output FILE         write the lines to FILE (written whole, then renamed into place)",
  "  --decode              add the detokenized text beside the token ids (GPT: text_decoded)",
  "",
  "Pretraining flags:",
].join("\n");

/** A misspelt flag of inspect-data's own is named as such, not as the nearest training flag. */
function nearOwnFlag(flag: string, own: readonly string[]): void {
  if (!flag.startsWith("--")) return;
  const dist = (names: readonly string[]) => Math.min(...names.map((n) => editDistance(flag, n)));
  const training = flagKeys().map(flagName);
  if (training.includes(flag)) return;
  const d = dist(own);
  if (d <= 2 && d < dist(training)) {
    throw new ConfigError(
      `unknown flag ${flag}; did you mean ${own.find((n) => editDistance(flag, n) === d)}?`,
    );
  }
}

/** Takes inspect-data's own flags out of argv; the rest are pretraining flags. */
function splitArgs(
  argv: readonly string[],
  types: Record<string, TaskLoader>,
): { own: OwnFlags; rest: string[] } {
  const given = new Map<string, string | true>();
  const rest: string[] = [];
  const valued = ["--dataset-type", "--subset", "--num-samples", "--start", "--output"];
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i];
    const eq = tok.indexOf("=");
    const flag = eq < 0 ? tok : tok.slice(0, eq);
    if (flag === "--decode") {
      if (eq >= 0) {
        throw new ConfigError(`--decode: takes no value, found ${JSON.stringify(tok.slice(eq + 1))}`);
      }
      given.set(flag, true);
    } else if (valued.includes(flag)) {
      let v: string;
      if (eq >= 0) v = tok.slice(eq + 1);
      else if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) v = argv[++i];
      else throw new ConfigError(`${flag}: missing value`);
      given.set(flag, v);
    } else {
      nearOwnFlag(flag, [...valued, "--decode"]);
      rest.push(tok);
    }
  }
  const help = rest.includes("--help") || rest.includes("-h");
  const int = (flag: string, min: number, dflt?: number): number => {
    const v = given.get(flag);
    if (v === undefined) {
      if (dflt !== undefined || help) return dflt ?? 0;
      throw new ConfigError(`${flag} is required (an integer >= ${min})`);
    }
    if (typeof v !== "string" || !/^\d+$/.test(v) || Number(v) < min || !Number.isSafeInteger(Number(v))) {
      throw new ConfigError(`${flag}: expected an integer >= ${min}, found ${JSON.stringify(v)}`);
    }
    return Number(v);
  };
  const datasetType = given.get("--dataset-type") as string | undefined;
  if (datasetType === undefined && !help) {
    throw new ConfigError(`--dataset-type is required (one of ${Object.keys(types).join(", ")})`);
  }
  if (datasetType !== undefined && !Object.hasOwn(types, datasetType)) {
    throw new ConfigError(
      `--dataset-type: expected one of ${Object.keys(types).join(", ")}, found ${
        JSON.stringify(datasetType)
      }`,
    );
  }
  const subset = given.get("--subset") as string | undefined;
  if (subset === undefined && !help) throw new ConfigError("--subset is required (train, valid or test)");
  if (subset !== undefined && !SUBSETS.includes(subset as Subset)) {
    throw new ConfigError(`--subset: expected one of train, valid, test, found ${JSON.stringify(subset)}`);
  }
  return {
    own: {
      datasetType: datasetType ?? "",
      subset: (subset ?? "train") as Subset,
      numSamples: int("--num-samples", 1),
      start: int("--start", 0, 0),
      output: (given.get("--output") as string | undefined) ?? null,
      decode: given.get("--decode") === true,
      help,
    },
    rest,
  };
}

/** Where the lines go: stdout, or a temporary file renamed onto --output once every line is written. */
function openSink(output: string | null): { write(s: string): void; commit(): void; abort(): void } {
  const enc = new TextEncoder();
  const writeAll = (f: { writeSync(b: Uint8Array): number }, b: Uint8Array) => {
    for (let o = 0; o < b.length;) o += f.writeSync(b.subarray(o));
  };
  if (output === null) return { write: (s) => writeAll(Deno.stdout, enc.encode(s)), commit() {}, abort() {} };
  const tmp = `${output}.tmp-${processToken()}`;
  let f: Deno.FsFile;
  try {
    f = Deno.openSync(tmp, { write: true, create: true, truncate: true });
  } catch (e) {
    throw new Error(`--output ${output}: cannot write ${tmp}: ${(e as Error).message}`);
  }
  let open = true;
  const close = () => {
    if (open) f.close();
    open = false;
  };
  return {
    write: (s) => writeAll(f, enc.encode(s)),
    commit() {
      f.syncSync();
      close();
      Deno.renameSync(tmp, output);
    },
    abort() {
      close();
      try {
        Deno.removeSync(tmp);
      } catch { /* never created or already gone */ }
    },
  };
}

/** Runs one inspect-data command line; returns the exit code (2 bad usage, 1 failure). Errors and
 *  logs go to stderr, so stdout holds only the samples. */
export async function inspectData(
  argv: readonly string[],
  types: Record<string, TaskLoader> = DATASET_TYPES,
): Promise<number> {
  const fail = (msg: string, code: number) => {
    console.error(`inspect_data: ${msg}`);
    return code;
  };
  let own: OwnFlags, cfg: Config, task: TrainingTask<unknown>;
  try {
    const split = splitArgs(argv, types);
    own = split.own;
    if (own.help) {
      // helpText()'s own usage line is pretrain:gpt's; its flag groups follow it.
      console.log(`${OWN_HELP}\n${helpText().split("\n").slice(2).join("\n")}`);
      return 0;
    }
    const loaded = await types[own.datasetType]();
    if (!loaded) return fail(`--dataset-type ${own.datasetType}: not available`, 2);
    // The pretraining command's flags and rules, under this command's name.
    const flags: TaskFlags = {
      ...loaded.task.flags,
      command: `inspect-data --dataset-type ${own.datasetType}`,
    };
    cfg = validateForTraining(resolveTrainingPaths(parseArgs(split.rest), userCwd()), flags);
    task = loaded.forConfig?.(cfg) ?? loaded.task;
    task.validate?.(cfg);
    if (own.output !== null) own.output = resolve(userCwd(), own.output);
  } catch (e) {
    if (e instanceof ConfigError) return fail(e.message, 2);
    return fail((e as Error).message, 1);
  }
  let sink: ReturnType<typeof openSink> | null = null;
  try {
    sink = openSink(own.output);
    const out = sink;
    // Lines are batched so a long dump is not one write per sample.
    let buf: string[] = [];
    const { subsetSize } = await inspectSamples(task, cfg, own, (l) => console.error(l), (s) => {
      buf.push(JSON.stringify(s.json) + "\n");
      if (buf.length >= 64) {
        out.write(buf.join(""));
        buf = [];
      }
    });
    out.write(buf.join(""));
    sink.commit();
    if (own.output !== null) {
      console.error(
        `> wrote ${own.numSamples} ${own.subset} samples (positions ${own.start}..${
          own.start + own.numSamples - 1
        } of ${subsetSize}) to ${own.output}`,
      );
    }
    return 0;
  } catch (e) {
    sink?.abort();
    return fail((e as Error).message, e instanceof ConfigError ? 2 : 1);
  }
}

/** `megatron inspect-data` / `deno task inspect-data`. */
export function main(argv: string[]): Promise<number> {
  return inspectData(argv);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
