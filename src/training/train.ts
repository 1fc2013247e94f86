// Megatron's pretrain() loop for any TrainingTask (task.ts): builds the tokenizer, the task's
// datasets and one RankState per rank of the (TP, PP, DP) layout (all in this process through the
// local communicator), or, when this process is one rank of a multi-process world (mpiexec, the
// launcher; --distributed-backend mpi), only its own rank's; then runs train steps with gradient
// accumulation, batch ramp-up, evaluation,
// logging (console, progress bar, TensorBoard, JSON lines), checkpoints, and the exit conditions
// (interval, duration, signal). pretrainGPT is pretrain(gptTask, ...).

import type { Backend } from "../backend/backend.ts";
import type { SampleDataset } from "../data/blendable.ts";
import { createGradScaler } from "../optimizer/grad_scaler.ts";
import { createLrScheduler } from "../optimizer/lr_schedule.ts";
import { buildNumMicroBatchesCalculator } from "../optimizer/microbatches.ts";
import { LocalWorld } from "../parallel/local_comm.ts";
import { type Communicator, makeParallelState, SingleRankCommunicator } from "../parallel/types.ts";
import { openCommunicator, type ProcessCommunicator } from "../distributed/open_comm.ts";
import {
  assertArchitectureArgs,
  beginSave,
  type CheckpointMeta,
  finishSave,
  iterDirName,
  loadCheckpoint,
  type NamedTensor,
  rankDirName,
  type RankState as CkptRank,
  readTracker,
  removeStaleTemps,
  saveCheckpoint,
  saveFailed,
  tempIterDir,
  writeRankFiles,
} from "./checkpoint.ts";
import { processToken } from "./process.ts";
import { joinTrainingWorld, type ProcessWorld } from "./process_world.ts";
import { assertFlagsSupported, type Config, configToJson, flagNotes } from "./config.ts";
import { gptTask } from "./gpt_task.ts";
import { MetricsWriter } from "./metrics.ts";
import { prepareSaveDir } from "./lock.ts";
import { availableMemory } from "./memory_estimate.ts";
import { checkResumeFits } from "./resume.ts";
import { buildTaskContext, runSampleCounts, SplitOrder } from "./run_data.ts";
import { RankState, type RankStepResult, type StepInputs } from "./rank.ts";
import type { TaskContext, TaskDatasets, TrainingTask } from "./task.ts";
import { SummaryWriter } from "./tensorboard.ts";

export interface TrainEnv {
  backend: Backend;
  /** One line of log output. */
  log: (line: string) => void;
  /** Progress display on a terminal: called with a one-line status (no newline), or undefined. */
  progress?: (status: string) => void;
  /** Set `stop = true` (e.g. from a signal handler) to save and exit after the current iteration. */
  stopRequest?: { stop: boolean; signal?: string };
  /** Peak FLOP/s of the device, for MFU, with a description (e.g. "measured sgemm peak"). */
  peak?: { flops: number; what: string; label?: string };
  /** Monotonic clock in ms (tests may fix it). */
  now?: () => number;
  /** This process as one rank of a multi-process world (from joinTrainingWorld), null to run every
   *  rank in this process; undefined: pretrain() decides from --distributed-backend and the rank
   *  source, joining the world itself. */
  processWorld?: ProcessWorld | null;
}

export interface IterationLog {
  iteration: number;
  consumedSamples: number;
  loss: number;
  lr: number;
  lossScale: number;
  gradNorm: number | null;
  /** `--log-num-zeros-in-grad` (null when off or skipped). */
  numZerosInGrad: number | null;
  /** `--log-params-norm` (null when off). */
  paramsNorm: number | null;
  skipped: boolean;
  /** The task's named loss values of this iteration (GPT: "lm loss", equal to `loss`). */
  scalars: Record<string, number>;
}

export interface TrainResult {
  iteration: number;
  consumedTrainSamples: number;
  /** Every iteration's averaged loss (NaN for skipped steps with a non-finite loss). */
  history: IterationLog[];
  /** `loss`/`ppl`: the backpropagated loss; `scalars`: each of the task's loss names. */
  validation: { iteration: number; loss: number; ppl: number; scalars: Record<string, number> }[];
  test: { loss: number; ppl: number; scalars: Record<string, number> } | null;
  savedTo: string | null;
  exitReason: "done" | "exit-interval" | "exit-duration" | "signal";
  paddedVocabSize: number;
  tokensPerSecond: number;
}

export { iterationFlops, modelConfigOf } from "./gpt_task.ts";

type SampleSource = SampleDataset<unknown>;

interface Run {
  cfg: Config;
  env: TrainEnv;
  /** Start-up, checkpoint and exit lines: every line in-process, rank 0's with one process per rank. */
  log: (line: string) => void;
  task: TrainingTask<unknown>;
  taskCtx: TaskContext;
  ranks: RankState[];
  world: LocalWorld | null;
  paddedVocab: number;
  data: TaskDatasets<unknown>;
  /** One sample order per split (a cyclic one caches its epoch's permutation). */
  orders: Map<SampleSource, SplitOrder>;
  /** One process per rank: `ranks` is this process's one rank, talking through `comm`. */
  proc: { world: ProcessWorld; comm: ProcessCommunicator; saveToken: string } | null;
}

