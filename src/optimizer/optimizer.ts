// MegatronOptimizer: Adam (AdamW, apex FusedAdam semantics) or SGD over Param[], with Megatron's
// mixed-precision step (Float16OptimizerWithFloat16Params):
//
//   unscale grads by 1/scale + detect inf/nan -> MAX over the model-parallel group -> scaler.update
//   -> on overflow: skip (params, moments, step counts and LR untouched)
//   -> clip (global L2 norm) -> Adam/SGD on the f32 main params (or on value for f32/f64 params)
//   -> copy main back into the half value -> LR schedule advances by the step's samples.
//
// Grads (Param.grad) are already f32, so Megatron's model-grad -> main-grad copy is not needed.
// Without a scaler (fp32, or bf16 without --loss-scale) nothing is checked and every step is taken.
// All state tensors are allocated once, in the constructor. step() advances the LR schedule itself
// (on successful steps only): the training loop must not call scheduler.step() as well.

import type { Backend } from "../backend/backend.ts";
import { isHalf } from "../tensor/dtype.ts";
import type { Param } from "../tensor/param.ts";
import { sameShape, shapeStr, type Tensor } from "../tensor/tensor.ts";
import {
  clipGradNorm,
  countGradZeros,
  globalParamNorm,
  identityReducer,
  type ModelParallelReducer,
} from "./clip.ts";
import {
  createGradScaler,
  type GradScaler,
  type GradScalerArgs,
  type GradScalerState,
} from "./grad_scaler.ts";
import {
  type AnnealingLR,
  createLrScheduler,
  type LrScheduleArgs,
  type LrSchedulerState,
} from "./lr_schedule.ts";

export type OptimizerKind = "adam" | "sgd";

export interface OptimizerOptions {
  /** `--optimizer` (default adam). */
  optimizer?: OptimizerKind;
  /** `--weight-decay` (default 0.01) for the decay group; the noWeightDecay group gets 0. */
  weightDecay?: number;
  adamBeta1?: number;
  adamBeta2?: number;
  adamEps?: number;
  /** `--sgd-momentum` (default 0.9). */
  sgdMomentum?: number;
  /** `--clip-grad` (default 1.0; 0 disables clipping and the norm is not computed). */
  clipGrad?: number;
  /** null: no loss scaling (fp32, or bf16 without --loss-scale). */
  scaler?: GradScaler | null;
  /** This rank's TP rank, for the grad norm (replicated params count on TP rank 0). */
  tpRank?: number;
  /** Model-parallel (TP x PP) reductions for the overflow flag and the grad norm. */
  reducer?: ModelParallelReducer;
  /** `--log-num-zeros-in-grad`: count the exactly-zero grads after unscaling and clipping. */
  logNumZerosInGrad?: boolean;
}

export interface StepResult {
  skipped: boolean;
  /** Global grad norm before clipping (null when skipped or clipping is off). */
  gradNorm: number | null;
  /** Zero grad elements over the model-parallel group (null when skipped or not asked for). */
  numZerosInGrad: number | null;
  /** The loss scale after this step's scaler update (1 without a scaler): use it for the next backward. */
  lossScale: number;
  /** The learning rate this step applied (for a skipped step, the one it would have applied). */
  lr: number;
  /** The learning rate after the schedule advanced: what Megatron logs as "learning rate". */
  nextLr: number;
}

/** A tensor for the checkpoint engineer, named as in src/training/checkpoint.ts optimName(). */
export interface OptimizerTensor {
  name: string;
  tensor: Tensor;
}

export interface ParamGroupState {
  weightDecay: number;
  /** Successful optimizer steps (apex keeps one count per group; both advance together). */
  step: number;
  params: string[];
}

export interface OptimizerState {
  optimizer: OptimizerKind;
  lr: number;
  adamBeta1: number;
  adamBeta2: number;
  adamEps: number;
  sgdMomentum: number;
  groups: ParamGroupState[];
  gradScaler: GradScalerState | null;
  lrScheduler: LrSchedulerState;
}

