// MegatronOptimizer on the CPU reference backend: Adam (AdamW) and SGD against hand-computed values,
// the two param groups, grad-norm clipping (excluded params, coefficient), overflow skips that touch
// nothing, half params (main updated, rounded copy in value), and checkpoint state round trips.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import type { Backend } from "../src/backend/backend.ts";
import type { DType } from "../src/tensor/dtype.ts";
import type { Param } from "../src/tensor/param.ts";
import {
  clipGradNorm,
  countGradZeros,
  countsForGradNorm,
  globalGradNorm,
  globalParamNorm,
} from "../src/optimizer/clip.ts";
import { ConstantGradScaler, DynamicGradScaler } from "../src/optimizer/grad_scaler.ts";
import { AnnealingLR } from "../src/optimizer/lr_schedule.ts";
import { createMegatronOptimizer, MegatronOptimizer } from "../src/optimizer/optimizer.ts";

const backend = (): Backend => createCpuBackend({ blas: "none", log: () => {} });

interface MkOpts {
  noWeightDecay?: boolean;
  tp?: boolean;
  shared?: boolean;
}

function mkParam(b: Backend, name: string, dtype: DType, values: number[], o: MkOpts = {}): Param {
  return {
    name,
    value: b.fromHost(dtype, [values.length], values),
    grad: b.zeros(dtype === "f64" ? "f64" : "f32", [values.length]),
    main: null,
    noWeightDecay: o.noWeightDecay ?? false,
    tensorParallel: o.tp ? { partitionDim: 0, stride: 1 } : null,
    shared: o.shared ?? false,
  };
}

function setGrad(b: Backend, p: Param, g: number[]): void {
  const t = b.fromHost(p.grad.dtype, p.grad.shape, g);
  b.copy(t, p.grad);
  b.free(t);
}

const vals = (b: Backend, t: { size: number } & Parameters<Backend["toF64"]>[0]) => Array.from(b.toF64(t));

