// Every long reduction on the CPU backend at the largest size it meets in GPT-345M / GPT-3-like runs,
// against an f64 reference, with the bound stated in each test (docs/architecture.md, "Numerics", lists
// them). f32 unit roundoff u = 2^-24. The CUDA kernels' versions are checked the same way in
// tests/cuda_emulated_ops.test.ts.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import { globalGradNorm } from "../src/optimizer/clip.ts";
import type { Param } from "../src/tensor/param.ts";
import { maskedLossSums } from "../src/transformer/lm_head.ts";

const be = createCpuBackend({ log: () => {} });
const U = 2 ** -24;

function lcg(seed: number) {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}
function normals(n: number, seed: number, sd = 1, mean = 0): Float32Array {
  const u = lcg(seed), out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = mean + sd * Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
  }
  return out;
}
/** Gradient-like values: magnitudes spread over ~6 decades (rare-token rows of an embedding). */
function gradLike(n: number, seed: number): Float32Array {
  const u = lcg(seed), out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const r = u();
    out[i] = (r - 0.5) * 10 ** -(Math.floor(r * 2 ** 16) % 7);
  }
  return out;
}
/** Neumaier-compensated f64 sum of f(i): a reference good to ~1e-16 relative. */
function refSum(n: number, f: (i: number) => number): number {
  let s = 0, c = 0;
  for (let i = 0; i < n; i++) {
    const v = f(i), t = s + v;
    c += Math.abs(s) >= Math.abs(v) ? (s - t) + v : (v - t) + s;
    s = t;
  }
  return s + c;
}

Deno.test("sumSquares at 10^8 elements: within 1e-12 of f64 (an in-order f32 sum is > 1e-4 off), same bits twice", () => {
  const n = 100_000_000, xs = gradLike(n, 1);
  const ref = refSum(n, (i) => xs[i] * xs[i]);
  let f32 = 0;
  for (let i = 0; i < n; i++) f32 = Math.fround(f32 + Math.fround(xs[i] * xs[i]));
  assert.ok(Math.abs(f32 - ref) / ref > 1e-4, `the data should defeat an f32 running sum (${f32} vs ${ref})`);
  const x = be.fromHost("f32", [n], xs), out = be.zeros("f64", [1]);
  be.sumSquares(x, out, false);
  const got = be.toF64(out)[0];
  assert.ok(Math.abs(got - ref) <= 1e-12 * ref, `sumSquares ${got} vs f64 ${ref}`);
  be.sumSquares(x, out, false);
  assert.ok(Object.is(be.toF64(out)[0], got));
  // The overflow check over the same 10^8 elements: one NaN at the very end is found.
  const flag = be.zeros("f32", [1]);
  be.nonFinite(x, flag);
  assert.equal(be.toF64(flag)[0], 0);
  xs[n - 1] = NaN;
  be.nonFinite(be.fromHost("f32", [n], xs), flag);
  assert.equal(be.toF64(flag)[0], 1);
});

Deno.test("grad norm with a GPT-2-sized word embedding (38.6M elements): within 1e-7 of f64", async () => {
  const shapes: [string, number[]][] = [["wte", [50257, 768]], ["wpe", [1024, 768]], ["ln", [768]]];
  const params: Param[] = [];
  let ref = 0;
  shapes.forEach(([name, shape], k) => {
    const n = shape.reduce((a, b) => a * b, 1), g = gradLike(n, 10 + k);
    ref += refSum(n, (i) => g[i] * g[i]);
    params.push({
      name,
      value: be.zeros("f32", shape),
      grad: be.fromHost("f32", shape, g),
      main: null,
      noWeightDecay: false,
      tensorParallel: null,
      shared: false,
    });
  });
  const norm = await globalGradNorm(be, params);
  assert.ok(Math.abs(norm - Math.sqrt(ref)) <= 1e-7 * Math.sqrt(ref), `${norm} vs ${Math.sqrt(ref)}`);
  for (const p of params) {
    be.free(p.value);
    be.free(p.grad);
  }
});

