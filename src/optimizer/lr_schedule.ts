// Megatron's AnnealingLR (2021): the schedule counts SAMPLES. The training loop calls
// step(currentGlobalBatchSize) after each successful optimizer step only, so skipped (overflow)
// steps do not advance it. With warmup, lr is exactly 0 at step 0 (2021 has no init_lr), which means
// the very first update is taken with lr = 0.

export type LrDecayStyle = "constant" | "linear" | "cosine";

export const LR_DECAY_STYLES: readonly LrDecayStyle[] = ["constant", "linear", "cosine"];

export interface AnnealingLROptions {
  maxLr: number;
  minLr?: number;
  /** In samples; may be fractional (lr_warmup_fraction * decay_steps). */
  warmupSteps?: number;
  /** In samples. */
  decaySteps: number;
  decayStyle?: LrDecayStyle;
  /** `--use-checkpoint-lr-scheduler`: take hyperparameters from the checkpoint. */
  useCheckpointLrScheduler?: boolean;
  /** `--override-lr-scheduler`: keep the constructor's hyperparameters, ignore the checkpoint's. */
  overrideLrScheduler?: boolean;
}

/** Checkpointed scheduler state. Megatron's snake_case keys (and its older names start_lr,
 *  warmup_iter, end_iter, num_iters) are accepted by importState too. */
export interface LrSchedulerState {
  maxLr: number;
  minLr: number;
  warmupSteps: number;
  decaySteps: number;
  decayStyle: LrDecayStyle;
  numSteps: number;
}

function fail(msg: string): never {
  throw new Error(`lr_schedule: ${msg}`);
}

function finite(what: string, x: unknown): number {
  if (typeof x !== "number" || !Number.isFinite(x)) {
    fail(`${what} must be a finite number, found ${String(x)}`);
  }
  return x;
}

function style(what: string, x: unknown): LrDecayStyle {
  if (typeof x !== "string" || !(LR_DECAY_STYLES as readonly string[]).includes(x)) {
    fail(`${what} must be one of ${LR_DECAY_STYLES.join(", ")}, found ${String(x)}`);
  }
  return x as LrDecayStyle;
}

export class AnnealingLR {
  maxLr: number;
  minLr: number;
  warmupSteps: number;
  decaySteps: number;
  decayStyle: LrDecayStyle;
  readonly useCheckpointLrScheduler: boolean;
  readonly overrideLrScheduler: boolean;
  #numSteps = 0;
  #lr = 0;

  constructor(opts: AnnealingLROptions) {
    this.maxLr = finite("--lr (max lr)", opts.maxLr);
    this.minLr = finite("--min-lr", opts.minLr ?? 0);
    this.warmupSteps = finite("warmup steps", opts.warmupSteps ?? 0);
    this.decaySteps = finite("decay steps", opts.decaySteps);
    this.decayStyle = style("--lr-decay-style", opts.decayStyle ?? "linear");
    this.useCheckpointLrScheduler = opts.useCheckpointLrScheduler ?? false;
    this.overrideLrScheduler = opts.overrideLrScheduler ?? false;
    if (this.overrideLrScheduler && this.useCheckpointLrScheduler) {
      fail("--override-lr-scheduler and --use-checkpoint-lr-scheduler are both set; choose one");
    }
    this.#validate();
    this.step(0);
  }

