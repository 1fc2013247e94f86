// MegatronPretrainingSampler vs a literal per-index reference; requested sample counts; resume.
import assert from "node:assert/strict";
import {
  MegatronPretrainingSampler,
  resumeConsumedSamples,
  trainValidTestNumSamples,
} from "../src/data/sampler.ts";

// Reference written the way the Python sampler walks: one index at a time into a block buffer.
function reference(
  total: number,
  consumed: number,
  micro: number,
  rank: number,
  dp: number,
  dropLast: boolean,
) {
  const out: number[][] = [];
  let batch: number[] = [];
  for (let idx = consumed; idx < total; idx++) {
    batch.push(idx);
    if (batch.length === micro * dp) {
      out.push(batch.slice(rank * micro, rank * micro + micro));
      batch = [];
    }
  }
  if (batch.length > 0 && !dropLast) out.push(batch.slice(rank * micro, rank * micro + micro));
  return out;
}

Deno.test("sampler: hand example, resume, tail handling", () => {
  const mk = (rank: number, consumed = 0, dropLast = true) =>
    new MegatronPretrainingSampler({
      totalSamples: 10,
      consumedSamples: consumed,
      microBatchSize: 2,
      dataParallelRank: rank,
      dataParallelSize: 2,
      dropLast,
    });
  assert.deepEqual([...mk(0)], [[0, 1], [4, 5]]);
  assert.deepEqual([...mk(1)], [[2, 3], [6, 7]]);
  assert.deepEqual([...mk(0, 4)], [[4, 5]]);
  assert.deepEqual([...mk(1, 3)], [[5, 6]]);
  assert.deepEqual([...mk(0, 0, false)], [[0, 1], [4, 5], [8, 9]]);
  assert.deepEqual([...mk(1, 0, false)], [[2, 3], [6, 7], []]);
  assert.equal(mk(0).length, 10);
  assert.equal(mk(0).numBatches, 2);
  assert.equal(mk(0, 0, false).numBatches, 3);
});

Deno.test("sampler equals the per-index reference over many layouts", () => {
  for (const total of [1, 7, 16, 33]) {
    for (const micro of [1, 2, 3]) {
      for (const dp of [1, 2, 4]) {
        for (const consumed of [0, 1, 5, total - 1]) {
          if (consumed < 0 || consumed >= total) continue;
          for (const dropLast of [true, false]) {
            const seen = new Set<number>();
            for (let rank = 0; rank < dp; rank++) {
              const s = new MegatronPretrainingSampler({
                totalSamples: total,
                consumedSamples: consumed,
                microBatchSize: micro,
                dataParallelRank: rank,
                dataParallelSize: dp,
                dropLast,
              });
              const got = [...s];
              assert.deepEqual(got, reference(total, consumed, micro, rank, dp, dropLast));
              assert.equal(got.length, s.numBatches);
              for (const b of got) for (const i of b) seen.add(i);
            }
            // Ranks are disjoint and cover every full block.
            const full = Math.floor((total - consumed) / (micro * dp)) * micro * dp;
            assert.ok(seen.size >= full);
          }
        }
      }
    }
  }
});

Deno.test("sampler: invalid settings give one clear line", () => {
  const base = {
    totalSamples: 10,
    consumedSamples: 0,
    microBatchSize: 2,
    dataParallelRank: 0,
    dataParallelSize: 2,
  };
  assert.throws(
    () => new MegatronPretrainingSampler({ ...base, totalSamples: 0 }),
    /total samples > 0, found 0/,
  );
  assert.throws(
    () => new MegatronPretrainingSampler({ ...base, consumedSamples: 10 }),
    /in \[0, 10\), found 10/,
  );
  assert.throws(() => new MegatronPretrainingSampler({ ...base, microBatchSize: 0 }), /--micro-batch-size/);
  assert.throws(
    () => new MegatronPretrainingSampler({ ...base, dataParallelRank: 2 }),
    /rank in \[0, 2\), found 2/,
  );
});

Deno.test("requested sample counts and resume reconstruction", () => {
  // train 500 iters * 8; valid (500//100 + 1)*10*8; test 10*8.
  assert.deepEqual(
    trainValidTestNumSamples({ trainIters: 500, globalBatchSize: 8, evalInterval: 100, evalIters: 10 }),
    [4000, 480, 80],
  );
  assert.deepEqual(
    trainValidTestNumSamples({
      trainIters: 7,
      globalBatchSize: 4,
      evalInterval: 3,
      evalIters: 2,
      trainSamples: 30,
    }),
    [30, 24, 8],
  );
  assert.deepEqual(
    trainValidTestNumSamples({ trainIters: 10, globalBatchSize: 2, evalInterval: 5, evalIters: 0 }),
    [20, 0, 0],
  );
  assert.throws(
    () => trainValidTestNumSamples({ trainIters: 1, globalBatchSize: 0, evalInterval: 1, evalIters: 1 }),
    /--global-batch-size: expected an integer >= 1, found 0/,
  );
  const r = resumeConsumedSamples({
    iteration: 250,
    consumedTrainSamples: 0,
    consumedValidSamples: 0,
    globalBatchSize: 8,
    evalInterval: 100,
    evalIters: 10,
  });
  assert.deepEqual(r, { consumedTrainSamples: 2000, consumedValidSamples: 160 });
  const kept = resumeConsumedSamples({
    iteration: 250,
    consumedTrainSamples: 1999,
    consumedValidSamples: 7,
    globalBatchSize: 8,
    evalInterval: 100,
    evalIters: 10,
  });
  assert.deepEqual(kept, { consumedTrainSamples: 1999, consumedValidSamples: 7 });
});