Deno.test("cross-entropy over a 50304-token vocabulary: sum of exps within u, loss within 2u of f64", () => {
  // GPT-2 / GPT-345M / GPT-3 vocabulary padded for TP=1 (the longest row); peaked and flat logits.
  const V = 50304, rows = 6;
  const L = new Float32Array(rows * V);
  for (let r = 0; r < rows; r++) L.set(normals(V, 20 + r, [0.1, 1, 3, 6, 1, 3][r]), r * V);
  const tg = Array.from({ length: rows }, (_, r) => (r * 7919) % V);
  const logits = be.fromHost("f32", [rows, V], L), targets = be.fromHost("i32", [rows], tg);
  const mx = be.empty("f32", [rows]), tl = be.empty("f32", [rows]), se = be.empty("f32", [rows]);
  const loss = be.empty("f32", [rows]);
  be.ceStats(logits, targets, 0, mx, tl);
  be.ceSumExp(logits, mx, se);
  be.ceLoss(mx, se, tl, loss);
  const M = be.toF64(mx), S = be.toF64(se), LS = be.toF64(loss);
  for (let r = 0; r < rows; r++) {
    const o = r * V;
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, L[o + j]);
    const s = refSum(V, (j) => Math.exp(L[o + j] - m));
    const lref = Math.log(s) + m - L[o + tg[r]];
    // The f32 terms exp(x - max) carry u each; their f64 sum is rounded once.
    assert.ok(Math.abs(S[r] - s) <= 1.01 * U * s + U * s, `row ${r}: sum of exps ${S[r]} vs ${s}`);
    assert.ok(
      Math.abs(LS[r] - lref) <= 2 * U * (Math.abs(lref) + Math.abs(m) + 1),
      `row ${r}: loss ${LS[r]}`,
    );
    assert.equal(M[r], m);
  }
});

Deno.test("LayerNorm statistics over h = 12288 (GPT-3) and 1024 (GPT-345M): mean and rstd within u of f64", () => {
  for (const h of [12288, 1024]) {
    const rows = 8, X = new Float32Array(rows * h);
    for (let r = 0; r < rows; r++) X.set(normals(h, 30 + r, 1 + r, r % 2 ? 1.5 : -20), r * h);
    const y = be.empty("f32", [rows, h]), mean = be.empty("f32", [rows]), rstd = be.empty("f32", [rows]);
    const gamma = be.fromHost("f32", [h], new Float32Array(h).fill(1)), beta = be.zeros("f32", [h]);
    be.layerNormFwd(be.fromHost("f32", [rows, h], X), gamma, beta, 1e-5, y, mean, rstd);
    const M = be.toF64(mean), R = be.toF64(rstd), Y = be.toF64(y);
    for (let r = 0; r < rows; r++) {
      const o = r * h, mu = refSum(h, (j) => X[o + j]) / h;
      const rs = 1 / Math.sqrt(refSum(h, (j) => (X[o + j] - mu) ** 2) / h + 1e-5);
      // mean: rounded once (u |mu|); rstd: the f32-rounded mean enters the deviations (u |mu| rs).
      assert.ok(Math.abs(M[r] - mu) <= 1.01 * U * Math.abs(mu), `h=${h} row ${r}: mean ${M[r]} vs ${mu}`);
      assert.ok(
        Math.abs(R[r] - rs) <= U * rs * (1.01 + Math.abs(mu) * rs),
        `h=${h} row ${r}: rstd ${R[r]} vs ${rs}`,
      );
      // Output: the mean's rounding (u |mu| rs) plus ~3 roundings of the normalized value.
      let worst = 0;
      for (let j = 0; j < h; j++) {
        const yr = (X[o + j] - mu) * rs;
        worst = Math.max(worst, Math.abs(Y[o + j] - yr) / (U * (Math.abs(mu) * rs + Math.abs(yr))));
      }
      assert.ok(worst <= 4, `h=${h} row ${r}: output off by ${worst} u (|mu| rs + |y|)`);
    }
  }
});

Deno.test("softmax over 2048 keys (GPT-3 sequence), causal: every probability within 3u of f64", () => {
  const s = 2048, S = normals(s * s, 40, 4);
  const scores = be.fromHost("f32", [1, 1, s, s], S), probs = be.empty("f32", [1, 1, s, s]);
  be.softmaxFwd(scores, 0.125, { kind: "causal" }, probs);
  const P = be.toF64(probs);
  let worst = 0;
  for (const i of [0, 1, 700, 2046, 2047]) {
    const o = i * s, sc = (j: number) => Math.fround(0.125 * S[o + j]);
    let m = -Infinity;
    for (let j = 0; j <= i; j++) m = Math.max(m, sc(j));
    const den = refSum(i + 1, (j) => Math.exp(sc(j) - m));
    for (let j = 0; j < s; j++) {
      const p = j <= i ? Math.exp(sc(j) - m) / den : 0;
      worst = Math.max(worst, p === 0 ? P[o + j] : Math.abs(P[o + j] - p) / p);
    }
  }
  assert.ok(worst <= 3 * U, `worst relative error ${worst}`);
});

