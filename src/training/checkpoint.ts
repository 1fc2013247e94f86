// Checkpoints in Megatron's directory layout, with safetensors + JSON instead of pickles:
//
//   <save>/latest_checkpointed_iteration.txt      "100" or "release"
//   <save>/iter_0000100/mp_rank_00/                (PP == 1: TP rank, 2 digits)
//   <save>/iter_0000100/mp_rank_00_000/            (PP > 1: TP 2 digits, PP 3 digits)
//   <save>/release/mp_rank_00/...
//
// Each rank directory holds
//   model.safetensors  model params under Megatron's state-dict names
//                      ("language_model.encoder.layers.0.mlp.dense_h_to_4h.weight"; with virtual
//                      pipeline chunks each name is prefixed "model0.", "model1.", ...);
//   optim.safetensors  optimizer state, named by optimName():
//                        "optimizer.state.<param>.exp_avg" / ".exp_avg_sq"  (Adam moments)
//                        "optimizer.state.<param>.momentum_buffer"          (SGD)
//                        "fp32_from_fp16_params.<param>"                     (fp32 main params)
//   meta.json          args, iteration, consumed samples, grad scaler, LR scheduler, RNG state,
//                      checkpoint_version 3.0 and our format version.
//
// Atomicity: a save writes everything for iteration N into <save>/iter_000000N.tmp-<token>/, fsyncs the
// files, renames the directory into place (an existing one is moved aside first and deleted last),
// fsyncs <save>, and only then replaces the tracker via temp+rename. A kill at any moment leaves the
// tracker naming a complete checkpoint. Only data-parallel rank 0 of each (tp, pp) writes.
//
// Temp names end in "<host>-<pid>" of the writer. A writer killed mid-save (kill -9) leaves its temp
// entries behind; removeStaleTemps() deletes those whose process is no longer running on this host
// (at each save, and at start-up of a run). A failed write (disk full) is reported as one line naming
// the file, and leaves the tracker and the previous checkpoint as they were.
//
// Loading checks every tensor for NaN/Inf and names the file and tensor of the first one found.

import { isTokenDead, processToken } from "./process.ts";
import { type NamedTensor, readSafetensors, writeSafetensors } from "./safetensors.ts";

export type { NamedTensor } from "./safetensors.ts";

/** Megatron's checkpoint_version for the [np, 3, hn] QKV layout. */
export const CHECKPOINT_VERSION = 3.0;
/** Version of this layout (safetensors + meta.json). */
export const FORMAT_VERSION = 1;
export const FORMAT_NAME = "megatron-deno";
export const TRACKER_FILE = "latest_checkpointed_iteration.txt";

export interface GradScalerState {
  scale: number;
  growthTracker: number;
  hysteresisTracker: number;
}

/** Counter-based RNG: the stream is fully determined by the seed and the iteration; the data
 *  iterator position lets a resumed run continue the same sample order. */
export interface RngState {
  seed: number;
  iteration: number;
  dataIteratorPosition?: number;
}

/** Everything per rank besides tensors. Keys are camelCase here and snake_case in meta.json. */
export interface CheckpointMeta {
  /** The run's arguments (configToJson(cfg) plus paddedVocabSize), camelCase. */
  args: Record<string, unknown>;
  iteration: number;
  consumedTrainSamples: number;
  consumedValidSamples: number;
  gradScaler?: GradScalerState | null;
  lrScheduler?: Record<string, unknown> | null;
  rng?: RngState | null;
  /** Optimizer scalars (e.g. Adam's step count, param-group hyperparameters). */
  optimizer?: Record<string, unknown> | null;
}

export interface RankState {
  tp: number;
  pp: number;
  model: NamedTensor[];
  optim?: NamedTensor[];
  meta: CheckpointMeta;
}

export interface ParallelSizes {
  tpSize: number;
  ppSize: number;
}

export type Iteration = number | "release";

/** Fault injection for tests: called at each stage; throwing there simulates a crash. */
export type SaveStage = "rank-written" | "synced" | "renamed";

export interface SaveOptions extends ParallelSizes {
  saveDir: string;
  iteration: Iteration;
  /** Ranks this process writes (DP rank 0 of each (tp, pp) it holds). */
  ranks: RankState[];
  /** Distinguishes concurrent writers' temp dirs (default: "<host>-<pid>", see process.ts). */
  token?: string;
  /** Remove the temp dir when the save fails (default true; false mimics a killed process). */
  cleanupOnError?: boolean;
  onStage?: (stage: SaveStage, detail: string) => void;
  /** Notes (stale temp entries removed). */
  log?: (line: string) => void;
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, "0");
}

