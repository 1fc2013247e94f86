// The normal draws behind weight initialization use a log and a sine/cosine built from correctly
// rounded operations only (so kernels/init_normal.cuh reproduces them bit for bit; see
// tests/cuda_emulated_ops.test.ts). Here: their accuracy against the f64 Math functions, and
// Backend.normalInit on the CPU against the host path it replaced (fillNormal + fromHost).
import assert from "node:assert/strict";
import { circleU32, fillNormal, logU32, PhiloxStream } from "../src/rng/philox.ts";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import type { DType } from "../src/tensor/dtype.ts";

const U = 2.3283064365386963e-10; // 2^-32

Deno.test("logU32 / circleU32: within 2 ulp of log and 2 pi-periodic sin/cos in f64", () => {
  const ks = [0, 1, 2, 0x5a827999, 0x5a82799a, 0x7fffffff, 0x80000000, 0xb504f333, 0xffffffff];
  let s = 7;
  for (let i = 0; i < 200000; i++) ks.push(s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
  let worstLog = 0, worstTrig = 0;
  for (const k of ks) {
    const ref = Math.log((k + 0.5) * U);
    worstLog = Math.max(worstLog, Math.abs(logU32(k) - ref) / Math.abs(ref));
    const t = 2 * Math.PI * ((k + 0.5) * U);
    worstTrig = Math.max(
      worstTrig,
      Math.abs(circleU32(k, true) - Math.sin(t)),
      Math.abs(circleU32(k, false) - Math.cos(t)),
    );
  }
  assert.ok(worstLog <= 2 * 2 ** -52, `log relative error ${worstLog}`);
  // t itself carries up to half an ulp of 2 pi (4.4e-16) of rounding: bound by 2 ulp of 4.
  assert.ok(worstTrig <= 2 * 2 ** -50, `sin/cos absolute error ${worstTrig}`);
  // Known answers: k = 0 is 2^-33; the quadrant starts are exact rotations.
  assert.equal(logU32(0), -33 * 0.6931471803691238 + (-33 * 1.9082149292705877e-10 + 0));
  assert.ok(Math.abs(logU32(0) - -33 * Math.LN2) <= 4e-15);
  assert.equal(circleU32(0x40000000, true), circleU32(0, false));
  assert.equal(circleU32(0x80000000, false), -circleU32(0, false));
});

Deno.test("normal(): same distribution as before; values agree with Math-based Box-Muller to f32", () => {
  const g = new PhiloxStream(1234, 0x100012, 0);
  const blk = new Uint32Array(4);
  let differ = 0;
  const n = 100000;
  for (let e = 0; e < n; e++) {
    blk.set(g.blockAt(Math.floor(e / 4)));
    const pair = e % 4 < 2 ? 0 : 2;
    const r = Math.sqrt(-2 * Math.log((blk[pair] + 0.5) * U));
    const t = 2 * Math.PI * ((blk[pair + 1] + 0.5) * U);
    const old = (e & 1) === 0 ? r * Math.cos(t) : r * Math.sin(t);
    const now = g.normal(e);
    assert.ok(Math.abs(now - old) <= 1e-14 * Math.max(1, Math.abs(old)), `${e}: ${now} vs ${old}`);
    if (Math.fround(now) !== Math.fround(old)) differ++;
  }
  // f32 weights change only where the two f64 values straddle an f32 rounding boundary.
  assert.ok(differ <= n * 1e-4, `${differ} of ${n} f32 values differ`);
});

Deno.test("cpu normalInit: equals fillNormal rows stored through fromHost, every float dtype", () => {
  const be = createCpuBackend({ log: () => {} });
  const [rows, cols, stride, base, std] = [7, 33, 100, 2 ** 34 + 5, 0.02 / Math.sqrt(48)];
  const host = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    fillNormal(host.subarray(r * cols, (r + 1) * cols), 9, 0x100020, 0, std, base + r * stride);
  }
  for (const d of ["f64", "f32", "bf16", "f16"] as DType[]) {
    const t = be.empty(d, [rows, cols]);
    be.normalInit(t, std, { seed: 9, stream: 0x100020, iteration: 0, base, rowStride: stride, rowLen: cols });
    assert.deepEqual(be.toHost(t), be.toHost(be.fromHost(d, [rows, cols], host)), d);
  }
  assert.throws(
    () =>
      be.normalInit(be.empty("i32", [4]), 1, {
        seed: 1,
        stream: 1,
        iteration: 0,
        base: 0,
        rowStride: 4,
        rowLen: 4,
      }),
    /normalInit/,
  );
  assert.throws(
    () =>
      be.normalInit(be.empty("f32", [10]), 1, {
        seed: 1,
        stream: 1,
        iteration: 0,
        base: 0,
        rowStride: 4,
        rowLen: 4,
      }),
    (e: Error) =>
      e.message === "normalInit: addr.rowLen 4 must be a positive divisor of the element count 10",
  );
});
