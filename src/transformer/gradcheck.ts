// Finite-difference gradient checking against any Backend (use f64 tensors): perturb sampled
// elements by +-eps, evaluate the scalar loss, and compare the central difference with the
// analytic gradient that the caller's backward produced.

import type { Backend } from "../backend/backend.ts";
import type { Tensor } from "../tensor/tensor.ts";

export interface GradTarget {
  name: string;
  /** The tensor the loss depends on (perturbed in place, restored afterwards). */
  value: Tensor;
  /** Analytic dLoss/dValue, same element count. */
  grad: Tensor | Float64Array;
}

export interface GradCheckResult {
  /** Largest |analytic - numeric| / max(|analytic|, |numeric|, absFloor) seen. */
  worst: number;
  worstAt: string;
  checked: number;
  /** One line per element above the tolerance. */
  failures: string[];
}

/** Deterministic index sample: the first, the last and `n - 2` spread-out indices. */
export function sampleIndices(size: number, n: number, salt: number): number[] {
  if (size <= n) return Array.from({ length: size }, (_, i) => i);
  const out = new Set<number>([0, size - 1]);
  let x = (salt * 2654435761 + 12345) >>> 0;
  while (out.size < n) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out.add(x % size);
  }
  return [...out].sort((a, b) => a - b);
}

export async function checkGradients(
  backend: Backend,
  targets: GradTarget[],
  loss: () => Promise<number>,
  opts: { eps?: number; samples?: number; tol?: number; absFloor?: number } = {},
): Promise<GradCheckResult> {
  const eps = opts.eps ?? 1e-5;
  const samples = opts.samples ?? 6;
  const tol = opts.tol ?? 1e-6;
  // Below absFloor x tol (1e-9) a difference is the central difference's own noise: the f64 loss
  // carries ~1e-15 relative roundoff, divided by 2 eps = 2e-5 that is ~1e-10 on an exactly zero
  // gradient (e.g. the key bias). A 1e-4 floor put the pass/fail line right on that noise.
  const absFloor = opts.absFloor ?? 1e-3;
  const res: GradCheckResult = { worst: 0, worstAt: "", checked: 0, failures: [] };
  for (const [ti, t] of targets.entries()) {
    const grad = t.grad instanceof Float64Array ? t.grad : backend.toF64(t.grad);
    const host = backend.toF64(t.value);
    const write = (vals: Float64Array) => {
      const tmp = backend.fromHost(t.value.dtype, t.value.shape, vals);
      backend.copy(tmp, t.value);
      backend.free(tmp);
    };
    for (const i of sampleIndices(host.length, samples, ti + 1)) {
      const orig = host[i];
      host[i] = orig + eps;
      write(host);
      const lp = await loss();
      host[i] = orig - eps;
      write(host);
      const lm = await loss();
      host[i] = orig;
      write(host);
      const num = (lp - lm) / (2 * eps);
      const ana = grad[i];
      const err = Math.abs(ana - num) / Math.max(Math.abs(ana), Math.abs(num), absFloor);
      res.checked++;
      if (err > res.worst) {
        res.worst = err;
        res.worstAt = `${t.name}[${i}]`;
      }
      if (err > tol) {
        res.failures.push(`${t.name}[${i}]: analytic ${ana} numeric ${num} rel.err ${err.toExponential(2)}`);
      }
    }
  }
  return res;
}
