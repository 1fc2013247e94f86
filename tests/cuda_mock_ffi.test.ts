// The CUDA backend end to end through Deno FFI against a mock CUDA stack built here with the C
// compiler: "device" memory is host memory, cuBLAS GEMMs follow cuBLAS's documented
// column-major semantics, and kernel launches are recorded instead of run. This checks on a
// GPU-less machine what only a GPU run could otherwise: the symbol tables and argument order
// of every call the backend makes, the row-major GEMM mapping through real pointers and
// offsets, host copies, the allocator, and the packed kernel arguments. (The kernels themselves
// are checked by tests/gpu/.) Skips with one line when no C compiler is available.
import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { createCudaBackend, type CudaBackend, probeCuda } from "../src/backend/cuda/cuda_backend.ts";
import type { DiscoverEnv } from "../ffi/discover.ts";
import { CudaDriver } from "../ffi/cuda.ts";
import { FATBINS, KernelLibrary } from "../src/backend/cuda/kernels.ts";
import { formatProfile } from "../src/backend/cuda/profiler.ts";
import type { DType } from "../src/tensor/dtype.ts";
import { availableMemory } from "../src/training/memory_estimate.ts";

const MOCK_C = String.raw`
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
typedef uint16_t bf16;
static float bf2f(bf16 b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }
static bf16 f2bf(float f) { uint32_t u; memcpy(&u, &f, 4); u += 0x7fff + ((u >> 16) & 1); return (bf16)(u >> 16); }

/* ---- cudart ---- */
static int mallocs = 0, live = 0;
const char* cudaGetErrorString(int e) {
  return e == 1 ? "invalid argument" : e == 2 ? "out of memory" : e == 700 ? "an illegal memory access was encountered" : "mock error";
}
int cudaGetLastError(void) { return 0; }
int cudaRuntimeGetVersion(int* v) { *v = 13000; return 0; }
int cudaDriverGetVersion(int* v) { *v = 13000; return 0; }
int cudaGetDeviceCount(int* n) { const char* e = getenv("MOCK_CUDA_DEVICES"); *n = e ? atoi(e) : 1; return 0; }
int cudaSetDevice(int d) { return d == 0 ? 0 : 101; }
int cudaGetDevice(int* d) { *d = 0; return 0; }
int cudaDeviceGetAttribute(int* v, int attr, int dev) { *v = attr == 16 ? 4 : attr == 75 ? 9 : 0; return 0; }
int cudaDeviceSynchronize(void) { return 0; }
int cudaMemGetInfo(size_t* f, size_t* t) { *f = 1 << 30; *t = 1 << 30; return 0; }
int cudaMalloc(void** p, size_t n) { if (n > ((size_t)1 << 32)) return 2; *p = aligned_alloc(256, (n + 255) / 256 * 256); mallocs++; live++; return 0; }
int cudaFree(void* p) { if (p) { free(p); live--; } return 0; }
/* Overlapping ranges are undefined behaviour for cudaMemcpyAsync: report them as an error. */
int cudaMemcpyAsync(void* d, const void* s, size_t n, int kind, void* st) {
  if (kind < 1 || kind > 3) return 1;
  if (n && (const char*)s < (char*)d + n && (char*)d < (const char*)s + n) return 1;
  memcpy(d, s, n); return 0;
}
int cudaMemcpy(void* d, const void* s, size_t n, int kind) { memcpy(d, s, n); return 0; }
int cudaMemset(void* p, int v, size_t n) { memset(p, v, n); return 0; }
int cudaMemsetAsync(void* p, int v, size_t n, void* st) { memset(p, v, n); return 0; }
int cudaStreamCreateWithFlags(void** s, unsigned f) { *s = (void*)(uintptr_t)(0x5000 + f); return 0; }
int cudaStreamDestroy(void* s) { return 0; }
/* mock_fault_after(name): the next synchronization after a launch of that kernel reports an
   asynchronous fault (700), as a real device does. */
static char fault_kernel[128]; static int fault_pending = 0;
int cudaStreamSynchronize(void* s) { if (fault_pending) { fault_pending = 0; return 700; } return 0; }
void mock_fault_after(const char* name) { strncpy(fault_kernel, name, 127); }
/* A device clock: each kernel launch takes 0.5 ms and each cuBLAS GEMM call 2 ms; an event records
   the clock, so elapsed times are exact sums the profiling tests can predict. */
static double clock_ms = 0; static int events_live = 0;
int cudaEventCreate(void** e) { *e = malloc(sizeof(double)); events_live++; return 0; }
int cudaEventDestroy(void* e) { free(e); events_live--; return 0; }
int cudaEventRecord(void* e, void* s) { *(double*)e = clock_ms; return 0; }
int cudaEventSynchronize(void* e) { return 0; }
int cudaEventElapsedTime(float* ms, void* a, void* b) { *ms = (float)(*(double*)b - *(double*)a); return 0; }
int mock_events_live(void) { return events_live; }

/* ---- driver ---- */
static char last_name[128]; static uint64_t last_args[16]; static uint32_t last_dims[7]; static int launches = 0;
static void* last_stream;
int cuInit(unsigned f) { return 0; }
static int drv_version = 13000;
int cuDriverGetVersion(int* v) { *v = drv_version; return 0; }
void mock_set_driver_version(int v) { drv_version = v; }
int cuGetErrorString(int e, const char** s) {
  *s = e == 500 ? "named symbol not found" : e == 201 ? "invalid device context" : e == 700 ? "an illegal memory access was encountered" : "mock driver error";
  return 0;
}
int cuDeviceGet(int* d, int o) { *d = o; return 0; }
int cuDeviceGetName(char* n, int len, int d) { snprintf(n, len, "Mock GPU %d", d); return 0; }
int cuModuleLoadData(void** m, const void* img) { *m = (void*)img ? (void*)0x1000 : 0; return img ? 0 : 1; }
int cuModuleUnload(void* m) { return 0; }
/* md_ctxlost_*: a lookup that fails for another reason than "not in this module". */
int cuModuleGetFunction(void** f, void* m, const char* name) {
  if (strncmp(name, "md_", 3)) return 500;
  if (!strncmp(name, "md_ctxlost_", 11)) return 201;
  *f = strdup(name); return 0;
}
int cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shm, void* stream, void** params, void** extra) {
  strncpy(last_name, (const char*)f, 127);
  for (int i = 0; i < 16; i++) last_args[i] = params[i] ? *(uint64_t*)params[i] : 0;
  uint32_t d[7] = {gx, gy, gz, bx, by, bz, shm}; memcpy(last_dims, d, sizeof d);
  last_stream = stream; launches++; clock_ms += 0.5;
  if (fault_kernel[0] && !strcmp((const char*)f, fault_kernel)) { fault_pending = 1; fault_kernel[0] = 0; }
  return (bx * by * bz > 1024 || gx == 0) ? 1 : 0;
}
/* test hook */
int mock_last_launch(char* name, uint64_t* args, uint32_t* dims) {
  strcpy(name, last_name); memcpy(args, last_args, sizeof last_args); memcpy(dims, last_dims, sizeof last_dims); return launches;
}
int mock_mallocs(void) { return mallocs; }
int mock_live(void) { return live; }
uint64_t mock_last_stream(void) { return (uint64_t)(uintptr_t)last_stream; }

/* ---- cuBLAS (column-major, as documented) ---- */
static int math_mode = -1; static void* blas_stream;
int cublasCreate_v2(void** h) { *h = (void*)0x7777; return 0; }
int cublasDestroy_v2(void* h) { return 0; }
int cublasGetVersion_v2(void* h, int* v) { *v = 130000; return 0; }
int cublasSetStream_v2(void* h, void* s) { blas_stream = s; return 0; }
int cublasSetMathMode(void* h, int m) { math_mode = m; return 0; }
int cublasSetWorkspace_v2(void* h, void* p, size_t n) { return 0; }
const char* cublasGetStatusString(int s) { return s == 7 ? "CUBLAS_STATUS_INVALID_VALUE" : s == 15 ? "CUBLAS_STATUS_NOT_SUPPORTED" : "mock status"; }
int mock_blas_state(uint64_t* out) { out[0] = (uint64_t)(uintptr_t)blas_stream; out[1] = (uint64_t)math_mode; return 0; }
static float ld(const void* p, int t, long i) { return t == 0 ? ((const float*)p)[i] : bf2f(((const bf16*)p)[i]); }
static void st(void* p, int t, long i, float v) { if (t == 0) ((float*)p)[i] = v; else ((bf16*)p)[i] = f2bf(v); }
static int gemm1(int ta, int tb, int m, int n, int k, const float* al, const void* A, int at, int lda,
                 const void* B, int bt, int ldb, const float* be, void* C, int ct, int ldc, int compute) {
  if (compute != 68 || (at != 0 && at != 14) || at != bt || (ct != 0 && ct != at)) return 15;
  if (lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m || lda < 1 || ldb < 1 || ldc < 1) return 7;
  for (int j = 0; j < n; j++) for (int i = 0; i < m; i++) {
    float s = 0;
    for (int p = 0; p < k; p++) s += ld(A, at, ta ? p + (long)i * lda : i + (long)p * lda) * ld(B, bt, tb ? j + (long)p * ldb : p + (long)j * ldb);
    long c = i + (long)j * ldc;
    st(C, ct, c, *al * s + (*be == 0 ? 0 : *be * ld(C, ct, c)));
  }
  return 0;
}
static int esz(int t) { return t == 0 ? 4 : 2; }
int cublasGemmEx(void* h, int ta, int tb, int m, int n, int k, const float* al, const void* A, int at, int lda,
                 const void* B, int bt, int ldb, const float* be, void* C, int ct, int ldc, int compute, int algo) {
  clock_ms += 2;
  return gemm1(ta, tb, m, n, k, al, A, at, lda, B, bt, ldb, be, C, ct, ldc, compute);
}
int cublasGemmStridedBatchedEx(void* h, int ta, int tb, int m, int n, int k, const float* al, const void* A, int at,
                               int lda, long long sa, const void* B, int bt, int ldb, long long sb, const float* be,
                               void* C, int ct, int ldc, long long sc, int batch, int compute, int algo) {
  clock_ms += 2;
  for (int q = 0; q < batch; q++) {
    int r = gemm1(ta, tb, m, n, k, al, (const char*)A + q * sa * esz(at), at, lda, (const char*)B + q * sb * esz(bt), bt,
                  ldb, be, (char*)C + q * sc * esz(ct), ct, ldc, compute);
    if (r) return r;
  }
  return 0;
}
`;

