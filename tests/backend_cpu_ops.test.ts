// CPU backend ops: known answers and independent naive f64 reference loops; error messages.
import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { KEY_HI, philox4x32, PhiloxStream, streamId } from "../src/rng/philox.ts";
import { PHILOX_CHUNK_BLOCKS, PhiloxWasm } from "../src/backend/cpu/philox_wasm.ts";
import { bf16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from "../src/tensor/dtype.ts";
import type { RngAddress } from "../src/backend/backend.ts";

const be = createCpuBackend({ log: () => {} });

/** Deterministic pseudo-random values in [-1, 1). */
function rnd(n: number, seed = 1): number[] {
  const g = new PhiloxStream(seed, 99, 0);
  return Array.from({ length: n }, (_, i) => g.uniform(i) * 2 - 1);
}

function close(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what = ""): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    assert.ok(err <= tol * (1 + Math.abs(want[i])), `${what}[${i}]: got ${got[i]}, want ${want[i]}`);
  }
}

Deno.test("memory: round trips, raw half bits, zeros", () => {
  const f = be.fromHost("f32", [2, 2], [1.5, -2, 3.25, 1e-3]);
  assert.deepEqual(Array.from(be.toHost(f) as Float32Array), [1.5, -2, 3.25, Math.fround(1e-3)]);
  const h = be.fromHost("bf16", [3], [1, 1 + 2 ** -8, -3]);
  assert.deepEqual(Array.from(be.toHost(h) as Uint16Array), [0x3f80, 0x3f80, 0xc040]);
  const raw = be.fromHost("f16", [2], new Uint16Array([0x3c00, 0x7c00]));
  assert.deepEqual(Array.from(be.toF64(raw)), [1, Infinity]);
  const i64 = be.fromHost("i64", [2], [5, -7]);
  assert.deepEqual(Array.from(be.toHost(i64) as BigInt64Array), [5n, -7n]);
  assert.deepEqual(Array.from(be.toF64(be.zeros("f64", [3]))), [0, 0, 0]);
  assert.throws(() => be.fromHost("f32", [2, 2], [1, 2, 3]), /fromHost: data has 3 elements, expected 4/);
});

Deno.test("use after free names the op, also through views", () => {
  const t = be.fromHost("f32", [4], [1, 2, 3, 4]);
  const v = t.narrow(1, 2);
  const out = be.empty("f32", [4]);
  be.free(t);
  assert.throws(() => be.scale(t, 2, out), /^Error: scale: tensor used after free$/);
  assert.throws(() => be.toF64(v), /toF64: tensor used after free/);
  assert.throws(() => be.free(t), /already freed/);
});

Deno.test("shape/dtype mismatch messages name the op and both shapes", () => {
  const x = be.zeros("f32", [2, 4]);
  assert.throws(() => be.add(x, be.zeros("f32", [3]), x), /add: a \[2, 4\] and b \[3\] differ/);
  assert.throws(
    () => be.biasGeluFwd(x, be.zeros("f32", [3]), x),
    /biasGeluFwd: bias has shape \[3\], expected \[4\]/,
  );
  assert.throws(
    () =>
      be.layerNormFwd(
        x,
        be.zeros("f32", [4]),
        be.zeros("f32", [4]),
        1e-5,
        be.zeros("f32", [4, 2]),
        be.zeros("f32", [2]),
        be.zeros("f32", [2]),
      ),
    /layerNormFwd: y has shape \[4, 2\], expected \[2, 4\]/,
  );
  assert.throws(
    () =>
      be.gemm({
        transA: false,
        transB: false,
        m: 2,
        n: 2,
        k: 4,
        a: x,
        b: be.zeros("f16", [4, 2]),
        c: be.zeros("f32", [2, 2]),
      }),
    /gemm: B has dtype f16, expected f32/,
  );
  assert.throws(
    () =>
      be.gemm({
        transA: false,
        transB: false,
        m: 2,
        n: 3,
        k: 4,
        a: x,
        b: be.zeros("f32", [4, 2]),
        c: be.zeros("f32", [2, 3]),
      }),
    /gemm: B \[4, 2\] has 8 elements, but 1 x \[4, 3\]/,
  );
  assert.throws(() => be.scale(be.zeros("i32", [2]), 1, be.zeros("f32", [2])), /scale: x has dtype i32/);
});

