// Philox4x32-10 against the Random123 known-answer vectors, plus the addressing and normal() stats.
import assert from "node:assert/strict";
import { fillNormal, KEY_HI, philox4x32, PhiloxStream, streamId } from "../src/rng/philox.ts";

function hex(u: Uint32Array): string[] {
  return Array.from(u, (x) => x.toString(16).padStart(8, "0"));
}

Deno.test("philox4x32-10 Random123 known answers", () => {
  const out = new Uint32Array(4);
  philox4x32(0, 0, 0, 0, 0, 0, out);
  assert.deepEqual(hex(out), ["6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8"]);
  const f = 0xffffffff;
  philox4x32(f, f, f, f, f, f, out);
  assert.deepEqual(hex(out), ["408f276d", "41c83b0e", "a20bc7c6", "6d5451fd"]);
  philox4x32(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, out);
  assert.deepEqual(hex(out), ["d16cfe09", "94fdcceb", "5001e420", "24126ea1"]);
});

Deno.test("PhiloxStream addresses counter [block lo, block hi, iteration, stream], key [seed, KEY_HI]", () => {
  const g = new PhiloxStream(1234, streamId(3, 7), 42);
  const ref = new Uint32Array(4);
  const block = 2 ** 32 + 5; // exercises the high counter word
  philox4x32(5, 1, 42, streamId(3, 7), 1234, KEY_HI, ref);
  for (let lane = 0; lane < 4; lane++) {
    assert.equal(g.bits(block * 4 + lane), ref[lane]);
    assert.equal(g.uniform(block * 4 + lane), (ref[lane] >>> 8) / 2 ** 24);
  }
});

Deno.test("normal(): mean ~ 0, variance ~ 1, reproducible", () => {
  const n = 200_000;
  const a = new Float64Array(n);
  fillNormal(a, 7, streamId(1, 0), 0, 1);
  let s = 0, q = 0;
  for (const x of a) {
    s += x;
    q += x * x;
  }
  const mean = s / n, v = q / n - mean * mean;
  // Standard errors: mean 1/sqrt(n) ~ 0.0022, variance sqrt(2/n) ~ 0.0032.
  assert.ok(Math.abs(mean) < 0.01, `mean ${mean}`);
  assert.ok(Math.abs(v - 1) < 0.02, `variance ${v}`);
  const b = new Float64Array(16);
  fillNormal(b, 7, streamId(1, 0), 0, 1, 100);
  assert.deepEqual(Array.from(b), Array.from(a.subarray(100, 116)));
  // A different seed gives different numbers.
  fillNormal(b, 8, streamId(1, 0), 0, 1, 100);
  assert.notDeepEqual(Array.from(b), Array.from(a.subarray(100, 116)));
});