/** "iter_0000100", or "release". */
export function iterDirName(iteration: Iteration): string {
  if (iteration === "release") return "release";
  if (!Number.isInteger(iteration) || iteration < 0) {
    throw new Error(`checkpoint: iteration must be a non-negative integer, found ${iteration}`);
  }
  return `iter_${pad(iteration, 7)}`;
}

/** "mp_rank_TT" when PP == 1, "mp_rank_TT_PPP" otherwise (Megatron's names). */
export function rankDirName(tp: number, pp: number, ppSize: number): string {
  return ppSize === 1 ? `mp_rank_${pad(tp, 2)}` : `mp_rank_${pad(tp, 2)}_${pad(pp, 3)}`;
}

/** Name prefix of virtual pipeline chunk v ("" when not interleaved), as Megatron's model0/model1. */
export function chunkPrefix(v: number, vpSize: number): string {
  return vpSize > 1 ? `model${v}.` : "";
}

/** The optim.safetensors name of a slot for a model parameter (see the header comment). */
export function optimName(
  param: string,
  slot: "exp_avg" | "exp_avg_sq" | "momentum_buffer" | "main_param",
): string {
  return slot === "main_param" ? `fp32_from_fp16_params.${param}` : `optimizer.state.${param}.${slot}`;
}

function syncDir(path: string): void {
  // Makes renames durable; some platforms cannot open a directory for fsync, which is fine.
  try {
    const d = Deno.openSync(path, { read: true });
    try {
      d.syncSync();
    } finally {
      d.close();
    }
  } catch {
    // best effort
  }
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** Run a file operation on `path`; a failure is rethrown as "<path>: <reason>" (one line). */
function writing<T>(path: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    const msg = (e as Error).message.split("\n")[0];
    throw new Error(msg.startsWith(path) ? msg : `${path}: ${msg}`);
  }
}

function writeTextDurable(path: string, text: string): void {
  const tmp = `${path}.tmp-${processToken()}`;
  writing(path, () => {
    const f = Deno.openSync(tmp, { write: true, create: true, truncate: true });
    try {
      const b = new TextEncoder().encode(text);
      let w = 0;
      while (w < b.length) w += f.writeSync(b.subarray(w));
      f.syncSync();
      f.close();
    } catch (e) {
      f.close();
      Deno.removeSync(tmp);
      throw e;
    }
    Deno.renameSync(tmp, path);
  });
}

function metaToJson(m: CheckpointMeta, r: { tp: number; pp: number } & ParallelSizes, files: string[]) {
  const rng = m.rng
    ? {
      seed: m.rng.seed,
      iteration: m.rng.iteration,
      data_iterator_position: m.rng.dataIteratorPosition ?? null,
    }
    : null;
  const gs = m.gradScaler
    ? {
      scale: m.gradScaler.scale,
      growth_tracker: m.gradScaler.growthTracker,
      hysteresis_tracker: m.gradScaler.hysteresisTracker,
    }
    : null;
  return {
    format: FORMAT_NAME,
    format_version: FORMAT_VERSION,
    checkpoint_version: CHECKPOINT_VERSION,
    iteration: m.iteration,
    tensor_model_parallel_rank: r.tp,
    pipeline_model_parallel_rank: r.pp,
    tensor_model_parallel_size: r.tpSize,
    pipeline_model_parallel_size: r.ppSize,
    consumed_train_samples: m.consumedTrainSamples,
    consumed_valid_samples: m.consumedValidSamples,
    grad_scaler: gs,
    lr_scheduler: m.lrScheduler ?? null,
    rng_state: rng,
    optimizer: m.optimizer ?? null,
    files,
    args: m.args,
  };
}

/** Write one rank's files into `dir` (created), fsynced. */
export function writeRankFiles(dir: string, rank: RankState, sizes: ParallelSizes): void {
  writing(dir, () => Deno.mkdirSync(dir, { recursive: true }));
  const files = ["model.safetensors"];
  const md = { format: FORMAT_NAME, iteration: String(rank.meta.iteration) };
  const modelPath = `${dir}/model.safetensors`;
  writing(modelPath, () => writeSafetensors(modelPath, rank.model, md));
  if (rank.optim !== undefined) {
    const optimPath = `${dir}/optim.safetensors`;
    writing(optimPath, () => writeSafetensors(optimPath, rank.optim!, md));
    files.push("optim.safetensors");
  }
  const meta = metaToJson(rank.meta, { ...rank, ...sizes }, files);
  writeTextDurable(`${dir}/meta.json`, JSON.stringify(meta, null, 2) + "\n");
  syncDir(dir);
}

