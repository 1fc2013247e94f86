// AnnealingLR closed forms (sample-based steps), warmup from 0, min-lr, constant, and the
// checkpoint override / use-checkpoint rules.

import assert from "node:assert/strict";
import { AnnealingLR, createLrScheduler, lrScheduleSteps } from "../src/optimizer/lr_schedule.ts";

const close = (a: number, b: number, tol = 1e-15) =>
  assert.ok(Math.abs(a - b) <= tol * Math.max(1, Math.abs(b)), `${a} != ${b}`);

function sched(decayStyle: "linear" | "cosine" | "constant") {
  return new AnnealingLR({ maxLr: 0.1, minLr: 0.001, warmupSteps: 100, decaySteps: 1000, decayStyle });
}

Deno.test("lr: warmup starts at exactly 0 and is linear up to max at warmup_steps", () => {
  for (const style of ["linear", "cosine", "constant"] as const) {
    const s = sched(style);
    assert.equal(s.lr, 0);
    assert.equal(s.numSteps, 0);
    close(s.lrAt(50), 0.05);
    close(s.lrAt(1), 0.001);
    close(s.lrAt(100), 0.1);
  }
});

Deno.test("lr: linear and cosine closed forms, min-lr and beyond decay", () => {
  const lin = sched("linear");
  close(lin.lrAt(550), 0.001 + 0.5 * 0.099);
  close(lin.lrAt(325), 0.001 + 0.75 * 0.099);
  close(lin.lrAt(1000), 0.001);
  assert.equal(lin.lrAt(1001), 0.001);
  assert.equal(lin.lrAt(1e9), 0.001);
  const cos = sched("cosine");
  close(cos.lrAt(550), 0.0505);
  close(cos.lrAt(325), 0.001 + 0.5 * (Math.SQRT1_2 + 1) * 0.099);
  close(cos.lrAt(775), 0.001 + 0.5 * (1 - Math.SQRT1_2) * 0.099);
  close(cos.lrAt(1000), 0.001);
  assert.equal(cos.lrAt(5000), 0.001);
  const con = sched("constant");
  assert.equal(con.lrAt(101), 0.1);
  assert.equal(con.lrAt(5000), 0.1);
  // No warmup: step 0 is already max lr.
  const nw = new AnnealingLR({ maxLr: 2, decaySteps: 10, decayStyle: "linear" });
  assert.equal(nw.lr, 2);
  close(nw.lrAt(4), 1.2);
});

Deno.test("lr: step() advances by samples and sets lr", () => {
  const s = sched("linear");
  assert.equal(s.step(32), s.lrAt(32));
  s.step(32);
  assert.equal(s.numSteps, 64);
  close(s.lr, 0.064);
  s.step(0);
  assert.equal(s.numSteps, 64);
  assert.throws(() => s.step(-1), /step increment must be a finite number >= 0/);
});

Deno.test("lr: Megatron's warmup/decay sizing in iteration and sample mode", () => {
  assert.deepEqual(lrScheduleSteps({ lr: 1, globalBatchSize: 8, trainIters: 100 }), {
    warmupSteps: 0,
    decaySteps: 800,
  });
  assert.deepEqual(
    lrScheduleSteps({ lr: 1, globalBatchSize: 8, trainIters: 100, lrDecayIters: 50, lrWarmupIters: 5 }),
    {
      warmupSteps: 40,
      decaySteps: 400,
    },
  );
  assert.deepEqual(lrScheduleSteps({ lr: 1, globalBatchSize: 8, trainIters: 100, lrWarmupFraction: 0.01 }), {
    warmupSteps: 8,
    decaySteps: 800,
  });
  assert.deepEqual(lrScheduleSteps({ lr: 1, globalBatchSize: 8, trainSamples: 1000, lrWarmupSamples: 10 }), {
    warmupSteps: 10,
    decaySteps: 1000,
  });
  assert.deepEqual(
    lrScheduleSteps({
      lr: 1,
      globalBatchSize: 8,
      trainSamples: 1000,
      lrDecaySamples: 500,
      lrWarmupFraction: 0.1,
    }),
    { warmupSteps: 50, decaySteps: 500 },
  );
  assert.throws(() => lrScheduleSteps({ lr: 1, globalBatchSize: 8 }), /--train-iters or --train-samples/);
  const s = createLrScheduler({
    lr: 6e-4,
    minLr: 6e-5,
    lrDecayStyle: "cosine",
    globalBatchSize: 8,
    trainIters: 10,
    lrWarmupIters: 2,
  });
  assert.equal(s.warmupSteps, 16);
  assert.equal(s.decaySteps, 80);
  close(s.lrAt(8), 3e-4);
});

