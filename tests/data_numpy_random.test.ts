// Known-answer tests for the NumPy legacy RandomState and C++ Mersenne Twister ports.
import assert from "node:assert/strict";
import { Mt19937, Mt19937_64, RandomState } from "../src/data/numpy_random.ts";

Deno.test("RandomState(1234).shuffle(arange(10)) matches numpy", () => {
  const a = new Int32Array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  new RandomState(1234).shuffle(a);
  assert.deepEqual(Array.from(a), [7, 2, 9, 1, 0, 8, 4, 5, 6, 3]);
  // Same draws whatever the element type (numpy's 1-D fast path and list path agree).
  const b = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
  new RandomState(1234).shuffle(b);
  assert.deepEqual(b, [7, 2, 9, 1, 0, 8, 4, 5, 6, 3]);
  const c = new BigInt64Array(10).map((_, i) => BigInt(i));
  new RandomState(1234).shuffle(c);
  assert.deepEqual(Array.from(c, Number), [7, 2, 9, 1, 0, 8, 4, 5, 6, 3]);
});

Deno.test("RandomState(0) raw words, random_sample and randint match numpy", () => {
  // np.random.RandomState(0).randint(0, 2**32, dtype=np.uint64) stream (= MT19937 init_genrand(0)).
  const rs = new RandomState(0);
  assert.deepEqual([rs.nextUint32(), rs.nextUint32(), rs.nextUint32()], [2357136044, 2546248239, 3071714933]);
  // np.random.RandomState(0).random_sample(5)
  const r = new RandomState(0);
  const got = [r.randomSample(), r.randomSample(), r.randomSample(), r.randomSample(), r.randomSample()];
  assert.deepEqual(got, [
    0.5488135039273248,
    0.7151893663724195,
    0.6027633760716439,
    0.5448831829968969,
    0.4236547993389047,
  ]);
  // np.random.RandomState(0).randint(10, size=10)
  const q = new RandomState(0);
  assert.deepEqual(Array.from({ length: 10 }, () => q.randint(10)), [5, 0, 3, 3, 7, 9, 3, 5, 2, 4]);
});

Deno.test("randint edge cases consume words like numpy", () => {
  // A one-value range draws nothing: the next call sees the untouched stream.
  const a = new RandomState(7);
  assert.equal(a.randint(3, 4), 3);
  const b = new RandomState(7);
  assert.equal(a.nextUint32(), b.nextUint32());
  // Full 32-bit range: the raw word.
  const c = new RandomState(7);
  const d = new RandomState(7);
  assert.equal(c.randint(0, 2 ** 32), d.nextUint32());
  // > 32-bit range: two words, high first, masked; result must stay in range.
  const e = new RandomState(7);
  for (let i = 0; i < 100; i++) {
    const v = e.randint(5, 5 + 2 ** 40);
    assert.ok(v >= 5 && v < 5 + 2 ** 40 && Number.isInteger(v));
  }
  assert.throws(() => new RandomState(1).randint(5, 5), /low < high/);
  assert.throws(() => new RandomState(-1), /seed in \[0, 2\^32-1\], found -1/);
  assert.throws(() => new RandomState(2 ** 32), /found 4294967296/);
});

Deno.test("randomInterval is uniform-ish and in range (sanity)", () => {
  const r = new RandomState(42);
  const counts = new Array(7).fill(0);
  for (let i = 0; i < 70000; i++) counts[r.randomInterval(6)]++;
  for (const c of counts) assert.ok(Math.abs(c - 10000) < 500, `count ${c}`);
});

Deno.test("std::mt19937: 10000th output of the default engine is 4123659995 (ISO C++)", () => {
  const g = new Mt19937();
  assert.equal(g.nextUint32(), 3499211612);
  let v = 0;
  for (let i = 1; i < 10000; i++) v = g.nextUint32();
  assert.equal(v, 4123659995);
});

Deno.test("mt19937ar init_by_array({0x123,0x234,0x345,0x456}) reference outputs", () => {
  const g = new Mt19937();
  g.seedByArray([0x123, 0x234, 0x345, 0x456]);
  const got = Array.from({ length: 5 }, () => g.nextUint32());
  assert.deepEqual(got, [1067595299, 955945823, 477289528, 4107218783, 4228976476]);
});

Deno.test("std::mt19937_64: 10000th output of the default engine is 9981545732273789042 (ISO C++)", () => {
  const g = new Mt19937_64();
  assert.equal(g.nextUint64(), 14514284786278117030n);
  let v = 0n;
  for (let i = 1; i < 10000; i++) v = g.nextUint64();
  assert.equal(v, 9981545732273789042n);
});

Deno.test("Mt19937_64.nextMod equals BigInt modulo; seeds wrap mod 2^64 like C++", () => {
  const a = new Mt19937_64(1235);
  const b = new Mt19937_64(1235);
  for (const m of [1, 2, 3, 10, 1000003, 2 ** 31 + 11, 2 ** 36 + 5]) {
    assert.equal(a.nextMod(m), Number(b.nextUint64() % BigInt(m)));
  }
  const neg = new Mt19937_64(-1);
  const wrapped = new Mt19937_64((1n << 64n) - 1n);
  assert.equal(neg.nextUint64(), wrapped.nextUint64());
});

Deno.test("choice: randint path without p, cdf inversion with p", () => {
  // Without p: randint(0, 5) from RandomState(0): first word 2357136044 & 7 = 4 <= 4.
  assert.equal(new RandomState(0).choice(5), 4);
  // With p: u = 0.5488135... against cdf [0.2, 0.5, 1.0] -> index 2; then 0.7151... -> 2; 0.6027... -> 2.
  const r = new RandomState(0);
  assert.equal(r.choice(3, [0.2, 0.3, 0.5]), 2);
  // u2 = 0.7151893663724195 against cdf [0.6, 0.72, 1] -> 1.
  assert.equal(r.choice(3, [0.6, 0.12, 0.28]), 1);
  // u3 = 0.6027633760716439: exactly-on-boundary semantics are side='right' (cdf <= u moves right).
  assert.equal(r.choice(2, [0.6027633760716439, 1 - 0.6027633760716439]), 1);
  // BERT's n-gram distribution p = [6/11, 3/11, 2/11]: frequencies follow p.
  const q = new RandomState(3);
  const counts = [0, 0, 0];
  for (let i = 0; i < 11000; i++) counts[q.choice(3, [6 / 11, 3 / 11, 2 / 11])]++;
  assert.ok(Math.abs(counts[0] - 6000) < 300 && Math.abs(counts[2] - 2000) < 200, `${counts}`);
  assert.throws(() => q.choice(2, [0.5, 0.6]), /summing to 1, found 1.1/);
  assert.throws(() => q.choice(0), /population size > 0, found 0/);
});