async function buildMock(): Promise<string | null> {
  const dir = await Deno.makeTempDir({ prefix: "md-mockcuda-" });
  await Deno.writeTextFile(`${dir}/mock.c`, MOCK_C);
  try {
    const out = await new Deno.Command("cc", {
      args: ["-shared", "-fPIC", "-O1", "-o", `${dir}/libmockcuda.so`, `${dir}/mock.c`],
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  } catch (e) {
    console.log(
      `cuda mock FFI tests: skipped — cannot compile the mock (${(e as Error).message.split("\n")[0]})`,
    );
    return null;
  }
  return `${dir}/libmockcuda.so`;
}

const lib = await buildMock();
const opts = { sanitizeResources: false, sanitizeOps: false };

if (lib) {
  const vars: Record<string, string> = {
    MEGATRON_DENO_CUDART: lib,
    MEGATRON_DENO_CUDA: lib,
    MEGATRON_DENO_CUBLAS: lib,
  };
  const env: DiscoverEnv = { get: (n) => vars[n], sitePackages: [], pythonSitePackages: () => [] };
  const hooks = Deno.dlopen(lib, {
    mock_last_launch: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
    mock_mallocs: { parameters: [], result: "i32" },
    mock_live: { parameters: [], result: "i32" },
    mock_last_stream: { parameters: [], result: "u64" },
    mock_blas_state: { parameters: ["buffer"], result: "i32" },
    mock_fault_after: { parameters: ["buffer"], result: "void" },
    mock_set_driver_version: { parameters: ["i32"], result: "void" },
    mock_events_live: { parameters: [], result: "i32" },
  }).symbols;
  const lastLaunch = () => {
    const name = new Uint8Array(128), args = new BigUint64Array(16), dims = new Uint32Array(7);
    const count = hooks.mock_last_launch(name, args, dims);
    return { count, name: new TextDecoder().decode(name.subarray(0, name.indexOf(0))), args, dims };
  };
  const cpu = createCpuBackend({ log: () => {} });
  let cuda: CudaBackend;

  Deno.test({ name: "cuda mock: probe and backend creation through the FFI tables", ...opts }, async () => {
    const p = probeCuda(env);
    assert.ok(p.ok, p.ok ? "" : p.reason);
    cuda = await createCudaBackend({ env });
    assert.match(
      cuda.description,
      /^cuda:0 \(Mock GPU 0, sm_90, CUDA runtime 13\.0, driver 13\.0, cuBLAS 130000\)$/,
    );
    const st = new BigUint64Array(2);
    hooks.mock_blas_state(st);
    assert.equal(st[0], 0x5001n, "cuBLAS runs on the backend's non-blocking stream");
    assert.equal(st[1], 16n, "CUBLAS_DEFAULT_MATH (no TF32) | DISALLOW_REDUCED_PRECISION_REDUCTION");
  });

  Deno.test(
    { name: "cuda mock: kernel lookup moves to the next module only on NOT_FOUND", ...opts },
    async () => {
      const drv = CudaDriver.open(env);
      const kl = await KernelLibrary.load(drv, new URL("../kernels/dist/", import.meta.url));
      assert.ok(kl.get("md_fill_f32").fn !== null);
      assert.throws(
        () => kl.get("md_ctxlost_f32"),
        (e: Error) => e.message === "cuModuleGetFunction(md_ctxlost_f32): invalid device context (201)",
      );
      assert.throws(
        () => kl.get("nope_f32"),
        (e: Error) =>
          e.message ===
            "cuda kernels: nope_f32 not found in kernels/dist (rebuild with deno task build:kernels)",
      );
      kl.unload();
    },
  );

  Deno.test(
    { name: "cuda mock: fromHost/toHost round trips every dtype, views use their offset", ...opts },
    () => {
      const data = [1.5, -2, 3.25, 0, 7, -8];
      for (const d of ["f32", "f16", "bf16", "f64", "i32", "i64", "u8"] as DType[]) {
        const vals = d === "u8" ? data.map((v) => Math.abs(Math.trunc(v))) : data;
        const t = cuda.fromHost(d, [2, 3], vals);
        const r = cpu.fromHost(d, [2, 3], vals);
        assert.deepEqual([...cuda.toF64(t)], [...cpu.toF64(r)], d);
        assert.deepEqual([...cuda.toF64(t.narrow(1, 1))], [...cpu.toF64(r.narrow(1, 1))], `${d} view`);
        const c = cuda.empty(d, [6]);
        cuda.copy(t, c);
        assert.deepEqual([...cuda.toHost(c)], [...cuda.toHost(t)], `${d} device copy`);
        const z = cuda.zeros(d, [5]);
        assert.deepEqual([...cuda.toF64(z)], [0, 0, 0, 0, 0]);
        for (const x of [t, c, z]) cuda.free(x);
      }
      const t = cuda.fromHost("f32", [2], [1, 2]);
      cuda.free(t);
      assert.throws(() => cuda.toHost(t), /use of freed tensor/);
      assert.throws(() => cuda.free(t), /already freed/);
    },
  );

  Deno.test(
    { name: "cuda mock: gemm through cublasGemmEx / StridedBatchedEx equals the CPU GEMM", ...opts },
    () => {
      let s = 7;
      const rnd = (n: number) =>
        Array.from({ length: n }, () => ((s = (s * 48271) % 2147483647) / 2147483647) - 0.5);
      for (const dt of ["f32", "bf16"] as DType[]) {
        for (const cdt of dt === "f32" ? ["f32"] as DType[] : ["bf16", "f32"] as DType[]) {
          for (const transA of [false, true]) {
            for (const transB of [false, true]) {
              const [m, n, k, batch] = [5, 7, 6, 3];
              const lda = (transA ? m : k) + 2, ldb = (transB ? k : n) + 1, ldc = n + 3;
              const sA = (transA ? k : m) * lda + 1, sB = (transB ? n : k) * ldb, sC = m * ldc + 2;
              const A = rnd(batch * sA + 4), B = rnd(batch * sB), C = rnd(batch * sC);
              const run = (be: typeof cpu | CudaBackend) => {
                const a = be.fromHost(dt, [A.length], A).flat(4); // an offset view
                const b = be.fromHost(dt, [B.length], B), c = be.fromHost(cdt, [C.length], C);
                be.gemm({
                  transA,
                  transB,
                  m,
                  n,
                  k,
                  alpha: 0.5,
                  beta: 2,
                  a,
                  b,
                  c,
                  lda,
                  ldb,
                  ldc,
                  batch,
                  strideA: sA,
                  strideB: sB,
                  strideC: sC,
                });
                be.gemm({ transA, transB, m, n, k, alpha: 1, beta: 1, a, b, c, lda, ldb, ldc }); // batch 1 path
                const r = be.toF64(c);
                for (const t of [a, b, c]) be.free(t);
                return r;
              };
              const got = run(cuda), want = run(cpu);
              let err = 0, mx = 0;
              for (let i = 0; i < want.length; i++) {
                err = Math.max(err, Math.abs(got[i] - want[i]));
                mx = Math.max(mx, Math.abs(want[i]));
              }
              const bound = cdt === "f32" ? 1e-6 : 8e-3;
              assert.ok(err / mx <= bound, `${dt}->${cdt} ${transA}/${transB}: rel err ${err / mx}`);
            }
          }
        }
      }
      const a = cuda.zeros("f32", [4]), c = cuda.zeros("f32", [4]);
      assert.throws(
        () => cuda.gemm({ transA: false, transB: false, m: 2, n: 2, k: 2, a, b: a, c, lda: 1 }),
        /lda=1 is less/,
      );
      const h = cuda.zeros("f16", [4]);
      assert.throws(
        () => cuda.gemm({ transA: false, transB: false, m: 2, n: 2, k: 2, a: h, b: h, c: h }),
        /CUBLAS_STATUS_NOT_SUPPORTED \(15\)/,
      );
      for (const t of [a, c, h]) cuda.free(t);
    },
  );

  Deno.test(
    { name: "cuda mock: kernel launches carry the right names, grids and packed arguments", ...opts },
    () => {
      const x = cuda.zeros("bf16", [3, 4]), y = cuda.zeros("f32", [3, 4]), out = cuda.zeros("f16", [3, 4]);
      const addr = (t: { storage: unknown; offset: number; dtype: DType }) =>
        (t.storage as { ptr: bigint }).ptr + BigInt(t.offset * (t.dtype === "f32" ? 4 : 2));
      cuda.add(x, y, out, 0.5, -2);
      let L = lastLaunch();
      assert.equal(L.name, "md_add_bf16_f32_f16");
      assert.deepEqual([...L.args.slice(0, 4)], [addr(x), addr(y), addr(out), 12n]);
      const f = new Float32Array(new BigUint64Array([L.args[4], L.args[5]]).buffer);
      assert.deepEqual([f[0], f[2]], [0.5, -2]);
      assert.equal(hooks.mock_last_stream(), 0x5001n, "kernels run on the compute stream");

      const x2 = cuda.zeros("bf16", [12]);
      cuda.dropout(x.view([12]).flat(4, 8), 0.1, {
        seed: 7,
        stream: 9,
        iteration: 3,
        base: 2 ** 40 + 1,
        rowStride: 100,
        rowLen: 4,
      }, x2.flat(0, 8));
      L = lastLaunch();
      assert.equal(L.name, "md_dropout_bf16");
      assert.equal(L.args[0], addr(x) + 8n, "view offset applied");
      assert.equal(L.args[2], 8n);
      const fl = new Float32Array(new BigUint64Array([L.args[3], L.args[4]]).buffer);
      assert.equal(fl[0], Math.fround(0.1));
      assert.equal(fl[2], Math.fround(1 / (1 - Math.fround(0.1))));
      assert.deepEqual([...L.args.slice(5, 11)].map((v) => v & 0xffffffffffffffffn), [
        7n,
        9n,
        3n,
        2n ** 40n + 1n,
        100n,
        4n,
      ]);

      const probs = cuda.zeros("f32", [2, 3, 5, 700]);
      cuda.softmaxFwd(probs, 0.125, { kind: "causal" }, probs);
      L = lastLaunch();
      assert.equal(L.name, "md_softmax_fwd_f32_f32");
      assert.deepEqual([...L.dims], [30, 1, 1, 512, 1, 1, 0], "one 512-thread block per row");
      assert.deepEqual([...L.args.slice(5, 8)], [3n, 5n, 700n]);
      assert.equal(Number(L.args[3] & 0xffffffffn), 1, "causal mask kind");

      const ids = cuda.fromHost("i64", [3], [1, 2, 3]), table = cuda.zeros("bf16", [10, 4]);
      cuda.embeddingFwd(ids, table, x, -5);
      L = lastLaunch();
      assert.equal(L.name, "md_embedding_fwd_i64_bf16");
      assert.deepEqual([...L.args.slice(3, 7)], [3n, 4n, 10n, BigInt.asUintN(64, -5n)]);

      const g = cuda.zeros("f32", [4]);
      cuda.sumRows(y, g, true);
      L = lastLaunch();
      assert.equal(L.name, "md_colfinish_f32");
      assert.equal(Number(L.args[4] & 0xffffffffn), 1, "accumulate flag");
      assert.throws(
        () => cuda.layerNormFwd(x, g, g, 1e-5, x, g, g),
        /x\/gamma dtypes differ \(bf16 vs f32\)/,
      );
      for (const t of [x, x2, y, out, probs, ids, table, g]) cuda.free(t);
    },
  );

  Deno.test({
    name: "cuda mock: deviceMemory is cudaMemGetInfo's free plus the allocator's cached blocks",
    ...opts,
  }, () => {
    // The mock's cudaMemGetInfo reports 1 GiB free; blocks the allocator caches count as free too.
    const t = cuda.empty("f32", [1 << 20]);
    const held = cuda.memoryStats();
    assert.deepEqual(cuda.deviceMemory(), {
      free: (1 << 30) + held.reservedBytes - held.allocatedBytes,
      total: 1 << 30,
    });
    cuda.free(t);
    const cached = cuda.memoryStats();
    assert.equal(cached.allocatedBytes, 0);
    assert.equal(cuda.deviceMemory().free, (1 << 30) + cached.reservedBytes);
    assert.deepEqual(availableMemory(cuda), {
      bytes: (1 << 30) + cached.reservedBytes,
      what: "free cuda device memory",
    });
  });

  Deno.test({
    name: "cuda mock: profiling mode times each op by events and counts launches per op and per step",
    ...opts,
  }, () => {
    const rows = 4, h = 8;
    const vals = (n: number, k: number) => Array.from({ length: n }, (_, i) => ((i * k) % 11) / 7 - 0.6);
    const x = cuda.fromHost("f32", [rows, h], vals(rows * h, 3)),
      w = cuda.fromHost("f32", [h, h], vals(64, 5));
    const g = cuda.fromHost("f32", [h], vals(h, 2)), b = cuda.fromHost("f32", [h], vals(h, 7));
    const y = cuda.empty("f32", [rows, h]),
      mean = cuda.empty("f32", [rows]),
      rstd = cuda.empty("f32", [rows]);
    const dx = cuda.empty("f32", [rows, h]), dg = cuda.zeros("f32", [h]), db = cuda.zeros("f32", [h]);
    const c = cuda.empty("f32", [rows, h]), ov = cuda.fromHost("f32", [10], vals(10, 1));
    const kernels = () => lastLaunch().count;
    cuda.layerNormFwd(x, g, b, 1e-5, y, mean, rstd);
    const yPlain = cuda.toHost(y);
    const events0 = hooks.mock_events_live();
    cuda.startProfiling();
    const perStep: number[] = [];
    let lnf = 0, lnb = 0;
    for (let step = 0; step < 2; step++) {
      let k0 = kernels();
      cuda.layerNormFwd(x, g, b, 1e-5, y, mean, rstd);
      lnf = kernels() - k0;
      cuda.gemm({ transA: false, transB: true, m: rows, n: h, k: h, a: y, b: w, c });
      k0 = kernels();
      cuda.layerNormBwd(c, x, g, mean, rstd, dx, dg, db, true);
      lnb = kernels() - k0;
      // Overlapping views: copy goes through a temporary (two DtoD copies inside one op).
      cuda.copy(ov.narrow(0, 6), ov.narrow(2, 6));
      perStep.push(lnf + 1 + lnb + 2);
      cuda.markProfileStep();
    }
    const yProf = cuda.toHost(y); // after the last mark: counted per op, not in a step
    const rep = cuda.stopProfiling();
    assert.ok(lnf === 1 && lnb >= 3, `layerNorm launches fwd ${lnf} bwd ${lnb}`);
    assert.deepEqual([...yProf], [...yPlain], "profiling changes no result");
    const gl = "gemm f32 NT 4x8x8";
    const expected: [string, number, number, number][] = [
      ["layerNormBwd", 2, 2 * lnb, 2 * 0.5 * lnb],
      [gl, 2, 2, 4],
      ["layerNormFwd", 2, 2 * lnf, 2 * 0.5 * lnf],
      ["copy", 2, 4, 0],
      ["toHost", 1, 1, 0],
    ];
    // Largest device time first, ties by name.
    expected.sort((p, q) => q[3] - p[3] || (p[0] < q[0] ? -1 : 1));
    assert.deepEqual(rep.ops.map((o) => [o.op, o.calls, o.launches, o.deviceMs]), expected);
    assert.deepEqual(rep.launchesPerStep, perStep);
    assert.deepEqual(rep.deviceMsPerStep, perStep.map(() => 0.5 * (lnf + lnb) + 2));
    assert.equal(rep.totalLaunches, 2 * perStep[0] + 1);
    assert.ok(rep.ops.every((o) => o.hostMs >= 0) && rep.hostMsPerStep.length === 2);
    assert.equal(hooks.mock_events_live(), events0, "every profiling event destroyed");
    assert.ok(!Object.hasOwn(cuda, "gemm"), "ops back to the unprofiled methods");
    assert.throws(() => cuda.stopProfiling(), /stopProfiling without startProfiling/);
    // The optional fused ops are own properties: wrapped while profiling, then restored as they were.
    cuda.setFusedAttention(true);
    const fwd = cuda.fusedAttentionFwd;
    cuda.startProfiling();
    assert.notEqual(cuda.fusedAttentionFwd, fwd);
    assert.throws(() => cuda.setFusedAttention(false), /setFusedAttention while profiling/);
    cuda.stopProfiling();
    assert.equal(cuda.fusedAttentionFwd, fwd);
    cuda.setFusedAttention(false);
    assert.equal(cuda.fusedAttentionFwd, undefined);
    const table = formatProfile(rep).split("\n");
    assert.match(table[0], /^op +calls +launches +device ms +dev % +host ms +host us\/launch/);
    const row = (op: string) => table.find((l) => l.startsWith(op + " "))!;
    assert.match(row("layerNormBwd"), new RegExp(`^layerNormBwd +1 +${lnb} +${(0.5 * lnb).toFixed(3)} `));
    assert.match(row(gl), new RegExp(`^${gl} +1 +1 +2\\.000 `));
    assert.match(table.at(-1)!, new RegExp(`^steps 2: launches/step ${perStep[0]}, device ms/step `));
    for (const t of [x, w, g, b, y, mean, rstd, dx, dg, db, c, ov]) cuda.free(t);
  });

  Deno.test({
    name: "cuda mock: caching allocator makes no new cudaMalloc in steady state; dispose frees all",
    ...opts,
  }, () => {
    const step = () => {
      const ts = [cuda.empty("bf16", [1000, 1000]), cuda.empty("f32", [17]), cuda.empty("f16", [3, 3])];
      for (const t of ts) cuda.free(t);
    };
    step();
    const n0 = hooks.mock_mallocs();
    for (let i = 0; i < 3; i++) step();
    assert.equal(hooks.mock_mallocs(), n0);
    const st = cuda.memoryStats();
    assert.equal(st.allocatedBytes, 0);
    assert.ok(st.peakAllocatedBytes >= 2 << 20 && st.reservedBytes >= st.peakAllocatedBytes);
    const a = cuda.recordEvent(), f = cuda.empty("f32", [3]);
    cuda.fill(f, 1);
    const b = cuda.recordEvent();
    assert.equal(cuda.elapsedMs(a, b), 0.5, "one launch of the mock clock between the events");
    cuda.free(f);
    cuda.dispose();
    assert.equal(hooks.mock_live(), 0, "every device block returned");
  });

  Deno.test(
    { name: "cuda mock: fatbins built for a newer CUDA than the driver fail in one line", ...opts },
    async () => {
      const dist = new URL("../kernels/dist/", import.meta.url);
      const dir = await Deno.makeTempDir({ prefix: "md-kernels-dir-" });
      try {
        for (const f of FATBINS) {
          await Deno.copyFile(new URL(f, dist), `${dir}/${f}`);
        }
        const manifest = JSON.parse(await Deno.readTextFile(new URL("manifest.json", dist)));
        await Deno.writeTextFile(
          `${dir}/manifest.json`,
          JSON.stringify({ ...manifest, nvcc: "release 13.1, V13.1.2" }),
        );
        const withDir: DiscoverEnv = {
          ...env,
          get: (n) => n === "MEGATRON_DENO_KERNELS_DIR" ? dir : vars[n],
        };
        // The committed fatbins (nvcc 13.0) on a CUDA 12.8 driver.
        hooks.mock_set_driver_version(12080);
        await assert.rejects(
          () => createCudaBackend({ env }),
          (e: Error) =>
            e.message ===
              `cuda kernels: ${
                  new URL(dist).pathname
                } was built with nvcc 13.0 and needs a CUDA 13.0+ driver (r580+), ` +
                "but this driver supports CUDA 12.8 (cuDriverGetVersion 12080); rebuild with this host's nvcc " +
                "(deno task build:kernels --out DIR) and set MEGATRON_DENO_KERNELS_DIR=DIR",
        );
        // MEGATRON_DENO_KERNELS_DIR is where the manifest is read from: 13.1 needs more than 13.0.
        hooks.mock_set_driver_version(13000);
        await assert.rejects(() => createCudaBackend({ env: withDir }), (e: Error) =>
          e.message.startsWith(
            `cuda kernels: ${dir}/ was built with nvcc 13.1 and needs a CUDA 13.1+ driver (r580+), but this driver supports CUDA 13.0 `,
          ));
        hooks.mock_set_driver_version(13010);
        const be = await createCudaBackend({ env: withDir });
        assert.match(be.description, /CUDA runtime 13\.0, driver 13\.1,/);
        be.dispose();
      } finally {
        hooks.mock_set_driver_version(13000);
        await Deno.remove(dir, { recursive: true });
      }
    },
  );

  Deno.test(
    { name: "cuda mock: MEGATRON_DENO_REQUIRE_CUDA=1 turns a failed probe into an error", ...opts },
    () => {
      Deno.env.set("MOCK_CUDA_DEVICES", "0");
      try {
        const p = probeCuda(env);
        assert.deepEqual(p, { ok: false, reason: "cudaGetDeviceCount: no CUDA device visible" });
        const required: DiscoverEnv = {
          ...env,
          get: (n) => n === "MEGATRON_DENO_REQUIRE_CUDA" ? "1" : vars[n],
        };
        assert.throws(
          () => probeCuda(required),
          (e: Error) =>
            e.message ===
              "MEGATRON_DENO_REQUIRE_CUDA=1 but CUDA is not usable: cudaGetDeviceCount: no CUDA device visible",
        );
      } finally {
        Deno.env.delete("MOCK_CUDA_DEVICES");
      }
    },
  );

  Deno.test({
    name: "cuda mock: test:gpu and bench:gpu skip without a GPU, fail when CUDA is required",
    ...opts,
  }, async () => {
    const root = new URL("..", import.meta.url).pathname;
    const run = async (args: string[], require: boolean) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args,
        cwd: root,
        env: {
          ...vars,
          MOCK_CUDA_DEVICES: "0",
          MEGATRON_DENO_REQUIRE_CUDA: require ? "1" : "0",
          NO_COLOR: "1",
        },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const dec = new TextDecoder();
      return { code: out.code, text: dec.decode(out.stdout) + dec.decode(out.stderr) };
    };
    const line = "cudaGetDeviceCount: no CUDA device visible";
    let r = await run(["run", "-A", "bench/gpu/gpt345m.ts"], false);
    assert.equal(r.code, 0, r.text);
    assert.ok(r.text.includes(`bench:gpu: skipped — no CUDA: ${line}`), r.text);
    r = await run(["run", "-A", "bench/gpu/gpt345m.ts"], true);
    assert.notEqual(r.code, 0, r.text);
    assert.ok(r.text.includes(`MEGATRON_DENO_REQUIRE_CUDA=1 but CUDA is not usable: ${line}`), r.text);
    r = await run(["test", "-A", "--no-check", "tests/gpu/ops.test.ts"], true);
    assert.notEqual(r.code, 0, r.text);
    assert.ok(r.text.includes(`MEGATRON_DENO_REQUIRE_CUDA=1 but CUDA is not usable: ${line}`), r.text);
  });

  Deno.test({
    name: "cuda mock: MEGATRON_DENO_CUDA_SYNC names the op whose fault surfaces at a sync",
    ...opts,
  }, async () => {
    // Without sync checks the fault shows up at the next synchronization, without a name.
    const plain = await createCudaBackend({ env, syncCheck: false });
    const h = plain.zeros("f16", [300]);
    hooks.mock_fault_after(new TextEncoder().encode("md_fill_f16\0"));
    plain.fill(h, 1);
    assert.throws(
      () => plain.toHost(h),
      (e: Error) =>
        e.message ===
          "cudaStreamSynchronize: an illegal memory access was encountered (700): an earlier op failed; " +
            "rerun with MEGATRON_DENO_CUDA_SYNC=1 to name it",
    );
    plain.free(h);
    plain.dispose();
    const dbg = await createCudaBackend({
      env: { ...env, get: (n) => n === "MEGATRON_DENO_CUDA_SYNC" ? "1" : vars[n] },
    });
    assert.ok(dbg.syncCheck && dbg.description.endsWith(", sync-check)"), dbg.description);
    const t = dbg.zeros("f16", [300]);
    hooks.mock_fault_after(new TextEncoder().encode("md_fill_f16\0"));
    assert.throws(
      () => dbg.fill(t, 1),
      (e: Error) =>
        e.message ===
          "cuda sync check: kernel md_fill_f16 grid [2,1,1] block [256,1,1] failed: " +
            "an illegal memory access was encountered (700)",
    );
    dbg.free(t);
    dbg.dispose();
  });

  Deno.test({
    name: "cuda mock: normalInit launches md_init_normal with the f64 std and the address",
    ...opts,
  }, async () => {
    const be = await createCudaBackend({ env });
    const w = be.empty("bf16", [4, 6]);
    be.normalInit(w, 0.02 / Math.sqrt(48), {
      seed: 5,
      stream: 7,
      iteration: 0,
      base: 2 ** 40,
      rowStride: 10,
      rowLen: 6,
    });
    const L = lastLaunch();
    assert.equal(L.name, "md_init_normal_bf16");
    assert.equal(L.args[1], 24n);
    assert.equal(new Float64Array(new BigUint64Array([L.args[2]]).buffer)[0], 0.02 / Math.sqrt(48));
    assert.deepEqual([...L.args.slice(3, 9)].map((v, i) => i < 3 ? v & 0xffffffffn : v), [
      5n,
      7n,
      0n,
      2n ** 40n,
      10n,
      6n,
    ]);
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
      /cuda normalInit: out has dtype i32/,
    );
    be.dispose();
  });

  Deno.test({
    name: "cuda mock: copies between overlapping views of one storage match the CPU backend",
    ...opts,
  }, async () => {
    const be = await createCudaBackend({ env });
    const vals = Array.from({ length: 10 }, (_, i) => i + 1);
    for (const d of ["f32", "bf16", "i64"] as DType[]) {
      for (const [from, to] of [[0, 2], [2, 0], [3, 3], [0, 1]]) {
        const run = (b: typeof cpu | CudaBackend) => {
          const t = b.fromHost(d, [10], vals);
          b.copy(t.flat(from, 7), t.flat(to, 7));
          const r = [...b.toF64(t)];
          b.free(t);
          return r;
        };
        assert.deepEqual(run(be), run(cpu), `${d} ${from}->${to}`);
      }
    }
    be.dispose();
  });
}
