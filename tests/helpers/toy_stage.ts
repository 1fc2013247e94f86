// A toy pipeline stage for schedule tests: model piece g = c * p + r (chunk c on stage r) multiplies its
// input by w_g = 1 + 0.1 * (g + 1), the first piece's input for micro-batch k is k + 1, and the loss is
// the last piece's output. So the loss of micro-batch k is (k + 1) * prod(w) and chunk c's gradient
// sum_k (k + 1) * prod(w) / w_g: known exactly, whatever the schedule and the communicator.

import type { Backend } from "../../src/backend/backend.ts";
import { runForwardOnly, runSchedule, type StageRunner } from "../../src/pipeline/schedules.ts";
import type { Communicator, ParallelState } from "../../src/parallel/types.ts";
import type { Tensor } from "../../src/tensor/tensor.ts";

export const weightOf = (p: number, r: number, c: number) => 1 + 0.1 * (c * p + r + 1);

export function toyStage(
  be: Backend,
  p: number,
  r: number,
  v: number,
  losses: number[],
  grads: number[],
): StageRunner & { alive: () => number } {
  const saved = new Map<string, number>();
  const isFirst = (c: number) => r === 0 && c === 0;
  const isLast = (c: number) => r === p - 1 && c === v - 1;
  return {
    activationShape: [1],
    activationDType: "f64",
    allocActivation: () => be.empty("f64", [1]),
    release: (t: Tensor) => be.free(t),
    alive: () => saved.size,
    forward(c, mb, input) {
      const x = isFirst(c) ? mb + 1 : be.toF64(input!)[0];
      if (input) be.free(input);
      saved.set(`${c}:${mb}`, x);
      const y = weightOf(p, r, c) * x;
      if (isLast(c)) {
        losses[mb] = y;
        return Promise.resolve(null);
      }
      return Promise.resolve(be.fromHost("f64", [1], [y]));
    },
    backward(c, mb, outputGrad) {
      const k = `${c}:${mb}`;
      const x = saved.get(k);
      if (x === undefined) throw new Error(`backward of ${k} without forward`);
      saved.delete(k);
      const g = isLast(c) ? 1 : be.toF64(outputGrad!)[0];
      grads[c] += g * x;
      return Promise.resolve(isFirst(c) ? null : be.fromHost("f64", [1], [g * weightOf(p, r, c)]));
    },
  };
}

export interface ToyResult {
  /** Losses of the training step and of the forward-only pass (last stage; empty elsewhere). */
  losses: number[];
  evalLosses: number[];
  /** Gradient of each local chunk's weight. */
  grads: number[];
  maxInFlight: number;
}

/** One training step (runSchedule) then one forward-only pass (runForwardOnly) of stage `ps.ppRank`. */
export async function runToyRank(
  be: Backend,
  ps: ParallelState,
  comm: Communicator,
  m: number,
): Promise<ToyResult> {
  const p = ps.ppSize, r = ps.ppRank, v = ps.vpSize;
  const ranks = ps.group("pipeline").ranks;
  const peers = { prev: ranks[(r - 1 + p) % p], next: ranks[(r + 1) % p] };
  const losses: number[] = [];
  const grads = new Array(v).fill(0);
  const stage = toyStage(be, p, r, v, losses, grads);
  const { maxInFlight } = await runSchedule({ p, r, m, v }, stage, comm, peers);
  if (stage.alive() !== 0) throw new Error(`rank ${ps.globalRank}: activations left after the step`);
  const evalLosses: number[] = [];
  await runForwardOnly({ p, r, m, v }, toyStage(be, p, r, v, evalLosses, new Array(v).fill(0)), comm, peers);
  return { losses, evalLosses, grads, maxInFlight };
}

/** Pipeline layouts (with micro-batches m) run by mpiexec -n <world size> (tests/distributed/mpi_child.ts
 *  schedule mode). */
export const SCHEDULE_LAYOUTS: Record<
  number,
  { tp: number; pp: number; dp: number; vp: number; m: number }[]
> = {
  2: [
    { tp: 1, pp: 2, dp: 1, vp: 1, m: 4 },
    { tp: 1, pp: 2, dp: 1, vp: 2, m: 4 },
    { tp: 1, pp: 2, dp: 1, vp: 3, m: 6 },
  ],
  4: [
    { tp: 1, pp: 4, dp: 1, vp: 1, m: 8 },
    { tp: 1, pp: 4, dp: 1, vp: 2, m: 8 },
    { tp: 1, pp: 2, dp: 2, vp: 2, m: 4 },
    { tp: 2, pp: 2, dp: 1, vp: 1, m: 3 },
  ],
};

/** Exact bits of a result, for comparisons across communicators and processes. */
export function toyBits(x: ToyResult): string {
  const hex = (a: number[]) =>
    a.map((n) => {
      const d = new DataView(new ArrayBuffer(8));
      d.setFloat64(0, n);
      return d.getBigUint64(0).toString(16);
    }).join(",");
  return `losses ${hex(x.losses)} eval ${hex(x.evalLosses)} grads ${hex(x.grads)} inflight ${x.maxInFlight}`;
}
