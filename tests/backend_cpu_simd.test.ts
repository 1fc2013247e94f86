// CPU backend SIMD paths (WebAssembly kernels for cross-entropy and Adam) against the scalar f32
// reference loops they replace: element-for-element equality where the math is identical, and the
// sum of exps (f64 lanes) within half an f32 ulp of the f64 sum.
import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { PhiloxStream, streamId } from "../src/rng/philox.ts";
import type { RngAddress } from "../src/backend/backend.ts";

const be = createCpuBackend({ blas: "none", log: () => {} });
const f = Math.fround;

function rnd(n: number, seed: number, scale: number): Float32Array {
  const g = new PhiloxStream(seed, 7, 0);
  return Float32Array.from({ length: n }, (_, i) => (g.uniform(i) * 2 - 1) * scale);
}

/** Rows whose lengths exercise the 4-lane body and every tail length. */
const SHAPES: [number, number][] = [[3, 1031], [2, 4096], [5, 130], [1, 50307]];

function ceRef(L: Float32Array, V: number, tg: number[]) {
  const rows = L.length / V;
  const mx = new Float32Array(rows), tl = new Float32Array(rows), se = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const o = r * V;
    let m = -Infinity;
    for (let j = 0; j < V; j++) if (L[o + j] > m) m = L[o + j];
    mx[r] = m;
    tl[r] = L[o + tg[r]];
    let s64 = 0;
    for (let j = 0; j < V; j++) {
      const e = f(Math.exp(f(L[o + j] - m)));
      s64 += e;
    }
    se[r] = s64;
  }
  return { mx, tl, se };
}

Deno.test("simd cross-entropy: row max, sum of exps, gradient match the scalar f32 loops", () => {
  for (const [rows, V] of SHAPES) {
    const L = rnd(rows * V, V, 12);
    L[5] = -1e30; // far below the exp underflow
    L[V + 3] = 40; // a dominant logit in row 1
    const tg = Array.from({ length: rows }, (_, r) => (r * 977 + 5) % V), dls = [1, 0.5, 2, 0.25, 3];
    const ref = ceRef(L, V, tg);
    const logits = be.fromHost("f32", [rows, V], L), targets = be.fromHost("i32", [rows], tg);
    const mx = be.empty("f32", [rows]), tl = be.empty("f32", [rows]), se = be.empty("f32", [rows]);
    be.ceStats(logits, targets, 0, mx, tl);
    assert.deepEqual(be.toHost(mx), ref.mx, `rowMax V=${V}`);
    assert.deepEqual(be.toHost(tl), ref.tl, `targetLogit V=${V}`);
    be.ceSumExp(logits, mx, se);
    const got = be.toF64(se);
    for (let r = 0; r < rows; r++) {
      // The f32 terms are summed in f64 and rounded once on store: within half an f32 ulp of the f64 sum.
      const bound = 2 ** -24 * ref.se[r] * (1 + 1e-9);
      assert.ok(Math.abs(got[r] - ref.se[r]) <= bound, `sumExp[${r}] ${got[r]} vs ${ref.se[r]} (V=${V})`);
    }
    const dloss = be.fromHost("f32", [rows], dls.slice(0, rows));
    const dlog = be.empty("f32", [rows, V]);
    be.ceBwd(logits, targets, 0, mx, se, dloss, dlog);
    const D = be.toHost(dlog) as Float32Array, S = be.toHost(se) as Float32Array;
    let diff = 0;
    for (let r = 0; r < rows; r++) {
      const o = r * V, inv = f(1 / S[r]), d = dls[r], m = ref.mx[r];
      for (let j = 0; j < V; j++) {
        let w = f(d * f(f(Math.exp(f(L[o + j] - m))) * inv));
        if (j === tg[r]) w = f(d * f(f(f(Math.exp(f(L[o + j] - m))) * inv) - 1));
        if (w !== D[o + j]) diff++;
      }
    }
    // exp is evaluated to ~2e-16 and rounded to f32: equal to fround(Math.exp) except at ~1e-8 odds.
    assert.ok(diff <= 1, `ceBwd V=${V}: ${diff} elements differ from the scalar loop`);
    // In place (dlogits aliasing logits) gives the same gradient.
    be.ceBwd(logits, targets, 0, mx, se, dloss, logits);
    assert.deepEqual(be.toHost(logits), D, `in-place ceBwd V=${V}`);
  }
});

