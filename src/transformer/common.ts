// Pieces shared by every transformer module: the per-micro-batch context, parameter creation with
// layout-independent init, dropout addressing by global coordinates, and linear-layer helpers.

import type { Backend, RngAddress } from "../backend/backend.ts";
import type { Communicator, ParallelState } from "../parallel/types.ts";
import { fillNormal, Purpose, streamId } from "../rng/philox.ts";
import { isHalf } from "../tensor/dtype.ts";
import type { Param, TensorParallelInfo } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { gradDType, type ResolvedGPTConfig } from "./config.ts";

/** What one micro-batch carries through forward and backward. `saved` maps a module to the
 *  activations it kept for its backward; several contexts may be alive at once. */
export interface MicroBatchContext {
  /** Training iteration: selects the dropout masks (u32). */
  readonly iteration: number;
  /** Index of this micro-batch's first sample within the global batch (dropout addressing). */
  readonly firstGlobalSample: number;
  /** False for evaluation: every dropout is the identity (Megatron's model.eval()). */
  readonly training: boolean;
  readonly saved: Map<object, unknown>;
}

export function newMicroBatchContext(
  opts: { iteration: number; firstGlobalSample: number; training?: boolean },
): MicroBatchContext {
  const { iteration, firstGlobalSample } = opts;
  if (!Number.isInteger(iteration) || iteration < 0 || iteration >= 2 ** 32) {
    throw new Error(`newContext: iteration must be a u32, found ${iteration}`);
  }
  if (!Number.isInteger(firstGlobalSample) || firstGlobalSample < 0) {
    throw new Error(
      `newContext: firstGlobalSample must be a non-negative integer, found ${firstGlobalSample}`,
    );
  }
  return { iteration, firstGlobalSample, training: opts.training ?? true, saved: new Map() };
}

/** A context sharing iteration/sample with `ctx` but with its own saved-activation map (recompute). */
export function childContext(ctx: MicroBatchContext): MicroBatchContext {
  return {
    iteration: ctx.iteration,
    firstGlobalSample: ctx.firstGlobalSample,
    training: ctx.training,
    saved: new Map(),
  };
}

/** Hidden-state dropout probability in this context (0 when evaluating). */
export function hiddenDropoutP(cfg: ResolvedGPTConfig, ctx: MicroBatchContext): number {
  return ctx.training ? cfg.hiddenDropout : 0;
}

/** Attention-probability dropout in this context (0 when evaluating). */
export function attentionDropoutP(cfg: ResolvedGPTConfig, ctx: MicroBatchContext): number {
  return ctx.training ? cfg.attentionDropout : 0;
}

export function takeSaved<T>(ctx: MicroBatchContext, owner: object, what: string): T {
  const s = ctx.saved.get(owner);
  if (s === undefined) throw new Error(`${what}: backward called without a matching forward in this context`);
  ctx.saved.delete(owner);
  return s as T;
}

/** Everything a module needs from its surroundings, passed explicitly. */
export interface ModuleEnv {
  readonly cfg: ResolvedGPTConfig;
  readonly backend: Backend;
  readonly ps: ParallelState;
  readonly comm: Communicator;
}

/** Kinds of parameters, each with its own init stream per layer. */
export const ParamKind = {
  wordEmbeddings: 0,
  positionEmbeddings: 1,
  qkv: 2,
  attnDense: 3,
  h4h: 4,
  fourhh: 5,
} as const;

/** Init stream: one per (global layer, kind); layer -1 = embeddings. */
export function initStream(globalLayer: number, kind: number): number {
  return streamId(Purpose.init, (globalLayer + 1) * 16 + kind);
}

export type InitSpec =
  | { kind: "normal"; std: number; stream: number }
  | { kind: "const"; value: number };

/**
 * Host values (f64) of this rank's shard of a [rows, cols] (or [rows]) weight. Element (r, c) of the
 * full TP=1 weight uses Philox index r * cols + c, so a shard is exactly a slice of the full weight.
 */
export function initShardValues(
  seed: number,
  fullShape: readonly number[],
  tp: TensorParallelInfo | null,
  tpRank: number,
  tpSize: number,
  init: InitSpec,
): { shape: number[]; data: Float64Array } {
  const rows = fullShape[0];
  const cols = fullShape.length > 1 ? fullShape[1] : 1;
  let r0 = 0, nr = rows, c0 = 0, nc = cols;
  if (tp !== null && tp.partitionDim === 0) {
    nr = rows / tpSize;
    r0 = tpRank * nr;
  } else if (tp !== null) {
    nc = cols / tpSize;
    c0 = tpRank * nc;
  }
  const shape = fullShape.length > 1 ? [nr, nc] : [nr];
  const data = new Float64Array(nr * nc);
  if (init.kind === "const") {
    data.fill(init.value);
  } else if (c0 === 0 && nc === cols) {
    fillNormal(data, seed, init.stream, 0, init.std, r0 * cols);
  } else {
    for (let r = 0; r < nr; r++) {
      fillNormal(data.subarray(r * nc, (r + 1) * nc), seed, init.stream, 0, init.std, (r0 + r) * cols + c0);
    }
  }
  return { shape, data };
}

