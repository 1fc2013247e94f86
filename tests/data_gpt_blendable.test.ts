// Blending: greedy index assignment (hand-derived vectors), NumPy's pairwise sum, per-dataset counts.
import assert from "node:assert/strict";
import {
  BlendableDataset,
  buildBlendingIndices,
  getDatasetsWeightsAndNumSamples,
  numpySum,
} from "../src/data/blendable.ts";

Deno.test("build_blending_indices: hand-derived vectors, ties to the lowest index", () => {
  const a = buildBlendingIndices([0.5, 0.5], 4);
  assert.deepEqual(Array.from(a.datasetIndex), [0, 1, 0, 1]);
  assert.deepEqual(Array.from(a.datasetSampleIndex), [0, 0, 1, 1]);
  const b = buildBlendingIndices([0.2, 0.3, 0.5], 6);
  assert.deepEqual(Array.from(b.datasetIndex), [2, 1, 0, 2, 1, 2]);
  assert.deepEqual(Array.from(b.datasetSampleIndex), [0, 0, 0, 1, 1, 2]);
  // Over a long run each dataset's share tracks its weight within one sample.
  const w = [0.1, 0.25, 0.65];
  const c = buildBlendingIndices(w, 10000);
  const used = [0, 0, 0];
  for (let k = 0; k < 10000; k++) {
    assert.equal(c.datasetSampleIndex[k], used[c.datasetIndex[k]]);
    used[c.datasetIndex[k]]++;
    for (let i = 0; i < 3; i++) assert.ok(Math.abs(used[i] - w[i] * (k + 1)) <= 1.0000001);
  }
  assert.throws(() => buildBlendingIndices([], 3), /expected 1\.\.254 datasets, found 0/);
});

Deno.test("numpySum: sequential under 8 values, 8-way pairwise above", () => {
  const a = Array.from({ length: 21 }, (_, i) => 0.1 * (i + 1) + 1e-3 / (i + 1));
  assert.equal(numpySum(a.slice(0, 5)), (((0 + a[0]) + a[1]) + a[2] + a[3]) + a[4]);
  const r = Array.from({ length: 8 }, (_, j) => a[j] + a[8 + j]);
  const tree = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
  assert.equal(numpySum(a), tree + a[16] + a[17] + a[18] + a[19] + a[20]);
});

Deno.test("weights and per-dataset sample counts: ceil(n * w * 1.005)", () => {
  const r = getDatasetsWeightsAndNumSamples(["0.3", "a", "0.7", " b "], [100, 10, 0]);
  assert.deepEqual(r.prefixes, ["a", "b"]);
  assert.deepEqual(r.weights, [0.3, 0.7]);
  assert.deepEqual(r.numSamples, [[31, 4, 0], [71, 8, 0]]);
  const s = getDatasetsWeightsAndNumSamples(["2", "x", "6", "y"], [1000, 0, 1]);
  assert.deepEqual(s.weights, [0.25, 0.75]);
  assert.deepEqual(s.numSamples, [[252, 0, 1], [754, 0, 1]]);
  assert.throws(
    () => getDatasetsWeightsAndNumSamples(["a", "b"], [1, 1, 1]),
    /expected a weight at position 1, found 'a'/,
  );
  assert.throws(() => getDatasetsWeightsAndNumSamples(["0", "b"], [1, 1, 1]), /positive sum, found 0/);
});

Deno.test("BlendableDataset: length is the sum, items come from the assigned dataset", () => {
  const mk = (name: string, n: number) => ({ length: n, getItem: (i: number) => `${name}${i}` });
  const d = new BlendableDataset([mk("a", 4), mk("b", 4)], [3, 3]);
  assert.equal(d.length, 8);
  assert.deepEqual(Array.from({ length: 8 }, (_, i) => d.getItem(i)), [
    "a0",
    "b0",
    "a1",
    "b1",
    "a2",
    "b2",
    "a3",
    "b3",
  ]);
  assert.throws(() => d.getItem(8), /expected a sample index in 0\.\.7, found 8/);
  assert.throws(
    () => new BlendableDataset([mk("a", 1)], [1, 2]),
    /one weight per dataset, found 1 datasets and 2/,
  );
});
