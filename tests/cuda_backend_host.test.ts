// CPU-only checks of the CUDA backend's host-side logic: the row-major -> cuBLAS GEMM mapping
// (checked by running a column-major reference GEMM with the mapped arguments), GEMM bounds,
// the caching allocator, host conversions, the kernel tables against the CUDA sources and the
// committed fatbins, and the no-GPU probe.
import assert from "node:assert/strict";
import type { GemmArgs } from "../src/backend/backend.ts";
import { Tensor } from "../src/tensor/tensor.ts";
import { checkGemmBounds, rowMajorLds, toCublasGemm } from "../src/backend/cuda/gemm_map.ts";
import { CachingAllocator, sizeClass } from "../src/backend/cuda/allocator.ts";
import { allKernelNames, argKindsFor, FATBINS, KERNEL_ARGS } from "../src/backend/cuda/kernels.ts";
import { hostToF64, keepScale, probeCuda, toHostStorage } from "../src/backend/cuda/cuda_backend.ts";
import type { DiscoverEnv } from "../ffi/discover.ts";

/** cuBLAS semantics: column-major, element (i, j) of a matrix with ld at [i + j * ld]. */
function colMajorGemm(
  ta: number,
  tb: number,
  m: number,
  n: number,
  k: number,
  alpha: number,
  A: Float64Array,
  lda: number,
  B: Float64Array,
  ldb: number,
  beta: number,
  C: Float64Array,
  ldc: number,
): void {
  for (let j = 0; j < n; j++) {
    for (let i = 0; i < m; i++) {
      let s = 0;
      for (let p = 0; p < k; p++) {
        const a = ta ? A[p + i * lda] : A[i + p * lda];
        const b = tb ? B[j + p * ldb] : B[p + j * ldb];
        s += a * b;
      }
      C[i + j * ldc] = alpha * s + beta * C[i + j * ldc];
    }
  }
}

function rowMajorRef(g: GemmArgs, A: Float64Array, B: Float64Array, C: Float64Array, batch: number): void {
  const { lda, ldb, ldc } = rowMajorLds(g);
  for (let q = 0; q < batch; q++) {
    const oa = q * (g.strideA ?? 0), ob = q * (g.strideB ?? 0), oc = q * (g.strideC ?? 0);
    for (let i = 0; i < g.m; i++) {
      for (let j = 0; j < g.n; j++) {
        let s = 0;
        for (let p = 0; p < g.k; p++) {
          const a = g.transA ? A[oa + p * lda + i] : A[oa + i * lda + p];
          const b = g.transB ? B[ob + j * ldb + p] : B[ob + p * ldb + j];
          s += a * b;
        }
        C[oc + i * ldc + j] = (g.alpha ?? 1) * s + (g.beta ?? 0) * C[oc + i * ldc + j];
      }
    }
  }
}

const dummy = (n: number) => new Tensor("f32", [n], { length: n, freed: false });

Deno.test("gemm map: cuBLAS column-major call with swapped operands equals the row-major GEMM", () => {
  let seed = 1;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) - 0.5;
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      for (const [m, n, k, pad, batch] of [[3, 5, 4, 0, 1], [4, 2, 7, 3, 1], [2, 3, 5, 1, 3]]) {
        const ldaDef = transA ? m : k, ldbDef = transB ? k : n;
        const lda = ldaDef + pad, ldb = ldbDef + pad, ldc = n + pad;
        const rowsA = transA ? k : m, rowsB = transB ? n : k;
        const strideA = rowsA * lda + 2, strideB = rowsB * ldb + 1, strideC = m * ldc + 3;
        const sa = batch * strideA, sb = batch * strideB, sc = batch * strideC;
        const A = Float64Array.from({ length: sa }, rnd), B = Float64Array.from({ length: sb }, rnd);
        const C0 = Float64Array.from({ length: sc }, rnd);
        const g: GemmArgs = {
          transA,
          transB,
          m,
          n,
          k,
          alpha: 0.75,
          beta: 0.5,
          a: dummy(sa),
          b: dummy(sb),
          c: dummy(sc),
          lda,
          ldb,
          ldc,
          batch,
          strideA,
          strideB,
          strideC,
        };
        assert.equal(checkGemmBounds(g, { a: sa, b: sb, c: sc }), null);
        const want = C0.slice();
        rowMajorRef(g, A, B, want, batch);
        const s = toCublasGemm(g);
        const got = C0.slice();
        for (let q = 0; q < batch; q++) {
          const first = s.first === "b" ? B.subarray(q * s.strideA) : A.subarray(q * s.strideA);
          const second = s.first === "b" ? A.subarray(q * s.strideB) : B.subarray(q * s.strideB);
          colMajorGemm(
            s.transa,
            s.transb,
            s.m,
            s.n,
            s.k,
            0.75,
            first,
            s.lda,
            second,
            s.ldb,
            0.5,
            got.subarray(q * s.strideC),
            s.ldc,
          );
        }
        for (let i = 0; i < sc; i++) {
          assert.ok(Math.abs(got[i] - want[i]) < 1e-12, `${transA}/${transB} ${m}x${n}x${k} @${i}`);
        }
      }
    }
  }
});

