// Megatron 2021's tasks/finetune_utils.py finetune() for RACE / MNLI / QQP: epoch-based training
// (train_iters = epochs * iterations per epoch, each epoch a fresh shuffle from the seed), the
// checkpoint at the end of every epoch, then the accuracy of every validation set (eval_utils'
// accuracy_func_provider), and also every --eval-interval iterations. Beyond Megatron, the epoch with
// the best overall accuracy is kept as its own checkpoint in <save>/best/ (best.json says which).
// --epochs 0 is Megatron's evaluation-only mode: the accuracies of the --load checkpoint at "epoch -1"
// and its predictions (softmaxes, labels, uids per set) saved as a torch .pt in the --load folder.
// The steps run through the trainer's RankState (schedules, gradient reductions, optimizer), on any
// (TP, PP, DP) layout it supports; checkpoints are the trainer's format.

import { RandomState } from "../data/numpy_random.ts";
import { PyFloat, PyTuple, type PyValue } from "../interop/pickle.ts";
import { writeTorchCheckpoint } from "../interop/torch_checkpoint.ts";
import { createGradScaler } from "../optimizer/grad_scaler.ts";
import { createLrScheduler } from "../optimizer/lr_schedule.ts";
import { LocalWorld } from "../parallel/local_comm.ts";
import { type Communicator, makeParallelState, SingleRankCommunicator } from "../parallel/types.ts";
import {
  assertArchitectureArgs,
  type CheckpointMeta,
  iterDirName,
  loadCheckpoint,
  type NamedTensor,
  type RankState as CkptRank,
  readTracker,
  removeStaleTemps,
  saveCheckpoint,
} from "../training/checkpoint.ts";
import { type Config, configToJson, flagNotes } from "../training/config.ts";
import { prepareSaveDir } from "../training/lock.ts";
import { MetricsWriter } from "../training/metrics.ts";
import { chunkLayers, RankState, type StepInputs } from "../training/rank.ts";
import { mergeShards, shardOf, weightRule } from "../models/weight_names.ts";
import { buildTaskContext } from "../training/run_data.ts";
import type { TaskContext, TrainingTask } from "../training/task.ts";
import type { TrainEnv } from "../training/train.ts";
import {
  type FinetuneSample,
  type FinetuneTaskName,
  makeFinetuneTask,
  type NamedSamples,
  readTaskPath,
} from "./task.ts";

export interface FinetuneOptions {
  task: FinetuneTaskName;
  /** --train-data: files (MNLI, QQP) or RACE folders, read as one training set. */
  trainData: string[];
  /** --valid-data: each path is one validation set, reported on its own. */
  validData: string[];
  /** --pretrained-checkpoint: a megatron-deno BERT checkpoint (language model and pooler are loaded). */
  pretrainedCheckpoint?: string;
  epochs: number;
  /** --keep-last: keep the last, partial global batch of an epoch (completed from the epoch's start). */
  keepLast: boolean;
}

export interface SetAccuracy {
  name: string;
  correct: number;
  total: number;
}

/** One validation set's predictions in the file order (Megatron's output_predictions). */
export interface SetPredictions {
  name: string;
  /** Per sample, softmax(logits) as f32 values. */
  softmaxes: number[][];
  labels: number[];
  /** The samples' uids (GLUE's index column, RACE's count within its folder). */
  ids: number[];
}

export interface Evaluation {
  /** 0-based epoch as Megatron prints it, or null for an --eval-interval evaluation. */
  epoch: number | null;
  iteration: number;
  sets: SetAccuracy[];
  correct: number;
  total: number;
  /** Percent, as Megatron prints it. */
  accuracy: number;
}

export interface BestCheckpoint {
  epoch: number;
  iteration: number;
  accuracy: number;
  correct: number;
  total: number;
  sets: SetAccuracy[];
}

export interface FinetuneResult {
  iteration: number;
  trainIters: number;
  itersPerEpoch: number;
  /** The per-iteration mean training loss. */
  losses: { iteration: number; loss: number }[];
  evaluations: Evaluation[];
  best: BestCheckpoint | null;
  exitReason: "done" | "exit-interval" | "exit-duration" | "signal";
  /** --epochs 0: the predictions file written in the --load folder. */
  predictionsFile?: string;
}

/** Where the best epoch's checkpoint goes, and its description. */
export const BEST_DIR = "best";
export const BEST_FILE = "best.json";