/** The dataset index of sample i of DP rank d's micro-batch starting after `consumed` samples. */
function sampleIndex(run: Run, source: SampleSource, consumed: number, d: number, i: number): number {
  let order = run.orders.get(source);
  if (!order) {
    const name = source === run.data.train ? "train" : source === run.data.valid ? "validation" : "test";
    order = new SplitOrder(run.cfg, source.length, name);
    run.orders.set(source, order);
  }
  return order.index(consumed, d, i);
}

/** Megatron's sampler for one global step: micro-batch mb of DP rank d reads the samples its sampler
 *  gives after consumed + mb*micro*dp samples (single: [that + d*micro, +micro)). */
function stepInputs(
  run: Run,
  rank: RankState,
  source: SampleSource,
  consumed: number,
  iteration: number,
  numMicroBatches: number,
): StepInputs {
  const micro = run.cfg.microBatchSize!;
  const dp = rank.ps.dpSize;
  const first = (mb: number) => mb * micro * dp + rank.ps.dpRank * micro;
  return {
    iteration,
    numMicroBatches,
    firstGlobalSample: first,
    batch(mb: number) {
      const before = consumed + mb * micro * dp;
      const samples = Array.from(
        { length: micro },
        (_, i) => source.getItem(sampleIndex(run, source, before, rank.ps.dpRank, i)),
      );
      return run.task.makeBatch(run.taskCtx, samples);
    },
  };
}

/** The rank that reports losses: last pipeline stage, TP rank 0, DP rank 0 (in-process: any DP). */
function lossRanks(run: Run): RankState[] {
  return run.ranks.filter((r) => r.ps.isLastStage && r.ps.tpRank === 0);
}

function mean(xs: number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** Per name: the mean over the loss ranks of each rank's mean over micro-batches (as the loss). */
function meanScalars(names: readonly string[], perRank: Record<string, number>[][]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const n of names) out[n] = mean(perRank.map((mbs) => mean(mbs.map((x) => x[n]))));
  return out;
}

/** fn on every rank concurrently; if one rank fails, the others are released from their waits at
 *  once (LocalWorld.run) instead of after --distributed-timeout-minutes. */
function allRanks<T>(run: Run, fn: (r: RankState) => Promise<T>): Promise<T[]> {
  return run.world ? run.world.run((g) => fn(run.ranks[g])) : Promise.all(run.ranks.map(fn));
}

/** One process per rank: `row` (this rank's numbers) of every last-stage rank of this rank's data
 *  group, in DP order (the in-process loss ranks' order), on every rank: all-gathered over the data
 *  group on the last stage, then broadcast from it over the pipeline group, so that all ranks log,
 *  stop on a NaN loss and evaluate with the same numbers. */
async function lossRows(run: Run, row: number[]): Promise<number[][]> {
  const comm = run.proc!.comm;
  const be = run.env.backend;
  const ps = run.ranks[0].ps;
  const k = row.length;
  const all = be.zeros("f64", [ps.dpSize, k]);
  try {
    if (ps.isLastStage) {
      const mine = be.fromHost("f64", [1, k], Float64Array.from(row));
      try {
        await comm.allGather(mine, all, "data");
      } finally {
        be.free(mine);
      }
    }
    if (ps.ppSize > 1) await comm.broadcast(all, ps.ppSize - 1, "pipeline");
    const flat = be.toF64(all);
    return Array.from({ length: ps.dpSize }, (_, d) => Array.from(flat.subarray(d * k, (d + 1) * k)));
  } finally {
    be.free(all);
  }
}

/** A rank's loss and each loss name's mean over its micro-batches (NaN off the last stage). */
function rankRow(names: readonly string[], r: { losses: number[]; scalars: Record<string, number>[] }) {
  return [mean(r.losses), ...names.map((n) => mean(r.scalars.map((x) => x[n])))];
}

async function trainStep(run: Run, consumed: number, iteration: number, numMicro: number) {
  const results: RankStepResult[] = await allRanks(
    run,
    (r) => r.trainStep(stepInputs(run, r, run.data.train!, consumed, iteration, numMicro)),
  );
  if (run.proc) {
    // The same f64 arithmetic as below, over the rows of the DP ranks (group order = DP order).
    const names = run.task.lossNames;
    const rows = await lossRows(run, rankRow(names, results[0]));
    const loss = mean(rows.map((x) => x[0]));
    const scalars = Object.fromEntries(names.map((n, i) => [n, mean(rows.map((x) => x[i + 1]))]));
    return { loss, ...results[0], scalars };
  }
  // Loss averaged over micro-batches and DP ranks (Megatron's average_losses_across_data_parallel_group).
  const lr = lossRanks(run);
  const loss = mean(lr.map((r) => mean(results[run.ranks.indexOf(r)].losses)));
  const scalars = meanScalars(run.task.lossNames, lr.map((r) => results[run.ranks.indexOf(r)].scalars));
  const r0 = results[0];
  return { loss, ...r0, scalars };
}

