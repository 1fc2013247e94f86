// A small GPT must memorise one fixed batch on the CPU backend: the masked LM loss falls below 5% of
// its first value within a bounded number of optimizer steps, in f32, in fp16 with Megatron's dynamic
// loss scaler (initial scale 2^32, so the first steps overflow and are skipped) and in bf16 (no scaler).
// Model, optimizer, scaler and LR schedule are the library's own, wired as the training loop wires them.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { type GPTConfig, GPTModel, isLossOutput, type ParamsDType } from "../src/models/mod.ts";
import {
  createGradScaler,
  createLrScheduler,
  DynamicGradScaler,
  MegatronOptimizer,
} from "../src/optimizer/mod.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";

const backend = createCpuBackend({ log: () => {} });

const VOCAB = 64, HIDDEN = 32, HEADS = 4, SEQ = 16, BATCH = 2, LAYERS = 2;
/** Optimizer steps allowed (skipped fp16 steps included) before the test fails. */
const MAX_STEPS = 150;
const TARGET_RATIO = 0.05;

function config(paramsDtype: ParamsDType): GPTConfig {
  return {
    numLayers: LAYERS,
    hiddenSize: HIDDEN,
    numAttentionHeads: HEADS,
    seqLength: SEQ,
    maxPositionEmbeddings: SEQ,
    vocabSize: VOCAB,
    // No dropout: the batch is fixed, so the loss curve should be deterministic and monotone-ish.
    hiddenDropout: 0,
    attentionDropout: 0,
    initMethodStd: 0.02,
    paramsDtype,
    activationsCheckpointMethod: null,
    seed: 1234,
  };
}

/** A fixed batch of pseudo-random tokens; labels are the next token, last position masked out. */
function fixedBatch() {
  const n = BATCH * (SEQ + 1);
  const stream = new Int32Array(n);
  let x = 2463534242;
  for (let i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >>> 17, x ^= x << 5;
    stream[i] = (x >>> 0) % VOCAB;
  }
  const tok = new Int32Array(BATCH * SEQ), lab = new Int32Array(BATCH * SEQ);
  const mask = new Float32Array(BATCH * SEQ).fill(1);
  for (let b = 0; b < BATCH; b++) {
    for (let s = 0; s < SEQ; s++) {
      tok[b * SEQ + s] = stream[b * (SEQ + 1) + s];
      lab[b * SEQ + s] = stream[b * (SEQ + 1) + s + 1];
    }
  }
  mask[BATCH * SEQ - 1] = 0; // exercise the loss mask as well
  return {
    tokens: backend.fromHost("i32", [BATCH, SEQ], tok),
    labels: backend.fromHost("i32", [BATCH, SEQ], lab),
    lossMask: backend.fromHost("f32", [BATCH, SEQ], mask),
  };
}

interface Run {
  losses: number[];
  /** 0-based indices of the skipped (overflow) steps. */
  skipped: number[];
  initialScale: number;
  finalScale: number;
  steps: number;
}

async function overfit(
  dtype: ParamsDType,
  flags: { fp16?: boolean; bf16?: boolean; lossScale?: number },
): Promise<Run> {
  const ps = makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0);
  const model = new GPTModel(config(dtype), backend, ps, new SingleRankCommunicator());
  const scheduler = createLrScheduler({
    lr: 5e-3,
    lrDecayStyle: "constant",
    globalBatchSize: BATCH,
    trainIters: MAX_STEPS,
  });
  const scaler = createGradScaler({ ...flags });
  const opt = new MegatronOptimizer(backend, model.params(), scheduler, { scaler, weightDecay: 0.01 });
  const batch = fixedBatch();
  const run: Run = { losses: [], skipped: [], initialScale: opt.lossScale, finalScale: 0, steps: 0 };
  try {
    for (let it = 0; it < MAX_STEPS; it++) {
      opt.zeroGrads();
      const ctx = model.newContext({ iteration: it, firstGlobalSample: 0 });
      const out = await model.forward(batch, ctx);
      assert.ok(isLossOutput(out), "a single-stage model returns its loss");
      assert.ok(Number.isFinite(out.loss), `${dtype}: step ${it} loss is ${out.loss}`);
      await model.backward(ctx, opt.lossScale);
      const res = await opt.step(BATCH);
      run.losses.push(out.loss);
      run.steps = it + 1;
      if (res.skipped) run.skipped.push(it);
      if (out.loss < TARGET_RATIO * run.losses[0]) break;
    }
    run.finalScale = opt.lossScale;
    // Skipped steps must not advance the optimizer step count.
    assert.equal(opt.stepCount, run.steps - run.skipped.length);
  } finally {
    opt.free();
    for (const p of model.params()) {
      backend.free(p.value);
      backend.free(p.grad);
    }
    backend.free(batch.tokens);
    backend.free(batch.labels);
    backend.free(batch.lossMask);
  }
  return run;
}

