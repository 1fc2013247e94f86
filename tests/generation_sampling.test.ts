// Megatron 2021 sampling on fixed logits: top-k / top-p kept sets worked out by hand, the sampled
// distribution against the formula (frequencies within 5 standard deviations), greedy, determinism.

import assert from "node:assert/strict";
import {
  argmax,
  filterLogits,
  generationMaxLength,
  generationUniform,
  multinomial,
  sampleNextToken,
  samplingDistribution,
  softmax,
} from "../src/generation/sampling.ts";

function throwsWith(fn: () => unknown, text: string) {
  assert.throws(fn, (e: Error) => {
    assert.ok(e.message.includes(text), `expected "${text}" in: ${e.message}`);
    return true;
  });
}

function kept(x: Float64Array): number[] {
  return [...x].flatMap((v, i) => (v === -Infinity ? [] : [i]));
}

Deno.test("top-k: logits below the k-th largest removed, ties with it kept", () => {
  const l = [1, 3, 2, 3, 0.5];
  assert.deepEqual(kept(filterLogits(l, { topK: 1 })), [1, 3]); // both 3s tie for first
  assert.deepEqual(kept(filterLogits(l, { topK: 2 })), [1, 3]);
  assert.deepEqual(kept(filterLogits(l, { topK: 3 })), [1, 2, 3]);
  assert.deepEqual(kept(filterLogits(l, { topK: 10 })), [0, 1, 2, 3, 4]);
  assert.deepEqual(kept(filterLogits(l, { topK: 0 })), [0, 1, 2, 3, 4]);
});

Deno.test("top-p: cumulative softmax with the shift keeps the first token crossing p", () => {
  // Probabilities 0.5, 0.3, 0.15, 0.05 (ids shuffled so sorting matters).
  const p = [0.15, 0.5, 0.05, 0.3];
  const l = p.map(Math.log);
  assert.deepEqual(kept(filterLogits(l, { topP: 0.45 })), [1]); // 0.5 crosses at once: kept alone
  assert.deepEqual(kept(filterLogits(l, { topP: 0.6 })), [1, 3]); // 0.5, then 0.8 crosses
  assert.deepEqual(kept(filterLogits(l, { topP: 0.9 })), [0, 1, 3]); // 0.95 crosses at the third
  assert.deepEqual(kept(filterLogits(l, { topP: 0.99 })), [0, 1, 2, 3]);
  // Top-k first, then top-p over what is left: k=3 keeps 0.5, 0.3, 0.15 -> renormalized 0.526, 0.842.
  assert.deepEqual(kept(filterLogits(l, { topK: 3, topP: 0.8 })), [1, 3]);
  assert.deepEqual(kept(filterLogits(l, { topK: 3, topP: 0.85 })), [0, 1, 3]);
});

Deno.test("top-k / top-p against a plain sort-based formula on random logits, ties by lower id", () => {
  // Equal logits: top-p keeps the lowest ids first (the tie order we fix).
  assert.deepEqual(kept(filterLogits([1, 1, 1, 1], { topP: 0.3 })), [0, 1]);
  assert.deepEqual(kept(filterLogits([0, 2, 1, 2, 2], { topP: 0.5 })), [1, 3]);
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (let trial = 0; trial < 200; trial++) {
    const n = 1 + Math.floor(rnd() * 40);
    // Few distinct values so ties are common.
    const l = Array.from({ length: n }, () => Math.floor(rnd() * 6) / 2);
    const k = Math.floor(rnd() * (n + 2)), p = rnd();
    // The formula, spelled out: top-k by a full sort, top-p by a stable sort of ids.
    const x = l.map((v) => Math.fround(v));
    if (k > 0) {
      const kth = [...x].sort((a, b) => b - a)[Math.min(k, n) - 1];
      for (let i = 0; i < n; i++) if (x[i] < kth) x[i] = -Infinity;
    }
    const order = x.map((_, i) => i).sort((a, b) => (x[b] === x[a] ? a - b : x[b] - x[a]));
    const pr = softmax(order.map((i) => x[i]));
    const removed = new Set<number>();
    let cum = 0;
    order.forEach((id, j) => {
      if (j > 0 && cum > p) removed.add(id);
      cum += pr[j];
    });
    const want = x.flatMap((v, i) => (v === -Infinity || removed.has(i) ? [] : [i]));
    assert.deepEqual(kept(filterLogits(l, { topK: k, topP: p })), want, `trial ${trial}: k ${k} p ${p} ${l}`);
  }
});