/** Create a Param: value in the model dtype, grad zeroed (f32, f64 for f64 models), f32 main for half. */
export function makeParam(
  env: ModuleEnv,
  name: string,
  fullShape: readonly number[],
  tp: TensorParallelInfo | null,
  init: InitSpec,
  opts: { noWeightDecay?: boolean; shared?: boolean } = {},
): Param {
  const { backend, cfg, ps } = env;
  for (const [i, d] of fullShape.entries()) {
    if (tp !== null && tp.partitionDim === i && d % ps.tpSize !== 0) {
      throw new Error(
        `${name}: dimension ${i} of size ${d} is not divisible by tensor-parallel size ${ps.tpSize}`,
      );
    }
  }
  const { shape, data } = initShardValues(cfg.seed, fullShape, tp, ps.tpRank, ps.tpSize, init);
  const dtype = cfg.paramsDtype;
  return {
    name,
    value: backend.fromHost(dtype, shape, data),
    grad: backend.zeros(gradDType(dtype), shape),
    main: isHalf(dtype) ? backend.fromHost("f32", shape, data) : null,
    noWeightDecay: opts.noWeightDecay ?? false,
    tensorParallel: tp,
    shared: opts.shared ?? false,
  };
}

export const COLUMN: TensorParallelInfo = { partitionDim: 0, stride: 1 };
export const ROW: TensorParallelInfo = { partitionDim: 1, stride: 1 };

/** Dropout address for a hidden-state tensor [b, s, h] of the micro-batch (replicated over TP). */
export function hiddenDropoutAddr(
  cfg: ResolvedGPTConfig,
  ctx: MicroBatchContext,
  purpose: number,
  globalLayer: number,
  s: number,
): RngAddress {
  const rowLen = s * cfg.hiddenSize;
  return {
    seed: cfg.seed,
    stream: streamId(purpose, globalLayer),
    iteration: ctx.iteration,
    base: ctx.firstGlobalSample * rowLen,
    rowStride: rowLen,
    rowLen,
  };
}

/** Dropout address for attention probabilities [b, np_local, s, s], indexed by the global head. */
export function attnDropoutAddr(
  cfg: ResolvedGPTConfig,
  ps: ParallelState,
  ctx: MicroBatchContext,
  globalLayer: number,
  s: number,
): RngAddress {
  const npTotal = cfg.numAttentionHeads;
  const npLocal = npTotal / ps.tpSize;
  return {
    seed: cfg.seed,
    stream: streamId(Purpose.attentionDropout, globalLayer),
    iteration: ctx.iteration,
    base: (ctx.firstGlobalSample * npTotal + ps.tpRank * npLocal) * s * s,
    rowStride: npTotal * s * s,
    rowLen: npLocal * s * s,
  };
}

/** y[rows, out] = x[rows, in] @ w[out, in]^T (+ bias broadcast over rows when given). */
export function linearFwd(
  backend: Backend,
  x: Tensor,
  w: Tensor,
  bias: Tensor | null,
  y: Tensor,
): void {
  const rows = x.size / w.shape[1];
  const out = w.shape[0];
  let beta = 0;
  if (bias !== null) {
    // Broadcast the bias with a rank-1 GEMM (ones[rows,1] @ bias[1,out]) so it shares the output rounding.
    const ones = backend.empty(x.dtype, [rows, 1]);
    backend.fill(ones, 1);
    backend.gemm({ transA: false, transB: false, m: rows, n: out, k: 1, a: ones, b: bias, c: y });
    backend.free(ones);
    beta = 1;
  }
  backend.gemm({ transA: false, transB: true, m: rows, n: out, k: w.shape[1], a: x, b: w, c: y, beta });
}

/** dx[rows, in] = dy[rows, out] @ w[out, in]; dw[out, in] += dy^T @ x. */
export function linearBwd(
  backend: Backend,
  dy: Tensor,
  x: Tensor,
  w: Tensor,
  dw: Tensor,
  dx: Tensor | null,
): void {
  const out = w.shape[0], inF = w.shape[1];
  const rows = x.size / inF;
  if (dx !== null) {
    backend.gemm({ transA: false, transB: false, m: rows, n: inF, k: out, a: dy, b: w, c: dx });
  }
  backend.gemm({ transA: true, transB: false, m: out, n: inF, k: rows, a: dy, b: x, c: dw, beta: 1 });
}

/** Free every tensor in a list (skipping nulls). */
export function freeAll(backend: Backend, ts: (Tensor | null | undefined)[]): void {
  for (const t of ts) if (t) backend.free(t);
}
