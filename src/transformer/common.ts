// Pieces shared by every transformer module: the per-micro-batch context, parameter creation with
// layout-independent init, dropout addressing by global coordinates.

import type { Backend, RngAddress } from "../backend/backend.ts";
import type { Communicator, ParallelState } from "../parallel/types.ts";
import {
  ColumnParallelLinear,
  createParam,
  type NormalInit,
  RowParallelLinear,
  type TPEnv,
} from "../parallel/tensor_parallel.ts";
import { Purpose, streamId } from "../rng/philox.ts";
import type { Param } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";
import type { ResolvedTransformerConfig } from "./config.ts";

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
export function hiddenDropoutP(cfg: ResolvedTransformerConfig, ctx: MicroBatchContext): number {
  return ctx.training ? cfg.hiddenDropout : 0;
}

/** Attention-probability dropout in this context (0 when evaluating). */
export function attentionDropoutP(cfg: ResolvedTransformerConfig, ctx: MicroBatchContext): number {
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
  readonly cfg: ResolvedTransformerConfig;
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
  /** Cross-attention (decoder layers): query, key_value and its dense. */
  query: 6,
  keyValue: 7,
  interDense: 8,
} as const;

/** Init stream: one per (global layer, kind); layer -1 = embeddings. */
export function initStream(globalLayer: number, kind: number): number {
  return streamId(Purpose.init, (globalLayer + 1) * 16 + kind);
}

export type InitSpec =
  | { kind: "normal"; std: number; stream: number }
  | { kind: "const"; value: number };

/** The tensor-parallel classes' view of a module's surroundings (dtype = the model's). */
export function tpEnv(env: ModuleEnv): TPEnv {
  return { backend: env.backend, comm: env.comm, ps: env.ps, dtype: env.cfg.paramsDtype };
}

/** Normal init of a TP-split weight from this module's seed. */
export function normalInit(env: ModuleEnv, stream: number, std: number): NormalInit {
  return { seed: env.cfg.seed, stream, std };
}

/** A block's input projection (QKV, h->4h): column-parallel, output left split over TP. */
export function inputProjection(
  env: ModuleEnv,
  name: string,
  inF: number,
  outF: number,
  init: { globalLayer: number; kind: number; skipBiasAdd: boolean },
): ColumnParallelLinear {
  const std = env.cfg.initMethodStd, stream = initStream(init.globalLayer, init.kind);
  return new ColumnParallelLinear(tpEnv(env), name, inF, outF, normalInit(env, stream, std), {
    gatherOutput: false,
    skipBiasAdd: init.skipBiasAdd,
  });
}

/** A block's output projection (attention dense, 4h->h): row-parallel on the split input, init std
 *  scaled by 1/sqrt(2 numLayers); its bias is left to the layer's bias-dropout-add. */
export function outputProjection(
  env: ModuleEnv,
  name: string,
  inF: number,
  outF: number,
  init: { globalLayer: number; kind: number },
): RowParallelLinear {
  const std = env.cfg.initMethodStd / Math.sqrt(2 * env.cfg.numLayers);
  const stream = initStream(init.globalLayer, init.kind);
  return new RowParallelLinear(tpEnv(env), name, inF, outF, normalInit(env, stream, std), {
    inputIsParallel: true,
    skipBiasAdd: true,
  });
}

/** A replicated (not TP-split) Param; the split ones come from src/parallel/tensor_parallel.ts. */
export function makeParam(
  env: ModuleEnv,
  name: string,
  shape: readonly number[],
  init: InitSpec,
  opts: { noWeightDecay?: boolean } = {},
): Param {
  const n = shape.reduce((a, d) => a * d, 1);
  const data = init.kind === "const" ? new Float64Array(n).fill(init.value) : {
    std: init.std,
    addr: { seed: env.cfg.seed, stream: init.stream, iteration: 0, base: 0, rowStride: n, rowLen: n },
  };
  return createParam(tpEnv(env), name, [...shape], data, null, opts.noWeightDecay ?? false);
}

/** Dropout address for a hidden-state tensor [b, s, h] of the micro-batch (replicated over TP). */
export function hiddenDropoutAddr(
  cfg: ResolvedTransformerConfig,
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

/** Dropout address for attention probabilities [b, np_local, sq, sk], indexed by the global head.
 *  Self-attention uses Purpose.attentionDropout, cross-attention Purpose.crossAttentionDropout. */
export function attnDropoutAddr(
  cfg: ResolvedTransformerConfig,
  ps: ParallelState,
  ctx: MicroBatchContext,
  globalLayer: number,
  sq: number,
  sk = sq,
  purpose: number = Purpose.attentionDropout,
): RngAddress {
  const npTotal = cfg.numAttentionHeads;
  const npLocal = npTotal / ps.tpSize;
  const per = sq * sk;
  return {
    seed: cfg.seed,
    stream: streamId(purpose, globalLayer),
    iteration: ctx.iteration,
    base: (ctx.firstGlobalSample * npTotal + ps.tpRank * npLocal) * per,
    rowStride: npTotal * per,
    rowLen: npLocal * per,
  };
}

/** Free every tensor in a list (skipping nulls). */
export function freeAll(backend: Backend, ts: (Tensor | null | undefined)[]): void {
  for (const t of ts) if (t) backend.free(t);
}
