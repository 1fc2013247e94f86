// Model-parallel reductions through the in-process communicator: with TP = 2 the grad norm, the
// clipping and the Adam update of every shard equal those of the unsplit (TP = 1) model, and an
// overflow on one rank makes every rank skip.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import type { Backend } from "../src/backend/backend.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import type { Communicator } from "../src/parallel/types.ts";
import type { Param } from "../src/tensor/param.ts";
import { globalGradNorm, type ModelParallelReducer } from "../src/optimizer/clip.ts";
import { DynamicGradScaler } from "../src/optimizer/grad_scaler.ts";
import { AnnealingLR } from "../src/optimizer/lr_schedule.ts";
import { MegatronOptimizer } from "../src/optimizer/optimizer.ts";

/** What the parallelism layer plugs in: scalar all-reduces over the model-parallel group. */
function mpReducer(b: Backend, comm: Communicator): ModelParallelReducer {
  const reduce = async (x: number, op: "sum" | "max") => {
    const t = b.fromHost("f64", [1], [x]);
    try {
      await comm.allReduce(t, op, "model");
      return b.toF64(t)[0];
    } finally {
      b.free(t);
    }
  };
  return { allReduceSum: (x) => reduce(x, "sum"), allReduceMax: (x) => reduce(x, "max") };
}

function param(b: Backend, name: string, values: number[], grad: number[], tp: boolean): Param {
  const p: Param = {
    name,
    value: b.fromHost("f16", [values.length], values),
    grad: b.fromHost("f32", [grad.length], grad),
    main: null,
    noWeightDecay: false,
    tensorParallel: tp ? { partitionDim: 0, stride: 1 } : null,
    shared: false,
  };
  return p;
}

const W = [0.5, -1, 2, 0.25];
const GW = [3, 4, 5, 6];
const R = [1, -0.5];
const GR = [1, 2];
const lr = () => new AnnealingLR({ maxLr: 0.01, decaySteps: 1, decayStyle: "constant" });

Deno.test("tp=2: grad norm, clipping and Adam shards equal the tp=1 model; overflow anywhere skips", async () => {
  const b = createCpuBackend({ blas: "none", log: () => {} });
  // TP = 1 reference: norm^2 = 1 + 4 + 9 + 16 + 25 + 36 = 91, clipped to 1.
  const full = [param(b, "r", R, GR, false), param(b, "w", W, GW, true)];
  const ref = new MegatronOptimizer(b, full, lr(), { scaler: new DynamicGradScaler({ initialScale: 1 }) });
  const rr = await ref.step(1);
  assert.equal(rr.gradNorm, Math.sqrt(91));

  const world = new LocalWorld(b, { tp: 2, pp: 1, dp: 1 }, { timeoutMs: 10_000 });
  const ranks = [0, 1].map((t) => {
    const ps = [
      param(b, "r", R, GR, false),
      param(b, "w", W.slice(2 * t, 2 * t + 2), GW.slice(2 * t, 2 * t + 2), true),
    ];
    const reducer = mpReducer(b, world.communicator(t));
    const opt = new MegatronOptimizer(b, ps, lr(), {
      scaler: new DynamicGradScaler({ initialScale: 1 }),
      tpRank: t,
      reducer,
    });
    return { ps, opt, reducer };
  });
  // The replicated param counts once (on TP rank 0): 30 + 61 = 91.
  const norms = await Promise.all(
    ranks.map((r, t) => globalGradNorm(b, r.ps, { tpRank: t, reducer: r.reducer })),
  );
  assert.deepEqual(norms, [Math.sqrt(91), Math.sqrt(91)]);
  const res = await Promise.all(ranks.map((r) => r.opt.step(1)));
  for (const r of res) assert.equal(r.gradNorm, Math.sqrt(91));
  const vals = (p: Param) => Array.from(b.toF64(p.main!));
  for (let t = 0; t < 2; t++) {
    assert.deepEqual(vals(ranks[t].ps[0]), vals(full[0]), `replicated param on rank ${t}`);
    assert.deepEqual(vals(ranks[t].ps[1]), vals(full[1]).slice(2 * t, 2 * t + 2), `shard ${t}`);
  }
  // An inf only on TP rank 1: both ranks skip and keep their params.
  const before = ranks.map((r) => r.ps.map(vals));
  ranks[0].ps.forEach((p) => b.fill(p.grad, 1));
  ranks[1].ps.forEach((p) => b.fill(p.grad, 1));
  b.copy(b.fromHost("f32", [2], [1, Infinity]), ranks[1].ps[1].grad);
  const skipped = await Promise.all(ranks.map((r) => r.opt.step(1)));
  assert.deepEqual(skipped.map((r) => r.skipped), [true, true]);
  assert.deepEqual(ranks.map((r) => r.ps.map(vals)), before);
  assert.deepEqual(ranks.map((r) => r.opt.stepCount), [1, 1]);
});