Deno.test("gemm map: bounds errors name the operand", () => {
  const g: GemmArgs = {
    transA: false,
    transB: false,
    m: 4,
    n: 4,
    k: 4,
    a: dummy(16),
    b: dummy(15),
    c: dummy(16),
  };
  assert.match(checkGemmBounds(g, { a: 16, b: 15, c: 16 })!, /^gemm: B needs 16 elements/);
  assert.match(
    checkGemmBounds({ ...g, lda: 3 }, { a: 16, b: 16, c: 16 })!,
    /lda=3 is less than A's 4 columns/,
  );
  assert.match(checkGemmBounds({ ...g, batch: 2, strideC: 16 }, { a: 16, b: 16, c: 16 })!, /C needs 32/);
});

Deno.test("allocator: size classes, reuse without new mallocs, OOM retry after emptying the cache", () => {
  assert.equal(sizeClass(0), 512);
  assert.equal(sizeClass(513), 1024);
  assert.equal(sizeClass(1 << 20), 1 << 20);
  assert.equal(sizeClass((1 << 20) + 1), 2 << 20);
  assert.equal(sizeClass(5 << 20), 6 << 20);
  const limit = 8 << 20;
  let next = 0x1000n, live = 0, syncs = 0;
  const freed: bigint[] = [];
  const sizes = new Map<bigint, number>();
  const a = new CachingAllocator({
    malloc: (b) => {
      if (live + b > limit) return null;
      live += b;
      const p = next;
      next += BigInt(b);
      sizes.set(p, b);
      return p;
    },
    free: (p) => {
      live -= sizes.get(p)!;
      freed.push(p);
    },
    synchronize: () => void syncs++,
  });
  // A "training step" allocating and freeing the same shapes twice: the second step mallocs nothing.
  for (let step = 0; step < 2; step++) {
    const blocks = [a.alloc(1000), a.alloc(3 << 20), a.alloc(1000)];
    for (const b of blocks) a.release(b.ptr);
  }
  let st = a.stats();
  assert.equal(st.deviceMallocs, 3);
  assert.equal(st.allocatedBytes, 0);
  assert.equal(st.reservedBytes, 1024 + 1024 + (4 << 20));
  assert.equal(st.peakAllocatedBytes, 2048 + (4 << 20));
  assert.throws(() => a.release(0x1000n), /already freed/);
  // 6 MiB does not fit next to the 4 MiB cached block: the cache is emptied and the malloc retried.
  const big = a.alloc(6 << 20);
  assert.equal(syncs, 1);
  assert.equal(freed.length, 3);
  st = a.stats();
  assert.equal(st.reservedBytes, 6 << 20);
  assert.throws(() => a.alloc(4 << 20), /out of device memory allocating 4194304 bytes/);
  a.release(big.ptr);
  a.releaseAll();
  assert.equal(a.stats().reservedBytes, 0);
});