Deno.test("copy converts dtypes (RNE to half, truncation to int)", () => {
  const src = be.fromHost("f64", [4], [1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.7, 70000]);
  const bf = be.empty("bf16", [4]);
  be.copy(src, bf);
  assert.deepEqual(Array.from(be.toHost(bf) as Uint16Array), [
    0x3f80,
    0x3f82,
    f32ToBf16Bits(-2.7),
    f32ToBf16Bits(70000),
  ]);
  const h = be.empty("f16", [2, 2]);
  be.copy(src, h);
  assert.equal((be.toHost(h) as Uint16Array)[3], 0x7c00);
  const i = be.empty("i32", [4]);
  be.copy(src, i);
  assert.deepEqual(Array.from(be.toF64(i)), [1, 1, -2, 70000]);
  const l = be.empty("i64", [4]);
  be.copy(i, l);
  assert.deepEqual(Array.from(be.toF64(l)), [1, 1, -2, 70000]);
  const f = be.empty("f32", [4]);
  be.copy(bf, f);
  assert.equal(be.toF64(f)[2], bf16BitsToF32(f32ToBf16Bits(-2.7)));
});

Deno.test("fill, scale, add in f32 and half", () => {
  const t = be.empty("f16", [3]);
  be.fill(t, 1 / 3);
  assert.deepEqual(Array.from(be.toHost(t) as Uint16Array), [0x3555, 0x3555, 0x3555]);
  const a = be.fromHost("f32", [2], [1, 2]), b = be.fromHost("f32", [2], [2 ** -30, 4]);
  const o = be.empty("f32", [2]);
  be.add(a, b, o);
  assert.deepEqual(Array.from(be.toF64(o)), [1, 6]); // 1 + 2^-30 rounds to 1 in f32
  be.add(a, b, o, 2, -0.5);
  assert.deepEqual(Array.from(be.toF64(o)), [2, 2]); // 2 - 2^-31 rounds to 2 in f32
  const a64 = be.fromHost("f64", [1], [1]),
    b64 = be.fromHost("f64", [1], [2 ** -30]),
    o64 = be.empty("f64", [1]);
  be.add(a64, b64, o64);
  assert.equal(be.toF64(o64)[0], 1 + 2 ** -30); // all-f64 stays f64
  const ob = be.empty("bf16", [2]);
  be.scale(a, 1 / 3, ob);
  assert.deepEqual(Array.from(be.toHost(ob) as Uint16Array), [
    f32ToBf16Bits(Math.fround(1 / 3)),
    f32ToBf16Bits(Math.fround(2 * Math.fround(1 / 3))),
  ]);
});

Deno.test("transpose12 and sumRows", () => {
  const [A, B, C, D] = [2, 3, 4, 2];
  const x = be.fromHost("f32", [A, B, C, D], Array.from({ length: A * B * C * D }, (_, i) => i));
  const o = be.empty("f32", [A, C, B, D]);
  be.transpose12(x, o);
  const got = be.toF64(o);
  for (let a = 0; a < A; a++) {
    for (let b = 0; b < B; b++) {
      for (let c = 0; c < C; c++) {
        for (let d = 0; d < D; d++) {
          assert.equal(got[((a * C + c) * B + b) * D + d], ((a * B + b) * C + c) * D + d);
        }
      }
    }
  }
  assert.throws(
    () => be.transpose12(x, be.empty("f32", [A, B, C, D])),
    /transpose12: out has shape \[2, 3, 4, 2\], expected \[2, 4, 3, 2\]/,
  );
  const m = be.fromHost("f32", [3, 2], [1, 2, 3, 4, 5, 6]);
  const s = be.fromHost("f32", [2], [100, 200]);
  be.sumRows(m, s, true);
  assert.deepEqual(Array.from(be.toF64(s)), [109, 212]);
  be.sumRows(m, s, false);
  assert.deepEqual(Array.from(be.toF64(s)), [9, 12]);
});

