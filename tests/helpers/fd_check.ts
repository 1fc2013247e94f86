// Shared by the finite-difference tests of transformer modules (f64 on one rank).
import type { Backend } from "../../src/backend/backend.ts";
import { makeParallelState, SingleRankCommunicator } from "../../src/parallel/types.ts";
import type { Tensor } from "../../src/tensor/tensor.ts";
import type { ModuleEnv } from "../../src/transformer/mod.ts";

/** A module environment on one rank (tp = pp = dp = 1). */
export function singleRankEnv(cfg: ModuleEnv["cfg"], backend: Backend): ModuleEnv {
  return {
    cfg,
    backend,
    ps: makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    comm: new SingleRankCommunicator(),
  };
}

/** Deterministic values in [-1, 1) from a 32-bit LCG started at `seed`. */
export function lcgNoise(n: number, seed: number): Float64Array {
  const out = new Float64Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = x / 2 ** 31 - 1;
  }
  return out;
}

/** sum(t * r), t read as f64: the scalar loss of a finite-difference check. */
export function dotF64(backend: Backend, t: Tensor, r: Float64Array): number {
  const v = backend.toF64(t);
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * r[i];
  return s;
}
