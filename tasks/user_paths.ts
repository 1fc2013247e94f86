// Relative path flags mean "relative to the directory the user ran the command in". `deno task` runs
// every task in the project root and passes the caller's directory as INIT_CWD (as npm does), so the
// CLIs resolve their path flags here, once, right after parsing.

import { isAbsolute, resolve } from "node:path";
import { fileURLToPath as fromFileUrl } from "node:url";
import type { PreprocessOptions } from "../src/data/preprocess.ts";
import type { Config, FlagValues } from "../src/training/config.ts";

/** The project root: where `deno task` runs this project's tasks (null when loaded from a URL). */
const PROJECT_ROOT = (() => {
  const u = new URL("../", import.meta.url);
  return u.protocol === "file:" ? fromFileUrl(u).replace(/\/$/, "") : null;
})();

/** The directory relative paths are resolved against: INIT_CWD when `deno task` ran the command (the
 *  working directory is the project root), else the working directory (`megatron ...`, `deno run ...`).
 *  Elsewhere INIT_CWD is ignored: it is inherited by everything a task starts, and `deno task` keeps a
 *  value it inherits. */
export function userCwd(
  env: { get(name: string): string | undefined } = Deno.env,
  cwd: string = Deno.cwd(),
  projectRoot: string | null = PROJECT_ROOT,
): string {
  const init = env.get("INIT_CWD");
  return init !== undefined && isAbsolute(init) && cwd === projectRoot ? init : cwd;
}

/** Keys of the training flags whose values are strings (enumerations included). */
type StringFlag = {
  [K in keyof FlagValues]-?: NonNullable<FlagValues[K]> extends string | readonly string[] ? K : never;
}[keyof FlagValues];

/** Every string-valued training flag, classified: a file/directory path or not. The type makes
 *  `deno check` fail when a string flag is added to config.ts without deciding which it is. */
export const TRAINING_STRING_FLAGS: { readonly [K in StringFlag]: "path" | "not-path" } = {
  tensorboardDir: "path",
  save: "path",
  load: "path",
  dataPath: "path", // a prefix, or weight prefix pairs: only the prefixes are paths
  vocabFile: "path",
  mergeFile: "path",
  metricsFile: "path",
  dataloaderType: "not-path",
  optimizer: "not-path",
  lrDecayStyle: "not-path",
  ddpImpl: "not-path",
  distributedBackend: "not-path",
  split: "not-path",
  tokenizerType: "not-path",
  dataImpl: "not-path",
  activationsCheckpointMethod: "not-path",
  device: "not-path",
};

/** `p` against `base` unless it is already absolute. */
function under(base: string, p: string): string {
  return isAbsolute(p) ? p : resolve(base, p);
}

/** The training config with every path flag made absolute against `base`. `--data-path` keeps its
 *  blend weights: in the `weight prefix weight prefix ...` form only the odd positions are paths. */
export function resolveTrainingPaths(cfg: Config, base: string): Config {
  const out = { ...cfg };
  const rec = out as unknown as Record<string, unknown>;
  for (const [key, kind] of Object.entries(TRAINING_STRING_FLAGS)) {
    if (kind !== "path" || key === "dataPath") continue;
    const v = rec[key];
    if (typeof v === "string") rec[key] = under(base, v);
  }
  if (out.dataPath !== undefined) {
    const blend = out.dataPath.length > 1;
    out.dataPath = out.dataPath.map((v, i) => (blend && i % 2 === 0 ? v : under(base, v)));
  }
  return out;
}

/** The preprocessing options with --input, --output-prefix, --vocab-file and --merge-file made
 *  absolute against `base`. */
export function resolvePreprocessPaths(opts: PreprocessOptions, base: string): PreprocessOptions {
  return {
    ...opts,
    input: under(base, opts.input),
    outputPrefix: under(base, opts.outputPrefix),
    ...(opts.vocabFile !== undefined ? { vocabFile: under(base, opts.vocabFile) } : {}),
    ...(opts.mergeFile !== undefined ? { mergeFile: under(base, opts.mergeFile) } : {}),
  };
}