async function evaluate(run: Run, source: SampleSource, iters: number, consumedStart: number) {
  const micro = run.cfg.microBatchSize!;
  const dp = run.cfg.dataParallelSize;
  const gbs = run.cfg.globalBatchSize!;
  const numMicro = gbs / (micro * dp);
  const losses: number[] = [];
  const scalars: Record<string, number>[][] = [];
  const names = run.task.lossNames;
  const mine: number[] = []; // one process per rank: this rank's row per iteration
  for (let i = 0; i < iters; i++) {
    const consumed = consumedStart + i * gbs;
    const per = await allRanks(run, (r) => r.evalStep(stepInputs(run, r, source, consumed, 0, numMicro)));
    if (run.proc) mine.push(...rankRow(names, per[0]));
    else {
      for (const r of lossRanks(run)) {
        losses.push(mean(per[run.ranks.indexOf(r)].losses));
        scalars.push(per[run.ranks.indexOf(r)].scalars);
      }
    }
  }
  const sc: Record<string, number> = {};
  let loss: number;
  if (run.proc) {
    // The in-process order: iteration-major, then DP rank.
    const w = names.length + 1;
    const rows = await lossRows(run, mine);
    const at = (j: number) => Array.from({ length: iters }, (_, i) => rows.map((x) => x[i * w + j])).flat();
    loss = mean(at(0));
    names.forEach((n, j) => (sc[n] = mean(at(j + 1))));
  } else {
    loss = mean(losses);
    // Megatron's evaluate: each name's mean over the eval iterations' micro-batches.
    for (const n of names) sc[n] = mean(scalars.map((mbs) => mean(mbs.map((x) => x[n]))));
  }
  return { loss, ppl: Math.exp(Math.min(20, loss)), scalars: sc };
}

function modelTensors(run: Run, rank: RankState): NamedTensor[] {
  const be = run.env.backend;
  return rank.weights.entries.map(({ name, param: p }) => ({
    name,
    dtype: p.value.dtype,
    shape: [...p.value.shape],
    data: be.toHost(p.value),
  }));
}

function checkpointArgs(run: Run): Record<string, unknown> {
  return { ...configToJson(run.cfg), paddedVocabSize: run.paddedVocab };
}

/** One rank's checkpoint files' contents. */
function checkpointRank(
  run: Run,
  rank: RankState,
  iteration: number,
  consumedTrain: number,
  consumedValid: number,
): CkptRank {
  const cfg = run.cfg;
  const be = run.env.backend;
  const { state, tensors } = rank.optimizer.exportState();
  const meta: CheckpointMeta = {
    args: checkpointArgs(run),
    iteration,
    consumedTrainSamples: consumedTrain,
    consumedValidSamples: consumedValid,
    gradScaler: cfg.noSaveOptim ? null : state.gradScaler,
    lrScheduler: state.lrScheduler as unknown as Record<string, unknown>,
    rng: cfg.noSaveRng ? null : { seed: cfg.seed, iteration, dataIteratorPosition: consumedTrain },
    optimizer: cfg.noSaveOptim ? null : (state as unknown as Record<string, unknown>),
  };
  return {
    tp: rank.ps.tpRank,
    pp: rank.ps.ppRank,
    model: modelTensors(run, rank),
    optim: cfg.noSaveOptim ? undefined : tensors.map((t) => ({
      name: t.name,
      dtype: t.tensor.dtype,
      shape: [...t.tensor.shape],
      data: be.toHost(t.tensor),
    })),
    meta,
  };
}

/** One process per rank: runs `step` where given (null: nothing to do on this rank), then learns which
 *  ranks failed (an all-gather of one flag per rank over the world), so that every rank stops together
 *  instead of waiting for a peer that gave up. Throws this rank's error, or names the failed ranks. */
async function allSucceed(run: Run, what: string, step: (() => void) | null): Promise<void> {
  const be = run.env.backend;
  const ps = run.ranks[0].ps;
  let err: unknown = null;
  try {
    step?.();
  } catch (e) {
    err = e;
  }
  const mine = be.fromHost("f64", [1], [err === null ? 0 : 1]);
  const all = be.zeros("f64", [ps.worldSize]);
  let failed: number[];
  try {
    await run.proc!.comm.allGather(mine, all, "world");
    failed = [...be.toF64(all)].flatMap((f, r) => (f !== 0 ? [r] : []));
  } finally {
    be.free(mine);
    be.free(all);
  }
  if (err !== null) throw err;
  if (failed.length > 0) {
    throw new Error(`rank(s) ${failed.join(", ")} failed ${what} (see that rank's error line)`);
  }
}

/** One process per rank: rank 0 prepares the temp folder, DP rank 0 of each model-parallel group writes
 *  its mp_rank_XX[_YYY] files into it, and only when every shard is complete (all ranks report success)
 *  rank 0 renames it into place and writes the tracker. */
async function saveProcesses(
  run: Run,
  iteration: number,
  consumedTrain: number,
  consumedValid: number,
): Promise<string> {
  const cfg = run.cfg;
  const saveDir = cfg.save!;
  const rank = run.ranks[0];
  const ps = rank.ps;
  const sizes = { tpSize: ps.tpSize, ppSize: ps.ppSize };
  const tmp = tempIterDir(saveDir, iteration, run.proc!.saveToken);
  const rank0 = ps.globalRank === 0;
  try {
    await allSucceed(
      run,
      "to prepare the save folder",
      rank0 ? () => beginSave(saveDir, iteration, run.proc!.saveToken, run.log) : null,
    );
    try {
      await allSucceed(
        run,
        "to write their shard",
        ps.dpRank === 0
          ? () =>
            writeRankFiles(
              `${tmp}/${rankDirName(ps.tpRank, ps.ppRank, ps.ppSize)}`,
              checkpointRank(run, rank, iteration, consumedTrain, consumedValid),
              sizes,
            )
          : null,
      );
    } catch (e) {
      if (rank0) Deno.removeSync(tmp, { recursive: true });
      throw e;
    }
    await allSucceed(
      run,
      "to publish the checkpoint",
      rank0 ? () => finishSave(saveDir, iteration, tmp) : null,
    );
  } catch (e) {
    throw saveFailed(saveDir, iteration, e);
  }
  return `${saveDir}/${iterDirName(iteration)}`;
}