interface Run {
  cfg: Config;
  env: TrainEnv;
  opts: FinetuneOptions;
  task: TrainingTask<FinetuneSample>;
  taskCtx: TaskContext;
  ranks: RankState[];
  world: LocalWorld | null;
  /** Training samples (what an epoch's position means on resume). */
  trainSamples: number;
}

function allRanks<T>(run: Run, fn: (r: RankState) => Promise<T>): Promise<T[]> {
  return run.world ? run.world.run((g) => fn(run.ranks[g])) : Promise.all(run.ranks.map(fn));
}

/** The ranks whose micro-batch losses count: last stage, TP rank 0, every DP rank. */
function lossRanks(run: Run): RankState[] {
  return run.ranks.filter((r) => r.ps.isLastStage && r.ps.tpRank === 0);
}

/** Inputs of one global step over `at(k)` (the sample at position k of the step). */
function stepInputs(
  run: Run,
  rank: RankState,
  iteration: number,
  at: (k: number) => FinetuneSample,
): StepInputs {
  const micro = run.cfg.microBatchSize!, dp = rank.ps.dpSize;
  const numMicroBatches = run.cfg.globalBatchSize! / (micro * dp);
  const first = (mb: number) => mb * micro * dp + rank.ps.dpRank * micro;
  return {
    iteration,
    numMicroBatches,
    firstGlobalSample: first,
    batch: (mb) =>
      run.task.makeBatch(run.taskCtx, Array.from({ length: micro }, (_, i) => at(first(mb) + i))),
  };
}

/** The epoch's sample order: NumPy's RandomState(seed + epoch).permutation (Megatron shuffles with
 *  torch's DistributedSampler, set_epoch(seed + epoch); the order differs, the rule is the same). */
export function epochOrder(seed: number, epoch: number, n: number): Int32Array {
  return Int32Array.from(new RandomState((seed + epoch) >>> 0).permutation(n));
}

/** Correct / total of every validation set, forward only; a last partial batch is completed with
 *  label -1 fillers that are not counted. */
async function accuracy(
  run: Run,
  valid: NamedSamples[],
  predictions?: SetPredictions[],
): Promise<SetAccuracy[]> {
  const gbs = run.cfg.globalBatchSize!, micro = run.cfg.microBatchSize!;
  const out: SetAccuracy[] = [];
  for (const set of valid) {
    const n = set.samples.length;
    const filler = { ...set.samples[0], label: -1 };
    const softmaxes: number[][] = new Array(n);
    let correct = 0, total = 0;
    for (let start = 0; start < n; start += gbs) {
      const at = (k: number) => start + k < n ? set.samples[start + k] : filler;
      const per = await allRanks(run, (r) => r.evalStep(stepInputs(run, r, 0, at)));
      for (const r of lossRanks(run)) {
        const { scalars, rows } = per[run.ranks.indexOf(r)];
        scalars.forEach((s, mb) => {
          correct += s.correct;
          total += s.samples;
          const p = rows[mb];
          if (!predictions || !p) return;
          // Micro-batch mb of DP rank d holds the step's samples first(mb) .. first(mb) + micro - 1.
          const c = p.length / micro, first = start + mb * micro * r.ps.dpSize + r.ps.dpRank * micro;
          for (let i = 0; i < micro && first + i < n; i++) {
            softmaxes[first + i] = Array.from(p.subarray(i * c, (i + 1) * c), Math.fround);
          }
        });
      }
    }
    if (total !== n) throw new Error(`${set.path}: evaluated ${total} samples, expected ${n}`);
    out.push({ name: set.name, correct, total });
    predictions?.push({
      name: set.name,
      softmaxes,
      labels: set.samples.map((s) => s.label),
      ids: set.samples.map((s) => s.uid),
    });
  }
  return out;
}

/** Why an --epochs 0 run (evaluation only) cannot start, or null. */
export function evaluationOnlyProblem(load: string | undefined, validData: readonly string[]): string | null {
  if (!load) {
    return "--epochs 0 (evaluation only): pass --load, the checkpoint to evaluate (its predictions go there)";
  }
  if (validData.length === 0) return "--epochs 0 (evaluation only): pass --valid-data, the sets to evaluate";
  if (readTracker(load) === null) {
    return `--load ${load}: no checkpoint to evaluate (no latest_checkpointed_iteration.txt)`;
  }
  return null;
}

/** Megatron's predictions file: torch.save([(name, (softmaxes, labels, ids)), ...]) named
 *  predictions_<set>_<set>....pt, written temp + rename. Returns its path. */
