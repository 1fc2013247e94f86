// GEMM: BLAS (when found), the TypeScript loops and the WebAssembly GEMM (large cases) against a naive f64 loop, with transposes,
// alpha/beta, beta = 0 over NaN, leading dimensions, strided batches and half inputs.
import assert from "node:assert/strict";
import { type CpuBackend, createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { PhiloxStream } from "../src/rng/philox.ts";
import type { DType } from "../src/tensor/dtype.ts";
import type { Tensor } from "../src/tensor/tensor.ts";

const blasBe = createCpuBackend({ log: () => {} });
const tsBe = createCpuBackend({ blas: "none", fallbackGemm: "ts", log: () => {} });
const wasmBe = createCpuBackend({ blas: "none", log: () => {} });
const backends: [string, CpuBackend][] = [["default", blasBe], ["ts", tsBe], ["wasm", wasmBe]];

function rnd(n: number, seed: number): number[] {
  const g = new PhiloxStream(seed, 77, 0);
  return Array.from({ length: n }, (_, i) => g.uniform(i) * 2 - 1);
}

interface Ref {
  tA: boolean;
  tB: boolean;
  m: number;
  n: number;
  k: number;
  alpha: number;
  beta: number;
  A: ArrayLike<number>;
  lda: number;
  oA: number;
  B: ArrayLike<number>;
  ldb: number;
  oB: number;
  C: number[];
  ldc: number;
  oC: number;
}

/** Naive f64 reference on one matrix of a batch. */
function refGemm(r: Ref): void {
  for (let i = 0; i < r.m; i++) {
    for (let j = 0; j < r.n; j++) {
      let s = 0;
      for (let p = 0; p < r.k; p++) {
        const a = r.tA ? r.A[r.oA + p * r.lda + i] : r.A[r.oA + i * r.lda + p];
        const b = r.tB ? r.B[r.oB + j * r.ldb + p] : r.B[r.oB + p * r.ldb + j];
        s += a * b;
      }
      const ci = r.oC + i * r.ldc + j;
      r.C[ci] = r.alpha * s + (r.beta === 0 ? 0 : r.beta * r.C[ci]);
    }
  }
}

function closeArr(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(got.length, want.length);
  for (let i = 0; i < want.length; i++) {
    const ok = Number.isNaN(want[i])
      ? Number.isNaN(got[i])
      : Math.abs(got[i] - want[i]) <= tol * (1 + Math.abs(want[i]));
    assert.ok(ok, `${what}: [${i}] got ${got[i]}, want ${want[i]}`);
  }
}

Deno.test("gemm: all transposes, alpha/beta, odd sizes crossing the TS block sizes", () => {
  for (const [name, be] of backends) {
    for (const [m, n, k] of [[3, 5, 4], [37, 530, 140], [1, 1, 1]]) {
      for (const tA of [false, true]) {
        for (const tB of [false, true]) {
          const A = rnd(m * k, 1), B = rnd(k * n, 2), C0 = rnd(m * n, 3);
          const a = be.fromHost("f32", tA ? [k, m] : [m, k], A);
          const b = be.fromHost("f32", tB ? [n, k] : [k, n], B);
          const c = be.fromHost("f32", [m, n], C0);
          be.gemm({ transA: tA, transB: tB, m, n, k, alpha: 0.5, beta: -2, a, b, c });
          const want = Array.from(be.toF64(be.fromHost("f32", [m * n], C0)));
          const Af = be.toF64(a), Bf = be.toF64(b);
          refGemm({
            tA,
            tB,
            m,
            n,
            k,
            alpha: 0.5,
            beta: -2,
            A: Af,
            lda: tA ? m : k,
            oA: 0,
            B: Bf,
            ldb: tB ? k : n,
            oB: 0,
            C: want,
            ldc: n,
            oC: 0,
          });
          closeArr(be.toF64(c), want, 1e-5 * Math.sqrt(k), `${name} ${m}x${n}x${k} tA=${tA} tB=${tB}`);
        }
      }
    }
  }
});

Deno.test("gemm: beta = 0 ignores NaN in C; k = 0 gives beta * C", () => {
  for (const [name, be] of backends) {
    const a = be.fromHost("f32", [2, 2], [1, 2, 3, 4]), b = be.fromHost("f32", [2, 2], [1, 0, 0, 1]);
    const c = be.fromHost("f32", [2, 2], [NaN, NaN, Infinity, NaN]);
    be.gemm({ transA: false, transB: false, m: 2, n: 2, k: 2, a, b, c });
    assert.deepEqual(Array.from(be.toF64(c)), [1, 2, 3, 4], name);
    const c2 = be.fromHost("f32", [2, 2], [NaN, 1, 2, 3]);
    be.gemm({ transA: false, transB: false, m: 2, n: 2, k: 2, a, b, c: c2, beta: 0, alpha: 2 });
    assert.deepEqual(Array.from(be.toF64(c2)), [2, 4, 6, 8], name);
    const c3 = be.fromHost("f32", [2, 2], [1, 2, 3, 4]);
    const e = be.empty("f32", [2, 0]), f = be.empty("f32", [0, 2]);
    be.gemm({ transA: false, transB: false, m: 2, n: 2, k: 0, a: e, b: f, c: c3, beta: 2 });
    assert.deepEqual(Array.from(be.toF64(c3)), [2, 4, 6, 8], name);
  }
});

Deno.test("gemm: strided batch over attention-style views with lda/ldb/ldc", () => {
  // Q, K stored [s, b*np, hn] interleaved: head h of batch is columns h*hn.., row stride b*np*hn.
  const s = 5, heads = 3, hn = 4;
  for (const [name, be] of backends) {
    const Q = rnd(s * heads * hn, 4), K = rnd(s * heads * hn, 5);
    const q = be.fromHost("f32", [s, heads, hn], Q), kk = be.fromHost("f32", [s, heads, hn], K);
    // scores[h] = Q_h K_h^T: [s, s], written into an [heads, s, s+2] buffer (ldc = s + 2).
    const ldc = s + 2;
    const C0 = rnd(heads * s * ldc, 6);
    const c = be.fromHost("f32", [heads, s, ldc], C0);
    be.gemm({
      transA: false,
      transB: true,
      m: s,
      n: s,
      k: hn,
      alpha: 0.25,
      beta: 1,
      a: q,
      b: kk,
      c,
      lda: heads * hn,
      ldb: heads * hn,
      ldc,
      batch: heads,
      strideA: hn,
      strideB: hn,
      strideC: s * ldc,
    });
    const want = Array.from(be.toF64(be.fromHost("f32", [C0.length], C0)));
    const Qf = be.toF64(q), Kf = be.toF64(kk);
    for (let h = 0; h < heads; h++) {
      refGemm({
        tA: false,
        tB: true,
        m: s,
        n: s,
        k: hn,
        alpha: 0.25,
        beta: 1,
        A: Qf,
        lda: heads * hn,
        oA: h * hn,
        B: Kf,
        ldb: heads * hn,
        oB: h * hn,
        C: want,
        ldc,
        oC: h * s * ldc,
      });
    }
    closeArr(be.toF64(c), want, 1e-6, name);
    // A view with an element offset (narrow) is honoured.
    const big = be.fromHost("f32", [4, 2], [9, 9, 1, 2, 3, 4, 9, 9]);
    const out = be.empty("f32", [2, 2]);
    be.gemm({
      transA: false,
      transB: false,
      m: 2,
      n: 2,
      k: 2,
      a: big.narrow(1, 2),
      b: be.fromHost("f32", [2, 2], [1, 0, 0, 1]),
      c: out,
    });
    assert.deepEqual(Array.from(be.toF64(out)), [1, 2, 3, 4]);
  }
});

function halfCase(be: CpuBackend, dt: DType, cdt: DType): [Tensor, number[]] {
  const m = 6, n = 7, k = 9;
  const a = be.fromHost(dt, [m, k], rnd(m * k, 7)), b = be.fromHost(dt, [k, n], rnd(k * n, 8));
  const c = be.fromHost(cdt, [m, n], rnd(m * n, 9));
  const want = Array.from(be.toF64(c));
  refGemm({
    tA: false,
    tB: false,
    m,
    n,
    k,
    alpha: 1,
    beta: 1,
    A: be.toF64(a),
    lda: k,
    oA: 0,
    B: be.toF64(b),
    ldb: n,
    oB: 0,
    C: want,
    ldc: n,
    oC: 0,
  });
  be.gemm({ transA: false, transB: false, m, n, k, a, b, c, beta: 1 });
  return [c, want];
}

Deno.test("gemm: half inputs with half or f32 output; f64 stays f64", () => {
  for (const [name, be] of backends) {
    for (const dt of ["f16", "bf16"] as DType[]) {
      const [c32, w32] = halfCase(be, dt, "f32");
      closeArr(be.toF64(c32), w32, 1e-6, `${name} ${dt}->f32`);
      const [ch, wh] = halfCase(be, dt, dt);
      closeArr(be.toF64(ch), wh, dt === "bf16" ? 2 ** -8 : 2 ** -11, `${name} ${dt}->${dt}`);
    }
    const a = be.fromHost("f64", [1, 2], [1, 2 ** -40]),
      b = be.fromHost("f64", [2, 1], [1, 1]),
      c = be.empty("f64", [1, 1]);
    be.gemm({ transA: false, transB: false, m: 1, n: 1, k: 2, a, b, c });
    assert.equal(be.toF64(c)[0], 1 + 2 ** -40, name);
  }
});

Deno.test("gemm: ldc > n leaves the elements between C rows untouched (f32 and half C)", () => {
  for (const [name, be] of backends) {
    for (const dt of ["f32", "f16", "bf16"] as DType[]) {
      const a = be.fromHost(dt, [2, 2], [1, 2, 3, 4]), b = be.fromHost(dt, [2, 2], [1, 0, 0, 1]);
      const c = be.fromHost(dt, [2, 3], [NaN, NaN, 7, NaN, NaN, 9]);
      be.gemm({ transA: false, transB: false, m: 2, n: 2, k: 2, a, b, c, ldc: 3 });
      assert.deepEqual(Array.from(be.toF64(c)), [1, 2, 7, 3, 4, 9], `${name} ${dt}`);
    }
  }
});

Deno.test("gemm: BLAS, TS and wasm fallbacks agree on a larger product", () => {
  const m = 64, n = 96, k = 200;
  const A = rnd(m * k, 10), B = rnd(k * n, 11);
  const res = backends.map(([, be]) => {
    const c = be.empty("f32", [m, n]);
    be.gemm({
      transA: true,
      transB: false,
      m,
      n,
      k,
      a: be.fromHost("f32", [k, m], A),
      b: be.fromHost("f32", [k, n], B),
      c,
    });
    return be.toF64(c);
  });
  closeArr(res[0], res[1], 1e-5, "blas vs ts");
  closeArr(res[0], res[2], 1e-5, "blas vs wasm");
});

Deno.test("backend description reports the BLAS choice", () => {
  const lines: string[] = [];
  const be = createCpuBackend({ blas: "none", fallbackGemm: "ts", log: (l) => lines.push(l) });
  assert.deepEqual(lines, ["cpu backend: TypeScript GEMM (no BLAS: option blas=none)"]);
  assert.equal(be.blas, null);
  assert.match(be.description, /^cpu \(TypeScript GEMM/);
  assert.match(wasmBe.description, /^cpu \(WebAssembly SIMD GEMM/);
  if (blasBe.blas) assert.match(blasBe.description, new RegExp(`^cpu \\(${blasBe.blas.name} via FFI`));
  assert.throws(
    () => createCpuBackend({ blas: "/nonexistent/libfoo.so", log: () => {} }),
    /cblas: option blas=\/nonexistent\/libfoo.so: expected a CBLAS library/,
  );
});