  #validate(): void {
    if (this.minLr < 0) fail(`--min-lr must be >= 0, found ${this.minLr}`);
    if (this.maxLr < this.minLr) fail(`--lr (${this.maxLr}) must be >= --min-lr (${this.minLr})`);
    if (this.warmupSteps < 0) fail(`warmup steps must be >= 0, found ${this.warmupSteps}`);
    if (!(this.decaySteps > 0)) fail(`decay steps (in samples) must be > 0, found ${this.decaySteps}`);
    if (!(this.warmupSteps < this.decaySteps)) {
      fail(`warmup steps (${this.warmupSteps}) must be < decay steps (${this.decaySteps}), both in samples`);
    }
  }

  /** Samples consumed by successful steps so far. */
  get numSteps(): number {
    return this.#numSteps;
  }

  /** The learning rate for the next optimizer step. */
  get lr(): number {
    return this.#lr;
  }

  /** The schedule's value at `numSteps` samples (pure; does not change the state). */
  lrAt(numSteps: number): number {
    if (this.warmupSteps > 0 && numSteps <= this.warmupSteps) {
      return (this.maxLr * numSteps) / this.warmupSteps;
    }
    if (this.decayStyle === "constant") return this.maxLr;
    if (numSteps > this.decaySteps) return this.minLr;
    const ratio = (numSteps - this.warmupSteps) / (this.decaySteps - this.warmupSteps);
    const coeff = this.decayStyle === "linear" ? 1 - ratio : 0.5 * (Math.cos(Math.PI * ratio) + 1);
    return this.minLr + coeff * (this.maxLr - this.minLr);
  }

  /** Advance by `increment` samples (the global batch of a successful step) and recompute lr. */
  step(increment: number): number {
    if (!Number.isFinite(increment) || increment < 0) {
      fail(`step increment must be a finite number >= 0 (samples), found ${increment}`);
    }
    this.#numSteps += increment;
    this.#lr = this.lrAt(this.#numSteps);
    return this.#lr;
  }

  exportState(): LrSchedulerState {
    return {
      maxLr: this.maxLr,
      minLr: this.minLr,
      warmupSteps: this.warmupSteps,
      decaySteps: this.decaySteps,
      decayStyle: this.decayStyle,
      numSteps: this.#numSteps,
    };
  }

  /** Megatron's arbitration for each hyperparameter: override -> ours; use-checkpoint -> theirs;
   *  neither -> they must be equal (error otherwise). numSteps always comes from the checkpoint and
   *  is added to the current count, as Megatron's load_state_dict does via step(num_steps). */
  importState(state: Partial<LrSchedulerState> | Record<string, unknown>): void {
    if (typeof state !== "object" || state === null) {
      fail(`checkpoint state must be an object, found ${state}`);
    }
    const sd = state as Record<string, unknown>;
    const pick = (...keys: string[]): unknown => {
      for (const k of keys) if (k in sd) return sd[k];
      fail(`checkpoint state has none of ${keys.join(" / ")}`);
    };
    const arbitrate = <T>(ours: T, theirs: T, name: string): T => {
      if (this.overrideLrScheduler) return ours;
      if (!this.useCheckpointLrScheduler && ours !== theirs) {
        fail(
          `${name}: flags give ${ours} but the checkpoint has ${theirs}; ` +
            `pass --override-lr-scheduler or --use-checkpoint-lr-scheduler`,
        );
      }
      return theirs;
    };
    const maxLr = finite("checkpoint max lr", pick("maxLr", "max_lr", "start_lr"));
    const minLr = finite("checkpoint min lr", pick("minLr", "min_lr"));
    const warmup = finite("checkpoint warmup steps", pick("warmupSteps", "warmup_steps", "warmup_iter"));
    const decay = finite("checkpoint decay steps", pick("decaySteps", "decay_steps", "end_iter"));
    const decayStyle = style("checkpoint decay style", pick("decayStyle", "decay_style"));
    const numSteps = finite("checkpoint num steps", pick("numSteps", "num_steps", "num_iters"));
    const next = {
      maxLr: arbitrate(this.maxLr, maxLr, "learning rate (--lr)"),
      minLr: arbitrate(this.minLr, minLr, "minimum learning rate (--min-lr)"),
      warmupSteps: arbitrate(this.warmupSteps, warmup, "warmup steps (samples)"),
      decaySteps: arbitrate(this.decaySteps, decay, "decay steps (samples)"),
      decayStyle: arbitrate(this.decayStyle, decayStyle, "decay style (--lr-decay-style)"),
    };
    const { numSteps: _, ...prev } = this.exportState();
    Object.assign(this, next);
    try {
      this.#validate();
    } catch (e) {
      Object.assign(this, prev);
      throw e;
    }
    this.step(numSteps);
  }
}

/** Flag values that size the schedule (names as in src/training/config.ts). */
export interface LrScheduleArgs {
  lr: number;
  minLr?: number;
  lrDecayStyle?: LrDecayStyle;
  globalBatchSize: number;
  trainIters?: number | null;
  trainSamples?: number | null;
  lrDecayIters?: number | null;
  lrDecaySamples?: number | null;
  lrWarmupFraction?: number | null;
  lrWarmupIters?: number;
  lrWarmupSamples?: number;
  overrideLrScheduler?: boolean;
  useCheckpointLrScheduler?: boolean;
}

/** decay/warmup in samples, as Megatron's get_learning_rate_scheduler derives them. */
export function lrScheduleSteps(args: LrScheduleArgs): { warmupSteps: number; decaySteps: number } {
  const has = (x: number | null | undefined): x is number => x !== undefined && x !== null;
  let decaySteps: number;
  let warmupSteps: number;
  if (has(args.trainIters) && args.trainIters > 0) {
    decaySteps = (has(args.lrDecayIters) ? args.lrDecayIters : args.trainIters) * args.globalBatchSize;
    warmupSteps = has(args.lrWarmupFraction)
      ? args.lrWarmupFraction * decaySteps
      : (args.lrWarmupIters ?? 0) * args.globalBatchSize;
  } else if (has(args.trainSamples) && args.trainSamples > 0) {
    decaySteps = has(args.lrDecaySamples) ? args.lrDecaySamples : args.trainSamples;
    warmupSteps = has(args.lrWarmupFraction)
      ? args.lrWarmupFraction * decaySteps
      : (args.lrWarmupSamples ?? 0);
  } else {
    fail("either --train-iters or --train-samples must be given to size the learning-rate schedule");
  }
  return { warmupSteps, decaySteps };
}

/** The scheduler a training run with these flags uses. */
export function createLrScheduler(args: LrScheduleArgs): AnnealingLR {
  const { warmupSteps, decaySteps } = lrScheduleSteps(args);
  return new AnnealingLR({
    maxLr: args.lr,
    minLr: args.minLr ?? 0,
    warmupSteps,
    decaySteps,
    decayStyle: args.lrDecayStyle ?? "linear",
    useCheckpointLrScheduler: args.useCheckpointLrScheduler,
    overrideLrScheduler: args.overrideLrScheduler,
  });
}