export function writePredictions(dir: string, sets: SetPredictions[]): string {
  const path = `${dir}/${["predictions", ...sets.map((s) => s.name)].join("_")}.pt`;
  const root: PyValue = sets.map((s) =>
    new PyTuple([
      s.name,
      new PyTuple([s.softmaxes.map((row) => row.map((v) => new PyFloat(v))), s.labels, s.ids]),
    ])
  );
  writeTorchCheckpoint(path, root);
  return path;
}

const pct = (c: number, t: number) => t === 0 ? 0 : c * 100 / t;

function checkpointArgs(run: Run): Record<string, unknown> {
  return {
    ...configToJson(run.cfg),
    paddedVocabSize: run.taskCtx.paddedVocab,
    finetuneTask: run.opts.task,
    finetuneTrainSamples: run.trainSamples,
  };
}

function rankPayloads(run: Run, iteration: number, consumed: number): CkptRank[] {
  const cfg = run.cfg, be = run.env.backend;
  const out: CkptRank[] = [];
  for (const rank of run.ranks) {
    if (rank.ps.dpRank !== 0) continue;
    const { state, tensors } = rank.optimizer.exportState();
    const meta: CheckpointMeta = {
      args: checkpointArgs(run),
      iteration,
      consumedTrainSamples: consumed,
      consumedValidSamples: 0,
      gradScaler: cfg.noSaveOptim ? null : state.gradScaler,
      lrScheduler: state.lrScheduler as unknown as Record<string, unknown>,
      rng: cfg.noSaveRng ? null : { seed: cfg.seed, iteration, dataIteratorPosition: consumed },
      optimizer: cfg.noSaveOptim ? null : (state as unknown as Record<string, unknown>),
    };
    out.push({
      tp: rank.ps.tpRank,
      pp: rank.ps.ppRank,
      model: rank.weights.entries.map(({ name, param: p }) => ({
        name,
        dtype: p.value.dtype,
        shape: [...p.value.shape],
        data: be.toHost(p.value),
      })),
      optim: cfg.noSaveOptim ? undefined : tensors.map((t) => ({
        name: t.name,
        dtype: t.tensor.dtype,
        shape: [...t.tensor.shape],
        data: be.toHost(t.tensor),
      })),
      meta,
    });
  }
  return out;
}

function save(run: Run, dir: string, iteration: number, consumed: number): string {
  return saveCheckpoint({
    saveDir: dir,
    iteration,
    tpSize: run.cfg.tensorModelParallelSize,
    ppSize: run.cfg.pipelineModelParallelSize,
    ranks: rankPayloads(run, iteration, consumed),
    log: run.env.log,
  });
}

/** Write text under a temporary name, then rename it into place. */
function writeAtomic(path: string, text: string): void {
  const tmp = `${path}.tmp-${Deno.pid}`;
  Deno.writeTextFileSync(tmp, text);
  Deno.renameSync(tmp, path);
}

/** Save the best epoch into <save>/best/ (one iteration kept) and describe it in best.json. */
function saveBest(run: Run, b: BestCheckpoint, consumed: number): string {
  const dir = `${run.cfg.save!}/${BEST_DIR}`;
  const saved = save(run, dir, b.iteration, consumed);
  const keep = iterDirName(b.iteration);
  for (const e of Deno.readDirSync(dir)) {
    if (e.isDirectory && /^iter_\d+$/.test(e.name) && e.name !== keep) {
      Deno.removeSync(`${dir}/${e.name}`, { recursive: true });
    }
  }
  writeAtomic(`${dir}/${BEST_FILE}`, JSON.stringify({ task: run.opts.task, ...b }, null, 1) + "\n");
  return saved;
}

/** Copy a checkpoint's tensors into a rank's parameters; `skip` names are left as they are. */
function copyWeights(
  run: Run,
  rank: RankState,
  dir: string,
  model: NamedTensor[],
  skip: (name: string) => boolean,
): number {
  const be = run.env.backend;
  const byName = new Map(model.map((t) => [t.name, t]));
  let n = 0;
  for (const { name, param: p } of rank.weights.entries) {
    if (skip(name)) continue;
    const t = byName.get(name);
    if (!t) {
      throw new Error(
        `${dir}/model.safetensors: missing parameter ${name}` +
          (name.includes("pooler") ? " (a BERT pretrained with --bert-no-binary-head has no pooler)" : ""),
      );
    }
    if (t.dtype !== p.value.dtype || t.shape.join(",") !== p.value.shape.join(",")) {
      throw new Error(
        `${dir}/model.safetensors: ${name} is ${t.dtype} [${t.shape}], expected ${p.value.dtype} [${p.value.shape}]`,
      );
    }
    const tmp = be.fromHost(t.dtype, t.shape, t.data);
    be.copy(tmp, p.value);
    be.free(tmp);
    n++;
  }
  return n;
}

