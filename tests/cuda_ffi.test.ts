// CPU-only checks of the CUDA FFI layer: library search order, the one-line "not found" error,
// status messages and cuLaunchKernel argument packing.
import assert from "node:assert/strict";
import {
  candidatePaths,
  cStr,
  type DiscoverEnv,
  openLibrary,
  searchDirs,
  sitePackagesDirs,
  statusError,
} from "../ffi/discover.ts";
import { type ArgKind, packKernelArgs } from "../ffi/cuda.ts";
import {
  attrBuffer,
  CUBLASLT_MATMUL_DESC_BIAS_POINTER,
  CUBLASLT_MATMUL_DESC_EPILOGUE,
  CUBLASLT_MATMUL_DESC_TRANSA,
  CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
  CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
  LAYOUT_ATTR_TYPES,
  MATMUL_DESC_ATTR_TYPES,
} from "../ffi/cublaslt.ts";

function fakeEnv(vars: Record<string, string>, sitePackages: string[] = []): DiscoverEnv {
  return { get: (n) => vars[n], sitePackages, pythonSitePackages: () => [] };
}

Deno.test("discover: env var first, then LD_LIBRARY_PATH, CUDA_HOME, toolkit, system, wheels", () => {
  const env = fakeEnv(
    { MEGATRON_DENO_CUBLAS: "/x/libcublas.so.99", LD_LIBRARY_PATH: "/ld1::/ld2", CUDA_HOME: "/opt/cuda" },
    ["/venv/lib/python3.12/site-packages"],
  );
  const c = candidatePaths("cublas", env);
  assert.equal(c[0], "/x/libcublas.so.99");
  assert.equal(c[1], "/ld1/libcublas.so");
  const idx = (p: string) => c.indexOf(p);
  assert.ok(idx("/ld2/libcublas.so") > 0);
  assert.ok(idx("/ld2/libcublas.so") < idx("/opt/cuda/lib64/libcublas.so"));
  assert.ok(idx("/opt/cuda/lib64/libcublas.so") < idx("/usr/local/cuda/lib64/libcublas.so"));
  assert.ok(idx("/usr/local/cuda/lib64/libcublas.so") < idx("/usr/local/nvidia/lib64/libcublas.so"));
  assert.ok(
    idx("/usr/lib/x86_64-linux-gnu/libcublas.so") <
      idx("/venv/lib/python3.12/site-packages/nvidia/cublas/lib/libcublas.so"),
  );
  assert.equal(new Set(c).size, c.length, "no duplicates");
  // cuBLASLt and NCCL come from their own wheels.
  assert.ok(
    candidatePaths("cublaslt", env).includes(
      "/venv/lib/python3.12/site-packages/nvidia/cublas/lib/libcublasLt.so",
    ),
  );
  assert.ok(
    candidatePaths("nccl", env).includes("/venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2"),
  );
  assert.ok(searchDirs(fakeEnv({})).includes("/usr/local/cuda/lib64"));
  // CUDA 13 wheels share nvidia/cu13/lib (cu12 for some CUDA 12 ones): after the per-library
  // wheel dir, cu13 before cu12.
  const sp = "/venv/lib/python3.12/site-packages/nvidia";
  const rt = candidatePaths("cudart", env);
  const at = (p: string) => {
    const i = rt.indexOf(p);
    assert.ok(i >= 0, `${p} not searched`);
    return i;
  };
  assert.ok(at(`${sp}/cuda_runtime/lib/libcudart.so.13`) < at(`${sp}/cu13/lib/libcudart.so.13`));
  assert.ok(at(`${sp}/cu13/lib/libcudart.so.13`) < at(`${sp}/cu12/lib/libcudart.so.12`));
  assert.ok(candidatePaths("cublaslt", env).includes(`${sp}/cu13/lib/libcublasLt.so.13`));
});

Deno.test("cublasLt: attribute buffers have the attribute's C size, not the JS value's", () => {
  const L = (attr: number, v: number | bigint) => attrBuffer("set", LAYOUT_ATTR_TYPES, attr, v);
  const D = (attr: number, v: number | bigint) => attrBuffer("set", MATMUL_DESC_ATTR_TYPES, attr, v);
  // The int64 strided-batch offset given as a number used to go out in 4 bytes.
  const off = L(CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, 3 * 2 ** 31);
  assert.equal(off.byteLength, 8);
  assert.deepEqual([...new BigInt64Array(off.buffer)], [3n * 2n ** 31n]);
  assert.equal(L(CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, 16n).byteLength, 4);
  assert.deepEqual([...new Int32Array(L(CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, 16n).buffer)], [16]);
  assert.equal(L(2, 1024).byteLength, 8, "ROWS is uint64_t");
  assert.equal(D(CUBLASLT_MATMUL_DESC_TRANSA, 1).byteLength, 4);
  assert.equal(D(CUBLASLT_MATMUL_DESC_EPILOGUE, 36).byteLength, 4);
  assert.equal(D(CUBLASLT_MATMUL_DESC_BIAS_POINTER, 0x7f0000001000n).byteLength, 8);
  assert.throws(() => L(99, 1), (e: Error) => e.message === "set: attribute 99 has no known C type");
  assert.throws(
    () => L(CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, 2 ** 31),
    (e: Error) => e.message === "set: attribute 5 value 2147483648 does not fit i32",
  );
});

