// One rank of a training run: its model chunks (built by the task), gradient buffer, optimizer and
// the pipeline stage runner that feeds micro-batches through the chunks and the task's loss. Several
// RankStates run concurrently in one process (the local communicator) or one per process (a future
// NCCL communicator). Nothing here knows which model it trains.

import type { Backend } from "../backend/backend.ts";
import { type MicroBatchContext, newMicroBatchContext } from "../transformer/common.ts";
import { MegatronOptimizer } from "../optimizer/optimizer.ts";
import type { GradScaler } from "../optimizer/grad_scaler.ts";
import type { AnnealingLR } from "../optimizer/lr_schedule.ts";
import { allReduceTiedEmbedding, GradBuffer, scalarReducer } from "../parallel/ddp.ts";
import type { Communicator, ParallelState } from "../parallel/types.ts";
import { runForwardOnly, runSchedule, type StageRunner } from "../pipeline/schedules.ts";
import { WeightTable } from "../models/weight_names.ts";
import type { Param } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { chunkPrefix } from "./checkpoint.ts";
import type { Config } from "./config.ts";
import {
  type HostBatch,
  type ModelChunk,
  type StageTensorSpec,
  type TaskContext,
  type TaskLoss,
  type TrainingTask,
  uploadBatch,
} from "./task.ts";

export type { HostBatch } from "./task.ts";

/** Global 0-based layers of virtual chunk `v` on stage `r` (Megatron's interleaved assignment). */
export function chunkLayers(numLayers: number, pp: number, vp: number, r: number, v: number): number[] {
  const per = numLayers / pp / vp;
  if (!Number.isInteger(per) || per < 1) {
    throw new Error(`layers: ${numLayers} layers cannot be split into ${pp} stages x ${vp} chunks`);
  }
  const start = v * (numLayers / vp) + r * per;
  return Array.from({ length: per }, (_, i) => start + i);
}

export interface StepInputs {
  iteration: number;
  numMicroBatches: number;
  /** The micro-batch `mb` of this rank (its DP slice). */
  batch(mb: number): HostBatch;
  /** Global index (within the global batch) of micro-batch mb's first sample on this rank. */
  firstGlobalSample(mb: number): number;
}

export interface RankStepResult {
  /** Per micro-batch losses (last pipeline stage only; empty elsewhere). */
  losses: number[];
  /** Per micro-batch named loss scalars (last pipeline stage only). */
  scalars: Record<string, number>[];
  skipped: boolean;
  gradNorm: number | null;
  /** `--log-num-zeros-in-grad` (null when off or the step was skipped). */
  numZerosInGrad: number | null;
  /** `--log-params-norm`: the parameter norm after the step (null when off). */
  paramsNorm: number | null;
  lossScale: number;
  lr: number;
  nextLr: number;
}

/** Several stage tensors travel as one buffer (the executor sends one tensor per boundary). */
class StagePacking {
  readonly shape: readonly number[];
  readonly dtype: StageTensorSpec["dtype"];
  private readonly sizes: number[];

  constructor(readonly specs: StageTensorSpec[]) {
    if (specs.length === 0) throw new Error("task: stageTensors must describe at least one tensor");
    this.dtype = specs[0].dtype;
    for (const sp of specs) {
      if (sp.dtype !== this.dtype) {
        throw new Error(`task: stage tensors must share one dtype, found ${this.dtype} and ${sp.dtype}`);
      }
    }
    this.sizes = specs.map((sp) => sp.shape.reduce((a, d) => a * d, 1));
    this.shape = specs.length === 1 ? specs[0].shape : [this.sizes.reduce((a, n) => a + n, 0)];
  }

  /** Views of each tensor inside a received buffer (the buffer stays the caller's). */
  unpack(t: Tensor): Tensor[] {
    if (this.specs.length === 1) return [t];
    let off = 0;
    return this.specs.map((sp, i) => {
      const v = t.flat(off, this.sizes[i]).view(sp.shape);
      off += this.sizes[i];
      return v;
    });
  }