Deno.test("lr: invalid settings give one clear error", () => {
  assert.throws(
    () => new AnnealingLR({ maxLr: 1, decaySteps: 10, warmupSteps: 10 }),
    /warmup steps \(10\) must be < decay steps \(10\)/,
  );
  assert.throws(
    () => new AnnealingLR({ maxLr: 1, minLr: 2, decaySteps: 10 }),
    /--lr \(1\) must be >= --min-lr \(2\)/,
  );
  assert.throws(() => new AnnealingLR({ maxLr: 1, decaySteps: 0 }), /decay steps .* must be > 0/);
  assert.throws(
    () =>
      new AnnealingLR({ maxLr: 1, decaySteps: 5, overrideLrScheduler: true, useCheckpointLrScheduler: true }),
    /both set/,
  );
});

Deno.test("lr: checkpoint state, override and use-checkpoint arbitration", () => {
  const a = sched("cosine");
  a.step(300);
  const st = JSON.parse(JSON.stringify(a.exportState()));
  assert.deepEqual(st, {
    maxLr: 0.1,
    minLr: 0.001,
    warmupSteps: 100,
    decaySteps: 1000,
    decayStyle: "cosine",
    numSteps: 300,
  });
  // Same flags: restored, lr recomputed.
  const b = sched("cosine");
  b.importState(st);
  assert.equal(b.numSteps, 300);
  assert.equal(b.lr, a.lr);
  // Different flags, neither option: error naming the conflict.
  const c = new AnnealingLR({
    maxLr: 0.2,
    minLr: 0.001,
    warmupSteps: 100,
    decaySteps: 1000,
    decayStyle: "cosine",
  });
  assert.throws(() => c.importState(st), /learning rate \(--lr\): flags give 0.2 but the checkpoint has 0.1/);
  // Override: keep the flags, but num_steps still comes from the checkpoint.
  const d = new AnnealingLR({
    maxLr: 0.2,
    minLr: 0,
    warmupSteps: 0,
    decaySteps: 600,
    decayStyle: "linear",
    overrideLrScheduler: true,
  });
  d.importState(st);
  assert.equal(d.numSteps, 300);
  assert.equal(d.maxLr, 0.2);
  close(d.lr, 0.1);
  // Use-checkpoint: take the checkpoint's values.
  const e = new AnnealingLR({ maxLr: 0.2, decaySteps: 600, useCheckpointLrScheduler: true });
  e.importState(st);
  assert.deepEqual(e.exportState(), st);
  // Megatron's snake_case and legacy key names.
  const f = sched("linear");
  f.importState({
    start_lr: 0.1,
    min_lr: 0.001,
    warmup_iter: 100,
    end_iter: 1000,
    decay_style: "linear",
    num_iters: 550,
  });
  close(f.lr, 0.0505);
});

Deno.test("lr: an invalid checkpoint schedule is rejected and leaves the scheduler unchanged", () => {
  const s = new AnnealingLR({ maxLr: 0.1, warmupSteps: 10, decaySteps: 100, useCheckpointLrScheduler: true });
  const before = s.exportState();
  assert.throws(
    () => s.importState({ ...before, warmupSteps: 200, numSteps: 5 }),
    /warmup steps \(200\) must be < decay steps \(100\)/,
  );
  assert.deepEqual(s.exportState(), before);
  assert.throws(() => s.importState({ ...before, decayStyle: "exponential" }), /decay style must be one of/);
});