export interface ImportOptions {
  /** Load main params from the checkpoint (default true); otherwise copy them from the model values. */
  loadMainParams?: boolean;
  /** Load the scaler state (default true). */
  loadScaler?: boolean;
  /** Load the LR scheduler state (default true). */
  loadLrScheduler?: boolean;
}

interface Slot {
  param: Param;
  /** What the update writes: main for half params, else value. */
  target: Tensor;
  m: Tensor;
  /** Adam second moment (null for SGD). */
  v: Tensor | null;
}

interface Group {
  weightDecay: number;
  step: number;
  slots: Slot[];
}

function fail(msg: string): never {
  throw new Error(`optimizer: ${msg}`);
}

export class MegatronOptimizer {
  readonly kind: OptimizerKind;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly momentum: number;
  readonly clipGrad: number;
  readonly scaler: GradScaler | null;
  readonly tpRank: number;
  readonly reducer: ModelParallelReducer;
  readonly logNumZerosInGrad: boolean;
  /** [0] = weight decay group, [1] = no weight decay group (Megatron's order). */
  readonly #groups: [Group, Group];
  readonly #params: readonly Param[];
  readonly #flag: Tensor;
  readonly #normScratch: Tensor;
  /** Main tensors this optimizer allocated (freed by free()). */
  readonly #ownedMain: Tensor[] = [];

  constructor(
    readonly backend: Backend,
    params: readonly Param[],
    readonly scheduler: AnnealingLR,
    opts: OptimizerOptions = {},
  ) {
    this.kind = opts.optimizer ?? "adam";
    if (this.kind !== "adam" && this.kind !== "sgd") {
      fail(`--optimizer must be adam or sgd, found ${this.kind}`);
    }
    const wd = opts.weightDecay ?? 0.01;
    if (!(wd >= 0)) fail(`--weight-decay must be >= 0, found ${wd}`);
    this.beta1 = opts.adamBeta1 ?? 0.9;
    this.beta2 = opts.adamBeta2 ?? 0.999;
    this.eps = opts.adamEps ?? 1e-8;
    this.momentum = opts.sgdMomentum ?? 0.9;
    for (const [flag, x] of [["--adam-beta1", this.beta1], ["--adam-beta2", this.beta2]] as const) {
      if (!(x >= 0 && x < 1)) fail(`${flag} must be in [0, 1), found ${x}`);
    }
    if (!(this.eps > 0)) fail(`--adam-eps must be > 0, found ${this.eps}`);
    if (!(this.momentum >= 0)) fail(`--sgd-momentum must be >= 0, found ${this.momentum}`);
    this.clipGrad = opts.clipGrad ?? 1.0;
    if (!(this.clipGrad >= 0)) fail(`--clip-grad must be >= 0, found ${this.clipGrad}`);
    this.scaler = opts.scaler ?? null;
    this.tpRank = opts.tpRank ?? 0;
    this.reducer = opts.reducer ?? identityReducer();
    this.logNumZerosInGrad = opts.logNumZerosInGrad ?? false;

    const names = new Set<string>();
    for (const p of params) {
      if (names.has(p.name)) fail(`parameter name ${p.name} appears twice`);
      names.add(p.name);
    }
    this.#params = params;
    const groups: [Group, Group] = [{ weightDecay: wd, step: 0, slots: [] }, {
      weightDecay: 0,
      step: 0,
      slots: [],
    }];
    for (const p of params) this.#check(p);
    for (const p of params) groups[p.noWeightDecay ? 1 : 0].slots.push(this.#makeSlot(p));
    this.#groups = groups;
    this.#flag = backend.zeros("f32", [1]);
    this.#normScratch = backend.zeros("f64", [1]);
  }

  /** Validates a param before anything is allocated, so a bad one leaves every param untouched. */
  #check(p: Param): void {
    const shape = shapeStr(p.value.shape);
    if (!sameShape(p.grad.shape, p.value.shape)) {
      fail(`${p.name}: grad shape ${shapeStr(p.grad.shape)} differs from value shape ${shape}`);
    }
    const half = isHalf(p.value.dtype);
    if (!half && p.main !== null) {
      fail(`${p.name}: has a main copy but its value is ${p.value.dtype}, not f16/bf16`);
    }
    if (!half && p.value.dtype !== "f32" && p.value.dtype !== "f64") {
      fail(`${p.name}: cannot optimize a ${p.value.dtype} parameter (expected f32, f64, f16 or bf16)`);
    }
    if (half && p.main !== null) {
      if (p.main.dtype !== "f32") fail(`${p.name}: main copy is ${p.main.dtype}, expected f32`);
      if (!sameShape(p.main.shape, p.value.shape)) {
        fail(`${p.name}: main shape ${shapeStr(p.main.shape)} differs from value shape ${shape}`);
      }
    }
    const want = half ? "f32" : p.value.dtype;
    if (p.grad.dtype !== want) fail(`${p.name}: grad is ${p.grad.dtype}, expected ${want}`);
  }

