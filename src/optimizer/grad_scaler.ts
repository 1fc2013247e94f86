// Loss scaling for fp16 training: the loss is multiplied by `scale` before backward and the grads
// are multiplied by `invScale` before the optimizer step. The dynamic scaler follows Megatron's
// state machine exactly (see the facts file §5), including its quirk: the hysteresis tracker is
// only refilled when the scale grows, so after `hysteresis` overflows every further overflow halves
// the scale until a full clean window passes.
//
// The scale is kept as an f32 value (Megatron holds it in a float32 CUDA tensor).

/** Checkpointed scaler state (Megatron's {scale, growth_tracker, hysteresis_tracker}). */
export interface GradScalerState {
  scale: number;
  growthTracker: number;
  hysteresisTracker: number;
}

export interface GradScaler {
  readonly kind: "dynamic" | "constant";
  /** Current loss scale (f32 value). */
  readonly scale: number;
  /** 1/scale rounded to f32, the factor applied to grads. */
  readonly invScale: number;
  /** Called once per step with the model-parallel-reduced overflow flag. */
  update(foundInf: boolean): void;
  exportState(): GradScalerState;
  importState(s: GradScalerState): void;
}

export interface DynamicGradScalerOptions {
  /** `--initial-loss-scale` (default 2^32). */
  initialScale?: number;
  /** `--min-loss-scale` (default 1). */
  minScale?: number;
  /** Hard-coded 2.0 in Megatron. */
  growthFactor?: number;
  /** Hard-coded 0.5 in Megatron. */
  backoffFactor?: number;
  /** `--loss-scale-window` (default 1000). */
  growthInterval?: number;
  /** `--hysteresis` (default 2). */
  hysteresis?: number;
}

function positive(what: string, x: number): number {
  if (!Number.isFinite(x) || x <= 0) {
    throw new Error(`grad_scaler: ${what} must be a finite number > 0, found ${x}`);
  }
  return x;
}

function positiveInt(what: string, x: number): number {
  if (!Number.isInteger(x) || x <= 0) {
    throw new Error(`grad_scaler: ${what} must be an integer >= 1, found ${x}`);
  }
  return x;
}

function checkState(s: GradScalerState): void {
  if (typeof s !== "object" || s === null) {
    throw new Error(`grad_scaler: checkpoint state must be an object, found ${String(s)}`);
  }
  positive("checkpoint scale", s.scale);
  if (!Number.isInteger(s.growthTracker) || s.growthTracker < 0) {
    throw new Error(
      `grad_scaler: checkpoint growthTracker must be an integer >= 0, found ${s.growthTracker}`,
    );
  }
  if (!Number.isInteger(s.hysteresisTracker)) {
    throw new Error(
      `grad_scaler: checkpoint hysteresisTracker must be an integer, found ${s.hysteresisTracker}`,
    );
  }
}

export class DynamicGradScaler implements GradScaler {
  readonly kind = "dynamic";
  readonly minScale: number;
  readonly growthFactor: number;
  readonly backoffFactor: number;
  readonly growthInterval: number;
  readonly hysteresis: number;
  #scale: number;
  #growthTracker = 0;
  #hysteresisTracker: number;

  constructor(opts: DynamicGradScalerOptions = {}) {
    this.#scale = Math.fround(positive("initial scale", opts.initialScale ?? 2 ** 32));
    this.minScale = Math.fround(positive("min scale", opts.minScale ?? 1));
    this.growthFactor = opts.growthFactor ?? 2;
    if (!(this.growthFactor > 1)) {
      throw new Error(`grad_scaler: growth factor must be > 1, found ${this.growthFactor}`);
    }
    this.backoffFactor = opts.backoffFactor ?? 0.5;
    if (!(this.backoffFactor > 0 && this.backoffFactor < 1)) {
      throw new Error(`grad_scaler: backoff factor must be in (0, 1), found ${this.backoffFactor}`);
    }
    this.growthInterval = positiveInt("growth interval (--loss-scale-window)", opts.growthInterval ?? 1000);
    this.hysteresis = positiveInt("hysteresis (--hysteresis)", opts.hysteresis ?? 2);
    this.#hysteresisTracker = this.hysteresis;
  }

  get scale(): number {
    return this.#scale;
  }

  get invScale(): number {
    return Math.fround(1 / this.#scale);
  }

  get growthTracker(): number {
    return this.#growthTracker;
  }

  get hysteresisTracker(): number {
    return this.#hysteresisTracker;
  }

  update(foundInf: boolean): void {
    if (foundInf) {
      this.#growthTracker = 0;
      this.#hysteresisTracker -= 1;
      // Deliberately not refilled here (Megatron's behaviour): later overflows keep halving.
      if (this.#hysteresisTracker <= 0) {
        this.#scale = Math.max(Math.fround(this.#scale * this.backoffFactor), this.minScale);
      }
    } else {
      this.#growthTracker += 1;
      if (this.#growthTracker === this.growthInterval) {
        this.#growthTracker = 0;
        this.#hysteresisTracker = this.hysteresis;
        this.#scale = Math.fround(this.#scale * this.growthFactor);
      }
    }
  }

  exportState(): GradScalerState {
    return {
      scale: this.#scale,
      growthTracker: this.#growthTracker,
      hysteresisTracker: this.#hysteresisTracker,
    };
  }

  /** Takes the checkpoint's values as they are (the resumed run ignores --initial-loss-scale). */
  importState(s: GradScalerState): void {
    checkState(s);
    this.#scale = Math.fround(s.scale);
    this.#growthTracker = s.growthTracker;
    this.#hysteresisTracker = s.hysteresisTracker;
  }
}

/** `--loss-scale X`: a fixed scale; update() does nothing and checkpoints carry nothing to restore. */
export class ConstantGradScaler implements GradScaler {
  readonly kind = "constant";
  readonly scale: number;
  constructor(scale: number) {
    this.scale = Math.fround(positive("--loss-scale", scale));
  }
  get invScale(): number {
    return Math.fround(1 / this.scale);
  }
  update(_foundInf: boolean): void {}
  exportState(): GradScalerState {
    return { scale: this.scale, growthTracker: 0, hysteresisTracker: 0 };
  }
  /** Megatron's constant scaler loads nothing: the flag value wins over the checkpoint. */
  importState(s: GradScalerState): void {
    checkState(s);
  }
}

/** Flag values that choose the scaler (names as in src/training/config.ts). */
export interface GradScalerArgs {
  fp16?: boolean;
  bf16?: boolean;
  /** `--loss-scale`: constant scaling when set. */
  lossScale?: number | null;
  initialLossScale?: number;
  minLossScale?: number;
  lossScaleWindow?: number;
  hysteresis?: number;
}

/** Megatron's choice: fp32 -> none; --loss-scale -> constant; fp16 -> dynamic; bf16 -> none. */
export function createGradScaler(args: GradScalerArgs): GradScaler | null {
  if (!args.fp16 && !args.bf16) return null;
  // Megatron tests `if args.loss_scale:`, so --loss-scale 0 means dynamic scaling too.
  if (args.lossScale) return new ConstantGradScaler(args.lossScale);
  if (!args.fp16) return null;
  return new DynamicGradScaler({
    initialScale: args.initialLossScale,
    minScale: args.minLossScale,
    growthInterval: args.lossScaleWindow,
    hysteresis: args.hysteresis,
  });
}
