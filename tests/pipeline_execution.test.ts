// The schedule executor (runSchedule / runForwardOnly) over the real in-process communicator, with a
// toy stage whose every model chunk multiplies by its own weight: the loss of micro-batch k is
// (k + 1) * prod(w), so each chunk's gradient is known exactly. Checks, for p = 4 and m = 8 with 1
// and 2 chunks and for 2 interleaved stages: completion (no deadlock, tags matched), exact losses and
// gradients, and the peak number of micro-batches alive per stage.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import { runForwardOnly, runSchedule, warmupCount } from "../src/pipeline/schedules.ts";
import { toyStage, weightOf } from "./helpers/toy_stage.ts";

const be = createCpuBackend();

async function runPipeline(p: number, m: number, v: number) {
  const world = new LocalWorld(be, { tp: 1, pp: p, dp: 1, vp: v }, { timeoutMs: 5000 });
  const perRank = await Promise.all(world.states.map(async (ps, r) => {
    const losses: number[] = [];
    const grads = new Array(v).fill(0);
    const stage = toyStage(be, p, r, v, losses, grads);
    const ranks = ps.group("pipeline").ranks;
    const peers = { prev: ranks[(r - 1 + p) % p], next: ranks[(r + 1) % p] };
    const { maxInFlight } = await runSchedule({ p, r, m, v }, stage, world.communicator(r), peers);
    assert.equal(stage.alive(), 0, `rank ${r}: activations left after the step`);
    // Forward-only (evaluation) over the same communicator afterwards.
    const evalLosses: number[] = [];
    const evalStage = toyStage(be, p, r, v, evalLosses, new Array(v).fill(0));
    await runForwardOnly({ p, r, m, v }, evalStage, world.communicator(r), peers);
    return { losses, grads, maxInFlight, evalLosses };
  }));
  let prod = 1;
  for (let r = 0; r < p; r++) for (let c = 0; c < v; c++) prod *= weightOf(p, r, c);
  const sumK = (m * (m + 1)) / 2;
  const last = perRank[p - 1];
  for (let k = 0; k < m; k++) {
    assert.ok(Math.abs(last.losses[k] - (k + 1) * prod) < 1e-12, `loss of micro-batch ${k}`);
    assert.ok(Math.abs(last.evalLosses[k] - (k + 1) * prod) < 1e-12, `eval loss of micro-batch ${k}`);
  }
  perRank.forEach((o, r) => {
    for (let c = 0; c < v; c++) {
      const want = sumK * prod / weightOf(p, r, c);
      assert.ok(Math.abs(o.grads[c] - want) < 1e-9 * want, `rank ${r} chunk ${c}: ${o.grads[c]} vs ${want}`);
    }
    // 1F1B keeps at most p - r micro-batches alive; interleaved at most its warm-up + 1.
    const bound = v === 1 ? Math.min(p - r, m) : Math.min(warmupCount({ p, r, m, v }) + 1, m * v);
    assert.ok(o.maxInFlight <= bound, `rank ${r}: ${o.maxInFlight} in flight, bound ${bound}`);
    if (p > 1) assert.equal(o.maxInFlight, bound, `rank ${r}: the schedule reaches its bound`);
  });
}

Deno.test("executor over LocalWorld: 1F1B, p=4, m=8", () => runPipeline(4, 8, 1));
Deno.test("executor over LocalWorld: interleaved, p=4, m=8, 2 chunks", () => runPipeline(4, 8, 2));
Deno.test("executor over LocalWorld: interleaved with 2 stages, m=4, 2 chunks", () => runPipeline(2, 4, 2));
Deno.test("executor over LocalWorld: no pipelining, m=3 (gradient accumulation)", () => runPipeline(1, 3, 1));