Deno.test("layerNormFwd matches a naive f64 loop; mean/rstd saved", () => {
  const rows = 3, h = 8;
  const xs = rnd(rows * h, 2).map((v) => v * 3 + 1), gs = rnd(h, 3), bs = rnd(h, 4);
  const x = be.fromHost("f32", [rows, h], xs),
    g = be.fromHost("f32", [h], gs),
    b = be.fromHost("f32", [h], bs);
  const y = be.empty("f32", [rows, h]), mean = be.empty("f32", [rows]), rstd = be.empty("f32", [rows]);
  be.layerNormFwd(x, g, b, 1e-5, y, mean, rstd);
  const xf = Array.from(be.toF64(x));
  const want: number[] = [], wm: number[] = [], wr: number[] = [];
  for (let r = 0; r < rows; r++) {
    const row = xf.slice(r * h, r * h + h);
    const mu = row.reduce((s, v) => s + v, 0) / h;
    const v = row.reduce((s, x) => s + (x - mu) ** 2, 0) / h; // biased
    const rs = 1 / Math.sqrt(v + 1e-5);
    wm.push(mu), wr.push(rs);
    for (let j = 0; j < h; j++) want.push((row[j] - mu) * rs * Math.fround(gs[j]) + Math.fround(bs[j]));
  }
  close(be.toF64(y), want, 1e-5, "y");
  close(be.toF64(mean), wm, 1e-6, "mean");
  close(be.toF64(rstd), wr, 1e-5, "rstd");
  // bf16 input: result is the f32 computation rounded once.
  const xb = be.empty("bf16", [rows, h]), yb = be.empty("bf16", [rows, h]);
  be.copy(x, xb);
  be.layerNormFwd(xb, g, b, 1e-5, yb, mean, rstd);
  close(be.toF64(yb), want, 2 ** -7, "y bf16");
});

Deno.test("biasGelu forward known values", () => {
  const x = be.fromHost("f32", [2, 2], [1, -1, 0, 3]), b = be.fromHost("f32", [2], [0, 1]);
  const y = be.empty("f32", [2, 2]);
  be.biasGeluFwd(x, b, y);
  const gelu = (v: number) => 0.5 * v * (1 + Math.tanh(0.7978845608028654 * (v + 0.044715 * v ** 3)));
  close(be.toF64(y), [0.8411919906082768, 0, 0, gelu(4)], 1e-7);
});

function naiveSoftmax(
  s: number[],
  b: number,
  np: number,
  sq: number,
  sk: number,
  scale: number,
  masked: (bi: number, i: number, j: number) => boolean,
): number[] {
  const out: number[] = [];
  for (let bi = 0; bi < b; bi++) {
    for (let h = 0; h < np; h++) {
      for (let i = 0; i < sq; i++) {
        const o = ((bi * np + h) * sq + i) * sk;
        const row = s.slice(o, o + sk).map((v, j) => (masked(bi, i, j) ? -10000 : scale * v));
        const mx = Math.max(...row);
        const e = row.map((v) => Math.exp(v - mx));
        const z = e.reduce((a, c) => a + c, 0);
        out.push(...e.map((v) => v / z));
      }
    }
  }
  return out;
}

