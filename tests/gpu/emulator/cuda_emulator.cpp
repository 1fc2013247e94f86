// A CPU emulation of the CUDA stack the backend uses, for checking the kernel library without a
// GPU. It exports the cudart / driver / cuBLAS symbols of ffi/*.ts: "device" memory is host
// memory, cuBLAS GEMMs follow cuBLAS's documented column-major semantics (f32 accumulation), and
// cuLaunchKernel runs the real kernels/*.cu code on the CPU: every CUDA thread of a block is a
// fiber (ucontext); __syncthreads and warp shuffles switch fibers, blocks run one after another
// (so __shared__ statics behave like shared memory). Built by tests/gpu/emulator/build.ts with
// the kernel list; see tests/cuda_emulated_ops.test.ts. Test infrastructure only.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>
#include <ucontext.h>

using std::isfinite;

// ---- CUDA language surface ----------------------------------------------------------------
#define MD_HOST_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct uint4 { uint32_t x, y, z, w; };
static inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
struct dim3u { unsigned x, y, z; };
dim3u threadIdx, blockIdx, blockDim, gridDim;

struct __half { uint16_t x; };
struct __nv_bfloat16 { uint16_t x; };
static inline float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float __half2float(__half h) {
  const uint32_t s = (h.x & 0x8000u) << 16, e = (h.x >> 10) & 0x1f, m = h.x & 0x3ff;
  if (e == 0) { const float v = (float)m * 5.9604644775390625e-8f; return s ? -v : v; }
  if (e == 31) return bitsf(s | 0x7f800000u | (m << 13));
  return bitsf(s | ((e + 112) << 23) | (m << 13));
}
static inline __half __float2half_rn(float f) {  // round to nearest even
  const uint32_t x = fbits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return {(uint16_t)(sign | 0x7e00u)};
  if (ax >= 0x477ff000u) return {(uint16_t)(sign | 0x7c00u)};
  if (ax < 0x38800000u) return {(uint16_t)(sign | (uint32_t)nearbyintf(bitsf(ax) * 16777216.0f))};
  uint32_t h = ((((ax >> 23) - 112) << 10) | ((ax & 0x7fffffu) >> 13));
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return {(uint16_t)(sign | h)};
}
static inline float __bfloat162float(__nv_bfloat16 b) { return bitsf((uint32_t)b.x << 16); }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = fbits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40u)};
  return {(uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
// Correctly rounded f64 ops (SSE2 with -ffp-contract=off, as the device's __d*_rn).
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __dsqrt_rn(double a) { return sqrt(a); }
static inline float __double2float_rn(double a) { return (float)a; }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline float atomicAdd(float* p, float v) { const float o = *p; *p = o + v; return o; }

// ---- fiber scheduler -------------------------------------------------------------------------
enum State { RUNNABLE, AT_BLOCK, AT_WARP, DONE };
struct Fiber { ucontext_t ctx; State st; std::vector<char> stack; };
static ucontext_t g_sched;
static std::vector<Fiber> g_fibers;
static int g_cur = 0;
static unsigned g_nthreads = 0;
static void (*g_invoke)(void**) = nullptr;
static void** g_params = nullptr;
static float g_shfl[1024];
static int g_or_acc = 0;
static bool g_deadlock = false;

static void yield_as(State s) {
  g_fibers[g_cur].st = s;
  swapcontext(&g_fibers[g_cur].ctx, &g_sched);
}
void __syncthreads() { yield_as(AT_BLOCK); }
static void syncwarp() { yield_as(AT_WARP); }
static inline unsigned tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
float __shfl_xor_sync(unsigned, float v, int o) {
  const unsigned t = tid();
  g_shfl[t] = v;
  syncwarp();
  const float r = g_shfl[t ^ (unsigned)o];
  syncwarp();
  return r;
}
static double g_shfld[1024];
double __shfl_xor_sync(unsigned, double v, int o) {
  const unsigned t = tid();
  g_shfld[t] = v;
  syncwarp();
  const double r = g_shfld[t ^ (unsigned)o];
  syncwarp();
  return r;
}
int __syncthreads_or(int pred) {
  if (pred) g_or_acc = 1;
  __syncthreads();
  const int r = g_or_acc;
  __syncthreads();
  return r;
}

static void fiber_entry() {
  g_invoke(g_params);
  g_fibers[g_cur].st = DONE;
}  // returns to uc_link = g_sched

static void set_thread(unsigned t) {
  threadIdx.x = t % blockDim.x;
  threadIdx.y = (t / blockDim.x) % blockDim.y;
  threadIdx.z = t / (blockDim.x * blockDim.y);
}

static int run_block() {
  if (g_fibers.size() < g_nthreads) g_fibers.resize(g_nthreads);
  for (unsigned t = 0; t < g_nthreads; t++) {
    Fiber& f = g_fibers[t];
    if (f.stack.empty()) f.stack.resize(256 * 1024);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = &g_sched;
    makecontext(&f.ctx, fiber_entry, 0);
    f.st = RUNNABLE;
  }
  g_or_acc = 0;
  for (;;) {
    bool ran = false;
    for (unsigned t = 0; t < g_nthreads; t++) {
      if (g_fibers[t].st != RUNNABLE) continue;
      g_cur = (int)t;
      set_thread(t);
      swapcontext(&g_sched, &g_fibers[t].ctx);
      ran = true;
    }
    if (ran) continue;
    bool released = false, alive = false;
    for (unsigned w = 0; w < g_nthreads; w += 32) {  // warps: all live lanes at a warp barrier
      bool all = true, any = false;
      for (unsigned t = w; t < w + 32 && t < g_nthreads; t++) {
        if (g_fibers[t].st == DONE) continue;
        any = true;
        if (g_fibers[t].st != AT_WARP) all = false;
      }
      if (any && all) {
        for (unsigned t = w; t < w + 32 && t < g_nthreads; t++) if (g_fibers[t].st == AT_WARP) g_fibers[t].st = RUNNABLE;
        released = true;
      }
    }
    if (released) continue;
    bool allBlock = true;
    for (unsigned t = 0; t < g_nthreads; t++) {
      if (g_fibers[t].st == DONE) continue;
      alive = true;
      if (g_fibers[t].st != AT_BLOCK) allBlock = false;
    }
    if (!alive) return 0;
    if (!allBlock) { g_deadlock = true; return 1; }  // divergent barriers: a kernel bug
    for (unsigned t = 0; t < g_nthreads; t++) if (g_fibers[t].st == AT_BLOCK) g_fibers[t].st = RUNNABLE;
    if (g_or_acc && false) g_or_acc = 0;
  }
}

// ---- the kernel library, compiled for the host ----------------------------------------------
#include "elementwise.cu"
#include "transformer.cu"
#include "train.cu"
#include "attention.cu"

template <typename... A, size_t... I>
static void call_with(void (*fn)(A...), void** p, std::index_sequence<I...>) {
  fn(*static_cast<A*>(p[I])...);
}
template <typename... A>
static void invoke(void (*fn)(A...), void** p) { call_with(fn, p, std::index_sequence_for<A...>{}); }

struct KernelEntry { const char* name; void (*run)(void**); };
#define K(name) {#name, [](void** p) { invoke(&name, p); }},
static const KernelEntry KERNELS[] = {
#include "kernel_list.inc"
};
#undef K

extern "C" {
// ---- cudart ----
static int g_mallocs = 0, g_live = 0;
const char* cudaGetErrorString(int e) {
  return e == 1 ? "invalid argument" : e == 2 ? "out of memory" : e == 700 ? "an illegal memory access was encountered" : "emulator error";
}
int cudaGetLastError(void) { return 0; }
int cudaRuntimeGetVersion(int* v) { *v = 13000; return 0; }
int cudaDriverGetVersion(int* v) { *v = 13000; return 0; }
// MEGATRON_DENO_EMU_DEVICES=N shows N devices (default 1); they all share the host's memory.
static int emuDevices() {
  const char* s = getenv("MEGATRON_DENO_EMU_DEVICES");
  return s && atoi(s) > 0 ? atoi(s) : 1;
}
static int emuDevice = 0;
int cudaGetDeviceCount(int* n) { *n = emuDevices(); return 0; }
int cudaSetDevice(int d) {
  if (d < 0 || d >= emuDevices()) return 101;  // cudaErrorInvalidDevice
  emuDevice = d;
  return 0;
}
int cudaGetDevice(int* d) { *d = emuDevice; return 0; }
int cudaDeviceGetAttribute(int* v, int attr, int) { *v = attr == 16 ? 2 : attr == 75 ? 9 : 0; return 0; }
int cudaDeviceSynchronize(void) { return 0; }
int cudaMemGetInfo(size_t* f, size_t* t) { *f = (size_t)1 << 32; *t = (size_t)1 << 32; return 0; }
int cudaMalloc(void** p, size_t n) {
  // Garbage, not zeros: the tests' poisoning must not be the only thing hiding unwritten output.
  *p = aligned_alloc(256, (n + 255) / 256 * 256);
  memset(*p, 0xA5, (n + 255) / 256 * 256);
  g_mallocs++; g_live++;
  return 0;
}
int cudaFree(void* p) { if (p) { free(p); g_live--; } return 0; }
int cudaMemcpyAsync(void* d, const void* s, size_t n, int kind, void*) { if (kind < 1 || kind > 3) return 1; memmove(d, s, n); return 0; }
int cudaMemcpy(void* d, const void* s, size_t n, int) { memmove(d, s, n); return 0; }
int cudaMemset(void* p, int v, size_t n) { memset(p, v, n); return 0; }
int cudaMemsetAsync(void* p, int v, size_t n, void*) { memset(p, v, n); return 0; }
int cudaStreamCreateWithFlags(void** s, unsigned f) { *s = (void*)(uintptr_t)(0x5000 + f); return 0; }
int cudaStreamDestroy(void*) { return 0; }
// EMU_FAULT_KERNEL=<name>: the first synchronization after that kernel ran reports an illegal
// address (700), as a faulting kernel does on a device (tests/gpu_check_script.test.ts).
static bool g_fault_pending = false;
int cudaStreamSynchronize(void*) {
  if (g_fault_pending) { g_fault_pending = false; return 700; }
  return 0;
}
int cudaEventCreate(void** e) { *e = malloc(8); return 0; }
int cudaEventDestroy(void* e) { free(e); return 0; }
int cudaEventRecord(void*, void*) { return 0; }
int cudaEventSynchronize(void*) { return 0; }
int cudaEventElapsedTime(float* ms, void*, void*) { *ms = 1.0f; return 0; }
int emu_live_blocks(void) { return g_live; }
// The device init's log and sine/cosine pieces (kernels/init_normal.cuh), for edge-value checks.
double emu_log_u32(uint32_t k) { return mdLogU32(k); }
double emu_circle_u32(uint32_t j, int sine) { return mdCircleU32(j, sine != 0); }
int emu_mallocs(void) { return g_mallocs; }

// ---- driver ----
int cuInit(unsigned) { return 0; }
int cuDriverGetVersion(int* v) { *v = 13000; return 0; }
int cuGetErrorString(int e, const char** s) {
  *s = e == 500 ? "named symbol not found" : e == 1 ? "invalid value (emulator: bad launch or barrier deadlock)" : "emulator driver error";
  return 0;
}
int cuDeviceGet(int* d, int o) { *d = o; return 0; }
int cuDeviceGetName(char* n, int len, int d) { snprintf(n, len, "CPU emulator %d", d); return 0; }
int cuModuleLoadData(void** m, const void* img) { *m = (void*)0x1000; return img ? 0 : 1; }
int cuModuleUnload(void*) { return 0; }
int cuModuleGetFunction(void** f, void*, const char* name) {
  for (const KernelEntry& k : KERNELS) if (strcmp(k.name, name) == 0) { *f = (void*)&k; return 0; }
  return 500;
}
int cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shm, void*, void** params, void**) {
  if (bx * by * bz == 0 || bx * by * bz > 1024 || gx == 0 || gy == 0 || gz == 0 || shm != 0) return 1;
  const char* fault = getenv("EMU_FAULT_KERNEL");
  if (fault && strcmp(fault, static_cast<const KernelEntry*>(f)->name) == 0) g_fault_pending = true;
  g_invoke = static_cast<const KernelEntry*>(f)->run;
  g_params = params;
  blockDim = {bx, by, bz};
  gridDim = {gx, gy, gz};
  g_nthreads = bx * by * bz;
  for (unsigned z = 0; z < gz; z++)
    for (unsigned y = 0; y < gy; y++)
      for (unsigned x = 0; x < gx; x++) {
        blockIdx = {x, y, z};
        if (run_block()) {
          fprintf(stderr, "emulator: barrier deadlock in %s\n", static_cast<const KernelEntry*>(f)->name);
          return 1;
        }
      }
  return 0;
}

// ---- cuBLAS (column-major as documented; f32 accumulation) ----
static void* g_blas_stream;
int cublasCreate_v2(void** h) { *h = (void*)0x7777; return 0; }
int cublasDestroy_v2(void*) { return 0; }
int cublasGetVersion_v2(void*, int* v) { *v = 130000; return 0; }
int cublasSetStream_v2(void*, void* s) { g_blas_stream = s; return 0; }
int cublasSetMathMode(void*, int) { return 0; }
int cublasSetWorkspace_v2(void*, void*, size_t) { return 0; }
const char* cublasGetStatusString(int s) { return s == 7 ? "CUBLAS_STATUS_INVALID_VALUE" : s == 15 ? "CUBLAS_STATUS_NOT_SUPPORTED" : "emulator status"; }
static float ldv(const void* p, int t, long i) {
  if (t == 0) return ((const float*)p)[i];
  if (t == 2) return __half2float(((const __half*)p)[i]);
  return __bfloat162float(((const __nv_bfloat16*)p)[i]);
}
static void stv(void* p, int t, long i, float v) {
  if (t == 0) ((float*)p)[i] = v;
  else if (t == 2) ((__half*)p)[i] = __float2half_rn(v);
  else ((__nv_bfloat16*)p)[i] = __float2bfloat16_rn(v);
}
static int esz(int t) { return t == 0 ? 4 : 2; }
static int gemm1(int ta, int tb, int m, int n, int k, const float* al, const void* A, int at, int lda, const void* B,
                 int bt, int ldb, const float* be, void* C, int ct, int ldc, int compute) {
  const bool okT = at == 0 || at == 2 || at == 14;
  if (compute != 68 || !okT || at != bt || (ct != 0 && ct != at)) return 15;
  if (lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m || lda < 1 || ldb < 1 || ldc < 1) return 7;
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      float s = 0;
      for (int p = 0; p < k; p++)
        s += ldv(A, at, ta ? p + (long)i * lda : i + (long)p * lda) * ldv(B, bt, tb ? j + (long)p * ldb : p + (long)j * ldb);
      const long c = i + (long)j * ldc;
      stv(C, ct, c, *al * s + (*be == 0 ? 0.f : *be * ldv(C, ct, c)));  // beta = 0: C is not read
    }
  return 0;
}
int cublasGemmEx(void*, int ta, int tb, int m, int n, int k, const float* al, const void* A, int at, int lda,
                 const void* B, int bt, int ldb, const float* be, void* C, int ct, int ldc, int compute, int) {
  return gemm1(ta, tb, m, n, k, al, A, at, lda, B, bt, ldb, be, C, ct, ldc, compute);
}
int cublasGemmStridedBatchedEx(void*, int ta, int tb, int m, int n, int k, const float* al, const void* A, int at,
                               int lda, long long sa, const void* B, int bt, int ldb, long long sb, const float* be,
                               void* C, int ct, int ldc, long long sc, int batch, int compute, int) {
  for (int q = 0; q < batch; q++) {
    const int r = gemm1(ta, tb, m, n, k, al, (const char*)A + q * sa * esz(at), at, lda,
                        (const char*)B + q * sb * esz(bt), bt, ldb, be, (char*)C + q * sc * esz(ct), ct, ldc, compute);
    if (r) return r;
  }
  return 0;
}
}  // extern "C"