/** The temp directory a save of `iteration` writes into before it is renamed into place. */
export function tempIterDir(saveDir: string, iteration: Iteration, token = processToken()): string {
  return `${saveDir}/${iterDirName(iteration)}.tmp-${token}`;
}

/** Move a completed temp dir into place (replacing an existing one safely) and fsync the parent. */
export function commitIterDir(saveDir: string, iteration: Iteration, tmpDir: string): void {
  const final = `${saveDir}/${iterDirName(iteration)}`;
  let old: string | null = null;
  if (exists(final)) {
    // rename(2) cannot replace a non-empty directory: move the old one aside; loaders fall back to
    // it if a crash lands between the two renames.
    old = `${final}.old-${processToken()}`;
    if (exists(old)) Deno.removeSync(old, { recursive: true });
    Deno.renameSync(final, old);
  }
  Deno.renameSync(tmpDir, final);
  syncDir(saveDir);
  if (old !== null) Deno.removeSync(old, { recursive: true });
}

/** Point the tracker at `iteration` (temp + rename, then fsync the directory). Call it last. */
export function writeTracker(saveDir: string, iteration: Iteration): void {
  if (iteration !== "release") iterDirName(iteration); // validates
  writeTextDurable(`${saveDir}/${TRACKER_FILE}`, String(iteration));
  syncDir(saveDir);
}

/**
 * Remove temp entries of `saveDir` left by writers that are no longer running on this host:
 * `iter_*.tmp-<host>-<pid>` directories, `*.tmp-<host>-<pid>` files, and `iter_*.old-<host>-<pid>`
 * directories whose replacement is in place (without it, the loader still falls back to the .old one).
 * Entries of a live process, of another host, or with a name this code did not write are kept.
 * Returns the removed paths.
 */
export function removeStaleTemps(saveDir: string, log?: (line: string) => void): string[] {
  const removed: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(saveDir)];
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return removed;
    throw e;
  }
  for (const e of entries) {
    const tmp = /^(.+)\.tmp-([^/]+)$/.exec(e.name);
    const old = /^(iter_\d{7}|release)\.old-([^/]+)$/.exec(e.name);
    const token = tmp?.[2] ?? old?.[2];
    if (token === undefined || !isTokenDead(token)) continue;
    if (old && !exists(`${saveDir}/${old[1]}`)) continue; // still the only copy of that iteration
    const path = `${saveDir}/${e.name}`;
    try {
      Deno.removeSync(path, { recursive: true });
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) continue; // another process cleaned it first
      throw new Error(`${path}: cannot remove a stale checkpoint temp: ${(err as Error).message}`);
    }
    removed.push(path);
    log?.(`removed ${path} (left by process ${token}, which is no longer running)`);
  }
  return removed;
}

/** The tracker's current content, for error messages. */
function trackerNote(saveDir: string): string {
  try {
    const t = readTracker(saveDir);
    return t === null
      ? `there was no earlier checkpoint (no ${TRACKER_FILE})`
      : `${saveDir}/${TRACKER_FILE} still names ${t.release ? "release" : `iteration ${t.iteration}`}`;
  } catch {
    return `${saveDir}/${TRACKER_FILE} is unreadable`;
  }
}

/** The error of a failed save: "checkpoint save failed at iteration N: <reason>; <tracker state>". */
export function saveFailed(saveDir: string, iteration: Iteration, e: unknown): Error {
  return new Error(
    `checkpoint save failed at ${iteration === "release" ? "release" : `iteration ${iteration}`}: ` +
      `${(e as Error).message}; ${trackerNote(saveDir)}`,
  );
}

/** First step of a save: the save folder exists, dead writers' temps are gone, and an empty temp
 *  iteration folder (named by `token`) is ready for the ranks' files. Returns the temp folder. One
 *  process per rank: rank 0 runs this, then every writer fills the folder it names. */
export function beginSave(
  saveDir: string,
  iteration: Iteration,
  token = processToken(),
  log?: (line: string) => void,
): string {
  const tmp = tempIterDir(saveDir, iteration, token);
  writing(saveDir, () => Deno.mkdirSync(saveDir, { recursive: true }));
  removeStaleTemps(saveDir, log);
  if (exists(tmp)) Deno.removeSync(tmp, { recursive: true }); // our own leftover from a crashed try
  writing(tmp, () => Deno.mkdirSync(tmp));
  return tmp;
}

