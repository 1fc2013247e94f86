// Finite-difference gradient checks in f64 for every backward op of the CPU backend.
// L = sum(w * f(inputs)) with fixed random weights w; each analytic gradient (from the *Bwd op with
// dy = w) is compared against central differences of L in every input element.
import assert from "node:assert/strict";
import { type CpuStorage, createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { PhiloxStream, streamId } from "../src/rng/philox.ts";
import type { Tensor } from "../src/tensor/tensor.ts";
import type { RngAddress, SoftmaxMask } from "../src/backend/backend.ts";

const be = createCpuBackend({ log: () => {} });
const H = 1e-6;

function rnd(n: number, seed: number, scale = 1): number[] {
  const g = new PhiloxStream(seed, 55, 0);
  return Array.from({ length: n }, (_, i) => (g.uniform(i) * 2 - 1) * scale);
}

function t64(shape: number[], seed: number, scale = 1): Tensor {
  return be.fromHost("f64", shape, rnd(shape.reduce((a, b) => a * b, 1), seed, scale));
}

function data(t: Tensor): Float64Array {
  return ((t.storage as CpuStorage).data as Float64Array).subarray(t.offset, t.offset + t.size);
}

/** loss(): runs the forward and returns sum(w * out). Checks grad against central differences. */
function fdCheck(what: string, x: Tensor, grad: ArrayLike<number>, loss: () => number, tol = 1e-6): void {
  const d = data(x);
  assert.equal(grad.length, d.length, `${what}: grad length`);
  for (let i = 0; i < d.length; i++) {
    const old = d[i];
    d[i] = old + H;
    const lp = loss();
    d[i] = old - H;
    const lm = loss();
    d[i] = old;
    const num = (lp - lm) / (2 * H);
    assert.ok(
      Math.abs(num - grad[i]) <= tol * (1 + Math.abs(num)),
      `${what}[${i}]: analytic ${grad[i]}, numeric ${num}`,
    );
  }
}

function dot(w: Tensor, out: Tensor): number {
  const a = be.toF64(w), b = be.toF64(out);
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

Deno.test("grad: layerNorm (x, gamma, beta)", () => {
  const rows = 3, h = 5;
  const x = t64([rows, h], 1, 2), g = t64([h], 2), b = t64([h], 3), w = t64([rows, h], 4);
  const y = be.empty("f64", [rows, h]), mean = be.empty("f64", [rows]), rstd = be.empty("f64", [rows]);
  const loss = () => (be.layerNormFwd(x, g, b, 1e-5, y, mean, rstd), dot(w, y));
  loss();
  const dx = be.empty("f64", [rows, h]),
    dg = be.fromHost("f64", [h], [1, 1, 1, 1, 1]),
    db = be.empty("f64", [h]);
  be.layerNormBwd(w, x, g, mean, rstd, dx, dg, db, false);
  fdCheck("dx", x, be.toF64(dx), loss);
  fdCheck("dgamma", g, be.toF64(dg), loss);
  fdCheck("dbeta", b, be.toF64(db), loss);
  // accumulate adds to the existing gradient.
  be.layerNormBwd(w, x, g, mean, rstd, dx, dg, db, true);
  fdCheck("dbeta accumulated / 2", b, be.toF64(db).map((v) => v / 2), loss);
});

Deno.test("grad: bias-GeLU (x and bias via sumRows)", () => {
  const rows = 3, f = 4;
  const x = t64([rows, f], 5, 3), bias = t64([f], 6), w = t64([rows, f], 7);
  const y = be.empty("f64", [rows, f]);
  const loss = () => (be.biasGeluFwd(x, bias, y), dot(w, y));
  const dx = be.empty("f64", [rows, f]), db = be.empty("f64", [f]);
  be.biasGeluBwd(w, x, bias, dx);
  be.sumRows(dx, db, false);
  fdCheck("dx", x, be.toF64(dx), loss);
  fdCheck("dbias", bias, be.toF64(db), loss);
});

Deno.test("grad: softmax with none / causal / padding masks", () => {
  const b = 2, np = 2;
  for (const [sq, sk] of [[3, 3], [2, 4]]) {
    const masks: SoftmaxMask[] = [
      { kind: "none" },
      { kind: "causal" },
      // Key 0 stays unmasked: a fully masked row is uniform and constant in the scores, while the
      // interface's backward (probs-only formula, as Megatron's kernel) still passes gradient there.
      {
        kind: "padding",
        mask: be.fromHost(
          "u8",
          [b, sq, sk],
          rnd(b * sq * sk, 8).map((v, i) => (i % sk !== 0 && v > 0.4 ? 1 : 0)),
        ),
      },
    ];
    for (const mask of masks) {
      const s = t64([b, np, sq, sk], 9, 2), w = t64([b, np, sq, sk], 10);
      const p = be.empty("f64", [b, np, sq, sk]), ds = be.empty("f64", [b, np, sq, sk]);
      const loss = () => (be.softmaxFwd(s, 0.8, mask, p), dot(w, p));
      loss();
      be.softmaxBwd(w, p, 0.8, ds);
      fdCheck(`dscores ${mask.kind} ${sq}x${sk}`, s, be.toF64(ds), loss);
    }
  }
});

Deno.test("grad: cross-entropy pieces composed (ceStats, ceSumExp, ceLoss -> ceBwd)", () => {
  const rows = 3, V = 6;
  const logits = t64([rows, V], 11, 3), targets = be.fromHost("i32", [rows], [2, 0, 5]);
  const dloss = be.fromHost("f64", [rows], [1, -0.5, 2]);
  const mx = be.empty("f64", [rows]), tl = be.empty("f64", [rows]), se = be.empty("f64", [rows]);
  const l = be.empty("f64", [rows]);
  const loss = () => {
    be.ceStats(logits, targets, 0, mx, tl);
    be.ceSumExp(logits, mx, se);
    be.ceLoss(mx, se, tl, l);
    return dot(dloss, l);
  };
  loss();
  const dl = be.empty("f64", [rows, V]);
  be.ceBwd(logits, targets, 0, mx, se, dloss, dl);
  fdCheck("dlogits", logits, be.toF64(dl), loss);
});

Deno.test("grad: embedding table", () => {
  const table = t64([5, 3], 12), ids = be.fromHost("i32", [4], [7, 9, 7, 3]); // vocabStart 5: 3 is out of shard
  const w = t64([4, 3], 13), out = be.empty("f64", [4, 3]);
  const loss = () => (be.embeddingFwd(ids, table, out, 5), dot(w, out));
  const dt = be.zeros("f64", [5, 3]);
  be.embeddingBwd(ids, w, dt, 5);
  fdCheck("dtable", table, be.toF64(dt), loss);
});

Deno.test("grad: gemm for all transposes (gradients computed with gemm)", () => {
  const m = 3, n = 4, k = 5;
  for (const tA of [false, true]) {
    for (const tB of [false, true]) {
      const a = t64(tA ? [k, m] : [m, k], 14), b = t64(tB ? [n, k] : [k, n], 15), w = t64([m, n], 16);
      const c = be.empty("f64", [m, n]);
      const loss = () => (be.gemm({ transA: tA, transB: tB, m, n, k, a, b, c }), dot(w, c));
      const da = be.empty("f64", a.shape), db = be.empty("f64", b.shape);
      // dop(A) = W op(B)^T, dop(B) = op(A)^T W; a transposed operand gets the transposed product.
      if (!tA) be.gemm({ transA: false, transB: !tB, m, n: k, k: n, a: w, b, c: da });
      else be.gemm({ transA: tB, transB: true, m: k, n: m, k: n, a: b, b: w, c: da });
      if (!tB) be.gemm({ transA: !tA, transB: false, m: k, n, k: m, a, b: w, c: db });
      else be.gemm({ transA: true, transB: tA, m: n, n: k, k: m, a: w, b: a, c: db });
      fdCheck(`dA tA=${tA} tB=${tB}`, a, be.toF64(da), loss);
      fdCheck(`dB tA=${tA} tB=${tB}`, b, be.toF64(db), loss);
    }
  }
});

Deno.test("grad: dropout and biasDropoutAdd (backward is dropout with the same address)", () => {
  const rows = 4, h = 6, p = 0.3;
  const addr: RngAddress = {
    seed: 3,
    stream: streamId(4, 1),
    iteration: 2,
    base: 100,
    rowStride: 50,
    rowLen: h,
  };
  const x = t64([rows, h], 17), w = t64([rows, h], 18), y = be.empty("f64", [rows, h]);
  const loss = () => (be.dropout(x, p, addr, y), dot(w, y));
  const dx = be.empty("f64", [rows, h]);
  be.dropout(w, p, addr, dx);
  fdCheck("dropout dx", x, be.toF64(dx), loss);
  const bias = t64([h], 19), res = t64([rows, h], 20), out = be.empty("f64", [rows, h]);
  const loss2 = () => (be.biasDropoutAdd(x, bias, res, p, addr, out), dot(w, out));
  const db = be.empty("f64", [h]);
  be.sumRows(dx, db, false);
  fdCheck("biasDropoutAdd dx", x, be.toF64(dx), loss2);
  fdCheck("biasDropoutAdd dbias", bias, be.toF64(db), loss2);
  fdCheck("biasDropoutAdd dresidual", res, be.toF64(w), loss2);
});
