// One rank of a training run: its model chunks, gradient buffer, optimizer and the pipeline stage
// runner that feeds micro-batches through the chunks. Several RankStates run concurrently in one
// process (the local communicator) or one per process (a future NCCL communicator).

import type { Backend } from "../backend/backend.ts";
import { GPTModel, type GPTStage, type LossOutput, type MicroBatchContext } from "../models/mod.ts";
import type { GPTConfig } from "../models/mod.ts";
import { MegatronOptimizer } from "../optimizer/optimizer.ts";
import type { GradScaler } from "../optimizer/grad_scaler.ts";
import type { AnnealingLR } from "../optimizer/lr_schedule.ts";
import { allReduceTiedEmbedding, GradBuffer, scalarReducer } from "../parallel/ddp.ts";
import type { Communicator, ParallelState } from "../parallel/types.ts";
import { runForwardOnly, runSchedule, type StageRunner } from "../pipeline/schedules.ts";
import type { Param } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { chunkPrefix } from "./checkpoint.ts";
import type { Config } from "./config.ts";

/** Global 0-based layers of virtual chunk `v` on stage `r` (Megatron's interleaved assignment). */
export function chunkLayers(numLayers: number, pp: number, vp: number, r: number, v: number): number[] {
  const per = numLayers / pp / vp;
  if (!Number.isInteger(per) || per < 1) {
    throw new Error(`layers: ${numLayers} layers cannot be split into ${pp} stages x ${vp} chunks`);
  }
  const start = v * (numLayers / vp) + r * per;
  return Array.from({ length: per }, (_, i) => start + i);
}

/** Host-side micro-batch: tokens/labels i32 [b, s], loss mask f32 [b, s]. */
export interface HostBatch {
  tokens: Int32Array;
  labels: Int32Array;
  lossMask: Float32Array;
  b: number;
  s: number;
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

export class RankState {
  readonly chunks: GPTModel[];
  readonly params: Param[];
  readonly grads: GradBuffer;
  readonly optimizer: MegatronOptimizer;
  /** Seconds spent per Megatron timer name (forward-compute, optimizer, ...) since the caller last
   *  cleared it; wall time on this rank, for --log-timers-to-tensorboard. */
  readonly timers: Map<string, number> = new Map();

  constructor(
    readonly cfg: Config,
    readonly modelCfg: GPTConfig,
    readonly backend: Backend,
    readonly ps: ParallelState,
    readonly comm: Communicator,
    scheduler: AnnealingLR,
    scaler: GradScaler | null,
  ) {
    const vp = ps.vpSize;
    this.chunks = [];
    for (let v = 0; v < vp; v++) {
      const stage: GPTStage = {
        preProcess: ps.isFirstStage && v === 0,
        postProcess: ps.isLastStage && v === vp - 1,
        layers: chunkLayers(modelCfg.numLayers, ps.ppSize, vp, ps.ppRank, v),
      };
      this.chunks.push(new GPTModel(modelCfg, backend, ps, comm, stage));
    }
    this.params = this.chunks.flatMap((c) => c.params());
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
    losses: number[],
    forwardOnly: boolean,
  ): StageRunner {
    const be = this.backend;
    const b = this.cfg.microBatchSize!;
    const { seqLength: s, hiddenSize: h } = this.modelCfg;
    const dtype = this.modelCfg.paramsDtype;
    const live = new Map<string, { ctx: MicroBatchContext; owned: Tensor[] }>();
    const key = (c: number, mb: number) => `${c}:${mb}`;
    const chunks = this.chunks;
    const time = this.time.bind(this);
    return {
      activationShape: [b, s, h],
      activationDType: dtype,
      allocActivation: () => be.empty(dtype, [b, s, h]),
      release: (t) => be.free(t),
      async forward(chunk, mb, input) {
        const model = chunks[chunk];
        const ctx = model.newContext({
          iteration: inputs.iteration,
          firstGlobalSample: inputs.firstGlobalSample(mb),
          training: !forwardOnly,
        });
        const owned: Tensor[] = [];
        const t0 = performance.now();
        const hb = (model.stage.preProcess || model.stage.postProcess) ? inputs.batch(mb) : null;
        const t1 = performance.now();
        time("batch-generator", t0, t1);
        const arg: Parameters<GPTModel["forward"]>[0] = {};
        if (model.stage.preProcess) {
          arg.tokens = be.fromHost("i32", [hb!.b, hb!.s], hb!.tokens);
          owned.push(arg.tokens);
        } else {
          arg.hidden = input!;
          owned.push(input!);
        }
        if (model.stage.postProcess) {
          arg.labels = be.fromHost("i32", [hb!.b, hb!.s], hb!.labels);
          arg.lossMask = be.fromHost("f32", [hb!.b, hb!.s], hb!.lossMask);
          owned.push(arg.labels, arg.lossMask);
        }
        const out = await model.forward(arg, ctx);
        time("forward-compute", t1);
        if (forwardOnly) {
          model.discard(ctx);
          for (const t of owned) be.free(t);
        } else {
          live.set(key(chunk, mb), { ctx, owned });
        }
        if (model.stage.postProcess) {
          losses[mb] = (out as LossOutput).loss;
          return null;
        }
        return out as Tensor;
      },
      async backward(chunk, mb, outputGrad) {
        const model = chunks[chunk];
        const k = key(chunk, mb);
        const e = live.get(k);
        if (!e) throw new Error(`backward of chunk ${chunk} micro-batch ${mb} without its forward`);
        live.delete(k);
        const t0 = performance.now();
        const dIn = await model.backward(e.ctx, model.stage.postProcess ? lossFactor : outputGrad!);
        time("backward-compute", t0);
        for (const t of e.owned) be.free(t);
        return dIn;
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
    const losses: number[] = [];
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
    return { losses, ...r, paramsNorm };
  }

  /** Adds the time from t0 (ms) to now (or t1) to a timer; returns the end time. */
  private time(name: string, t0: number, t1 = performance.now()): number {
    this.timers.set(name, (this.timers.get(name) ?? 0) + (t1 - t0) / 1000);
    return t1;
  }

  /** Forward only (no dropout) of every micro-batch; losses on the last stage. */
  async evalStep(inputs: StepInputs): Promise<number[]> {
    const losses: number[] = [];
    const shape = { p: this.ps.ppSize, r: this.ps.ppRank, m: inputs.numMicroBatches, v: this.ps.vpSize };
    await runForwardOnly(shape, this.runner(inputs, 1, losses, true), this.comm, this.peers());
    return losses;
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