Deno.test("softmaxFwd: none, causal (sq == sk and sq < sk), padding broadcast over heads", () => {
  const b = 2, np = 2, scale = 0.7;
  for (const [sq, sk] of [[4, 4], [2, 5]]) {
    const s = rnd(b * np * sq * sk, 5).map((v) => v * 4);
    const st = be.fromHost("f32", [b, np, sq, sk], s), p = be.empty("f32", [b, np, sq, sk]);
    const sf = Array.from(be.toF64(st));
    be.softmaxFwd(st, scale, { kind: "none" }, p);
    close(be.toF64(p), naiveSoftmax(sf, b, np, sq, sk, scale, () => false), 1e-6, "none");
    be.softmaxFwd(st, scale, { kind: "causal" }, p);
    const causal = naiveSoftmax(sf, b, np, sq, sk, scale, (_b, i, j) => j > i + (sk - sq));
    close(be.toF64(p), causal, 1e-6, "causal");
    if (sq === sk) assert.equal(be.toF64(p)[1], 0); // row 0 sees only key 0: exp(-10000 - x) underflows
    const maskBits = rnd(b * sq * sk, 6).map((v) => (v > 0.3 ? 1 : 0));
    const mask = be.fromHost("u8", [b, sq, sk], maskBits);
    be.softmaxFwd(st, scale, { kind: "padding", mask }, p);
    const pad = naiveSoftmax(sf, b, np, sq, sk, scale, (bi, i, j) => maskBits[(bi * sq + i) * sk + j] === 1);
    close(be.toF64(p), pad, 1e-6, "padding");
  }
  // A fully masked row becomes uniform (every score is -10000), as in Megatron.
  const st = be.fromHost("f32", [1, 1, 1, 3], [5, 1, 2]), p = be.empty("f32", [1, 1, 1, 3]);
  be.softmaxFwd(st, 1, { kind: "padding", mask: be.fromHost("u8", [1, 1, 3], [1, 1, 1]) }, p);
  close(be.toF64(p), [1 / 3, 1 / 3, 1 / 3], 1e-7);
});

Deno.test("softmaxBwd known answer", () => {
  const probs = be.fromHost("f32", [1, 1, 1, 2], [0.25, 0.75]), dp = be.fromHost("f32", [1, 1, 1, 2], [1, 2]);
  const ds = be.empty("f32", [1, 1, 1, 2]);
  be.softmaxBwd(dp, probs, 2, ds);
  // s = 0.25 + 1.5 = 1.75; ds = 2 * p * (dp - s)
  close(be.toF64(ds), [2 * 0.25 * (1 - 1.75), 2 * 0.75 * (2 - 1.75)], 1e-7);
});

function addr(rowLen: number, rowStride = rowLen, base = 0): RngAddress {
  return { seed: 1234, stream: streamId(3, 5), iteration: 17, base, rowStride, rowLen };
}

Deno.test("dropout follows the Philox addressing exactly", () => {
  const rows = 3, len = 10, p = 0.3;
  const xs = rnd(rows * len, 7);
  const x = be.fromHost("f32", [rows, len], xs), y = be.empty("f32", [rows, len]);
  const a = addr(len, 1000, 12345);
  be.dropout(x, p, a, y);
  const g = new PhiloxStream(a.seed, a.stream, a.iteration);
  const s = Math.fround(1 / (1 - Math.fround(p)));
  const got = be.toF64(y);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < len; i++) {
      const keep = g.uniform(a.base + r * a.rowStride + i) >= Math.fround(p);
      assert.equal(got[r * len + i], keep ? Math.fround(Math.fround(xs[r * len + i]) * s) : 0);
    }
  }
  // p = 0 copies.
  be.dropout(x, 0, a, y);
  assert.deepEqual(Array.from(be.toF64(y)), Array.from(be.toF64(x)));
  // A column shard addressed with its global offset reproduces the full tensor's columns.
  const full = be.empty("f32", [rows, len]);
  be.dropout(x, p, addr(len, len, 0), full);
  const xr = be.fromHost(
    "f32",
    [rows, 4],
    Array.from({ length: rows * 4 }, (_, k) => xs[Math.floor(k / 4) * len + 6 + (k % 4)]),
  );
  const yr = be.empty("f32", [rows, 4]);
  be.dropout(xr, p, addr(4, len, 6), yr);
  const ff = be.toF64(full), fr = be.toF64(yr);
  for (let k = 0; k < rows * 4; k++) assert.equal(fr[k], ff[Math.floor(k / 4) * len + 6 + (k % 4)]);
  assert.throws(() => be.dropout(x, p, addr(7), y), /dropout: addr.rowLen 7 must be a positive divisor/);
  assert.throws(() => be.dropout(x, 1, a, y), /dropout: dropout probability must be in \[0, 1\)/);
});