function save(run: Run, iteration: number, consumedTrain: number, consumedValid: number): string {
  const cfg = run.cfg;
  const ranks: CkptRank[] = [];
  for (const rank of run.ranks) {
    if (rank.ps.dpRank !== 0) continue; // only DP rank 0 writes, as Megatron
    ranks.push(checkpointRank(run, rank, iteration, consumedTrain, consumedValid));
  }
  return saveCheckpoint({
    saveDir: cfg.save!,
    iteration,
    tpSize: cfg.tensorModelParallelSize,
    ppSize: cfg.pipelineModelParallelSize,
    ranks,
    log: run.log,
  });
}

/** Restore model, optimizer and progress from --load. Returns the iteration and consumed samples. */
function load(
  run: Run,
): { iteration: number; consumedTrain: number; consumedValid: number; args: Record<string, unknown> } | null {
  const cfg = run.cfg;
  const dir = cfg.load!;
  if (readTracker(dir) === null) {
    run.log(
      `no checkpoint found in ${dir} (no latest_checkpointed_iteration.txt); starting from scratch`,
    );
    return null;
  }
  const be = run.env.backend;
  const loadOptim = !cfg.finetune && !cfg.noLoadOptim;
  const loadRng = !cfg.finetune && !cfg.noLoadRng;
  let result = { iteration: 0, consumedTrain: 0, consumedValid: 0, args: {} as Record<string, unknown> };
  for (const rank of run.ranks) {
    const ck = loadCheckpoint(dir, { tp: rank.ps.tpRank, pp: rank.ps.ppRank }, {
      loadOptim,
      ppSize: cfg.pipelineModelParallelSize,
    });
    assertArchitectureArgs(ck.meta.args, checkpointArgs(run));
    // As Megatron's load_checkpoint: state that is asked for must be there.
    if (loadOptim && !(ck.optim && ck.meta.optimizer)) {
      throw new Error(
        `${ck.dir}: no optimizer state (saved with --no-save-optim); pass --no-load-optim or --finetune ` +
          `to load the weights only`,
      );
    }
    if (loadRng) {
      // Randomness is Philox of (seed, iteration): the RNG state is the seed the run was saved with.
      const rng = ck.meta.rng as { seed?: number } | null;
      if (!rng) {
        throw new Error(
          `${ck.dir}: no RNG state (saved with --no-save-rng); pass --no-load-rng or --finetune`,
        );
      }
      if (rng.seed !== cfg.seed) {
        throw new Error(
          `--seed ${cfg.seed}: the checkpoint's RNG state is --seed ${rng.seed} and would be restored for ` +
            `dropout; pass --seed ${rng.seed}, or --no-load-rng to draw dropout from --seed ${cfg.seed}`,
        );
      }
    }
    const byName = new Map(ck.model.map((t) => [t.name, t]));
    for (const { name, param: p } of rank.weights.entries) {
      const t = byName.get(name);
      if (!t) throw new Error(`${ck.dir}/model.safetensors: missing parameter ${name}`);
      if (t.dtype !== p.value.dtype || t.shape.join(",") !== p.value.shape.join(",")) {
        throw new Error(
          `${ck.dir}/model.safetensors: ${name} is ${t.dtype} [${t.shape}], expected ${p.value.dtype} [${p.value.shape}]`,
        );
      }
      const tmp = be.fromHost(t.dtype, t.shape, t.data);
      be.copy(tmp, p.value);
      be.free(tmp);
    }
    if (loadOptim && ck.optim && ck.meta.optimizer) {
      const tensors = ck.optim.map((t) => ({ name: t.name, tensor: be.fromHost(t.dtype, t.shape, t.data) }));
      rank.optimizer.importState(ck.meta.optimizer as never, tensors, {});
      for (const t of tensors) be.free(t.tensor);
    } else {
      rank.optimizer.reloadModelParams();
    }
    if (cfg.finetune) result = { iteration: 0, consumedTrain: 0, consumedValid: 0, args: ck.meta.args };
    else {
      result = {
        iteration: Math.max(result.iteration, ck.iteration),
        consumedTrain: ck.meta.consumedTrainSamples,
        consumedValid: ck.meta.consumedValidSamples,
        args: ck.meta.args,
      };
    }
  }
  run.log(
    `loaded checkpoint ${dir} at iteration ${result.iteration}` +
      (cfg.finetune ? " (--finetune: iteration and optimizer reset)" : "") +
      (!loadOptim ? " (optimizer state not loaded)" : ""),
  );
  return result;
}

/** Loss names as JSON-lines keys ("lm loss" -> lm_loss). */
function scalarFields(scalars: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(scalars).map(([n, v]) => [n.replaceAll(" ", "_"), v]));
}

function fmtNum(x: number | null, digits = 4): string {
  if (x === null) return "-";
  if (!Number.isFinite(x)) return String(x);
  return Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0)
    ? x.toExponential(digits - 1)
    : x.toFixed(digits);
}

/** Megatron's training_log TensorBoard scalars for one iteration: each by iteration and, as
 *  "<tag> vs samples", by consumed train samples. */
