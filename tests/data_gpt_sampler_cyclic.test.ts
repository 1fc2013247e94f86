// --dataloader-type cyclic: Megatron's (2021) MegatronPretrainingRandomSampler. torch.randperm is
// checked against values PyTorch's CPU generator gives; the sampler against Megatron's iterator
// written out independently (per-epoch permutation of each DP rank's bucket, restarted by cyclic_iter).

import assert from "node:assert/strict";
import { MegatronPretrainingRandomSampler, torchRandperm } from "../src/data/sampler.ts";

Deno.test("torchRandperm: torch.manual_seed(s); torch.randperm(10) on the CPU", () => {
  assert.deepEqual([...torchRandperm(10, 0)], [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]);
  assert.deepEqual([...torchRandperm(10, 1)], [5, 6, 1, 2, 0, 8, 9, 3, 7, 4]);
  assert.deepEqual([...torchRandperm(10, 42)], [2, 6, 1, 8, 4, 5, 0, 9, 3, 7]);
  assert.deepEqual([...torchRandperm(1, 0)], [0]);
  assert.deepEqual([...torchRandperm(0, 0)], []);
});

/** Megatron's iterator, as a generator of (consumed before, dp rank, micro-batch indices), run for
 *  `steps` global steps of one micro-batch per rank: each rank iterates its own sampler. */
function megatronCyclic(total: number, micro: number, dp: number, steps: number): number[][][] {
  const block = micro * dp;
  const out: number[][][] = Array.from({ length: steps }, () => []);
  for (let d = 0; d < dp; d++) {
    let consumed = 0;
    let step = 0;
    while (step < steps) {
      // One pass of __iter__ from the current consumed count (cyclic_iter starts the next one).
      const active = total - (total % block);
      const epoch = Math.floor(consumed / active);
      const cur = consumed % active;
      const bucket = Math.floor(total / block) * micro;
      const perm = [...torchRandperm(bucket, epoch)];
      const range = perm.slice(cur / dp).map((x) => d * bucket + x);
      for (let j = 0; j + micro <= range.length && step < steps; j += micro) {
        out[step++][d] = range.slice(j, j + micro);
        consumed += block;
      }
    }
  }
  return out;
}

Deno.test("random sampler: the samples of Megatron's cyclic iterator, across epochs, per DP rank", () => {
  for (const [total, micro, dp] of [[23, 2, 2], [10, 1, 1], [17, 3, 1], [30, 2, 3]]) {
    const s = new MegatronPretrainingRandomSampler({
      totalSamples: total,
      microBatchSize: micro,
      dataParallelSize: dp,
    });
    const steps = 3 * Math.floor(total / (micro * dp)) + 2; // into the fourth epoch
    const want = megatronCyclic(total, micro, dp, steps);
    for (let k = 0; k < steps; k++) {
      for (let d = 0; d < dp; d++) {
        const got = Array.from({ length: micro }, (_, i) => s.sampleIndex(k * micro * dp, d, i));
        assert.deepEqual(got, want[k][d], `total ${total} micro ${micro} dp ${dp}: step ${k} rank ${d}`);
      }
    }
  }
});

Deno.test("random sampler: each epoch reads every sample of the full blocks once, ranks disjoint, order reshuffled", () => {
  const [total, micro, dp] = [23, 2, 2];
  const s = new MegatronPretrainingRandomSampler({
    totalSamples: total,
    microBatchSize: micro,
    dataParallelSize: dp,
  });
  assert.equal(s.activeTotalSamples, 20);
  assert.equal(s.bucketSize, 10);
  const epoch = (e: number) => {
    const seen: number[][] = [[], []];
    for (let c = e * 20; c < (e + 1) * 20; c += 4) {
      for (let d = 0; d < dp; d++) for (let i = 0; i < micro; i++) seen[d].push(s.sampleIndex(c, d, i));
    }
    return seen;
  };
  const e0 = epoch(0), e1 = epoch(1);
  assert.deepEqual([...e0[0]].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.deepEqual([...e0[1]].sort((a, b) => a - b), [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
  // Epoch 0 is randperm(10, seed 0) over each bucket; epoch 1 uses seed 1.
  assert.deepEqual(e0[0], [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]);
  assert.deepEqual(e0[1], [14, 11, 17, 15, 13, 19, 10, 18, 16, 12]);
  assert.deepEqual(e1[0], [5, 6, 1, 2, 0, 8, 9, 3, 7, 4]);
  // Samples 20..22 (the last partial block) are never read.
  assert.ok(![...e0[0], ...e0[1], ...e1[0], ...e1[1]].some((x) => x >= 20));
});

Deno.test("random sampler: a split smaller than one micro-batch block is one line", () => {
  assert.throws(
    () =>
      new MegatronPretrainingRandomSampler({
        totalSamples: 3,
        microBatchSize: 2,
        dataParallelSize: 2,
        name: "validation",
      }),
    {
      message:
        "--dataloader-type cyclic: the validation split has 3 samples, fewer than --micro-batch-size * data-parallel size = 4",
    },
  );
  const s = new MegatronPretrainingRandomSampler({ totalSamples: 8, microBatchSize: 2, dataParallelSize: 1 });
  assert.throws(() => s.sampleIndex(3, 0, 0), /consumed samples 3 are not a multiple of micro\*dp = 2/);
});