Deno.test("discover: site-packages found under common prefixes without python", () => {
  const tree: Record<string, string[]> = {
    "/venv/lib": ["python3.11", "pkgconfig"],
    "/usr/local/lib": ["python3.12"],
    "/home/u/.local/lib": ["python3.12"],
  };
  const dirs = sitePackagesDirs(fakeEnv({ VIRTUAL_ENV: "/venv", HOME: "/home/u" }), (p) => tree[p] ?? []);
  assert.deepEqual(dirs, [
    "/venv/lib/python3.11/site-packages",
    "/venv/lib/python3.11/dist-packages",
    "/home/u/.local/lib/python3.12/site-packages",
    "/home/u/.local/lib/python3.12/dist-packages",
    "/usr/local/lib/python3.12/site-packages",
    "/usr/local/lib/python3.12/dist-packages",
  ]);
});

Deno.test("discover: a missing library is one line naming every path tried", () => {
  let asked = 0;
  const env: DiscoverEnv = {
    get: (n) => ({ MEGATRON_DENO_NCCL: "/nonexistent/libnccl.so", LD_LIBRARY_PATH: "/nonexistent-dir" })[n],
    sitePackages: ["/nonexistent-sp"],
    pythonSitePackages: () => {
      asked++;
      return ["/nonexistent-py"];
    },
  };
  let msg = "";
  try {
    openLibrary("nccl", { ncclGetVersion: { parameters: ["buffer"], result: "i32" } }, env);
  } catch (e) {
    msg = (e as Error).message;
  }
  assert.ok(!msg.includes("\n"), "one line");
  assert.match(msg, /^nccl: library not found or not loadable \(set MEGATRON_DENO_NCCL\); tried: /);
  for (
    const p of [
      "/nonexistent/libnccl.so",
      "/nonexistent-dir/libnccl.so.2",
      "/nonexistent-sp/nvidia/nccl/lib/libnccl.so",
      "/nonexistent-py/nvidia/nccl/lib/libnccl.so.2",
    ]
  ) {
    assert.ok(msg.includes(p), `lists ${p}`);
  }
  assert.equal(asked, 1, "python consulted once, only after everything else failed");
});

Deno.test("discover: status errors and C strings", () => {
  assert.equal(
    statusError("cublasGemmEx", "CUBLAS_STATUS_INVALID_VALUE", 7).message,
    "cublasGemmEx: CUBLAS_STATUS_INVALID_VALUE (7)",
  );
  assert.deepEqual([...cStr("md_fill_f32")].slice(-3), [51, 50, 0]);
});

Deno.test("cuda: kernel argument packing writes 8-byte slots and their addresses", () => {
  const slots = new DataView(new ArrayBuffer(64));
  const table = new BigUint64Array(8);
  const kinds: ArgKind[] = ["ptr", "u64", "f32", "i32", "u32", "i64"];
  packKernelArgs(kinds, [0x7f0012345678n, 3, 1.5, -2, 0xfffffffe, -5n], slots, table, 0x1000n);
  assert.deepEqual([...table.slice(0, 6)], [0x1000n, 0x1008n, 0x1010n, 0x1018n, 0x1020n, 0x1028n]);
  const bytes = new Uint8Array(slots.buffer);
  assert.deepEqual([...bytes.slice(0, 8)], [0x78, 0x56, 0x34, 0x12, 0x00, 0x7f, 0, 0]);
  assert.equal(slots.getBigUint64(8, true), 3n);
  assert.deepEqual([...bytes.slice(16, 20)], [0x00, 0x00, 0xc0, 0x3f]); // 1.5f little-endian
  assert.equal(slots.getInt32(24, true), -2);
  assert.equal(slots.getUint32(32, true), 0xfffffffe);
  assert.equal(slots.getBigInt64(40, true), -5n);
  // A double (the init kernel's std) fills its whole 8-byte slot: 0.1 = 0x3FB999999999999A.
  packKernelArgs(["f64"], [0.1], slots, table, 0x2000n);
  assert.deepEqual([...bytes.slice(0, 8)], [0x9a, 0x99, 0x99, 0x99, 0x99, 0x99, 0xb9, 0x3f]);
  assert.equal(table[0], 0x2000n);
  assert.throws(() => packKernelArgs(["ptr"], [1n, 2n], slots, table, 0n), /1 parameter kinds but 2 values/);
  assert.throws(() => packKernelArgs(Array(9).fill("i32"), Array(9).fill(0), slots, table, 0n), /exceed/);
});