Deno.test("simd cross-entropy: NaN and infinite logits propagate like the scalar loop", () => {
  const V = 256;
  const L = rnd(2 * V, 3, 4);
  L[17] = NaN;
  L[V + 9] = -Infinity;
  const logits = be.fromHost("f32", [2, V], L), targets = be.fromHost("i32", [2], [0, 1]);
  const mx = be.empty("f32", [2]), tl = be.empty("f32", [2]), se = be.empty("f32", [2]);
  be.ceStats(logits, targets, 0, mx, tl);
  let m0 = -Infinity;
  for (let j = 0; j < V; j++) if (L[j] > m0) m0 = L[j];
  assert.equal(be.toF64(mx)[0], m0, "NaN is skipped by the max");
  be.ceSumExp(logits, mx, se);
  const s = be.toF64(se);
  assert.ok(Number.isNaN(s[0]), "NaN logit gives a NaN sum");
  assert.ok(Number.isFinite(s[1]) && s[1] >= 1, "-Infinity logit contributes exp(-inf) = 0");
});

Deno.test("simd adamStep equals the scalar AdamW loop bit for bit", () => {
  for (const n of [64, 1001, 40003]) {
    const p0 = rnd(n, 1, 1), g = rnd(n, 2, 0.1), m0 = rnd(n, 3, 0.01), v0 = rnd(n, 4, 1e-4).map(Math.abs);
    g[7] = 0;
    v0[7] = 0;
    const args = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 3 };
    const P = be.fromHost("f32", [n], p0), G = be.fromHost("f32", [n], g);
    const M = be.fromHost("f32", [n], m0), Vt = be.fromHost("f32", [n], v0);
    be.adamStep(P, G, M, Vt, args);
    const b1 = f(0.9), b2 = f(0.999), lr = f(1e-3), eps = f(1e-8), wd = f(0.01);
    const ob1 = f(1 - b1), ob2 = f(1 - b2), bc1 = f(1 - f(b1 ** 3)), bc2 = f(1 - f(b2 ** 3));
    const wp = new Float32Array(n), wm = new Float32Array(n), wv = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const mi = f(f(b1 * m0[i]) + f(ob1 * g[i]));
      const vi = f(f(b2 * v0[i]) + f(f(ob2 * g[i]) * g[i]));
      const upd = f(f(f(mi / bc1) / f(f(Math.sqrt(f(vi / bc2))) + eps)) + f(wd * p0[i]));
      wm[i] = mi;
      wv[i] = vi;
      wp[i] = f(p0[i] - f(lr * upd));
    }
    assert.deepEqual(be.toHost(M), wm, `m n=${n}`);
    assert.deepEqual(be.toHost(Vt), wv, `v n=${n}`);
    assert.deepEqual(be.toHost(P), wp, `param n=${n}`);
  }
});

Deno.test("simd biasGelu forward/backward equal the scalar tanh-GeLU loops (incl. saturated inputs)", () => {
  const rows = 37, w = 68; // 2516 elements: SIMD path (w % 4 == 0), several bias rows per chunk
  const xs = rnd(rows * w, 5, 6), bs = rnd(w, 6, 0.5), dys = rnd(rows * w, 7, 1);
  for (const [i, v] of [[3, -200], [9, 300], [20, -9.2], [21, -8.7], [40, 0], [41, -0]]) xs[i] = v;
  const sig = (v: number) => {
    const z = -1.5957691216057308 * (v + 0.044715 * v * v * v);
    return 1 / (1 + (z < -40 ? 0 : Math.exp(z)));
  };
  const grad = (v: number) => {
    const s = sig(v);
    return s + 2 * v * s * (1 - s) * 0.7978845608028654 * (1 + 3 * 0.044715 * v * v);
  };
  const x = be.fromHost("f32", [rows, w], xs), b = be.fromHost("f32", [w], bs);
  const dy = be.fromHost("f32", [rows, w], dys);
  const y = be.empty("f32", [rows, w]), dx = be.empty("f32", [rows, w]);
  be.biasGeluFwd(x, b, y);
  be.biasGeluBwd(dy, x, b, dx);
  const Y = be.toHost(y) as Float32Array, DX = be.toHost(dx) as Float32Array;
  let bad = 0;
  for (let i = 0; i < xs.length; i++) {
    const v = f(xs[i] + bs[i % w]);
    if (!Object.is(f(v * sig(v)), Y[i])) bad++;
    if (!Object.is(f(dys[i] * f(grad(v))), DX[i])) bad++;
  }
  assert.ok(bad <= 1, `${bad} GeLU values differ from the scalar loops`);
});