const isHead = (name: string) => /^(model\d+\.)?(classification|multichoice)_head\./.test(name);

/** A tensor of a TP = PP = 1 model, merged from the shards of every rank. */
interface FullTensor {
  dtype: NamedTensor["dtype"];
  shape: number[];
  /** Values (f32/f64) or raw 16-bit patterns (f16/bf16), as the checkpoint stores them. */
  data: Float64Array;
}

/** The architecture arguments that must agree with a pretrained checkpoint of any layout. */
function layoutFree(args: Record<string, unknown>, run: Run): Record<string, unknown> {
  const cfg = run.cfg;
  return {
    ...args,
    tensorModelParallelSize: cfg.tensorModelParallelSize,
    pipelineModelParallelSize: cfg.pipelineModelParallelSize,
    paddedVocabSize: run.taskCtx.paddedVocab,
  };
}

/** Every tensor of a checkpoint as one TP = PP = 1 model would hold it: TP shards concatenated per
 *  the weight-name table, stage-local layer numbers made global; the tied copy on the last stage and
 *  `skip` names are left out. */
function readFull(dir: string, run: Run, skip: (name: string) => boolean): Map<string, FullTensor> {
  const first = loadCheckpoint(dir, { tp: 0, pp: 0 }, { loadOptim: false });
  const { tpSize, ppSize } = first.sizes;
  const args = first.meta.args;
  assertArchitectureArgs(layoutFree(args, run), checkpointArgs(run));
  const numLayers = Number(args.numLayers);
  const vp = Number(args.virtualPipelineModelParallelSize ?? 1);
  const shards = new Map<
    string,
    { dtype: NamedTensor["dtype"]; shape: number[]; parts: ArrayLike<number>[] }
  >();
  for (let p = 0; p < ppSize; p++) {
    for (let t = 0; t < tpSize; t++) {
      const ck = p === 0 && t === 0
        ? first
        : loadCheckpoint(dir, { tp: t, pp: p }, { loadOptim: false, ppSize });
      for (const x of ck.model) {
        const m = /^model(\d+)\.(.*)$/.exec(x.name);
        const v = m ? Number(m[1]) : 0, local = m ? m[2] : x.name;
        if (local === "word_embeddings_for_head.weight" || skip(local)) continue;
        const l = /^(.*\.layers\.)(\d+)(\..*)$/.exec(local);
        const name = l ? `${l[1]}${chunkLayers(numLayers, ppSize, vp, p, v)[Number(l[2])]}${l[3]}` : local;
        const e = shards.get(name) ?? { dtype: x.dtype, shape: x.shape, parts: [] };
        e.parts[t] = x.data as ArrayLike<number>; // model tensors are float (no i64)
        shards.set(name, e);
      }
    }
  }
  const out = new Map<string, FullTensor>();
  for (const [name, e] of shards) {
    const split = weightRule(name).split;
    const merged = split && tpSize > 1 ? mergeShards(e.parts, e.shape, split) : {
      shape: e.shape,
      data: Float64Array.from(e.parts[0]),
    };
    out.set(name, { dtype: e.dtype, ...merged });
  }
  return out;
}

/** --pretrained-checkpoint (any TP / PP layout): the language model and pooler; the task head stays
 *  freshly initialized. The word embedding keeps its first rows (the real vocabulary) when this run
 *  pads the vocabulary to another size; padding rows are zero. */