  /** One buffer to send (takes the tensors over; a single tensor is sent as it is). */
  pack(be: Backend, ts: Tensor[]): Tensor {
    if (ts.length !== this.specs.length) {
      throw new Error(
        `task: a stage produced ${ts.length} tensors, stageTensors describes ${this.specs.length}`,
      );
    }
    if (ts.length === 1) return ts[0];
    const out = be.empty(this.dtype, this.shape);
    let off = 0;
    ts.forEach((t, i) => {
      be.copy(t, out.flat(off, this.sizes[i]));
      off += this.sizes[i];
      be.free(t);
    });
    return out;
  }
}

export class RankState {
  readonly chunks: ModelChunk[];
  readonly params: Param[];
  readonly grads: GradBuffer;
  readonly optimizer: MegatronOptimizer;
  /** This rank's parameters under Megatron's checkpoint names (save and load go through it). */
  readonly weights: WeightTable;
  /** Seconds spent per Megatron timer name (forward-compute, optimizer, ...) since the caller last
   *  cleared it; wall time on this rank, for --log-timers-to-tensorboard. */
  readonly timers: Map<string, number> = new Map();

  constructor(
    readonly cfg: Config,
    readonly task: TrainingTask<unknown>,
    readonly taskCtx: TaskContext,
    readonly backend: Backend,
    readonly ps: ParallelState,
    readonly comm: Communicator,
    scheduler: AnnealingLR,
    scaler: GradScaler | null,
  ) {
    const vp = ps.vpSize;
    this.chunks = [];
    for (let v = 0; v < vp; v++) {
      this.chunks.push(task.buildChunk(taskCtx, {
        preProcess: ps.isFirstStage && v === 0,
        postProcess: ps.isLastStage && v === vp - 1,
        layers: chunkLayers(cfg.numLayers!, ps.ppSize, vp, ps.ppRank, v),
        virtualChunk: v,
        virtualChunks: vp,
      }, { backend, ps, comm }));
    }
    this.params = this.chunks.flatMap((c) => c.params());
    this.weights = new WeightTable(
      this.chunks.map((c) => ({ params: () => c.params(), layers: c.spec.layers })),
    );
    this.grads = new GradBuffer(backend, this.params);
    // Chunks reuse stage-local names (layers.0, ...); the optimizer sees them as Megatron's
    // checkpoint does, prefixed model0., model1., ... (views that read through to the real Param).
    const named = vp === 1
      ? this.params
      : this.chunks.flatMap((c, v) =>
        c.params().map((p) => Object.create(p, { name: { value: chunkPrefix(v, vp) + p.name } }) as Param)
      );
    this.optimizer = new MegatronOptimizer(backend, named, scheduler, {
      optimizer: cfg.optimizer,
      weightDecay: cfg.weightDecay,
      adamBeta1: cfg.adamBeta1,
      adamBeta2: cfg.adamBeta2,
      adamEps: cfg.adamEps,
      sgdMomentum: cfg.sgdMomentum,
      clipGrad: cfg.clipGrad,
      scaler,
      tpRank: ps.tpRank,
      reducer: scalarReducer(backend, comm, ps, "model"),
      logNumZerosInGrad: cfg.logNumZerosInGrad,
    });
  }

  private runner(
    inputs: StepInputs,
    lossFactor: number,
    losses: TaskLoss[],
    forwardOnly: boolean,
  ): StageRunner {
    const be = this.backend;
    const packing = new StagePacking(this.task.stageTensors(this.taskCtx, this.cfg.microBatchSize!));
    const live = new Map<string, { ctx: MicroBatchContext; owned: Tensor[]; loss: TaskLoss | null }>();
    const key = (c: number, mb: number) => `${c}:${mb}`;
    const { chunks, task, taskCtx } = this;
    const time = this.time.bind(this);
    return {
      activationShape: packing.shape,
      activationDType: packing.dtype,
      allocActivation: () => be.empty(packing.dtype, packing.shape),
      release: (t) => be.free(t),
      async forward(chunk, mb, input) {
        const model = chunks[chunk];
        const ctx = newMicroBatchContext({
          iteration: inputs.iteration,
          firstGlobalSample: inputs.firstGlobalSample(mb),
          training: !forwardOnly,
        });
        const t0 = performance.now();
        const hb = model.batchFields.length > 0 ? inputs.batch(mb) : null;
        const t1 = performance.now();
        time("batch-generator", t0, t1);
        const batch = hb ? uploadBatch(be, hb, model.batchFields) : {};
        const owned: Tensor[] = Object.values(batch);
        if (input) owned.push(input);
        const outs = await model.forward(batch, input ? packing.unpack(input) : [], ctx);
        const loss = model.spec.postProcess ? await task.loss(taskCtx, model, outs, batch) : null;
        time("forward-compute", t1);
        if (forwardOnly) {
          loss?.discard();
          model.discard(ctx);
          for (const t of owned) be.free(t);
        } else {
          live.set(key(chunk, mb), { ctx, owned, loss });
        }
        if (loss) {
          losses[mb] = loss;
          return null;
        }
        return packing.pack(be, outs);
      },
      async backward(chunk, mb, outputGrad) {
        const model = chunks[chunk];
        const k = key(chunk, mb);
        const e = live.get(k);
        if (!e) throw new Error(`backward of chunk ${chunk} micro-batch ${mb} without its forward`);
        live.delete(k);
        const t0 = performance.now();
        const grads = e.loss ? e.loss.backward(lossFactor) : packing.unpack(outputGrad!);
        const dIn = await model.backward(e.ctx, grads);
        time("backward-compute", t0);
        for (const t of e.owned) be.free(t);
        return dIn.length > 0 ? packing.pack(be, dIn) : null;
      },
    };
  }

