// The WebAssembly SIMD GEMM (the f32 GEMM without a BLAS library): an f64 reference with the f32 error
// bound of a k-term dot product, every operand layout the backend accepts (transposes, alpha/beta,
// leading dimensions, offsets, batches, half dtypes), the same bits for 1, 2 and 3 threads whether C
// is split by rows, columns or batch items, and workers that neither leak nor keep the process alive.
import assert from "node:assert/strict";
import { BLAS_INSTALL_HINT, createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { GemmPool, IDLE_EXIT_MS, type PoolJob } from "../src/backend/cpu/gemm_wasm.ts";
import { PhiloxStream } from "../src/rng/philox.ts";
import type { DType } from "../src/tensor/dtype.ts";

const U = 2 ** -24; // f32 unit roundoff

function rnd(n: number, seed: number): Float32Array {
  const g = new PhiloxStream(seed, 91, 0);
  return Float32Array.from({ length: n }, (_, i) => g.uniform(i) * 2 - 1);
}

interface Case {
  tA: boolean;
  tB: boolean;
  m: number;
  n: number;
  k: number;
  alpha: number;
  beta: number;
  batch: number;
  pad: number; // extra leading-dimension columns and element offsets
}

/** Operands of a case with padded leading dimensions, batch strides and non-zero offsets. */
function operands(c: Case, seed: number) {
  const aRows = c.tA ? c.k : c.m, aCols = c.tA ? c.m : c.k;
  const bRows = c.tB ? c.n : c.k, bCols = c.tB ? c.k : c.n;
  const lda = aCols + c.pad, ldb = bCols + c.pad, ldc = c.n + c.pad;
  const sA = aRows * lda + 3, sB = bRows * ldb + 1, sC = c.m * ldc + 2;
  const o = c.pad;
  const A = rnd(o + c.batch * sA, seed), B = rnd(o + c.batch * sB, seed + 1);
  const C = rnd(o + c.batch * sC, seed + 2);
  if (c.beta === 0) C.fill(NaN); // beta == 0 must ignore C's old values
  return { A, B, C, lda, ldb, ldc, sA, sB, sC, o };
}

/** f64 C for every batch item and its error bound (k + 4) u (|alpha| sum |a b| + |beta c|). */
function reference(c: Case, ops: ReturnType<typeof operands>): { want: Float64Array; bound: Float64Array } {
  const { A, B, C, lda, ldb, ldc, sA, sB, sC, o } = ops;
  const want = Float64Array.from(C), bound = new Float64Array(C.length);
  for (let b = 0; b < c.batch; b++) {
    for (let i = 0; i < c.m; i++) {
      for (let j = 0; j < c.n; j++) {
        let s = 0, sa = 0;
        for (let p = 0; p < c.k; p++) {
          const a = c.tA ? A[o + b * sA + p * lda + i] : A[o + b * sA + i * lda + p];
          const v = c.tB ? B[o + b * sB + j * ldb + p] : B[o + b * sB + p * ldb + j];
          s += a * v;
          sa += Math.abs(a * v);
        }
        const ci = o + b * sC + i * ldc + j;
        const old = c.beta === 0 ? 0 : c.beta * C[ci];
        want[ci] = c.alpha * s + old;
        bound[ci] = (c.k + 4) * U * (Math.abs(c.alpha) * sa + Math.abs(old)) + 1e-30;
      }
    }
  }
  return { want, bound };
}

function job(c: Case, ops: ReturnType<typeof operands>, C: Float32Array): PoolJob {
  const { A, B, lda, ldb, ldc, sA, sB, sC, o } = ops;
  const eA = (c.batch - 1) * sA + ((c.tA ? c.k : c.m) - 1) * lda + (c.tA ? c.m : c.k);
  const eB = (c.batch - 1) * sB + ((c.tB ? c.n : c.k) - 1) * ldb + (c.tB ? c.k : c.n);
  return {
    ...{ transA: c.tA, transB: c.tB, m: c.m, n: c.n, k: c.k, alpha: c.alpha, a: A, oA: o, lda, sA, eA },
    ...{ b: B, oB: o, ldb, sB, eB, beta: c.beta, c: C, oC: o, ldc, sC, batch: c.batch },
  };
}

const CASES: Case[] = [];
for (const tA of [false, true]) {
  for (const tB of [false, true]) {
    CASES.push({ tA, tB, m: 37, n: 29, k: 300, alpha: 1, beta: 0, batch: 1, pad: 0 });
    CASES.push({ tA, tB, m: 130, n: 67, k: 513, alpha: 0.75, beta: 1, batch: 1, pad: 3 });
    CASES.push({ tA, tB, m: 9, n: 203, k: 77, alpha: -1.5, beta: -0.5, batch: 3, pad: 1 });
  }
}
CASES.push({ tA: false, tB: false, m: 1, n: 1, k: 40000, alpha: 1, beta: 0, batch: 1, pad: 0 }); // tiny C
CASES.push({ tA: false, tB: true, m: 1, n: 3001, k: 17, alpha: 2, beta: 0.25, batch: 1, pad: 5 }); // one row
CASES.push({ tA: true, tB: false, m: 2049, n: 5, k: 11, alpha: 1, beta: 0, batch: 1, pad: 0 }); // one panel
CASES.push({ tA: false, tB: true, m: 256, n: 1000, k: 128, alpha: 1, beta: 0, batch: 1, pad: 0 }); // logits-like
CASES.push({ tA: false, tB: false, m: 128, n: 128, k: 32, alpha: 0.125, beta: 0, batch: 16, pad: 0 }); // attention

/** A pool whose workers have all started (so jobs really are split). */
async function readyPool(threads: number, relaxed = true): Promise<GemmPool> {
  const p = new GemmPool(threads, { relaxed });
  p.start();
  const t0 = Date.now();
  while (p.readyWorkers() < threads - 1) {
    if (Date.now() - t0 > 60_000) throw new Error(`gemm workers did not start: ${p.readyWorkers()} ready`);
    await new Promise((r) => setTimeout(r, 5));
  }
  return p;
}

for (const relaxed of [true, false]) {
  const kernel = relaxed ? "relaxed madd where available" : "mul + add";
  Deno.test(`wasm gemm (${kernel}): within the f32 bound of an f64 reference; same bits for 1, 2 and 3 threads`, async () => {
    const pools = [new GemmPool(1, { relaxed }), await readyPool(2, relaxed), await readyPool(3, relaxed)];
    if (!relaxed) assert.equal(pools[0].relaxed, false);
    try {
      CASES.forEach((c, ci) => {
        const ops = operands(c, 100 + 10 * ci);
        const { want, bound } = reference(c, ops);
        const outs = pools.map((p) => {
          const C = ops.C.slice();
          p.gemm(job(c, ops, C));
          return C;
        });
        const what = JSON.stringify(c);
        for (let i = 0; i < want.length; i++) {
          // Elements between rows and batch items must be untouched (NaN stays NaN).
          const err = Number.isNaN(want[i]) && Number.isNaN(outs[0][i]) ? 0 : Math.abs(outs[0][i] - want[i]);
          if (!(err <= bound[i])) {
            assert.fail(`${what}: C[${i}] = ${outs[0][i]}, f64 ${want[i]}, bound ${bound[i]}`);
          }
        }
        for (let t = 1; t < pools.length; t++) {
          assert.deepEqual(
            new Uint32Array(outs[t].buffer),
            new Uint32Array(outs[0].buffer),
            `${what} threads`,
          );
        }
      });
    } finally {
      for (const p of pools) p.close();
    }
  });
}

Deno.test("wasm gemm: repeated runs give the same bits (across JIT tiers)", async () => {
  const p = await readyPool(2);
  try {
    const c: Case = { tA: true, tB: false, m: 200, n: 136, k: 700, alpha: 1, beta: 1, batch: 1, pad: 0 };
    const ops = operands(c, 7);
    const first = ops.C.slice();
    p.gemm(job(c, ops, first));
    for (let r = 0; r < 30; r++) {
      const C = ops.C.slice();
      p.gemm(job(c, ops, C));
      assert.deepEqual(new Uint32Array(C.buffer), new Uint32Array(first.buffer), `run ${r}`);
    }
  } finally {
    p.close();
  }
});

Deno.test("wasm gemm: idle workers exit and are started again by the next large GEMM", async () => {
  const p = await readyPool(2);
  try {
    const c: Case = { tA: false, tB: true, m: 64, n: 520, k: 96, alpha: 1, beta: 0, batch: 1, pad: 0 };
    const ops = operands(c, 3);
    const first = ops.C.slice();
    p.gemm(job(c, ops, first));
    const t0 = Date.now();
    while (p.readyWorkers() > 0) {
      if (Date.now() - t0 > IDLE_EXIT_MS + 30_000) assert.fail("the idle worker did not exit");
      await new Promise((r) => setTimeout(r, 50));
    }
    const again = ops.C.slice();
    p.gemm(job(c, ops, again));
    assert.equal(p.readyWorkers(), 1, "a new worker runs after the next large GEMM");
    assert.deepEqual(new Uint32Array(again.buffer), new Uint32Array(first.buffer));
  } finally {
    p.close();
  }
});

Deno.test("wasm gemm: a job beyond the 4 GiB shared memory is refused (the backend then uses the TS loops)", () => {
  const p = new GemmPool(1);
  try {
    assert.equal(p.fits(100, 100, 1, 10, 10), true);
    assert.equal(p.fits(1, 1, 1, 40000, 40000), false); // C alone: 6.4 GB
    const tiny = new Float32Array(1);
    assert.throws(
      () =>
        p.gemm({
          ...{
            transA: false,
            transB: false,
            m: 40000,
            n: 40000,
            k: 1,
            alpha: 1,
            a: tiny,
            oA: 0,
            lda: 1,
            sA: 0,
          },
          ...{
            eA: 1,
            b: tiny,
            oB: 0,
            ldb: 1,
            sB: 0,
            eB: 1,
            beta: 0,
            c: tiny,
            oC: 0,
            ldc: 1,
            sC: 0,
            batch: 1,
          },
        }),
      /^Error: gemm: 1 x \[40000, 40000, 1\] does not fit in the WebAssembly GEMM's memory$/,
    );
  } finally {
    p.close();
  }
});

Deno.test("cpu backend without BLAS: wasm GEMM for f32 and half dtypes, f64 on the TypeScript loops", () => {
  const lines: string[] = [];
  const be = createCpuBackend({ blas: "none", gemmThreads: 2, log: (l) => lines.push(l) });
  const ts = createCpuBackend({ blas: "none", fallbackGemm: "ts", log: () => {} });
  try {
    assert.match(
      lines[0],
      /^cpu backend: WebAssembly SIMD GEMM \((relaxed madd|mul\+add), 2 threads\) \(no BLAS: option blas=none\)$/,
    );
    assert.equal(lines.length, 1, "no install hint when BLAS is switched off on purpose");
    const m = 70, n = 90, k = 300;
    const A = rnd(m * k, 1), B = rnd(k * n, 2);
    for (const dt of ["f32", "f16", "bf16", "f64"] as DType[]) {
      const run = (b: typeof be) => {
        const c = b.empty(dt === "f64" ? "f64" : "f32", [m, n]);
        b.gemm({
          transA: false,
          transB: false,
          m,
          n,
          k,
          a: b.fromHost(dt, [m, k], A),
          b: b.fromHost(dt, [k, n], B),
          c,
        });
        return b.toF64(c);
      };
      const got = run(be), ref = run(ts);
      // Both are within the f32 bound of the exact sum; |a b| <= 1, so |C - ref| <= 2 (k + 4) u k.
      const tol = dt === "f64" ? 0 : 2 * (k + 4) * U * k;
      for (let i = 0; i < got.length; i++) {
        assert.ok(Math.abs(got[i] - ref[i]) <= tol, `${dt} [${i}]: ${got[i]} vs ts ${ref[i]}`);
      }
    }
  } finally {
    be.close();
  }
});

Deno.test("wasm gemm workers do not keep the process alive", async () => {
  const code = `
    import { createCpuBackend } from ${
    JSON.stringify(new URL("../src/backend/cpu/cpu_backend.ts", import.meta.url).href)
  };
    const be = createCpuBackend({ blas: "none", gemmThreads: 2, log: () => {} });
    be.wasmGemm.start();
    while (be.wasmGemm.readyWorkers() < 1) await new Promise((r) => setTimeout(r, 5));
    const a = be.zeros("f32", [256, 256]), b = be.zeros("f32", [256, 256]), c = be.zeros("f32", [256, 256]);
    be.fill(a, 1); be.fill(b, 2);
    be.gemm({ transA: false, transB: false, m: 256, n: 256, k: 256, a, b, c });
    console.log(be.toF64(c)[65535]);
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", code],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).output();
  assert.equal(new TextDecoder().decode(out.stderr), "");
  assert.equal(out.code, 0);
  assert.equal(new TextDecoder().decode(out.stdout), "512\n");
});

Deno.test("no BLAS found: the backend line names the wasm GEMM, then one line on how to install OpenBLAS", async () => {
  const code = `
    import { createCpuBackend } from ${
    JSON.stringify(new URL("../src/backend/cpu/cpu_backend.ts", import.meta.url).href)
  };
    createCpuBackend({ blasCandidates: ["/nonexistent/libopenblas.so.0"], gemmThreads: 2 }).close();
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", code],
    env: { MEGATRON_DENO_BLAS: "" }, // empty: search (CI sets "none")
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0);
  const lines = new TextDecoder().decode(out.stderr).trimEnd().split("\n");
  assert.equal(lines.length, 2, lines.join("\n"));
  assert.match(
    lines[0],
    /^cpu backend: WebAssembly SIMD GEMM \((relaxed madd|mul\+add), 2 threads\) \(no BLAS found \(tried OpenBLAS, BLIS, MKL, Accelerate\)\)$/,
  );
  assert.equal(lines[1], BLAS_INSTALL_HINT);
  assert.match(lines[1], /apt install libopenblas0 .*dnf install openblas .*brew install openblas/);
});