Deno.test("host conversions: half bits, i64, f64 decoding, keep scale", () => {
  const h = toHostStorage("bf16", 3, [1, -2.5, 1 / 3]);
  assert.deepEqual([...h], [0x3f80, 0xc020, 0x3eab]);
  assert.deepEqual([...hostToF64("bf16", h)], [1, -2.5, 0.333984375]);
  const f = toHostStorage("f16", 2, [65504, 1e-8]);
  assert.deepEqual([...f], [0x7bff, 0]);
  const raw = new Uint16Array([0x3c00]);
  assert.equal(toHostStorage("f16", 1, raw), raw, "raw half bits are taken as-is");
  assert.deepEqual([...toHostStorage("i64", 2, [5, -7])], [5n, -7n]);
  assert.throws(() => toHostStorage("f32", 3, [1, 2]), /2 values for 3 elements/);
  assert.equal(keepScale(0.1), Math.fround(1 / (1 - Math.fround(0.1))));
});

/** Parses the extern "C" kernel signatures in kernels/*.cu: family -> parameter kinds. */
function cudaSignatures(): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const f of Deno.readDirSync(new URL("../kernels/", import.meta.url))) {
    if (!f.name.endsWith(".cu")) continue;
    const src = Deno.readTextFileSync(new URL(`../kernels/${f.name}`, import.meta.url)).replace(/\\\n/g, " ");
    const re = /extern "C" __global__ void (md_[a-z0-9_]*?)(?:_?##[^(]*)?\(([^)]*)\)/g;
    for (const m of src.matchAll(re)) {
      let fam = m[1];
      if (fam.startsWith("md_transpose12")) fam = "md_transpose12";
      const kinds = m[2].split(",").map((p) => {
        p = p.trim();
        if (p.includes("*")) return "ptr";
        if (/^u64 /.test(p)) return "u64";
        if (/^long long /.test(p)) return "i64";
        if (/^(int|int32_t) /.test(p)) return "i32";
        if (/^uint32_t /.test(p)) return "u32";
        if (/^float /.test(p)) return "f32";
        if (/^double /.test(p)) return "f64";
        throw new Error(`${f.name}: unknown parameter type in '${p}' of ${fam}`);
      });
      out.set(fam, kinds);
    }
  }
  return out;
}

Deno.test("kernel tables: argument layouts match the CUDA signatures; every name is in a fatbin", () => {
  const sigs = cudaSignatures();
  assert.deepEqual([...sigs.keys()].sort(), Object.keys(KERNEL_ARGS).sort());
  for (const [fam, kinds] of sigs) assert.deepEqual([...KERNEL_ARGS[fam]], kinds, fam);
  const blobs = FATBINS.map((f) =>
    new TextDecoder("latin1").decode(Deno.readFileSync(new URL(`../kernels/dist/${f}`, import.meta.url)))
  );
  for (const name of allKernelNames()) {
    assert.ok(argKindsFor(name).length > 0);
    // The ELF string table holds each entry name NUL-terminated.
    assert.ok(blobs.some((b) => b.includes(`${name}\0`)), `${name} missing from kernels/dist`);
  }
});

Deno.test("kernel manifest: committed fatbins were built from the current sources", async () => {
  const manifest = JSON.parse(
    Deno.readTextFileSync(new URL("../kernels/dist/manifest.json", import.meta.url)),
  );
  const hex = async (u: URL) =>
    [...new Uint8Array(await crypto.subtle.digest("SHA-256", Deno.readFileSync(u)))].map((b) =>
      b.toString(16).padStart(2, "0")
    ).join("");
  for (const f of Deno.readDirSync(new URL("../kernels/", import.meta.url))) {
    if (!/\.cuh?$/.test(f.name)) continue;
    assert.equal(
      manifest.sources[f.name],
      await hex(new URL(`../kernels/${f.name}`, import.meta.url)),
      `${f.name} changed: run deno task build:kernels`,
    );
  }
  for (const f of FATBINS) {
    assert.equal(manifest.fatbins[f], await hex(new URL(`../kernels/dist/${f}`, import.meta.url)), f);
  }
});

Deno.test("probeCuda: without a usable GPU it reports one reason line", () => {
  const env: DiscoverEnv = { get: () => undefined, sitePackages: [], pythonSitePackages: () => [] };
  const r = probeCuda(env);
  if (!r.ok) {
    assert.ok(r.reason.length > 0 && !r.reason.includes("\n"), r.reason);
  }
});