  private peers() {
    const ranks = this.ps.group("pipeline").ranks;
    const p = this.ps.ppSize, r = this.ps.ppRank;
    return { prev: ranks[(r - 1 + p) % p], next: ranks[(r + 1) % p] };
  }

  /** Forward and backward of every micro-batch, gradient reductions, optimizer step. */
  async trainStep(inputs: StepInputs): Promise<RankStepResult> {
    const m = inputs.numMicroBatches;
    this.grads.zero();
    const losses: TaskLoss[] = [];
    const factor = this.optimizer.lossScale / m;
    const shape = { p: this.ps.ppSize, r: this.ps.ppRank, m, v: this.ps.vpSize };
    await runSchedule(shape, this.runner(inputs, factor, losses, false), this.comm, this.peers());
    let t0 = performance.now();
    await this.grads.allReduceMean(this.comm, this.ps.dpSize);
    t0 = this.time("backward-params-all-reduce", t0);
    await allReduceTiedEmbedding(this.comm, this.ps, this.tiedEmbedding());
    t0 = this.time("backward-embedding-all-reduce", t0);
    const r = await this.optimizer.step(inputs.numMicroBatches * this.cfg.microBatchSize! * this.ps.dpSize);
    this.time("optimizer", t0);
    // Megatron's training loop takes calc_params_l2_norm after every step, skipped or not.
    const paramsNorm = this.cfg.logParamsNorm ? await this.optimizer.paramsNorm() : null;
    return { losses: losses.map((l) => l.loss), scalars: losses.map((l) => l.scalars), ...r, paramsNorm };
  }

  /** Adds the time from t0 (ms) to now (or t1) to a timer; returns the end time. */
  private time(name: string, t0: number, t1 = performance.now()): number {
    this.timers.set(name, (this.timers.get(name) ?? 0) + (t1 - t0) / 1000);
    return t1;
  }

  /** Forward only (no dropout) of every micro-batch; losses and scalars on the last stage. */
  async evalStep(
    inputs: StepInputs,
  ): Promise<{ losses: number[]; scalars: Record<string, number>[]; rows: (Float64Array | null)[] }> {
    const losses: TaskLoss[] = [];
    const shape = { p: this.ps.ppSize, r: this.ps.ppRank, m: inputs.numMicroBatches, v: this.ps.vpSize };
    await runForwardOnly(shape, this.runner(inputs, 1, losses, true), this.comm, this.peers());
    return {
      losses: losses.map((l) => l.loss),
      scalars: losses.map((l) => l.scalars),
      rows: losses.map((l) => l.rows ?? null),
    };
  }

  /** The tied word embedding copy this rank holds (first chunk of stage 0 or last chunk of the last
   *  stage), all-reduced over the embedding group when PP > 1. */
  private tiedEmbedding(): Param | null {
    if (this.ps.ppSize === 1) return null;
    if (this.ps.isFirstStage) return this.chunks[0].tiedEmbeddingParam();
    if (this.ps.isLastStage) return this.chunks[this.chunks.length - 1].tiedEmbeddingParam();
    return null;
  }

  free(): void {
    this.optimizer.free();
    this.grads.free();
  }
}