Deno.test("dropout keep fraction ~ 1 - p; biasDropoutAdd = residual + dropout(x + bias)", () => {
  const n = 40000, p = 0.1;
  const x = be.empty("f32", [n]), y = be.empty("f32", [n]);
  be.fill(x, 1);
  be.dropout(x, p, addr(n), y);
  const kept = be.toF64(y).reduce((s, v) => s + (v !== 0 ? 1 : 0), 0) / n;
  assert.ok(Math.abs(kept - 0.9) < 0.01, `kept ${kept}`);
  const rows = 4, h = 6;
  const xt = be.fromHost("f32", [rows, h], rnd(rows * h, 8)), bias = be.fromHost("f32", [h], rnd(h, 9));
  const res = be.fromHost("f32", [rows, h], rnd(rows * h, 10));
  const out = be.empty("f32", [rows, h]), tmp = be.empty("f32", [rows, h]), dr = be.empty("f32", [rows, h]);
  const biasRows = be.fromHost(
    "f32",
    [rows, h],
    Array.from({ length: rows * h }, (_, i) => be.toF64(bias)[i % h]),
  );
  be.biasDropoutAdd(xt, bias, res, 0.4, addr(h), out);
  be.add(xt, biasRows, tmp);
  be.dropout(tmp, 0.4, addr(h), dr);
  be.add(res, dr, tmp);
  assert.deepEqual(Array.from(be.toF64(out)), Array.from(be.toF64(tmp)));
  be.biasDropoutAdd(xt, null, res, 0, addr(h), out);
  be.add(xt, res, tmp);
  assert.deepEqual(Array.from(be.toF64(out)), Array.from(be.toF64(tmp)));
});

Deno.test("embedding forward/backward with a vocab shard", () => {
  const table = be.fromHost("f32", [3, 2], [1, 2, 3, 4, 5, 6]); // vocab rows 10..12
  const ids = be.fromHost("i32", [2, 2], [10, 12, 3, 11]);
  const out = be.empty("f32", [2, 2, 2]);
  be.embeddingFwd(ids, table, out, 10);
  assert.deepEqual(Array.from(be.toF64(out)), [1, 2, 5, 6, 0, 0, 3, 4]);
  const dt = be.fromHost("f32", [3, 2], [0, 0, 0, 0, 0, 100]);
  const ids2 = be.fromHost("i64", [4], [10, 12, 10, 99]);
  be.embeddingBwd(ids2, be.fromHost("f32", [4, 2], [1, 1, 2, 2, 3, 3, 4, 4]), dt, 10);
  assert.deepEqual(Array.from(be.toF64(dt)), [4, 4, 0, 0, 2, 102]);
});