function report(name: string, r: Run): void {
  const first = r.losses[0], last = r.losses[r.losses.length - 1];
  console.log(
    `${name}: loss ${first.toFixed(4)} -> ${last.toFixed(4)} (${(last / first).toFixed(4)} of start) ` +
      `in ${r.steps} steps; skipped ${r.skipped.length} [${r.skipped.join(",")}]; ` +
      `loss scale ${r.initialScale} -> ${r.finalScale}`,
  );
}

function assertOverfit(name: string, r: Run): void {
  const first = r.losses[0], last = r.losses[r.losses.length - 1];
  // A fresh model with std 0.02 predicts nearly uniformly: the first loss is close to ln(vocab).
  assert.ok(Math.abs(first - Math.log(VOCAB)) < 0.1, `${name}: first loss ${first}, expected ~ln(${VOCAB})`);
  assert.ok(
    last < TARGET_RATIO * first,
    `${name}: loss ${last} after ${r.steps} steps is not below ${TARGET_RATIO} x start ${first}`,
  );
}

Deno.test("overfit one batch: f32 params, no loss scaling", async () => {
  const r = await overfit("f32", {});
  report("f32", r);
  assertOverfit("f32", r);
  assert.deepEqual(r.skipped, [], "f32 never skips a step");
  assert.equal(r.initialScale, 1);
  assert.equal(r.finalScale, 1);
});

Deno.test("overfit one batch: fp16 params with the dynamic loss scaler", async () => {
  const r = await overfit("f16", { fp16: true });
  report("fp16", r);
  assertOverfit("fp16", r);
  assert.equal(r.initialScale, 2 ** 32, "Megatron's initial loss scale");
  // At 2^32 the f16 activation grads overflow, so the run starts with skipped steps.
  assert.ok(r.skipped.length > 0, "fp16 at scale 2^32 must skip its first steps");
  assert.equal(r.skipped[0], 0, "the very first step overflows");
  // Once the scale has come down far enough, no later step overflows: the skips are exactly the
  // leading steps 0..k-1, and at least two of them (hysteresis 2 absorbs the first overflow).
  const leading = r.skipped.length;
  assert.deepEqual(r.skipped, Array.from({ length: leading }, (_, i) => i));
  assert.ok(leading >= 2, `only ${leading} step(s) were skipped; hysteresis 2 needs >= 2 to halve once`);
  // Window 1000 > steps taken, so the scale never grows: hysteresis 2 absorbs the first overflow and
  // every later overflow halves it (Megatron's no-refill quirk): scale = 2^32 / 2^(skipped - 1).
  assert.equal(r.finalScale, 2 ** (33 - r.skipped.length));
  assert.ok(r.finalScale < 2 ** 32 && r.finalScale >= 1);
  // Skipped steps report the loss of unchanged params: the same value as step 0.
  for (let i = 1; i < leading; i++) assert.equal(r.losses[i], r.losses[0]);
});

Deno.test("overfit one batch: fp16 params with a constant loss scale (--loss-scale 4096)", async () => {
  const r = await overfit("f16", { fp16: true, lossScale: 4096 });
  report("fp16 constant", r);
  assertOverfit("fp16 constant", r);
  // 4096 is far below the scale the dynamic run settles at, so nothing overflows.
  assert.deepEqual(r.skipped, []);
  assert.equal(r.initialScale, 4096);
  assert.equal(r.finalScale, 4096);
});

Deno.test("overfit one batch: bf16 params, no loss scaling", async () => {
  assert.equal(createGradScaler({ bf16: true }), null, "bf16 without --loss-scale has no scaler");
  const r = await overfit("bf16", { bf16: true });
  report("bf16", r);
  assertOverfit("bf16", r);
  assert.deepEqual(r.skipped, []);
  assert.equal(r.finalScale, 1);
});

Deno.test("dynamic scaler from createGradScaler uses Megatron's defaults", () => {
  const s = createGradScaler({ fp16: true });
  assert.ok(s instanceof DynamicGradScaler);
  assert.equal(s.scale, 2 ** 32);
  assert.equal(s.hysteresis, 2);
  assert.equal(s.growthInterval, 1000);
  assert.equal(s.minScale, 1);
});