function loadPretrained(run: Run, dir: string): void {
  const be = run.env.backend, tpSize = run.cfg.tensorModelParallelSize;
  const full = readFull(dir, run, () => false);
  const used = new Set<string>();
  for (const rank of run.ranks) {
    for (const e of rank.weights.entries) {
      if (isHead(e.name) || e.globalName === null) continue;
      let t = full.get(e.globalName);
      if (!t) {
        throw new Error(
          `${dir}: missing parameter ${e.globalName}` +
            (e.globalName.includes("pooler")
              ? " (a BERT pretrained with --bert-no-binary-head has no pooler)"
              : ""),
        );
      }
      if (t.dtype !== e.param.value.dtype) {
        throw new Error(
          `${dir}: ${e.globalName} is ${t.dtype}, this run's parameters are ${e.param.value.dtype}`,
        );
      }
      if (e.globalName === "language_model.embedding.word_embeddings.weight") {
        t = resizeRows(t, run.taskCtx.paddedVocab);
      }
      const shard = shardOf(t.data, t.shape, e.rule.split, rank.ps.tpRank, tpSize);
      if (shard.shape.join(",") !== e.param.value.shape.join(",")) {
        throw new Error(`${dir}: ${e.globalName} is [${t.shape}], expected a shard [${e.param.value.shape}]`);
      }
      const half = t.dtype === "f16" || t.dtype === "bf16";
      const tmp = be.fromHost(t.dtype, shard.shape, half ? Uint16Array.from(shard.data) : shard.data);
      be.copy(tmp, e.param.value);
      be.free(tmp);
      used.add(e.globalName);
    }
    rank.optimizer.reloadModelParams();
  }
  const heads = [...new Set([...full.keys()].filter((n) => !used.has(n)).map((n) => n.replace(/\..*$/, "")))];
  run.env.log(
    `loaded pretrained checkpoint ${dir}: ${used.size} tensors` +
      (heads.length > 0 ? `; not used: ${heads.join(", ")}` : "") +
      `; ${run.opts.task === "RACE" ? "multichoice_head" : "classification_head"} freshly initialized`,
  );
}

/** The first `rows` rows of a [V, h] tensor, zero rows appended when it has fewer. */
function resizeRows(t: FullTensor, rows: number): FullTensor {
  if (t.shape[0] === rows) return t;
  const h = t.shape[1], data = new Float64Array(rows * h);
  data.set(t.data.subarray(0, Math.min(rows, t.shape[0]) * h));
  return { dtype: t.dtype, shape: [rows, h], data };
}

/** --load: resume a finetuning run (weights, optimizer, iteration). Null when the folder has no
 *  checkpoint yet. */
function resume(run: Run, evalOnly = false): { iteration: number; consumed: number } | null {
  const cfg = run.cfg, dir = cfg.load!, be = run.env.backend;
  if (readTracker(dir) === null) {
    run.env.log(
      `no checkpoint found in ${dir} (no latest_checkpointed_iteration.txt); starting from scratch`,
    );
    return null;
  }
  // Evaluation only needs the weights; its epochs need not line up with the data.
  const loadOptim = !cfg.noLoadOptim && !evalOnly;
  let iteration = 0, consumed = 0;
  for (const rank of run.ranks) {
    const ck = loadCheckpoint(dir, { tp: rank.ps.tpRank, pp: rank.ps.ppRank }, {
      loadOptim,
      ppSize: cfg.pipelineModelParallelSize,
    });
    const task = ck.meta.args.finetuneTask;
    if (task !== run.opts.task) {
      throw new Error(
        `--load ${dir}: ${
          task === undefined ? "not a finetuning checkpoint" : `a ${task} finetuning checkpoint`
        }, expected --task ${run.opts.task} (start from a pretrained BERT with --pretrained-checkpoint)`,
      );
    }
    assertArchitectureArgs(ck.meta.args, checkpointArgs(run));
    const a = ck.meta.args, n = run.trainSamples, gbs = run.cfg.globalBatchSize;
    if (!evalOnly && (a.finetuneTrainSamples !== n || a.globalBatchSize !== gbs)) {
      throw new Error(
        `--load ${dir}: saved by a run over ${a.finetuneTrainSamples} training samples with --global-batch-size ` +
          `${a.globalBatchSize}, this run has ${n} with ${gbs}: its epochs would not line up (start a new --save)`,
      );
    }
    if (loadOptim && !(ck.optim && ck.meta.optimizer)) {
      throw new Error(`${ck.dir}: no optimizer state (saved with --no-save-optim); pass --no-load-optim`);
    }
    copyWeights(run, rank, ck.dir, ck.model, () => false);
    if (loadOptim) {
      const tensors = ck.optim!.map((t) => ({ name: t.name, tensor: be.fromHost(t.dtype, t.shape, t.data) }));
      rank.optimizer.importState(ck.meta.optimizer as never, tensors, {});
      for (const t of tensors) be.free(t.tensor);
    } else rank.optimizer.reloadModelParams();
    iteration = ck.iteration;
    consumed = ck.meta.consumedTrainSamples;
  }
  run.env.log(
    `loaded checkpoint ${dir} at iteration ${iteration}` + (loadOptim ? "" : " (optimizer state not loaded)"),
  );
  return { iteration, consumed };
}