/** Last step of a save, once every rank's files are in `tmp`: move it into place, then point the
 *  tracker at it. */
export function finishSave(saveDir: string, iteration: Iteration, tmp: string): void {
  syncDir(tmp);
  writing(`${saveDir}/${iterDirName(iteration)}`, () => commitIterDir(saveDir, iteration, tmp));
  writeTracker(saveDir, iteration);
}

/** Save a checkpoint atomically (see the header). Returns the final iteration directory. A write
 *  failure throws "checkpoint save failed at iteration N: <path>: <reason>; <tracker state>". */
export function saveCheckpoint(opts: SaveOptions): string {
  const { saveDir, iteration, ranks } = opts;
  const sizes = { tpSize: opts.tpSize, ppSize: opts.ppSize };
  for (const r of ranks) {
    if (r.tp < 0 || r.tp >= sizes.tpSize || r.pp < 0 || r.pp >= sizes.ppSize) {
      throw new Error(
        `checkpoint: rank (tp ${r.tp}, pp ${r.pp}) is outside tp size ${sizes.tpSize}, pp size ${sizes.ppSize}`,
      );
    }
    if (iteration !== "release" && r.meta.iteration !== iteration) {
      throw new Error(
        `checkpoint: rank (tp ${r.tp}, pp ${r.pp}) meta.iteration ${r.meta.iteration} != ${iteration}`,
      );
    }
  }
  const failed = (e: unknown) => saveFailed(saveDir, iteration, e);
  const tmp = tempIterDir(saveDir, iteration, opts.token);
  try {
    writing(saveDir, () => Deno.mkdirSync(saveDir, { recursive: true }));
    removeStaleTemps(saveDir, opts.log);
    if (exists(tmp)) Deno.removeSync(tmp, { recursive: true }); // our own leftover from a crashed try
  } catch (e) {
    throw failed(e);
  }
  try {
    writing(tmp, () => Deno.mkdirSync(tmp));
    for (const r of ranks) {
      const dir = `${tmp}/${rankDirName(r.tp, r.pp, sizes.ppSize)}`;
      writeRankFiles(dir, r, sizes);
      opts.onStage?.("rank-written", dir);
    }
    syncDir(tmp);
    opts.onStage?.("synced", tmp);
    writing(`${saveDir}/${iterDirName(iteration)}`, () => commitIterDir(saveDir, iteration, tmp));
    opts.onStage?.("renamed", `${saveDir}/${iterDirName(iteration)}`);
  } catch (e) {
    if (opts.cleanupOnError ?? true) {
      try {
        Deno.removeSync(tmp, { recursive: true });
      } catch {
        // already renamed or never created
      }
    }
    throw failed(e);
  }
  try {
    writeTracker(saveDir, iteration);
  } catch (e) {
    throw failed(e);
  }
  return `${saveDir}/${iterDirName(iteration)}`;
}

export interface Tracker {
  /** 0 for a release checkpoint. */
  iteration: number;
  release: boolean;
}

/** Read `<dir>/latest_checkpointed_iteration.txt`; null when there is none. */
export function readTracker(dir: string): Tracker | null {
  const path = `${dir}/${TRACKER_FILE}`;
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  const t = text.trim();
  if (t === "release") return { iteration: 0, release: true };
  if (!/^\d+$/.test(t)) {
    throw new Error(`${path}: expected an iteration number or "release", found ${JSON.stringify(t)}`);
  }
  return { iteration: Number(t), release: false };
}

export interface LoadOptions {
  /** Load this iteration instead of the tracker's. */
  iteration?: Iteration;
  /** Read optim.safetensors (default true; false for --no-load-optim / --finetune). */
  loadOptim?: boolean;
  /** Pipeline size of the run, to pick mp_rank_TT vs mp_rank_TT_PPP (default: whichever exists). */
  ppSize?: number;
}

export interface LoadedRank {
  iteration: number;
  release: boolean;
  /** The rank directory read. */
  dir: string;
  model: NamedTensor[];
  optim?: NamedTensor[];
  meta: CheckpointMeta;
  checkpointVersion: number;
  sizes: ParallelSizes;
}

function num(obj: Record<string, unknown>, key: string, path: string): number {
  const v = obj[key];
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new Error(`${path}: ${key}: expected a number, found ${JSON.stringify(v)}`);
  }
  return v;
}