Deno.test("temperature divides the logits (in f32) before softmax", () => {
  const l = [0.3, -1.2, 2.5, 0];
  for (const t of [0.5, 1, 1.7]) {
    const want = softmax(l.map((x) => x / t));
    const got = samplingDistribution(l, { temperature: t });
    for (let i = 0; i < l.length; i++) assert.ok(Math.abs(got[i] - want[i]) < 1e-6, `T=${t} id ${i}`);
  }
});

Deno.test("sampled frequencies match the filtered distribution (5 sigma), deterministic per (seed, step, row)", () => {
  const l = [2.0, 1.0, 0.5, 0.4, -1, -3, 1.5, 0.1];
  for (
    const o of [{ temperature: 0.8 }, { topK: 3 }, { topP: 0.7 }, { topK: 5, topP: 0.9, temperature: 1.3 }]
  ) {
    const probs = samplingDistribution(l, o);
    const n = 20000;
    const count = new Array(l.length).fill(0);
    for (let s = 0; s < n; s++) count[sampleNextToken(l, o, 1234, s, 0)]++;
    for (let i = 0; i < l.length; i++) {
      const sd = Math.sqrt(n * probs[i] * (1 - probs[i]));
      if (probs[i] === 0) assert.equal(count[i], 0, `${JSON.stringify(o)} id ${i} removed but drawn`);
      else {assert.ok(
          Math.abs(count[i] - n * probs[i]) <= 5 * sd + 1,
          `${JSON.stringify(o)} id ${i}: ${count[i]} vs ${n * probs[i]}`,
        );}
    }
  }
  // Same address, same token; the row is part of the address.
  const a = Array.from({ length: 64 }, (_, s) => sampleNextToken(l, {}, 7, s, 3));
  const b = Array.from({ length: 64 }, (_, s) => sampleNextToken(l, {}, 7, s, 3));
  const c = Array.from({ length: 64 }, (_, s) => sampleNextToken(l, {}, 7, s, 4));
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  // The uniform is in [0, 1) with mean 1/2.
  let sum = 0;
  for (let s = 0; s < 10000; s++) {
    const u = generationUniform(99, s, 1);
    assert.ok(u >= 0 && u < 1);
    sum += u;
  }
  assert.ok(Math.abs(sum / 10000 - 0.5) < 5 * Math.sqrt(1 / 12 / 10000));
});

Deno.test("greedy is argmax (lowest id on ties, padded vocabulary ignored); multinomial edges; flags", () => {
  assert.equal(sampleNextToken([0, 5, 5, 1], { greedy: true }, 0, 0), 1);
  assert.equal(argmax([3, 1, 3]), 0);
  // Padded rows beyond the real vocabulary are never chosen.
  assert.equal(sampleNextToken([0, 1, 2, 9], { greedy: true, vocabSize: 3 }, 0, 0), 2);
  assert.equal(filterLogits([0, 1, 2, 9], { vocabSize: 3 }).length, 3);
  assert.equal(multinomial([0, 0.25, 0, 0.75], 0), 1);
  assert.equal(multinomial([0, 0.25, 0, 0.75], 0.25), 3);
  assert.equal(multinomial([0, 0.25, 0, 0.75], 0.9999999999), 3);
  throwsWith(() => filterLogits([1, 2], { temperature: 0 }), "--temperature 0: expected a number > 0");
  throwsWith(() => filterLogits([1, 2], { topK: -1 }), "--top_k -1: expected an integer >= 0");
  throwsWith(() => filterLogits([1, 2], { topP: 1.5 }), "--top_p 1.5: expected a number in [0, 1]");
  assert.equal(generationMaxLength(10, 100, 64), 63);
  assert.equal(generationMaxLength(10, 20, 64), 30);
});