function writeTrainScalars(
  tb: SummaryWriter,
  cfg: Config,
  r: {
    scalars: Record<string, number>;
    nextLr: number;
    lossScale: number;
    gradNorm: number | null;
    numZerosInGrad: number | null;
    paramsNorm: number | null;
    batch: number;
  },
  iteration: number,
  consumed: number,
): void {
  const vals: { tag: string; value: number }[] = [];
  if (!cfg.noLogLearnigRateToTensorboard) vals.push({ tag: "learning-rate", value: r.nextLr });
  if (cfg.logBatchSizeToTensorboard) vals.push({ tag: "batch-size", value: r.batch });
  for (const [tag, value] of Object.entries(r.scalars)) vals.push({ tag, value });
  if (!cfg.noLogLossScaleToTensorboard) vals.push({ tag: "loss-scale", value: r.lossScale });
  if (r.gradNorm !== null) vals.push({ tag: "grad-norm", value: r.gradNorm });
  // --log-num-zeros-in-grad / --log-params-norm, after the grad norm as in Megatron's training_log.
  if (r.numZerosInGrad !== null) vals.push({ tag: "num-zeros", value: r.numZerosInGrad });
  if (r.paramsNorm !== null) vals.push({ tag: "params-norm", value: r.paramsNorm });
  tb.addScalars(vals, iteration);
  tb.addScalars(vals.map((v) => ({ tag: `${v.tag} vs samples`, value: v.value })), consumed);
}

/** Megatron's evaluate_and_print_results scalars; the perplexity only with
 *  --log-validation-ppl-to-tensorboard. */
function writeValidationScalars(
  tb: SummaryWriter,
  cfg: Config,
  v: { scalars: Record<string, number> },
  iteration: number,
  consumed: number,
): void {
  const vals: { tag: string; value: number }[] = [];
  for (const [name, value] of Object.entries(v.scalars)) {
    vals.push({ tag: `${name} validation`, value });
    if (cfg.logValidationPplToTensorboard) {
      vals.push({ tag: `${name} validation ppl`, value: Math.exp(Math.min(20, value)) });
    }
  }
  tb.addScalars(vals, iteration);
  tb.addScalars(vals.map((x) => ({ tag: `${x.tag} vs samples`, value: x.value })), consumed);
}

/** Rank 0's `token` on every rank (a broadcast over the world): the one temp name of a checkpoint save
 *  that all processes write into. */
async function shareToken(be: Backend, comm: Communicator, token: string): Promise<string> {
  const bytes = new Uint8Array(256);
  bytes.set(new TextEncoder().encode(token).subarray(0, 255));
  const t = be.fromHost("u8", [256], bytes);
  try {
    await comm.broadcast(t, 0, "world");
    const got = be.toHost(t) as Uint8Array;
    return new TextDecoder().decode(got.subarray(0, got.indexOf(0)));
  } finally {
    be.free(t);
  }
}

/** GPT pretraining with a validated config: the generic loop with the GPT task. */
export function pretrainGPT(cfg: Config, env: TrainEnv): Promise<TrainResult> {
  return pretrain(gptTask as TrainingTask<unknown>, cfg, env);
}