  #makeSlot(p: Param): Slot {
    const b = this.backend;
    if (isHalf(p.value.dtype) && p.main === null) {
      // Megatron clones the half params into f32 main params when the optimizer is built.
      p.main = b.zeros("f32", p.value.shape);
      b.copy(p.value, p.main);
      this.#ownedMain.push(p.main);
    }
    const target = p.main ?? p.value;
    const m = b.zeros(target.dtype, target.shape);
    const v = this.kind === "adam" ? b.zeros(target.dtype, target.shape) : null;
    return { param: p, target, m, v };
  }

  get params(): readonly Param[] {
    return this.#params;
  }

  /** The scale to multiply the loss by in the next backward (1 without a scaler). */
  get lossScale(): number {
    return this.scaler?.scale ?? 1;
  }

  /** The learning rate the next step will apply. */
  get lr(): number {
    return this.scheduler.lr;
  }

  /** Successful steps taken (per group; they are equal). */
  get stepCount(): number {
    return this.#groups[0].step;
  }

  /** Zero every gradient accumulation buffer (before the first micro-batch of a step). */
  zeroGrads(): void {
    for (const p of this.#params) this.backend.fill(p.grad, 0);
  }

  /** Copy the model values into the main params (after loading a model-only checkpoint). */
  reloadModelParams(): void {
    for (const p of this.#params) if (p.main !== null) this.backend.copy(p.value, p.main);
  }

  /** One optimizer step. `increment`: samples in this global batch (the LR schedule's unit). */
  async step(increment: number): Promise<StepResult> {
    const b = this.backend;
    const lr = this.scheduler.lr;
    if (this.scaler !== null) {
      b.fill(this.#flag, 0);
      const inv = this.scaler.invScale;
      for (const p of this.#params) {
        // The check reads the scaled grads, as torch's non_finite_check_and_unscale does.
        b.nonFinite(p.grad, this.#flag);
        if (inv !== 1) b.scale(p.grad, inv, p.grad);
      }
      const found = (await this.reducer.allReduceMax(b.toF64(this.#flag)[0])) > 0;
      this.scaler.update(found);
      if (found) {
        return {
          skipped: true,
          gradNorm: null,
          numZerosInGrad: null,
          lossScale: this.scaler.scale,
          lr,
          nextLr: lr,
        };
      }
    }
    let gradNorm: number | null = null;
    if (this.clipGrad > 0) {
      gradNorm = await clipGradNorm(b, this.#params, {
        maxNorm: this.clipGrad,
        tpRank: this.tpRank,
        reducer: this.reducer,
        scratch: this.#normScratch,
      });
    }
    // As Megatron, counted after clipping (a scaled grad stays exactly zero iff it was).
    const numZerosInGrad = this.logNumZerosInGrad
      ? await countGradZeros(b, this.#params, {
        tpRank: this.tpRank,
        reducer: this.reducer,
        scratch: this.#normScratch,
      })
      : null;
    for (const g of this.#groups) {
      g.step += 1;
      if (this.kind === "adam" && b.adamStepMulti) {
        // Few launches instead of two per parameter; the same bits as the loop below.
        b.adamStepMulti(
          g.slots.map((s) => ({
            param: s.target,
            grad: s.param.grad,
            m: s.m,
            v: s.v!,
            copyTo: s.target !== s.param.value ? s.param.value : null,
          })),
          {
            lr,
            beta1: this.beta1,
            beta2: this.beta2,
            eps: this.eps,
            weightDecay: g.weightDecay,
            step: g.step,
          },
        );
        continue;
      }
      for (const s of g.slots) {
        if (this.kind === "adam") {
          b.adamStep(s.target, s.param.grad, s.m, s.v!, {
            lr,
            beta1: this.beta1,
            beta2: this.beta2,
            eps: this.eps,
            weightDecay: g.weightDecay,
            step: g.step,
          });
        } else {
          b.sgdStep(s.target, s.param.grad, s.m, {
            lr,
            momentum: this.momentum,
            weightDecay: g.weightDecay,
            firstStep: g.step === 1,
          });
        }
        if (s.target !== s.param.value) b.copy(s.target, s.param.value);
      }
    }
    const nextLr = this.scheduler.step(increment);
    return { skipped: false, gradNorm, numZerosInGrad, lossScale: this.lossScale, lr, nextLr };
  }

  /** `--log-params-norm`: the L2 norm of the model's parameter values over the model-parallel group. */
  async paramsNorm(): Promise<number> {
    return await globalParamNorm(this.backend, this.#params, {
      tpRank: this.tpRank,
      reducer: this.reducer,
      scratch: this.#normScratch,
    });
  }

  // ---- checkpoints --------------------------------------------------------------------------

  exportState(): { state: OptimizerState; tensors: OptimizerTensor[] } {
    const state: OptimizerState = {
      optimizer: this.kind,
      lr: this.scheduler.lr,
      adamBeta1: this.beta1,
      adamBeta2: this.beta2,
      adamEps: this.eps,
      sgdMomentum: this.momentum,
      groups: this.#groups.map((g) => ({
        weightDecay: g.weightDecay,
        step: g.step,
        params: g.slots.map((s) => s.param.name),
      })),
      gradScaler: this.scaler?.exportState() ?? null,
      lrScheduler: this.scheduler.exportState(),
    };
    return { state, tensors: this.#namedTensors() };
  }

  #namedTensors(): OptimizerTensor[] {
    const out: OptimizerTensor[] = [];
    for (const g of this.#groups) {
      for (const s of g.slots) {
        const n = s.param.name;
        if (this.kind === "adam") {
          out.push({ name: `optimizer.state.${n}.exp_avg`, tensor: s.m });
          out.push({ name: `optimizer.state.${n}.exp_avg_sq`, tensor: s.v! });
        } else {
          out.push({ name: `optimizer.state.${n}.momentum_buffer`, tensor: s.m });
        }
        if (s.param.main !== null) out.push({ name: `fp32_from_fp16_params.${n}`, tensor: s.param.main });
      }
    }
    return out;
  }

  /** Restore from exportState's output (tensors may live on any backend instance of this kind;
   *  they are copied into this optimizer's own tensors). Main params are copied back into the
   *  model values, as Megatron's load does. */
  importState(
    state: OptimizerState,
    tensors: readonly OptimizerTensor[],
    opts: ImportOptions = {},
  ): void {
    if (typeof state !== "object" || state === null) fail(`checkpoint optimizer state must be an object`);
    if (state.optimizer !== this.kind) {
      fail(`checkpoint optimizer is ${state.optimizer}, but this run uses --optimizer ${this.kind}`);
    }
    if (!Array.isArray(state.groups) || state.groups.length !== 2) {
      fail(`checkpoint optimizer state: expected 2 param groups, found ${state.groups?.length}`);
    }
    for (let i = 0; i < 2; i++) {
      const want = this.#groups[i].slots.map((s) => s.param.name);
      const got = state.groups[i].params;
      if (!Array.isArray(got) || got.length !== want.length || got.some((n, j) => n !== want[j])) {
        fail(
          `checkpoint param group ${i} holds [${got?.slice(0, 3).join(", ")}${
            got?.length > 3 ? ", ..." : ""
          }] ` +
            `(${got?.length}), expected [${want.slice(0, 3).join(", ")}${
              want.length > 3 ? ", ..." : ""
            }] (${want.length})`,
        );
      }
      const step = state.groups[i].step;
      if (!Number.isInteger(step) || step < 0) {
        fail(`checkpoint param group ${i}: step must be >= 0, found ${step}`);
      }
    }
    const byName = new Map<string, Tensor>();
    for (const t of tensors) byName.set(t.name, t.tensor);
    const loadMain = opts.loadMainParams ?? true;
    // Validate everything before writing anything, so a bad checkpoint leaves the state untouched.
    const copies: [Tensor, Tensor][] = [];
    for (const { name, tensor } of this.#namedTensors()) {
      if (!loadMain && name.startsWith("fp32_from_fp16_params.")) continue;
      const src = byName.get(name);
      if (src === undefined) fail(`checkpoint optimizer tensors lack ${name}`);
      if (!sameShape(src.shape, tensor.shape)) {
        fail(
          `checkpoint tensor ${name} has shape ${shapeStr(src.shape)}, expected ${shapeStr(tensor.shape)}`,
        );
      }
      copies.push([src, tensor]);
    }
    for (const [src, dst] of copies) this.backend.copy(src, dst);
    for (let i = 0; i < 2; i++) this.#groups[i].step = state.groups[i].step;
    if (loadMain) {
      for (const p of this.#params) if (p.main !== null) this.backend.copy(p.main, p.value);
    } else {
      this.reloadModelParams();
    }
    if ((opts.loadScaler ?? true) && this.scaler !== null && state.gradScaler) {
      this.scaler.importState(state.gradScaler);
    }
    if (opts.loadLrScheduler ?? true) this.scheduler.importState(state.lrScheduler);
  }

  /** Release the optimizer's state tensors (and main params it allocated itself). */
  free(): void {
    const b = this.backend;
    for (const g of this.#groups) {
      for (const s of g.slots) {
        b.free(s.m);
        if (s.v) b.free(s.v);
      }
    }
    for (const t of this.#ownedMain) b.free(t);
    for (const p of this.#params) if (this.#ownedMain.includes(p.main!)) p.main = null;
    b.free(this.#flag);
    b.free(this.#normScratch);
  }
}

/** Flag values (names as in src/training/config.ts) plus the rank's TP rank and MP reducer. */
export interface MegatronOptimizerArgs extends GradScalerArgs, LrScheduleArgs {
  optimizer?: OptimizerKind;
  weightDecay?: number;
  adamBeta1?: number;
  adamBeta2?: number;
  adamEps?: number;
  sgdMomentum?: number;
  clipGrad?: number;
  tpRank?: number;
  reducer?: ModelParallelReducer;
}

/** Megatron's get_megatron_optimizer + get_learning_rate_scheduler: scaler per the fp16/bf16/
 *  --loss-scale rules, the sample-based LR schedule, the chosen optimizer. */
export function createMegatronOptimizer(
  backend: Backend,
  params: readonly Param[],
  args: MegatronOptimizerArgs,
): MegatronOptimizer {
  return new MegatronOptimizer(backend, params, createLrScheduler(args), {
    optimizer: args.optimizer,
    weightDecay: args.weightDecay,
    adamBeta1: args.adamBeta1,
    adamBeta2: args.adamBeta2,
    adamEps: args.adamEps,
    sgdMomentum: args.sgdMomentum,
    clipGrad: args.clipGrad,
    scaler: createGradScaler(args),
    tpRank: args.tpRank,
    reducer: args.reducer,
  });
}