Deno.test("bias / LayerNorm-parameter gradients summed over 16384 tokens: within u of the f64 sum", () => {
  // sumRows (column sums: bias grads) and layerNormBwd's dgamma / dbeta reduce over every token of a
  // micro-batch (GPT-345M: 8 x 2048). Values with a common offset make an f32 running sum drift.
  const T = 16384, h = 64, X = normals(T * h, 50, 1e-3, 2e-4);
  const out = be.zeros("f32", [h]);
  be.sumRows(be.fromHost("f32", [T, h], X), out, false);
  const O = be.toF64(out);
  for (let j = 0; j < h; j++) {
    const ref = refSum(T, (r) => X[r * h + j]);
    assert.ok(Math.abs(O[j] - ref) <= 1.01 * U * Math.abs(ref), `column ${j}: ${O[j]} vs ${ref}`);
  }
  const x = normals(T * h, 51), dy = normals(T * h, 52, 1e-3, 2e-4);
  const ones = be.fromHost("f32", [h], new Float32Array(h).fill(1));
  const y = be.empty("f32", [T, h]), mean = be.empty("f32", [T]), rstd = be.empty("f32", [T]);
  const xt = be.fromHost("f32", [T, h], x);
  be.layerNormFwd(xt, ones, be.zeros("f32", [h]), 1e-5, y, mean, rstd);
  const dx = be.empty("f32", [T, h]), dg = be.zeros("f32", [h]), db = be.zeros("f32", [h]);
  be.layerNormBwd(be.fromHost("f32", [T, h], dy), xt, ones, mean, rstd, dx, dg, db, false);
  const DG = be.toF64(dg), DB = be.toF64(db), M = be.toF64(mean), R = be.toF64(rstd);
  for (let j = 0; j < h; j++) {
    const refB = refSum(T, (r) => dy[r * h + j]);
    const refG = refSum(T, (r) => dy[r * h + j] * (x[r * h + j] - M[r]) * R[r]);
    const magG = refSum(T, (r) => Math.abs(dy[r * h + j] * (x[r * h + j] - M[r]) * R[r]));
    assert.ok(Math.abs(DB[j] - refB) <= 1.01 * U * Math.abs(refB), `dbeta ${j}: ${DB[j]} vs ${refB}`);
    // Each term's xhat is formed in f64 from the stored mean / rstd: 2u per term, then one rounding.
    assert.ok(Math.abs(DG[j] - refG) <= U * (1.01 * Math.abs(refG) + 2 * magG), `dgamma ${j}`);
  }
});

Deno.test("all-reduce over 8 ranks of 10^6 elements: f32 sums in group order within 7u sum|x| of f64, same bits everywhere", async () => {
  const n = 1_000_000, dp = 8;
  const world = new LocalWorld(be, { tp: 1, pp: 1, dp }, { timeoutMs: 60_000 });
  const data = Array.from({ length: dp }, (_, r) => normals(n, 60 + r, 10 ** -(r % 4)));
  const results = await world.run(async (r) => {
    const t = be.fromHost("f32", [n], data[r]);
    await world.communicator(r).allReduce(t, "sum", "data");
    const out = be.toHost(t) as Float32Array;
    be.free(t);
    return out;
  });
  let worst = 0;
  for (let i = 0; i < n; i++) {
    let s = 0, mag = 0;
    for (let r = 0; r < dp; r++) {
      s += data[r][i];
      mag += Math.abs(data[r][i]);
    }
    worst = Math.max(worst, Math.abs(results[0][i] - s) / mag);
  }
  assert.ok(worst <= (dp - 1) * U, `worst error / sum|x| = ${worst}`);
  for (let r = 1; r < dp; r++) assert.deepEqual(results[r], results[0], `rank ${r} differs`);
});

Deno.test("loss over 16384 tokens (a micro-batch of 8 x 2048): masked sums within 1e-15 of f64", () => {
  // Per-token f32 losses near ln(50304) ~ 10.8 with small spreads: an f32 running sum drifts ~1e-6.
  const T = 16384, u = lcg(70), loss = new Float64Array(T), mask = new Float64Array(T);
  for (let i = 0; i < T; i++) {
    loss[i] = Math.fround(10.8 + (u() - 0.5) * 1e-3);
    mask[i] = u() < 0.9 ? 1 : 0;
  }
  const { lossSum, maskSum } = maskedLossSums(loss, mask);
  const ref = refSum(T, (i) => loss[i] * mask[i]);
  assert.equal(maskSum, refSum(T, (i) => mask[i]));
  assert.ok(Math.abs(lossSum - ref) <= 1e-15 * ref, `${lossSum} vs ${ref}`);
  let f32 = 0;
  for (let i = 0; i < T; i++) f32 = Math.fround(f32 + Math.fround(loss[i] * mask[i]));
  assert.ok(Math.abs(f32 - ref) / ref > 1e-8, "an f32 running sum would be measurably off");
});