function near(actual: number[], expected: number[], rel = 2e-6, what = "") {
  assert.equal(actual.length, expected.length, what);
  for (let i = 0; i < actual.length; i++) {
    const tol = rel * Math.max(1, Math.abs(expected[i]));
    assert.ok(Math.abs(actual[i] - expected[i]) <= tol, `${what}[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

const constLr = (lr: number) => new AnnealingLR({ maxLr: lr, decaySteps: 1, decayStyle: "constant" });

/** AdamW as apex FusedAdam (adam_w_mode, bias correction), in f64: the hand formula. */
function adamRef(p: number[], g: number[], m: number[], v: number[], lr: number, wd: number, step: number) {
  const b1 = 0.9, b2 = 0.999, eps = 1e-8;
  for (let i = 0; i < p.length; i++) {
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    const mh = m[i] / (1 - b1 ** step), vh = v[i] / (1 - b2 ** step);
    p[i] -= lr * (mh / (Math.sqrt(vh) + eps) + wd * p[i]);
  }
}

Deno.test("adam: two steps vs hand-computed AdamW, decay and no-decay groups", async () => {
  const b = backend();
  const w = mkParam(b, "w", "f32", [1, -2, 0.5]);
  const bias = mkParam(b, "bias", "f32", [0.25, -1], { noWeightDecay: true });
  const opt = new MegatronOptimizer(b, [w, bias], constLr(0.1), { clipGrad: 0 });
  // Step 1 by hand: m = 0.1 g, v = 0.001 g^2, m_hat = g, v_hat = g^2, so the update is
  // g/(|g| + 1e-8) + wd * p: w = [1 - 0.1*(1 + 0.01), -2 - 0.1*(-1 - 0.02), 0.5 - 0.1*(1 + 0.005)].
  setGrad(b, w, [0.5, -2, 4]);
  setGrad(b, bias, [1, 3]);
  const r1 = await opt.step(8);
  assert.deepEqual(r1, {
    skipped: false,
    gradNorm: null,
    numZerosInGrad: null,
    lossScale: 1,
    lr: 0.1,
    nextLr: 0.1,
  });
  near(vals(b, w.value), [0.899, -1.898, 0.3995], 1e-6, "w step 1");
  near(vals(b, bias.value), [0.15, -1.1], 1e-6, "bias step 1");
  // Step 2 against the f64 formula.
  const pw = [1, -2, 0.5], mw = [0, 0, 0], vw = [0, 0, 0];
  const pb = [0.25, -1], mb = [0, 0], vb = [0, 0];
  adamRef(pw, [0.5, -2, 4], mw, vw, 0.1, 0.01, 1);
  adamRef(pb, [1, 3], mb, vb, 0.1, 0, 1);
  setGrad(b, w, [-1, 0.5, 2]);
  setGrad(b, bias, [0.1, -3]);
  await opt.step(8);
  adamRef(pw, [-1, 0.5, 2], mw, vw, 0.1, 0.01, 2);
  adamRef(pb, [0.1, -3], mb, vb, 0.1, 0, 2);
  near(vals(b, w.value), pw, 2e-6, "w step 2");
  near(vals(b, bias.value), pb, 2e-6, "bias step 2");
  const { state, tensors } = opt.exportState();
  assert.deepEqual(state.groups.map((g) => [g.weightDecay, g.step, g.params]), [[0.01, 2, ["w"]], [0, 2, [
    "bias",
  ]]]);
  near(vals(b, tensors.find((t) => t.name === "optimizer.state.w.exp_avg")!.tensor), mw, 2e-6, "m");
  near(vals(b, tensors.find((t) => t.name === "optimizer.state.w.exp_avg_sq")!.tensor), vw, 2e-6, "v");
  assert.equal(opt.stepCount, 2);
  assert.equal(opt.scheduler.numSteps, 16);
});

Deno.test("sgd: momentum 0.9 with coupled weight decay, by hand", async () => {
  const b = backend();
  const w = mkParam(b, "w", "f32", [1, -2]);
  const bias = mkParam(b, "bias", "f32", [1, -2], { noWeightDecay: true });
  const opt = new MegatronOptimizer(b, [w, bias], constLr(0.1), {
    optimizer: "sgd",
    weightDecay: 0.1,
    clipGrad: 0,
  });
  for (const p of [w, bias]) setGrad(b, p, [0.5, 1]);
  await opt.step(4);
  // bias: buf = g = [0.5, 1]; p = [0.95, -2.1]. w: buf = g + 0.1 p = [0.6, 0.8]; p = [0.94, -2.08].
  near(vals(b, bias.value), [0.95, -2.1], 1e-6, "bias 1");
  near(vals(b, w.value), [0.94, -2.08], 1e-6, "w 1");
  for (const p of [w, bias]) setGrad(b, p, [1, -1]);
  await opt.step(4);
  // bias: buf = 0.9 [0.5, 1] + [1, -1] = [1.45, -0.1]; p = [0.805, -2.09].
  near(vals(b, bias.value), [0.805, -2.09], 1e-6, "bias 2");
  // w: g' = [1 + 0.094, -1 - 0.208]; buf = 0.9 [0.6, 0.8] + g' = [1.634, -0.488]; p = [0.7766, -2.0312].
  near(vals(b, w.value), [0.7766, -2.0312], 1e-6, "w 2");
  assert.deepEqual(opt.exportState().tensors.map((t) => t.name), [
    "optimizer.state.w.momentum_buffer",
    "optimizer.state.bias.momentum_buffer",
  ]);
});

Deno.test("params norm and zero-grad count: counted once like the grad norm, reduced over the group", async () => {
  const b = backend();
  const rep = mkParam(b, "rep", "bf16", [3, 4, 0]);
  const shared = mkParam(b, "shared", "f32", [100, 0], { shared: true });
  const tp = mkParam(b, "tp", "f32", [-12, 0], { tp: true });
  const all = [rep, shared, tp];
  setGrad(b, rep, [0, -0, 1e-30]);
  setGrad(b, shared, [0, 0]);
  setGrad(b, tp, [5, 0]);
  // TP rank 0 counts rep and tp; rank 1 only tp; the shared copy never.
  assert.equal(await globalParamNorm(b, all, { tpRank: 0 }), 13);
  assert.equal(await globalParamNorm(b, all, { tpRank: 1 }), 12);
  assert.equal(await countGradZeros(b, all, { tpRank: 0 }), 3); // 1e-30 is not zero
  assert.equal(await countGradZeros(b, all, { tpRank: 1 }), 1);
  const seen: number[] = [];
  const reducer = {
    allReduceSum: (x: number) => (seen.push(x), Promise.resolve(x + 7)),
    allReduceMax: (x: number) => Promise.resolve(x),
  };
  assert.equal(await globalParamNorm(b, all, { tpRank: 1, reducer }), Math.sqrt(144 + 7));
  assert.equal(await countGradZeros(b, all, { tpRank: 1, reducer }), 8);
  assert.deepEqual(seen, [144, 1]);
  // The optimizer counts after clipping and reports the norm of the updated values.
  const opt = new MegatronOptimizer(b, all, constLr(0), { clipGrad: 1, logNumZerosInGrad: true });
  const r = await opt.step(1);
  assert.equal(r.numZerosInGrad, 3);
  assert.equal(r.gradNorm, 5);
  assert.equal(await opt.paramsNorm(), 13); // lr 0: values unchanged
  opt.free();
});

Deno.test("clip: excluded params, coefficient applied to all grads, reducer, inf norm", async () => {
  const b = backend();
  const rep = mkParam(b, "rep", "f32", [0, 0]);
  const shared = mkParam(b, "shared", "f32", [0], { shared: true });
  const tp = mkParam(b, "tp", "f32", [0], { tp: true });
  const all = [rep, shared, tp];
  const reset = () => {
    setGrad(b, rep, [3, 4]);
    setGrad(b, shared, [100]);
    setGrad(b, tp, [-12]);
  };
  reset();
  assert.deepEqual(all.map((p) => countsForGradNorm(p, 0)), [true, false, true]);
  assert.deepEqual(all.map((p) => countsForGradNorm(p, 1)), [false, false, true]);
  assert.equal(await globalGradNorm(b, all, { tpRank: 0 }), 13);
  assert.equal(await globalGradNorm(b, all, { tpRank: 1 }), 12);
  assert.equal(await globalGradNorm(b, all, { normType: "inf" }), 12);
  // The reducer sums squared norms across the model-parallel group (another rank holds 25 + 25).
  const seen: number[] = [];
  const reducer = {
    allReduceSum: (x: number) => (seen.push(x), Promise.resolve(x + 50)),
    allReduceMax: (x: number) => Promise.resolve(Math.max(x, 20)),
  };
  assert.equal(await globalGradNorm(b, all, { tpRank: 1, reducer }), Math.sqrt(144 + 50));
  assert.deepEqual(seen, [144]);
  assert.equal(await globalGradNorm(b, all, { normType: "inf", reducer }), 20);
  // Large max norm: nothing changes.
  assert.equal(await clipGradNorm(b, all, { maxNorm: 14 }), 13);
  near(vals(b, rep.grad), [3, 4]);
  // max norm 1: every grad (shared one included) is scaled by 1/(13 + 1e-6).
  assert.equal(await clipGradNorm(b, all, { maxNorm: 1 }), 13);
  const c = 1 / (13 + 1e-6);
  near(all.flatMap((p) => vals(b, p.grad)), [3 * c, 4 * c, 100 * c, -12 * c], 1e-6, "clipped");
  assert.ok(Math.abs(await globalGradNorm(b, all) - 1) < 1e-6);
  await assert.rejects(clipGradNorm(b, all, { maxNorm: 0 }), /--clip-grad must be > 0/);
});

Deno.test("optimizer: step returns the pre-clip norm and clips before Adam", async () => {
  const b = backend();
  const w = mkParam(b, "w", "f32", [1, 1]);
  const opt = new MegatronOptimizer(b, [w], constLr(0.5), { clipGrad: 1, weightDecay: 0 });
  setGrad(b, w, [30, 40]);
  const r = await opt.step(1);
  assert.equal(r.gradNorm, 50);
  near(vals(b, w.grad), [0.6, 0.8], 1e-6, "clipped grad");
  // First Adam step moves each element by lr * g/|g|.
  near(vals(b, w.value), [0.5, 0.5], 1e-6, "w");
});

Deno.test("fp16: overflow skips the step and leaves params, moments, steps and lr unchanged", async () => {
  const b = backend();
  const w = mkParam(b, "w", "f16", [1, -1]);
  const lr = new AnnealingLR({ maxLr: 0.1, warmupSteps: 4, decaySteps: 100 });
  const scaler = new DynamicGradScaler({ initialScale: 1024 });
  const opt = new MegatronOptimizer(b, [w], lr, { scaler, clipGrad: 0 });
  assert.ok(w.main !== null && w.main.dtype === "f32");
  // A clean step first, so m and v are non-zero (warmup: this step applies lr 0 and advances to 4).
  setGrad(b, w, [512, -1024]);
  const r0 = await opt.step(4);
  assert.deepEqual([r0.skipped, r0.lr, r0.nextLr, r0.lossScale], [false, 0, 0.1, 1024]);
  near(vals(b, w.grad), [0.5, -1], 0, "unscaled grad");
  const snap =
    () => [vals(b, w.value), vals(b, w.main!), ...opt.exportState().tensors.map((t) => vals(b, t.tensor))];
  const before = snap();
  const stepsBefore = JSON.stringify(opt.exportState().state.groups);
  setGrad(b, w, [Infinity, 1]);
  const r1 = await opt.step(4);
  assert.deepEqual(r1, {
    skipped: true,
    gradNorm: null,
    numZerosInGrad: null,
    lossScale: 1024,
    lr: 0.1,
    nextLr: 0.1,
  });
  assert.deepEqual(snap(), before);
  assert.equal(JSON.stringify(opt.exportState().state.groups), stepsBefore);
  assert.equal(lr.numSteps, 4);
  setGrad(b, w, [NaN, 1]);
  const r2 = await opt.step(4);
  assert.equal(r2.skipped, true);
  assert.equal(r2.lossScale, 512);
  assert.deepEqual(snap(), before);
  assert.deepEqual(scaler.exportState(), { scale: 512, growthTracker: 0, hysteresisTracker: 0 });
});

Deno.test("fp16: another model-parallel rank's overflow also skips", async () => {
  const b = backend();
  const w = mkParam(b, "w", "f16", [1]);
  const calls: number[] = [];
  const reducer = {
    allReduceSum: (x: number) => Promise.resolve(x),
    allReduceMax: (x: number) => (calls.push(x), Promise.resolve(1)),
  };
  const opt = new MegatronOptimizer(b, [w], constLr(0.1), { scaler: new DynamicGradScaler(), reducer });
  setGrad(b, w, [1]);
  const r = await opt.step(1);
  assert.equal(r.skipped, true);
  assert.deepEqual(calls, [0]);
  assert.deepEqual(vals(b, w.value), [1]);
});

Deno.test("half params: main updated in f32, value is its rounded copy (f16 and bf16)", async () => {
  for (const dtype of ["f16", "bf16"] as const) {
    const b = backend();
    const w = mkParam(b, "w", dtype, [1, -3]);
    const opt = new MegatronOptimizer(b, [w], constLr(1e-3), {
      scaler: new ConstantGradScaler(8),
      clipGrad: 0,
    });
    setGrad(b, w, [8 * 0.5, 8 * 2]);
    const r = await opt.step(1);
    assert.equal(r.skipped, false);
    assert.equal(r.lossScale, 8);
    near(vals(b, w.grad), [0.5, 2], 0, `${dtype} unscaled`);
    const main = vals(b, w.main!);
    near(main, [1 - 1e-3 * 1.01, -3 - 1e-3 * (1 - 0.03)], 1e-6, `${dtype} main`);
    const round = dtype === "f16" ? (x: number) => Math.f16round(x) : (x: number) => {
      const t = b.fromHost("bf16", [1], [x]);
      return b.toF64(t)[0];
    };
    assert.deepEqual(vals(b, w.value), main.map(round), `${dtype} value`);
    assert.notDeepEqual(vals(b, w.value), main);
  }
});

Deno.test("fp32 without scaler: never checks, always steps (even with inf grads)", async () => {
  const b = backend();
  const w = mkParam(b, "w", "f32", [1]);
  const opt = new MegatronOptimizer(b, [w], constLr(0.1), { clipGrad: 0 });
  setGrad(b, w, [Infinity]);
  const r = await opt.step(2);
  assert.equal(r.skipped, false);
  assert.equal(opt.stepCount, 1);
  opt.zeroGrads();
  assert.deepEqual(vals(b, w.grad), [0]);
});

Deno.test("state export/import: resumed optimizer continues identically", async () => {
  const b = backend();
  const make = () => {
    const w = mkParam(b, "w", "f16", [0.5, -0.25, 2]);
    const bias = mkParam(b, "bias", "f32", [0.1], { noWeightDecay: true });
    const lr = new AnnealingLR({ maxLr: 0.01, warmupSteps: 2, decaySteps: 20, decayStyle: "cosine" });
    const opt = new MegatronOptimizer(b, [w, bias], lr, {
      scaler: new DynamicGradScaler({ initialScale: 4 }),
    });
    return { w, bias, opt };
  };
  const grads = [[[1, 2, -3], [0.5]], [[-1, 0.5, 2], [2]], [[3, -1, 1], [-1]]];
  const a = make();
  for (const [gw, gb] of grads.slice(0, 2)) {
    setGrad(b, a.w, gw.map((x) => x * a.opt.lossScale));
    setGrad(b, a.bias, gb.map((x) => x * a.opt.lossScale));
    await a.opt.step(2);
  }
  const { state, tensors } = a.opt.exportState();
  assert.deepEqual(tensors.map((t) => t.name), [
    "optimizer.state.w.exp_avg",
    "optimizer.state.w.exp_avg_sq",
    "fp32_from_fp16_params.w",
    "optimizer.state.bias.exp_avg",
    "optimizer.state.bias.exp_avg_sq",
  ]);
  const json = JSON.parse(JSON.stringify(state));
  const r = make();
  // The model checkpoint restores the values (f32 params have no main copy in the optimizer's tensors).
  b.copy(a.w.value, r.w.value);
  b.copy(a.bias.value, r.bias.value);
  r.opt.importState(json, tensors);
  assert.equal(r.opt.stepCount, 2);
  assert.equal(r.opt.lr, a.opt.lr);
  assert.deepEqual(vals(b, r.w.value), vals(b, a.w.value));
  const [gw, gb] = grads[2];
  for (const o of [a, r]) {
    setGrad(b, o.w, gw.map((x) => x * 4));
    setGrad(b, o.bias, gb.map((x) => x * 4));
    await o.opt.step(2);
  }
  assert.deepEqual(vals(b, r.w.main!), vals(b, a.w.main!));
  assert.deepEqual(vals(b, r.bias.value), vals(b, a.bias.value));
  // A checkpoint for other params is rejected with a clear message, before anything is written.
  const other = make();
  assert.throws(() => other.opt.importState(json, tensors.slice(1)), /lack optimizer.state.w.exp_avg$/);
  const bad = structuredClone(json);
  bad.groups[0].params = ["x"];
  assert.throws(() => other.opt.importState(bad, tensors), /checkpoint param group 0 holds \[x\]/);
  assert.equal(other.opt.stepCount, 0);
  a.opt.free();
  assert.equal(a.w.main, null);
});

Deno.test("optimizer: bad construction input gives one clear error", () => {
  const b = backend();
  const p = mkParam(b, "p", "f32", [1]);
  assert.throws(() => new MegatronOptimizer(b, [p, p], constLr(1)), /parameter name p appears twice/);
  const q = { ...mkParam(b, "q", "f32", [1, 2]), grad: b.zeros("f32", [3]) };
  assert.throws(
    () => new MegatronOptimizer(b, [q], constLr(1)),
    /q: grad shape \[3\] differs from value shape \[2\]/,
  );
  assert.throws(
    () => new MegatronOptimizer(b, [], constLr(1), { adamBeta2: 1 }),
    /--adam-beta2 must be in \[0, 1\)/,
  );
});

Deno.test("createMegatronOptimizer: Megatron's choices from flag values", async () => {
  const b = backend();
  const w = mkParam(b, "w", "f16", [1]);
  const base = { lr: 0.01, globalBatchSize: 4, trainIters: 10, lrWarmupIters: 1 };
  const fp16 = createMegatronOptimizer(b, [w], { ...base, fp16: true, initialLossScale: 2 ** 16 });
  assert.equal(fp16.scaler?.kind, "dynamic");
  assert.equal(fp16.lossScale, 2 ** 16);
  assert.deepEqual([fp16.scheduler.warmupSteps, fp16.scheduler.decaySteps, fp16.lr], [4, 40, 0]);
  const v = mkParam(b, "v", "bf16", [1]);
  const bf16 = createMegatronOptimizer(b, [v], { ...base, bf16: true, optimizer: "sgd", clipGrad: 0 });
  assert.equal(bf16.scaler, null);
  assert.equal(bf16.kind, "sgd");
  setGrad(b, v, [Infinity]);
  assert.equal((await bf16.step(4)).skipped, false);
});

Deno.test("optimizer: a bad param is rejected before any main copy is allocated", () => {
  const b = backend();
  const ok = mkParam(b, "ok", "f16", [1]);
  const bad = { ...mkParam(b, "bad", "f16", [1]), grad: b.zeros("bf16", [1]) };
  assert.throws(() => new MegatronOptimizer(b, [ok, bad], constLr(1)), /bad: grad is bf16, expected f32/);
  assert.equal(ok.main, null);
  const i = mkParam(b, "i", "i32", [1]);
  assert.throws(() => new MegatronOptimizer(b, [i], constLr(1)), /i: cannot optimize a i32 parameter/);
});