Deno.test("simd dropout / biasDropoutAdd follow the Philox addressing exactly (unaligned base, 2^32 block carry)", () => {
  const seed = 1234, stream = streamId(3, 5), iteration = 17, p = 0.3;
  const keepScale = f(1 / (1 - f(p)));
  for (const [rows, h, base] of [[6, 132, 12345], [3, 4096, 4 * 4294967295 - 600], [40, 128, 2]]) {
    const n = rows * h;
    const xs = rnd(n, 11, 3), bs = rnd(h, 12, 1), rs = rnd(n, 13, 1);
    xs[1] = -0;
    xs[2] = NaN;
    const a: RngAddress = { seed, stream, iteration, base, rowStride: h, rowLen: h };
    const g = new PhiloxStream(seed, stream, iteration);
    const x = be.fromHost("f32", [rows, h], xs), y = be.empty("f32", [rows, h]);
    be.dropout(x, p, a, y);
    const Y = be.toHost(y) as Float32Array;
    const b = be.fromHost("f32", [h], bs), r = be.fromHost("f32", [rows, h], rs);
    const o = be.empty("f32", [rows, h]), o2 = be.empty("f32", [rows, h]);
    be.biasDropoutAdd(x, b, r, p, a, o);
    be.biasDropoutAdd(x, null, r, p, a, o2);
    const O = be.toHost(o) as Float32Array, O2 = be.toHost(o2) as Float32Array;
    for (let i = 0; i < n; i++) {
      const keep = g.uniform(base + i) >= f(p);
      assert.ok(Object.is(Y[i], keep ? f(xs[i] * keepScale) : 0), `dropout[${i}] base ${base}`);
      const v = f(xs[i] + bs[i % h]);
      assert.ok(
        Object.is(O[i], f(rs[i] + (keep ? f(v * keepScale) : 0))),
        `biasDropoutAdd[${i}] base ${base}`,
      );
      assert.ok(
        Object.is(O2[i], f(rs[i] + (keep ? f(xs[i] * keepScale) : 0))),
        `no-bias [${i}] base ${base}`,
      );
    }
    // In place (y aliasing x) gives the same values.
    be.dropout(x, p, a, x);
    assert.deepEqual(be.toHost(x), Y);
  }
});

Deno.test("simd softmaxFwd equals the scalar f32 loop (causal and unmasked, -10000 fill, saturated rows)", () => {
  const b = 2, np = 3, sq = 20, sk = 24; // sk % 4 == 0: SIMD exp pass; sk > sq: causal offset
  const S = rnd(b * np * sq * sk, 21, 30);
  S[5] = 1e6; // one row dominated by a single score
  const scale = 0.37;
  const scores = be.fromHost("f32", [b, np, sq, sk], S), probs = be.empty("f32", [b, np, sq, sk]);
  for (const causal of [true, false]) {
    be.softmaxFwd(scores, scale, causal ? { kind: "causal" } : { kind: "none" }, probs);
    const P = be.toHost(probs) as Float32Array;
    const row = new Float32Array(sk), sc = f(scale);
    let bad = 0;
    for (let r = 0; r < b * np * sq; r++) {
      const i = r % sq, o = r * sk;
      const end = causal ? Math.min(sk, Math.max(0, i + (sk - sq) + 1)) : sk;
      let mx = -Infinity;
      for (let j = 0; j < end; j++) {
        row[j] = sc * S[o + j];
        if (row[j] > mx) mx = row[j];
      }
      if (end < sk) {
        row.fill(-10000, end, sk);
        if (mx < -10000) mx = -10000;
      }
      let sum = 0;
      for (let j = 0; j < sk; j++) {
        const d = row[j] - mx;
        row[j] = d < -110 ? 0 : Math.exp(d);
        sum += row[j];
      }
      sum = f(sum);
      for (let j = 0; j < sk; j++) if (!Object.is(f(row[j] / sum), P[o + j])) bad++;
    }
    assert.ok(bad <= 1, `softmaxFwd causal=${causal}: ${bad} probabilities differ from the scalar loop`);
  }
});

Deno.test("sumSquares of a long f32 vector: within 1e-13 of a compensated f64 sum, deterministic", () => {
  for (const n of [100, 70001, 200003]) {
    const xs = rnd(n, 31, 2);
    // Neumaier-compensated sum of the exact f64 squares: an independent reference to ~1e-16.
    let s = 0, c = 0;
    for (let i = 0; i < n; i++) {
      const v = xs[i] * xs[i], t = s + v;
      c += Math.abs(s) >= v ? (s - t) + v : (v - t) + s;
      s = t;
    }
    const ref = 0.5 + (s + c);
    const out = be.fromHost("f64", [1], [0.5]), x = be.fromHost("f32", [n], xs);
    be.sumSquares(x, out, true);
    const got = be.toF64(out)[0];
    assert.ok(Math.abs(got - ref) <= 1e-13 * ref, `n=${n}: ${got} vs ${ref}`);
    be.sumSquares(x, out, false);
    assert.ok(Math.abs(be.toF64(out)[0] - (s + c)) <= 1e-13 * (s + c), `n=${n}: not accumulating`);
    const again = be.zeros("f64", [1]);
    be.sumSquares(x, again, false);
    assert.ok(Object.is(be.toF64(again)[0], be.toF64(out)[0]), `n=${n}: not the same bits twice`);
  }
});
