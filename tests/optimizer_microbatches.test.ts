// Micro-batch calculators: constant, the README's `16 16 5859375` ramp to 1536 at chosen consumed-
// sample counts, divisibility errors, and Megatron's train-iters simulation for sample-based runs.

import assert from "node:assert/strict";
import {
  buildNumMicroBatchesCalculator,
  computeTrainIters,
  ConstantNumMicroBatches,
  RampupBatchsizeNumMicroBatches,
} from "../src/optimizer/microbatches.ts";

Deno.test("microbatches: constant = global / (micro * dp), with Megatron's divisibility error", () => {
  const c = new ConstantNumMicroBatches(512, 4, 8);
  assert.equal(c.numMicroBatches, 16);
  assert.equal(c.currentGlobalBatchSize, 512);
  c.update(1e6);
  assert.equal(c.numMicroBatches, 16);
  assert.throws(
    () => new ConstantNumMicroBatches(10, 4, 1),
    /global batch size \(10\) is not divisible by micro batch size \(4\) times data parallel size \(1\)/,
  );
});

Deno.test("microbatches: 16 16 5859375 ramp-up to 1536 (micro 2, dp 8)", () => {
  const r = new RampupBatchsizeNumMicroBatches(16, 16, 5859375, 1536, 2, 8);
  assert.equal(r.rampupSamplesPerIncrement, 5859375 / 95);
  const cases: [number, number][] = [
    [0, 16],
    [61677, 16],
    [61678, 32],
    [123355, 32],
    [123356, 48],
    [1000000, 272],
    [5797697, 1504],
    [5797698, 1520],
    [5859375, 1536],
    [5859376, 1536],
    [1e9, 1536],
  ];
  for (const [consumed, batch] of cases) {
    r.update(consumed);
    assert.equal(r.currentGlobalBatchSize, batch, `consumed ${consumed}`);
    assert.equal(r.numMicroBatches, batch / 16, `consumed ${consumed}`);
  }
});

Deno.test("microbatches: ramp-up divisibility errors", () => {
  assert.throws(
    () => new RampupBatchsizeNumMicroBatches(16, 20, 1000, 64, 1, 1),
    /global batch size interval \(48\) to be divisible by global batch size increment \(20\)/,
  );
  assert.throws(() => new RampupBatchsizeNumMicroBatches(128, 16, 1000, 64, 1, 1), /start \(128\) exceeds/);
  assert.throws(() => new RampupBatchsizeNumMicroBatches(64, 16, 1000, 64, 1, 1), /nothing to ramp/);
  // Start 4 with micro*dp 8: the construction does not check, the training-time update does.
  const r = new RampupBatchsizeNumMicroBatches(4, 4, 100, 16, 4, 2);
  assert.equal(r.currentGlobalBatchSize, 4);
  assert.throws(
    () => r.update(0),
    /current global batch size \(4\) is not divisible by micro-batch-size \(4\) times data parallel size \(2\)/,
  );
  r.update(40, false);
  assert.equal(r.currentGlobalBatchSize, 8);
  assert.equal(r.numMicroBatches, 1);
  assert.throws(
    () =>
      buildNumMicroBatchesCalculator({
        globalBatchSize: 16,
        microBatchSize: 1,
        dataParallelSize: 1,
        rampupBatchSize: [4, 4],
      }),
    /expected <start batch size> <batch size increment> <ramp-up samples>, found 2 values/,
  );
});

Deno.test("microbatches: small ramp by hand (4 4 100 -> 16, micro 2, dp 2)", () => {
  const r = buildNumMicroBatchesCalculator({
    globalBatchSize: 16,
    microBatchSize: 2,
    dataParallelSize: 2,
    rampupBatchSize: [4, 4, 100],
  });
  // 100 samples / 3 increments = 33.33 samples per increment.
  const cases: [number, number][] = [[0, 1], [33, 1], [34, 2], [66, 2], [67, 3], [99, 3], [100, 4], [101, 4]];
  for (const [consumed, m] of cases) {
    r.update(consumed);
    assert.equal(r.numMicroBatches, m, `consumed ${consumed}`);
  }
});

Deno.test("microbatches: train iters for sample-based runs", () => {
  const base = { globalBatchSize: 16, microBatchSize: 2, dataParallelSize: 2 };
  assert.equal(computeTrainIters({ ...base, trainIters: 7 }), 7);
  assert.equal(computeTrainIters({ ...base, trainSamples: 200 }), 12); // 200 // 16, partial batch dropped
  // Ramp: 9 steps of 4 (to 36), 4 of 8 (to 68), 3 of 12 (to 104), then (200 - 104) // 16 = 6.
  assert.equal(computeTrainIters({ ...base, trainSamples: 200, rampupBatchSize: [4, 4, 100] }), 22);
  // GPT-3 style: 16 16 5859375 to 1536 over 146484375 samples.
  assert.equal(
    computeTrainIters({
      globalBatchSize: 1536,
      microBatchSize: 1,
      dataParallelSize: 1,
      trainSamples: 146484375,
      rampupBatchSize: [16, 16, 5859375],
    }),
    111354,
  );
  assert.throws(() => computeTrainIters(base), /either --train-iters or --train-samples/);
});
