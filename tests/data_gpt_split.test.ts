// Train/valid/test split boundaries as Megatron 2021 computes them (Python round = half to even).
import assert from "node:assert/strict";
import { DEFAULT_SPLIT, getTrainValidTestSplit, parseSplitString, pythonRound } from "../src/data/split.ts";

Deno.test("pythonRound is round-half-to-even", () => {
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, 2.4999, 2.5001, 3].map(pythonRound), [0, 2, 2, 0, 2, 3, 3]);
});

Deno.test("split boundaries for several sizes", () => {
  assert.deepEqual(getTrainValidTestSplit(DEFAULT_SPLIT, 1000), [0, 969, 999, 1000]);
  assert.deepEqual(getTrainValidTestSplit("969, 30, 1", 1), [0, 1, 1, 1]);
  assert.deepEqual(getTrainValidTestSplit("949,50,1", 5), [0, 5, 5, 5]);
  // 0.05*10 == 0.5 rounds to 0 (half-even); the diff correction then shifts all three bookends.
  assert.deepEqual(getTrainValidTestSplit("949,50,1", 10), [0, 10, 10, 10]);
  assert.deepEqual(getTrainValidTestSplit("949,50,1", 100000), [0, 94900, 99900, 100000]);
  assert.deepEqual(getTrainValidTestSplit("1/1/1", 10), [0, 4, 7, 10]);
  assert.deepEqual(getTrainValidTestSplit("100", 7), [0, 7, 7, 7]);
  assert.deepEqual(getTrainValidTestSplit("2,1", 3), [0, 2, 3, 3]);
  assert.deepEqual(getTrainValidTestSplit("98,2,0", 25), [0, 25, 25, 25]);
  assert.deepEqual(getTrainValidTestSplit("8,1,1,5", 10), [0, 8, 9, 10]); // extra values are ignored
  assert.deepEqual(getTrainValidTestSplit("969, 30, 1", 0), [0, 0, 0, 0]);
  // The ranges always end at size and never decrease.
  for (let size = 0; size < 300; size += 7) {
    for (const s of ["969, 30, 1", "949,50,1", "1/1/1", "7,2,1", "0.5,0.25,0.25"]) {
      const [a, b, c, d] = getTrainValidTestSplit(s, size);
      assert.ok(a === 0 && a <= b && b <= c && c <= d && d === size, `${s} ${size}: ${[a, b, c, d]}`);
    }
  }
});

Deno.test("split strings: separators, whitespace, errors", () => {
  assert.deepEqual(parseSplitString(" 1 , 1 , 2 "), [0.25, 0.25, 0.5]);
  assert.deepEqual(parseSplitString("1e2/0/0"), [1, 0, 0]);
  assert.throws(() => parseSplitString("a,b"), /^Error: --split: expected numbers .* found 'a' in 'a,b'$/);
  assert.throws(() => parseSplitString("1,,2"), /found '' in '1,,2'/);
  assert.throws(() => parseSplitString("0,0,0"), /positive sum, found '0,0,0'/);
  assert.throws(() => getTrainValidTestSplit("1,1", -1), /dataset size >= 0, found -1/);
});