function readBest(dir: string): BestCheckpoint | null {
  try {
    return JSON.parse(Deno.readTextFileSync(`${dir}/${BEST_DIR}/${BEST_FILE}`)) as BestCheckpoint;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new Error(`${dir}/${BEST_DIR}/${BEST_FILE}: ${(e as Error).message}`);
  }
}

/** Megatron's finetune(): read the data, build the model (pretrained weights or --load), train for
 *  --epochs and report accuracy. `cfg` is validated; its --train-iters is replaced by the epochs'. */
export async function finetune(cfg0: Config, opts: FinetuneOptions, env: TrainEnv): Promise<FinetuneResult> {
  const log = env.log;
  const evalOnly = opts.epochs === 0;
  const problem = evalOnly ? evaluationOnlyProblem(cfg0.load, opts.validData) : null;
  if (problem) throw new Error(problem);
  for (const note of flagNotes(cfg0)) log(note);
  if (cfg0.save) {
    prepareSaveDir(cfg0.save);
    removeStaleTemps(cfg0.save, log);
  }
  const taskCtx0 = await buildTaskContext(cfg0, log);
  const seq = cfg0.seqLength!;
  const read = (p: string) => readTaskPath(opts.task, p, taskCtx0.tokenizer, seq, log);
  // Evaluation only reads no training data (Megatron builds no training loader either).
  const trainSets = evalOnly ? [] : opts.trainData.map(read);
  const train = trainSets.flatMap((s) => s.samples);
  const valid = opts.validData.map(read);
  log(
    (evalOnly
      ? `> ${opts.task}: evaluation only; validation: `
      : `> ${opts.task}: ${train.length} training samples (${opts.trainData.join(", ")}); validation: `) +
      (valid.length === 0 ? "none" : valid.map((v) => `${v.name} ${v.samples.length}`).join(", ")),
  );

  // Iterations: whole global batches per epoch (Megatron's drop_last), or one more with --keep-last.
  const gbs = cfg0.globalBatchSize!;
  const itersPerEpoch = opts.keepLast ? Math.ceil(train.length / gbs) : Math.floor(train.length / gbs);
  if (itersPerEpoch === 0 && !evalOnly) {
    throw new Error(
      `--train-data: ${train.length} samples, fewer than one global batch (--global-batch-size ${gbs}); ` +
        `pass --keep-last or a smaller batch`,
    );
  }
  const trainIters = opts.epochs * itersPerEpoch;
  // Evaluation only steps nothing; one iteration merely sizes the (unused) learning-rate schedule.
  const cfg: Config = { ...cfg0, trainIters: evalOnly ? 1 : trainIters };
  const taskCtx: TaskContext = { ...taskCtx0, cfg };
  const task = makeFinetuneTask(opts.task, { train, valid: valid[0]?.samples ?? null });
  task.validate?.(cfg);

  const tp = cfg.tensorModelParallelSize, pp = cfg.pipelineModelParallelSize, dp = cfg.dataParallelSize;
  const vp = cfg.virtualPipelineModelParallelSize;
  const world = tp * pp * dp > 1
    ? new LocalWorld(env.backend, { tp, pp, dp, vp }, { timeoutMs: cfg.distributedTimeoutMinutes * 60_000 })
    : null;
  const ranks: RankState[] = [];
  for (let g = 0; g < tp * pp * dp; g++) {
    const ps = world ? world.states[g] : makeParallelState({ tp: 1, pp: 1, dp: 1, vp }, 0);
    const comm: Communicator = world ? world.communicator(g) : new SingleRankCommunicator();
    const scheduler = createLrScheduler({ ...cfg, globalBatchSize: gbs, lr: cfg.lr! });
    ranks.push(
      new RankState(
        cfg,
        task as TrainingTask<unknown>,
        taskCtx,
        env.backend,
        ps,
        comm,
        scheduler,
        createGradScaler(cfg),
      ),
    );
  }
  const run: Run = { cfg, env, opts, task, taskCtx, ranks, world, trainSamples: train.length };
  const nParams = ranks.filter((r) => r.ps.dpRank === 0)
    .reduce((s, r) => s + r.params.filter((p) => !p.shared).reduce((a, p) => a + p.value.size, 0), 0);
  log(
    `> model: BERT ${cfg.numLayers} layers, hidden ${cfg.hiddenSize}, ${cfg.numAttentionHeads} heads, seq ${seq}, ` +
      `${(nParams / 1e6).toFixed(2)}M parameters, ${cfg.paramsDtype}, ${opts.task} head; layout TP=${tp} ` +
      `PP=${pp} DP=${dp}; ${
        evalOnly ? "evaluation only" : `${opts.epochs} epochs x ${itersPerEpoch} iterations = ${trainIters}`
      }; backend ` +
      env.backend.description,
  );

  let iteration = 0, consumed = 0;
  const resumed = cfg.load ? resume(run, evalOnly) : null;
  if (resumed) {
    ({ iteration, consumed } = resumed);
    if (opts.pretrainedCheckpoint) log(`> resuming from --load: --pretrained-checkpoint is not read`);
  } else if (opts.pretrainedCheckpoint) loadPretrained(run, opts.pretrainedCheckpoint);
  else log("> no --pretrained-checkpoint: the whole model starts from its random initialization");
  if (iteration > trainIters && !evalOnly) {
    throw new Error(
      `--load ${cfg.load}: the checkpoint is at iteration ${iteration}, beyond this run's ${trainIters} ` +
        `(${opts.epochs} epochs x ${itersPerEpoch})`,
    );
  }
  let best = cfg.load && resumed ? readBest(cfg.load) : null;

  const now = env.now ?? (() => performance.now());
  const startTime = now();
  const metrics = cfg.metricsFile ? new MetricsWriter(cfg.metricsFile) : null;
  const losses: FinetuneResult["losses"] = [];
  const evaluations: Evaluation[] = [];
  let exitReason: FinetuneResult["exitReason"] = "done";
  let intervalLoss: number[] = [], intervalStart = now(), lastYield = performance.now(), skipped = 0;

  const evaluate = async (epoch: number | null, predictions?: SetPredictions[]) => {
    if (valid.length === 0) return null;
    log("calculating metrics ...");
    const label = epoch === null ? `iteration: ${iteration}` : `epoch: ${epoch}`;
    const t0 = now();
    const sets = await accuracy(run, valid, predictions);
    for (const s of sets) {
      log(
        ` > |${label}| metrics for ${s.name}: correct / total = ${s.correct} / ${s.total} = ` +
          `${pct(s.correct, s.total).toFixed(4)} %, elapsed time (sec): ${((now() - t0) / 1000).toFixed(3)}`,
      );
    }
    const correct = sets.reduce((a, s) => a + s.correct, 0), total = sets.reduce((a, s) => a + s.total, 0);
    log(
      ` >> |${label}| overall: correct / total = ${correct} / ${total} = ${pct(correct, total).toFixed(4)} %`,
    );
    const e: Evaluation = { epoch, iteration, sets, correct, total, accuracy: pct(correct, total) };
    evaluations.push(e);
    metrics?.write({ kind: "accuracy", ...e });
    return e;
  };

  if (evalOnly) {
    log("evaluation only mode, setting epoch to -1");
    const predictions: SetPredictions[] = [];
    await evaluate(-1, predictions);
    const predictionsFile = writePredictions(cfg.load!, predictions);
    log(`> predictions of ${predictions.map((s) => s.name).join(", ")} saved in ${predictionsFile}`);
    for (const r of ranks) r.free();
    return {
      iteration,
      trainIters: 0,
      itersPerEpoch,
      losses,
      evaluations,
      best: null,
      exitReason,
      predictionsFile,
    };
  }

  const startEpoch = Math.floor(iteration / itersPerEpoch);
  let skip = iteration % itersPerEpoch;
  outer: for (let epoch = startEpoch; epoch < opts.epochs; epoch++) {
    log(`working on epoch ${epoch} ...`);
    const order = epochOrder(cfg.seed, epoch, train.length);
    for (let k = skip; k < itersPerEpoch; k++) {
      // --keep-last: positions past the end wrap to the epoch's first samples.
      const at = (j: number) => train[order[(k * gbs + j) % train.length]];
      iteration++;
      const results = await allRanks(run, (r) => r.trainStep(stepInputs(run, r, iteration, at)));
      consumed += gbs;
      const lr = lossRanks(run).map((r) => results[run.ranks.indexOf(r)]);
      const loss = lr.reduce((a, r) => a + r.losses.reduce((x, y) => x + y, 0) / r.losses.length, 0) /
        lr.length;
      if (!Number.isFinite(loss) && !results[0].skipped) {
        throw new Error(`iteration ${iteration}: loss is ${loss}; stopping without saving`);
      }
      losses.push({ iteration, loss });
      if (!results[0].skipped) intervalLoss.push(loss);
      else skipped++;
      env.progress?.(`epoch ${epoch} | iteration ${iteration}/${trainIters} | loss ${loss.toFixed(4)}`);
      if (iteration % cfg.logInterval === 0 || iteration === trainIters) {
        const n = iteration % cfg.logInterval === 0 ? cfg.logInterval : iteration % cfg.logInterval;
        const r0 = results[0];
        const meanLoss = intervalLoss.length > 0
          ? intervalLoss.reduce((a, b) => a + b, 0) / intervalLoss.length
          : null;
        metrics?.write({
          kind: "train",
          iteration,
          epoch,
          consumed_samples: consumed,
          learning_rate: r0.nextLr,
          loss: meanLoss,
          loss_scale: r0.lossScale,
          grad_norm: r0.gradNorm,
          skipped_iterations: skipped,
          ...(cfg.logNumZerosInGrad ? { num_zeros: r0.numZerosInGrad } : {}),
          ...(cfg.logParamsNorm ? { params_norm: r0.paramsNorm } : {}),
        });
        log(
          ` iteration ${String(iteration).padStart(8)}/${String(trainIters).padStart(8)} |` +
            ` epoch: ${epoch} | consumed samples: ${String(consumed).padStart(10)} |` +
            ` elapsed time per iteration (ms): ${((now() - intervalStart) / n).toFixed(1)} |` +
            ` learning rate: ${r0.nextLr.toExponential(3)} | global batch size: ${
              String(gbs).padStart(5)
            } |` +
            (meanLoss !== null ? ` loss: ${meanLoss.toExponential(6)} |` : "") +
            ` loss scale: ${r0.lossScale.toFixed(1)} | grad norm: ${r0.gradNorm?.toFixed(3) ?? "-"} |` +
            (r0.numZerosInGrad !== null ? ` num zeros: ${r0.numZerosInGrad.toFixed(1)} |` : "") +
            (r0.paramsNorm !== null ? ` params norm: ${r0.paramsNorm.toFixed(3)} |` : "") +
            ` number of skipped iterations: ${String(skipped).padStart(3)} |`,
        );
        intervalLoss = [];
        skipped = 0;
        intervalStart = now();
      }
      if (cfg.save && cfg.saveInterval && iteration % cfg.saveInterval === 0) {
        save(run, cfg.save, iteration, consumed);
      }
      if (cfg.evalInterval && iteration % cfg.evalInterval === 0) await evaluate(null);
      if (env.stopRequest && performance.now() - lastYield >= 50) {
        await new Promise((r) => setTimeout(r, 0));
        lastYield = performance.now();
      }
      const stop = env.stopRequest?.stop
        ? "signal"
        : cfg.exitInterval && iteration % cfg.exitInterval === 0
        ? "exit-interval"
        : cfg.exitDurationInMins && (now() - startTime) / 60000 > cfg.exitDurationInMins
        ? "exit-duration"
        : null;
      if (stop) {
        if (cfg.save && !(cfg.saveInterval && iteration % cfg.saveInterval === 0)) {
          save(run, cfg.save, iteration, consumed);
        }
        log(
          `exiting at iteration ${iteration} (${
            stop === "signal" ? `signal ${env.stopRequest?.signal ?? ""}` : stop
          })`,
        );
        exitReason = stop;
        break outer;
      }
    }
    skip = 0;
    // Megatron: the checkpoint at the end of each epoch, then the end-of-epoch callback.
    if (cfg.save && !(cfg.saveInterval && iteration % cfg.saveInterval === 0)) {
      save(run, cfg.save, iteration, consumed);
      log(`saved checkpoint at iteration ${iteration} (end of epoch ${epoch}) to ${cfg.save}`);
    }
    const e = await evaluate(epoch);
    if (e && (best === null || e.accuracy > best.accuracy)) {
      best = { epoch, iteration, accuracy: e.accuracy, correct: e.correct, total: e.total, sets: e.sets };
      if (cfg.save) {
        const where = saveBest(run, best, consumed);
        log(`> best accuracy so far: ${best.accuracy.toFixed(4)} % at epoch ${epoch}; saved in ${where}`);
      }
    }
  }
  if (best) {
    log(
      `best accuracy ${
        best.accuracy.toFixed(4)
      } % (${best.correct} / ${best.total}) at epoch ${best.epoch} ` +
        `(iteration ${best.iteration})` + (cfg.save ? `; checkpoint ${cfg.save}/${BEST_DIR}` : ""),
    );
  }
  for (const r of ranks) r.free();
  return { iteration, trainIters, itersPerEpoch, losses, evaluations, best, exitReason };
}