/** Run pretraining of `task` with a validated config. */
export async function pretrain(
  task: TrainingTask<unknown>,
  cfg: Config,
  env: TrainEnv,
): Promise<TrainResult> {
  assertFlagsSupported(cfg, task.flags); // also for callers that skip validateForTraining
  task.validate?.(cfg);
  const now = env.now ?? (() => performance.now());
  // One process per rank (mpiexec, the launcher) or every rank in this one process.
  const procWorld = env.processWorld !== undefined
    ? env.processWorld
    : await joinTrainingWorld(cfg, env.backend.name, { log: env.log });
  // As Megatron: start-up and checkpoint lines from rank 0 (print_rank_0), the iteration and
  // evaluation lines, TensorBoard and metrics from the last rank (print_rank_last), which holds the loss.
  const rank0 = procWorld === null || procWorld.info.rank === 0;
  const lastRank = procWorld === null || procWorld.info.rank === procWorld.info.worldSize - 1;
  const quiet = () => {};
  const log = rank0 ? env.log : quiet;
  const logLast = lastRank ? env.log : quiet;
  for (const note of flagNotes(cfg)) log(note);
  if (cfg.save && rank0) {
    // Fail now, not at the first save hours in; and clear what killed writers left behind.
    prepareSaveDir(cfg.save);
    removeStaleTemps(cfg.save, log);
  }
  const tp = cfg.tensorModelParallelSize, pp = cfg.pipelineModelParallelSize, dp = cfg.dataParallelSize;
  const vp = cfg.virtualPipelineModelParallelSize;
  const taskCtx: TaskContext = await buildTaskContext(cfg, log);
  const paddedVocab = taskCtx.paddedVocab;
  // Before anything is allocated: a model that cannot fit fails with the estimate.
  const memory = task.estimateMemory?.(taskCtx, {
    tp,
    pp,
    dp,
    vp,
    microBatchSize: cfg.microBatchSize!,
    numMicroBatches: cfg.globalBatchSize! / (cfg.microBatchSize! * dp),
    optimizer: cfg.optimizer as "adam" | "sgd",
  }) ?? null;
  const noFit = memory?.check(availableMemory(env.backend), procWorld !== null) ?? null;
  if (noFit !== null) throw new Error(noFit);

  // Iterations, sample counts and the datasets (built once, shared by every in-process rank).
  const mbArgs = {
    globalBatchSize: cfg.globalBatchSize!,
    microBatchSize: cfg.microBatchSize!,
    dataParallelSize: dp,
    rampupBatchSize: cfg.rampupBatchSize ?? null,
  };
  // The same counts inspect-data shows (run_data.ts).
  const { trainIters, requested } = runSampleCounts(cfg);
  const gbs = cfg.globalBatchSize!;
  const evalIters = cfg.evalIters;
  const data = task.buildDatasets(taskCtx, requested);
  if (!data.train) throw new Error(`--split ${cfg.split}: the training split is empty`);

  // One rank state per (tp, pp, dp), sharing the backend; or this process's rank only.
  const timeoutMs = cfg.distributedTimeoutMinutes * 60_000;
  const world = tp * pp * dp > 1 && procWorld === null
    ? new LocalWorld(env.backend, { tp, pp, dp, vp }, { timeoutMs })
    : null;
  const ranks: RankState[] = [];
  // Sample-based runs size the schedule in samples (Megatron creates it before update_train_iters).
  const scheduler = () => createLrScheduler({ ...cfg, globalBatchSize: gbs, lr: cfg.lr! });
  let proc: Run["proc"] = null;
  if (procWorld !== null) {
    const ps = makeParallelState({ tp, pp, dp, vp }, procWorld.info.rank);
    const comm = await openCommunicator(procWorld.kind, {
      backend: env.backend,
      ps,
      store: procWorld.store,
      timeoutMs,
    });
    log(`> ${comm.description ?? procWorld.kind}; one process per rank`);
    ranks.push(new RankState(cfg, task, taskCtx, env.backend, ps, comm, scheduler(), createGradScaler(cfg)));
    proc = { world: procWorld, comm, saveToken: await shareToken(env.backend, comm, processToken()) };
  } else {
    for (let g = 0; g < tp * pp * dp; g++) {
      const ps = world ? world.states[g] : makeParallelState({ tp: 1, pp: 1, dp: 1, vp }, 0);
      const comm: Communicator = world ? world.communicator(g) : new SingleRankCommunicator();
      ranks.push(
        new RankState(cfg, task, taskCtx, env.backend, ps, comm, scheduler(), createGradScaler(cfg)),
      );
    }
  }
  let nParams = ranks.filter((r) => r.ps.dpRank === 0)
    .reduce((s, r) => s + r.params.filter((p) => !p.shared).reduce((a, p) => a + p.value.size, 0), 0);
  if (proc) {
    // This rank's share, summed over its model-parallel group (the ranks of one model replica).
    const t = env.backend.fromHost("f64", [1], [
      ranks[0].params.filter((p) => !p.shared).reduce((a, p) => a + p.value.size, 0),
    ]);
    await proc.comm.allReduce(t, "sum", "model");
    nParams = env.backend.toF64(t)[0];
    env.backend.free(t);
  }
  log(
    `> model: ${cfg.numLayers} layers, hidden ${cfg.hiddenSize}, ${cfg.numAttentionHeads} heads, seq ${cfg.seqLength}, ` +
      `${(nParams / 1e6).toFixed(2)}M parameters, ${cfg.paramsDtype}; layout TP=${tp} PP=${pp} DP=${dp}` +
      (vp > 1 ? ` (${vp} virtual chunks per stage)` : "") + (memory ? `; ${memory.describe()}` : "") +
      `; backend ${env.backend.description}`,
  );
  const run: Run = {
    cfg,
    env,
    log,
    task,
    taskCtx,
    ranks,
    world,
    paddedVocab,
    data,
    orders: new Map(),
    proc,
  };

  let iteration = 0;
  let consumedTrain = 0;
  let consumedValid = 0;
  let loadedFrom: string | null = null;
  if (cfg.load) {
    const r = load(run);
    if (r) {
      ({ iteration, consumedTrain, consumedValid } = r);
      loadedFrom = `${cfg.load} (iteration ${r.iteration})`;
      const sim = buildNumMicroBatchesCalculator(mbArgs);
      checkResumeFits({
        loadDir: cfg.load,
        savedArgs: r.args,
        cfg,
        iteration,
        trainIters,
        consumedTrain,
        consumedValid,
        trainLength: data.train.length,
        validLength: data.valid?.length ?? null,
        batchAt: (c) => {
          sim.update(c, false);
          return sim.currentGlobalBatchSize;
        },
      });
    }
  }

  const tb = cfg.tensorboardDir && lastRank
    ? new SummaryWriter(cfg.tensorboardDir, { queueSize: cfg.tensorboardQueueSize })
    : null;
  const metrics = cfg.metricsFile && lastRank ? new MetricsWriter(cfg.metricsFile) : null;
  const calc = buildNumMicroBatchesCalculator(mbArgs);
  const history: IterationLog[] = [];
  const validation: TrainResult["validation"] = [];
  let savedTo: string | null = null;
  let exitReason: TrainResult["exitReason"] = "done";
  const startTime = now();
  let intervalStart = now();
  let intervalTokens = 0;
  let intervalLoss: number[] = [];
  let intervalScalars: Record<string, number>[] = [];
  let skippedInInterval = 0;
  let nanInInterval = 0;
  let itersSinceLog = 0;
  let totalTokens = 0;
  let totalTime = 0;
  const tokensPerSample = task.tokensPerSample(taskCtx);
  const flopsPerSample = task.flopsPerSample?.(taskCtx) ?? null;

  const doEval = async (label: string, source: SampleSource | null, start: number) => {
    if (!source || evalIters === 0) return null;
    const r = await evaluate(run, source, evalIters, start);
    const parts = Object.entries(r.scalars).map(([name, v]) =>
      `${name} value: ${fmtNum(v, 6)} | ${name} PPL: ${fmtNum(Math.exp(Math.min(20, v)), 6)}`
    );
    logLast(`${"-".repeat(10)} ${label} | ${parts.join(" | ")}`);
    return r;
  };

  const doSave = async () => {
    if (!cfg.save) return;
    const t0 = now();
    savedTo = proc
      ? await saveProcesses(run, iteration, consumedTrain, consumedValid)
      : save(run, iteration, consumedTrain, consumedValid);
    log(`saved checkpoint at iteration ${iteration} to ${cfg.save} (${(now() - t0).toFixed(0)} ms)`);
  };

  let lastYield = performance.now();
  let agreedSignal = "";
  while (iteration < trainIters) {
    calc.update(consumedTrain, true);
    const numMicro = calc.numMicroBatches;
    const batch = calc.currentGlobalBatchSize;
    const t0 = now();
    iteration += 1;
    const r = await trainStep(run, consumedTrain, iteration, numMicro);
    if (!Number.isFinite(r.loss) && !r.skipped) {
      // fp16's scaler skips such a step; without one (fp32, bf16) the update is already poisoned, so
      // stop as Megatron's loss check does, and do not save this state.
      throw new Error(
        `iteration ${iteration}: lm loss is ${r.loss} (${cfg.paramsDtype} training, no loss scaler to ` +
          `skip the step); stopping without saving` +
          (savedTo ? `; last checkpoint: ${savedTo}` : loadedFrom ? `; last checkpoint: ${loadedFrom}` : ""),
      );
    }
    consumedTrain += batch;
    const dt = now() - t0;
    const tokens = batch * tokensPerSample;
    intervalTokens += tokens;
    totalTokens += tokens;
    totalTime += dt;
    if (r.skipped) skippedInInterval++;
    if (!Number.isFinite(r.loss)) nanInInterval++;
    else if (!r.skipped) {
      intervalLoss.push(r.loss);
      intervalScalars.push(r.scalars);
    }
    history.push({
      iteration,
      consumedSamples: consumedTrain,
      loss: r.loss,
      lr: r.nextLr,
      lossScale: r.lossScale,
      gradNorm: r.gradNorm,
      numZerosInGrad: r.numZerosInGrad,
      paramsNorm: r.paramsNorm,
      skipped: r.skipped,
      scalars: r.scalars,
    });
    itersSinceLog++;
    if (tb && iteration % cfg.tensorboardLogInterval === 0) {
      writeTrainScalars(tb, cfg, { ...r, batch }, iteration, consumedTrain);
      if (cfg.logTimersToTensorboard) {
        // Megatron's timers.write: each timer's time since the last log line, per iteration, in seconds.
        const timers = ranks[ranks.length - 1].timers;
        tb.addScalars(
          [...timers].map(([name, sec]) => ({ tag: `${name}-time`, value: sec / itersSinceLog })),
          iteration,
        );
      }
    }
    if (lastRank) {
      env.progress?.(
        `iteration ${iteration}/${trainIters} | loss ${fmtNum(r.loss)} | ${
          (tokens / dt * 1000).toFixed(0)
        } tokens/s`,
      );
    }

    if (iteration % cfg.logInterval === 0 || iteration === trainIters) {
      const elapsed = now() - intervalStart;
      const iters = iteration % cfg.logInterval === 0 ? cfg.logInterval : iteration % cfg.logInterval;
      const msPerIter = elapsed / iters;
      const tokPerSec = intervalTokens / elapsed * 1000;
      const flops = (flopsPerSample ?? 0) * (intervalTokens / tokensPerSample) / (elapsed / 1000);
      const mfu = env.peak && flopsPerSample !== null ? flops / env.peak.flops : null;
      const avgScalars: [string, number][] = task.lossNames.map((n) => [
        n,
        mean(intervalScalars.map((x) => x[n])),
      ]);
      if (tb && cfg.logTimersToTensorboard) tb.addScalar("iteration-time", msPerIter / 1000, iteration);
      itersSinceLog = 0;
      for (const rank of ranks) rank.timers.clear();
      logLast(
        ` iteration ${String(iteration).padStart(8)}/${String(trainIters).padStart(8)} |` +
          ` consumed samples: ${String(consumedTrain).padStart(10)} |` +
          ` elapsed time per iteration (ms): ${msPerIter.toFixed(1)} |` +
          ` learning rate: ${r.nextLr.toExponential(3)} | global batch size: ${String(batch).padStart(5)} |` +
          // As Megatron, no loss when every iteration of the interval was skipped or NaN.
          (intervalLoss.length > 0
            ? avgScalars.map(([n, v]) => ` ${n}: ${v.toExponential(6)} |`).join("")
            : "") +
          ` loss scale: ${r.lossScale.toFixed(1)} |` +
          ` grad norm: ${fmtNum(r.gradNorm, 3)} |` +
          // Megatron prints these two only when asked for (and num zeros only for a taken step).
          (r.numZerosInGrad !== null ? ` num zeros: ${r.numZerosInGrad.toFixed(1)} |` : "") +
          (r.paramsNorm !== null ? ` params norm: ${fmtNum(r.paramsNorm, 3)} |` : "") +
          ` number of skipped iterations: ${String(skippedInInterval).padStart(3)} |` +
          ` number of nan iterations: ${String(nanInInterval).padStart(3)} |` +
          ` tokens/s: ${tokPerSec.toFixed(0)} | TFLOP/s: ${(flops / 1e12).toFixed(4)} |` +
          ` ${env.peak?.label ?? "MFU"}: ${mfu === null ? "-" : (mfu * 100).toFixed(2) + "%"} |`,
      );
      metrics?.write({
        kind: "train",
        iteration,
        consumed_samples: consumedTrain,
        ms_per_iteration: msPerIter,
        learning_rate: r.nextLr,
        global_batch_size: batch,
        ...scalarFields(Object.fromEntries(avgScalars)),
        loss_scale: r.lossScale,
        grad_norm: r.gradNorm,
        ...(cfg.logNumZerosInGrad ? { num_zeros: r.numZerosInGrad } : {}),
        ...(cfg.logParamsNorm ? { params_norm: r.paramsNorm } : {}),
        skipped_iterations: skippedInInterval,
        nan_iterations: nanInInterval,
        tokens_per_second: tokPerSec,
        tflops: flops / 1e12,
        mfu,
      });
      intervalStart = now();
      intervalTokens = 0;
      intervalLoss = [];
      intervalScalars = [];
      skippedInInterval = 0;
      nanInInterval = 0;
    }

    if (cfg.evalInterval && iteration % cfg.evalInterval === 0 && data.valid) {
      const v = await doEval(`validation loss at iteration ${iteration}`, data.valid, consumedValid);
      consumedValid += evalIters * gbs;
      if (v) {
        validation.push({ iteration, ...v });
        if (tb) writeValidationScalars(tb, cfg, v, iteration, consumedTrain);
        metrics?.write({ kind: "validation", iteration, ...scalarFields(v.scalars), ppl: v.ppl });
      }
    }

    if (cfg.save && cfg.saveInterval && iteration % cfg.saveInterval === 0) await doSave();

    // A CPU step never returns to the event loop by itself, so signal listeners would never run:
    // give the loop a turn (a timer costs ~1 ms, so at most every 50 ms) when a stop can be requested.
    if (env.stopRequest && performance.now() - lastYield >= 50) {
      await new Promise((r) => setTimeout(r, 0));
      lastYield = performance.now();
    }
    // Exit conditions: each saves a checkpoint first (when --save is set), then stops cleanly.
    let stop: TrainResult["exitReason"] | null = null;
    if (env.stopRequest?.stop) stop = "signal";
    else if (cfg.exitInterval && iteration % cfg.exitInterval === 0) stop = "exit-interval";
    else if (cfg.exitDurationInMins && (now() - startTime) / 60000 > cfg.exitDurationInMins) {
      stop = "exit-duration";
    }
    if (proc && (env.stopRequest || cfg.exitDurationInMins)) {
      // A signal or the clock reaches the processes at different iterations: they stop (and save)
      // together when any of them would (Megatron's all-reduce MAX of the exit flag).
      // The signal's name travels with the flag, so every rank's line names the signal even
      // when it reached this process after the vote (the launcher forwards it rank by rank).
      const reasons = [null, "signal", "exit-interval", "exit-duration"] as const;
      const signals = ["", "SIGINT", "SIGTERM"];
      const own = Math.max(0, signals.indexOf(env.stopRequest?.signal ?? ""));
      const t = env.backend.fromHost("f64", [2], [reasons.indexOf(stop), stop === "signal" ? own : 0]);
      await proc.comm.allReduce(t, "max", "world");
      const [r, s] = env.backend.toF64(t);
      env.backend.free(t);
      stop = reasons[r];
      if (stop === "signal" && !env.stopRequest?.signal) agreedSignal = signals[s] || "on another rank";
    }
    if (stop) {
      if (!(cfg.saveInterval && iteration % cfg.saveInterval === 0)) await doSave();
      log(
        `exiting at iteration ${iteration} (${
          stop === "signal" ? `signal ${env.stopRequest?.signal ?? agreedSignal}` : stop
        })`,
      );
      exitReason = stop;
      break;
    }
  }

  let test: TrainResult["test"] = null;
  if (exitReason === "done") {
    if (cfg.save && !(cfg.saveInterval && iteration % cfg.saveInterval === 0) && iteration > 0) {
      await doSave();
    }
    if (data.valid && !(cfg.evalInterval && iteration % cfg.evalInterval === 0)) {
      const v = await doEval(`validation loss at the end of training`, data.valid, consumedValid);
      if (v) {
        validation.push({ iteration, ...v });
        // Megatron's final evaluate_and_print_results writes its scalars too.
        if (tb) writeValidationScalars(tb, cfg, v, iteration, consumedTrain);
      }
    }
    test = await doEval("test loss at the end of training", data.test, 0);
    if (test) metrics?.write({ kind: "test", iteration, ...scalarFields(test.scalars), ppl: test.ppl });
  }
  tb?.close();
  for (const r of ranks) r.free();
  data.close();
  if (proc) {
    // A clean exit: flush pending sends, leave MPI, say goodbye to the store (rank 0 waits for all).
    await proc.comm.close();
    await proc.world.store?.close();
  }
  return {
    iteration,
    consumedTrainSamples: consumedTrain,
    history,
    validation,
    test,
    savedTo,
    exitReason,
    paddedVocabSize: paddedVocab,
    tokensPerSecond: totalTime > 0 ? totalTokens / totalTime * 1000 : 0,
  };
}