Deno.test("cross-entropy pieces compose to plain CE; two vocab shards give the same loss", () => {
  const rows = 3, V = 7;
  const ls = rnd(rows * V, 11).map((v) => v * 5), tg = [0, 6, 3];
  const logits = be.fromHost("f32", [rows, V], ls), targets = be.fromHost("i32", [rows], tg);
  const lf = Array.from(be.toF64(logits));
  const want = tg.map((t, r) => {
    const row = lf.slice(r * V, r * V + V);
    const mx = Math.max(...row);
    return Math.log(row.reduce((s, v) => s + Math.exp(v - mx), 0)) + mx - row[t];
  });
  const mx = be.empty("f32", [rows]),
    tl = be.empty("f32", [rows]),
    se = be.empty("f32", [rows]),
    loss = be.empty("f32", [rows]);
  be.ceStats(logits, targets, 0, mx, tl);
  be.ceSumExp(logits, mx, se);
  be.ceLoss(mx, se, tl, loss);
  close(be.toF64(loss), want, 1e-6, "loss");
  // Shards [0, 4) and [4, 7): combine max (max), target logit (sum), sumExp (sum at the global max).
  const parts = [[0, 4], [4, 3]].map(([start, w]) => {
    const sh = be.fromHost(
      "f32",
      [rows, w],
      Array.from({ length: rows * w }, (_, k) => lf[Math.floor(k / w) * V + start + (k % w)]),
    );
    const m = be.empty("f32", [rows]), t = be.empty("f32", [rows]);
    be.ceStats(sh, targets, start, m, t);
    return { sh, m: be.toF64(m), t: be.toF64(t) };
  });
  const gmax = be.fromHost("f32", [rows], parts[0].m.map((v, i) => Math.max(v, parts[1].m[i])));
  const tsum = be.fromHost("f32", [rows], parts[0].t.map((v, i) => v + parts[1].t[i]));
  const sums = parts.map((p) => {
    const s = be.empty("f32", [rows]);
    be.ceSumExp(p.sh, gmax, s);
    return be.toF64(s);
  });
  const ssum = be.fromHost("f32", [rows], sums[0].map((v, i) => v + sums[1][i]));
  be.ceLoss(gmax, ssum, tsum, loss);
  close(be.toF64(loss), want, 1e-6, "sharded loss");
  // ceBwd: dloss * (softmax - onehot).
  const dl = be.empty("f32", [rows, V]);
  be.ceBwd(logits, targets, 0, mx, se, be.fromHost("f32", [rows], [1, 0.5, 2]), dl);
  const g = be.toF64(dl), dls = [1, 0.5, 2];
  for (let r = 0; r < rows; r++) {
    const row = lf.slice(r * V, r * V + V);
    const m = Math.max(...row);
    const z = row.reduce((s, v) => s + Math.exp(v - m), 0);
    for (let j = 0; j < V; j++) {
      const w = dls[r] * (Math.exp(row[j] - m) / z - (j === tg[r] ? 1 : 0));
      assert.ok(Math.abs(g[r * V + j] - w) < 1e-6, `dlogits[${r},${j}] ${g[r * V + j]} vs ${w}`);
    }
  }
});

Deno.test("adamStep matches hand-computed AdamW (two steps)", () => {
  const p = be.fromHost("f32", [2], [1, -2]), g = be.fromHost("f32", [2], [0.5, 0.1]);
  const m = be.zeros("f32", [2]), v = be.zeros("f32", [2]);
  const args = { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 1 };
  be.adamStep(p, g, m, v, args);
  // Step 1: mhat = g, vhat = g^2, so the update is sign(g) (up to eps) + wd * p.
  close(be.toF64(m), [0.05, 0.01], 1e-6);
  close(be.toF64(v), [0.00025, 0.00001], 1e-6);
  close(be.toF64(p), [1 - 0.1 * (1 + 0.01), -2 - 0.1 * (1 - 0.02)], 1e-6);
  // Step 2 with a new gradient, reference in f64.
  const p1 = Array.from(be.toF64(p)), m1 = [0.05, 0.01], v1 = [0.00025, 0.00001], g2 = [-0.3, 0.2];
  be.adamStep(p, be.fromHost("f32", [2], g2), m, v, { ...args, step: 2 });
  const want = p1.map((pi, i) => {
    const mi = 0.9 * m1[i] + 0.1 * g2[i], vi = 0.999 * v1[i] + 0.001 * g2[i] ** 2;
    const mh = mi / (1 - 0.81), vh = vi / (1 - 0.999 ** 2);
    return pi - 0.1 * (mh / (Math.sqrt(vh) + 1e-8) + 0.01 * pi);
  });
  close(be.toF64(p), want, 1e-6, "step 2");
});

Deno.test("sgdStep matches torch SGD with momentum and weight decay", () => {
  const p = be.fromHost("f32", [2], [1, 2]), buf = be.zeros("f32", [2]);
  be.sgdStep(p, be.fromHost("f32", [2], [0.5, -1]), buf, {
    lr: 0.1,
    momentum: 0.9,
    weightDecay: 0.1,
    firstStep: true,
  });
  // g' = g + 0.1 p = [0.6, -0.8]; buf = g'; p -= 0.1 buf
  close(be.toF64(buf), [0.6, -0.8], 1e-7);
  close(be.toF64(p), [0.94, 2.08], 1e-7);
  be.sgdStep(p, be.fromHost("f32", [2], [0, 0]), buf, {
    lr: 0.1,
    momentum: 0.9,
    weightDecay: 0.1,
    firstStep: false,
  });
  // g' = 0.1 p = [0.094, 0.208]; buf = 0.9 buf + g' = [0.634, -0.512]
  close(be.toF64(buf), [0.634, -0.512], 1e-6);
  close(be.toF64(p), [0.94 - 0.0634, 2.08 + 0.0512], 1e-6);
});