function parseMeta(
  path: string,
): { meta: CheckpointMeta; version: number; sizes: ParallelSizes; files: string[] } {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(Deno.readTextFileSync(path));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${path}: missing (incomplete checkpoint?)`);
    throw new Error(`${path}: expected JSON, found ${(e as Error).message}`);
  }
  if (j.format !== FORMAT_NAME) {
    throw new Error(`${path}: format: expected "${FORMAT_NAME}", found ${JSON.stringify(j.format)}`);
  }
  const fv = num(j, "format_version", path);
  if (fv > FORMAT_VERSION) {
    throw new Error(`${path}: format_version ${fv} is newer than this reader (${FORMAT_VERSION})`);
  }
  const gs = j.grad_scaler as Record<string, number> | null;
  const rng = j.rng_state as Record<string, number | null> | null;
  const meta: CheckpointMeta = {
    args: (j.args ?? {}) as Record<string, unknown>,
    iteration: num(j, "iteration", path),
    consumedTrainSamples: num(j, "consumed_train_samples", path),
    consumedValidSamples: num(j, "consumed_valid_samples", path),
    gradScaler: gs
      ? { scale: gs.scale, growthTracker: gs.growth_tracker, hysteresisTracker: gs.hysteresis_tracker }
      : null,
    lrScheduler: (j.lr_scheduler ?? null) as Record<string, unknown> | null,
    rng: rng
      ? {
        seed: rng.seed as number,
        iteration: rng.iteration as number,
        ...(rng.data_iterator_position != null ? { dataIteratorPosition: rng.data_iterator_position } : {}),
      }
      : null,
    optimizer: (j.optimizer ?? null) as Record<string, unknown> | null,
  };
  const sizes = {
    tpSize: num(j, "tensor_model_parallel_size", path),
    ppSize: num(j, "pipeline_model_parallel_size", path),
  };
  return { meta, version: num(j, "checkpoint_version", path), sizes, files: (j.files ?? []) as string[] };
}

/** Find the iteration directory, falling back to one moved aside by an interrupted replace. */
function resolveIterDir(loadDir: string, iteration: Iteration): string | null {
  const name = iterDirName(iteration);
  const final = `${loadDir}/${name}`;
  if (exists(final)) return final;
  for (const e of Deno.readDirSync(loadDir)) {
    if (e.isDirectory && e.name.startsWith(`${name}.old-`)) return `${loadDir}/${e.name}`;
  }
  return null;
}

/** Index and kind of the first NaN/Inf element of `t`, or null (integer tensors: always null). */
export function firstNonFinite(t: NamedTensor): { index: number; value: string } | null {
  const d = t.data;
  if (t.dtype === "f32") {
    // The exponent field all ones is Inf or NaN; integer tests on the raw bits (no float dependency
    // chain) keep this at memory speed.
    const a = d as Float32Array;
    const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
    for (let i = 0; i < u.length; i++) {
      if ((u[i] & 0x7f800000) === 0x7f800000) return { index: i, value: String(a[i]) };
    }
    return null;
  }
  if (t.dtype === "f64") {
    const a = d as Float64Array;
    for (let i = 0; i < a.length; i++) {
      if (!Number.isFinite(a[i])) return { index: i, value: String(a[i]) };
    }
    return null;
  }
  if (t.dtype === "f16" || t.dtype === "bf16") {
    // Raw bit patterns: the exponent field all ones is Inf (mantissa 0) or NaN.
    const [exp, mant] = t.dtype === "f16" ? [0x7c00, 0x03ff] : [0x7f80, 0x007f];
    const a = d as Uint16Array;
    for (let i = 0; i < a.length; i++) {
      if ((a[i] & exp) === exp) {
        return { index: i, value: (a[i] & mant) !== 0 ? "NaN" : a[i] & 0x8000 ? "-Infinity" : "Infinity" };
      }
    }
  }
  return null;
}

/** Throw one line naming the file and the first tensor holding NaN/Inf. */
export function assertFiniteTensors(path: string, tensors: readonly NamedTensor[]): void {
  for (const t of tensors) {
    const bad = firstNonFinite(t);
    if (bad !== null) {
      throw new Error(
        `${path}: tensor ${t.name} holds a non-finite value (${bad.value} at element ${bad.index} of ` +
          `${t.dtype} [${t.shape.join(", ")}]); refusing to resume from a diverged or corrupt checkpoint`,
      );
    }
  }
}

/** Load one rank's checkpoint (the tracker's iteration unless opts.iteration is given). Every
 *  tensor is checked for NaN/Inf (see assertFiniteTensors). */
export function loadCheckpoint(
  loadDir: string,
  rank: { tp: number; pp: number },
  opts: LoadOptions = {},
): LoadedRank {
  let iteration = opts.iteration;
  if (iteration === undefined) {
    const t = readTracker(loadDir);
    if (t === null) {
      throw new Error(`${loadDir}/${TRACKER_FILE}: not found; no checkpoint to load in ${loadDir}`);
    }
    iteration = t.release ? "release" : t.iteration;
  }
  const iterDir = resolveIterDir(loadDir, iteration);
  if (iterDir === null) {
    throw new Error(
      `${loadDir}/${iterDirName(iteration)}: missing (the tracker names iteration ${iteration})`,
    );
  }
  const names = opts.ppSize !== undefined
    ? [rankDirName(rank.tp, rank.pp, opts.ppSize)]
    : [rankDirName(rank.tp, rank.pp, 2), ...(rank.pp === 0 ? [rankDirName(rank.tp, 0, 1)] : [])];
  const dir = names.map((n) => `${iterDir}/${n}`).find(exists);
  if (dir === undefined) {
    throw new Error(
      `${iterDir}/${names[names.length - 1]}: missing; no files for tp rank ${rank.tp}, pp rank ${rank.pp}`,
    );
  }
  const { meta, version, sizes, files } = parseMeta(`${dir}/meta.json`);
  if (iteration !== "release" && meta.iteration !== iteration) {
    throw new Error(
      `${dir}/meta.json: iteration ${meta.iteration} does not match directory ${iterDirName(iteration)}`,
    );
  }
  const modelPath = `${dir}/model.safetensors`;
  if (!exists(modelPath)) throw new Error(`${modelPath}: missing (incomplete checkpoint?)`);
  const model = readSafetensors(modelPath).tensors;
  assertFiniteTensors(modelPath, model);
  const out: LoadedRank = {
    iteration: iteration === "release" ? 0 : iteration,
    release: iteration === "release",
    dir,
    model,
    meta,
    checkpointVersion: version,
    sizes,
  };
  if (opts.loadOptim ?? true) {
    const optimPath = `${dir}/optim.safetensors`;
    if (files.includes("optim.safetensors") || exists(optimPath)) {
      if (!exists(optimPath)) throw new Error(`${optimPath}: missing (listed in meta.json)`);
      out.optim = readSafetensors(optimPath).tensors;
      assertFiniteTensors(optimPath, out.optim);
    }
  }
  return out;
}

/** The architecture arguments that must agree between a checkpoint and the run (Megatron's list). */
export const ARCHITECTURE_ARGS: readonly (readonly [key: string, flag: string])[] = [
  ["numLayers", "--num-layers"],
  ["hiddenSize", "--hidden-size"],
  ["numAttentionHeads", "--num-attention-heads"],
  ["maxPositionEmbeddings", "--max-position-embeddings"],
  ["makeVocabSizeDivisibleBy", "--make-vocab-size-divisible-by"],
  ["paddedVocabSize", "padded vocab size"],
  ["tokenizerType", "--tokenizer-type"],
  ["tensorModelParallelSize", "--tensor-model-parallel-size"],
  ["pipelineModelParallelSize", "--pipeline-model-parallel-size"],
];

/** Compare a checkpoint's args with the run's; null when they agree, else ONE line naming every
 *  mismatch ("--num-layers: checkpoint 24, run 12; ..."). */
export function checkArchitectureArgs(
  ckptArgs: Record<string, unknown>,
  cfg: Record<string, unknown>,
): string | null {
  const bad: string[] = [];
  for (const [key, flag] of ARCHITECTURE_ARGS) {
    const a = ckptArgs[key];
    const b = cfg[key];
    if (a !== b) {
      bad.push(`${flag}: checkpoint ${a === undefined ? "unset" : a}, run ${b === undefined ? "unset" : b}`);
    }
  }
  return bad.length === 0 ? null : `checkpoint arguments do not match this run: ${bad.join("; ")}`;
}

/** checkArchitectureArgs that throws its message. */
export function assertArchitectureArgs(
  ckptArgs: Record<string, unknown>,
  cfg: Record<string, unknown>,
): void {
  const m = checkArchitectureArgs(ckptArgs, cfg);
  if (m !== null) throw new Error(m);
}