Deno.test("sumSquares, countZeros and nonFinite", () => {
  const x = be.fromHost("bf16", [3], [1, -2, 3]), out = be.fromHost("f64", [1], [10]);
  be.sumSquares(x, out, true);
  assert.equal(be.toF64(out)[0], 24);
  // f64 accumulation keeps what an f32 sum drops: 1^2 + (2^-15)^2 = 1 + 2^-30 (f32 would give 1).
  be.sumSquares(be.fromHost("f32", [2], [1, 2 ** -15]), out, false);
  assert.equal(be.toF64(out)[0], 1 + 2 ** -30);
  assert.throws(() => be.sumSquares(x, be.zeros("f32", [1]), false), /sumSquares: out has dtype f32/);
  const z = be.fromHost("f64", [1], [2]);
  be.countZeros(be.fromHost("f32", [6], [0, -0, 1, NaN, 1e-45, 0]), z, true);
  assert.equal(be.toF64(z)[0], 5);
  be.countZeros(be.fromHost("bf16", [2], [0, 3]), z, false);
  assert.equal(be.toF64(z)[0], 1);
  const flag = be.zeros("f32", [1]);
  be.nonFinite(be.fromHost("f32", [3], [1, 2, 3]), flag);
  assert.equal(be.toF64(flag)[0], 0);
  be.nonFinite(be.fromHost("f16", [2], new Uint16Array([0x3c00, 0x7c00])), flag);
  assert.equal(be.toF64(flag)[0], 1);
  be.nonFinite(be.fromHost("f32", [1], [0]), flag);
  assert.equal(be.toF64(flag)[0], 1); // max with the old flag
  const f2 = be.zeros("f32", [1]);
  be.nonFinite(be.fromHost("f64", [2], [NaN, 0]), f2);
  assert.equal(be.toF64(f2)[0], 1);
  // Half outputs of f32 math are RNE: sanity check with f16.
  assert.equal(f32ToF16Bits(be.toF64(x)[1]), 0xc000);
});

Deno.test("WebAssembly Philox blocks equal philox4x32, across the 2^32 block boundary", () => {
  const w = new PhiloxWasm();
  const first = 2 ** 32 - 5, n = 64;
  w.generate(first, n, 0xdeadbeef, streamId(5, 3), 0xffffffff);
  const ref = new Uint32Array(4);
  for (let i = 0; i < n; i++) {
    const b = first + i;
    philox4x32(b % 2 ** 32, Math.floor(b / 2 ** 32), 0xffffffff, streamId(5, 3), 0xdeadbeef, KEY_HI, ref);
    assert.deepEqual(Array.from(w.lanes.subarray(4 * i, 4 * i + 4)), Array.from(ref), `block ${b}`);
  }
  assert.throws(() => w.generate(0, PHILOX_CHUNK_BLOCKS + 1, 1, 1, 1), /block count/);
});

Deno.test("dropout over contiguous rows spanning several generator chunks matches PhiloxStream", () => {
  const n = 41 * 3300, p = 0.5; // > 2 chunks of PHILOX_CHUNK_BLOCKS * 4 elements
  const x = be.empty("f32", [n]), y = be.empty("f32", [n]);
  be.fill(x, 1);
  const a: RngAddress = {
    seed: 9,
    stream: streamId(2, 0),
    iteration: 4,
    base: 2 ** 34 - 1001,
    rowStride: 41,
    rowLen: 41,
  };
  be.dropout(x.view([n / 41, 41]), p, a, y.view([n / 41, 41]));
  const g = new PhiloxStream(a.seed, a.stream, a.iteration);
  const got = be.toF64(y);
  for (let i = 0; i < n; i++) {
    const want = g.uniform(a.base + i) >= p ? 2 : 0;
    if (got[i] !== want) assert.fail(`element ${i}: got ${got[i]}, want ${want}`);
  }
});
