// CudaBackend: the Backend interface on one NVIDIA GPU. All work is queued on one non-blocking
// stream (kernels via the driver API from kernels/dist, GEMMs via cuBLAS), memory comes from a
// caching allocator, and host copies synchronize the stream so every op looks synchronous to the
// caller, as the Backend contract requires. Arithmetic is f32 (f32 GEMMs run without TF32 so they
// agree with the CPU reference to ~1e-5); half inputs are read exactly and stored with RNE.

import {
  allocHost,
  bf16BitsToF32,
  type DType,
  DTYPE_BYTES,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  type HostArray,
  isHalf,
} from "../../tensor/dtype.ts";
import { numel, type Shape, shapeStr, type Storage, Tensor } from "../../tensor/tensor.ts";
import {
  type Activation,
  type AdamArgs,
  type AdamTensors,
  type AttentionOperand,
  type Backend,
  type FusedAttentionArgs,
  type FusedAttentionGrads,
  type GemmArgs,
  REDUCE_CHUNK,
  type RngAddress,
  type SgdArgs,
  type SoftmaxMask,
} from "../backend.ts";
import {
  cudaDevAttrComputeCapabilityMajor,
  cudaDevAttrComputeCapabilityMinor,
  cudaDevAttrMultiProcessorCount,
  Cudart,
} from "../../../ffi/cudart.ts";
import type { CudaStream } from "../../../ffi/cudart.ts";
import { type ArgKind, CudaDriver } from "../../../ffi/cuda.ts";
import {
  Cublas,
  CUBLAS_COMPUTE_32F,
  CUBLAS_COMPUTE_64F,
  CUBLAS_DEFAULT_MATH,
  CUBLAS_GEMM_DEFAULT,
  CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
  type CublasHandle,
  CUDA_R_16BF,
  CUDA_R_16F,
  CUDA_R_32F,
  CUDA_R_64F,
} from "../../../ffi/cublas.ts";
import { type DiscoverEnv, realDiscoverEnv } from "../../../ffi/discover.ts";
import { CachingAllocator, type MemoryStats } from "./allocator.ts";
import { cudaVersionString, KernelLibrary, kernelsDirUrl } from "./kernels.ts";
import { checkGemmBounds, toCublasGemm } from "./gemm_map.ts";
import { CudaProfiler, type ProfileReport } from "./profiler.ts";

/** Device storage: one allocator block. Views share it. */
export class CudaStorage implements Storage {
  freed = false;
  constructor(readonly length: number, readonly ptr: bigint, readonly blockBytes: number) {}
}

export interface CudaBackendOptions {
  /** CUDA device ordinal (default 0). */
  device?: number;
  /** Library discovery environment (default: the process environment). */
  env?: DiscoverEnv;
  /** Directory holding the fatbins (default: $MEGATRON_DENO_KERNELS_DIR, else kernels/dist next to
   *  this package). */
  kernelsUrl?: URL;
  /** Debug mode: synchronize after every kernel launch, GEMM and device copy and throw naming the
   *  op that failed (default: MEGATRON_DENO_CUDA_SYNC=1). Slow; for finding a faulting kernel. */
  syncCheck?: boolean;
  /** Offer fusedAttentionFwd/Bwd (kernels/attention.cu), which src/transformer/attention.ts then
   *  uses instead of gemm + softmax + dropout + gemm (default: MEGATRON_DENO_FUSED_ATTENTION=1). Off
   *  by default until a GPU run shows it faster than the unfused path (bench:gpu --fused-attention). */
  fusedAttention?: boolean;
}

/** The Backend ops profiling mode times (everything that queues device work or reads it back;
 *  toF64 goes through toHost). */
export const PROFILED_OPS = [
  "zeros",
  "fromHost",
  "toHost",
  "copy",
  "fill",
  "scale",
  "add",
  "transpose12",
  "sumRows",
  "gemm",
  "layerNormFwd",
  "layerNormBwd",
  "biasGeluFwd",
  "biasGeluBwd",
  "activationFwd",
  "activationBwd",
  "softmaxFwd",
  "softmaxBwd",
  "normalInit",
  "dropout",
  "biasDropoutAdd",
  "embeddingFwd",
  "embeddingBwd",
  "ceStats",
  "ceSumExp",
  "ceLoss",
  "ceBwd",
  "adamStep",
  "adamStepMulti",
  "sgdStep",
  "sumSquares",
  "countZeros",
  "nonFinite",
  "fusedAttentionFwd",
  "fusedAttentionBwd",
] as const;

/** Elements per block of md_adam_multi (one table entry each). */
const ADAM_CHUNK = 65536;

/** kernels/attention.cu FA_ROWS and FA_MAXD. */
const FLASH_ROWS = 64;
const FLASH_MAX_HEAD_DIM = 128;

/** Profile row of a GEMM: its shape, so the table separates QKV, MLP, logits and attention GEMMs. */
function gemmLabel(g: GemmArgs): string {
  const b = g.batch ?? 1;
  return `gemm ${g.a.dtype} ${g.transA ? "T" : "N"}${g.transB ? "T" : "N"} ${g.m}x${g.n}x${g.k}${
    b > 1 ? ` x${b}` : ""
  }`;
}

const FLOAT_KERNEL_DTYPES: readonly DType[] = ["f32", "f16", "bf16"];
const THREADS = 256;

function cudaDataType(d: DType): number {
  switch (d) {
    case "f32":
      return CUDA_R_32F;
    case "f16":
      return CUDA_R_16F;
    case "bf16":
      return CUDA_R_16BF;
    case "f64":
      return CUDA_R_64F;
    default:
      throw new Error(`gemm: dtype ${d} is not supported by cuBLAS GemmEx (use f32, f16, bf16 or f64)`);
  }
}

function requireFloat(op: string, t: Tensor, what: string): void {
  if (!FLOAT_KERNEL_DTYPES.includes(t.dtype)) {
    throw new Error(`cuda ${op}: ${what} has dtype ${t.dtype}, expected f32, f16 or bf16`);
  }
}

function requireDType(op: string, t: Tensor, d: DType | readonly DType[], what: string): void {
  const ok = typeof d === "string" ? t.dtype === d : d.includes(t.dtype);
  if (!ok) {
    throw new Error(
      `cuda ${op}: ${what} has dtype ${t.dtype}, expected ${typeof d === "string" ? d : d.join(" or ")}`,
    );
  }
}

/** The kernels' activation code (kernels/transformer.cu actFwdF). */
function activationCode(op: string, kind: Activation): number {
  if (kind === "tanh") return 0;
  if (kind === "gelu_erf") return 1;
  throw new Error(`${op}: unknown activation ${kind}, expected tanh or gelu_erf`);
}

function requireSize(op: string, t: Tensor, n: number, what: string): void {
  if (t.size !== n) {
    throw new Error(`cuda ${op}: ${what} has ${t.size} elements ${shapeStr(t.shape)}, expected ${n}`);
  }
}

function requireSame(op: string, a: Tensor, b: Tensor, what: string): void {
  if (a.dtype !== b.dtype) throw new Error(`cuda ${op}: ${what} dtypes differ (${a.dtype} vs ${b.dtype})`);
}

/** Every tensor in `ts` shares x's dtype (message names the pair as "x/<name>"). */
function requireSameAsX(op: string, x: Tensor, ts: readonly (readonly [Tensor, string])[]): void {
  for (const [t, w] of ts) requireSame(op, x, t, `x/${w}`);
}

/** Rows of x seen as [rows, h]; h must be non-zero and divide x's size. */
function rowsOf(op: string, x: Tensor, h: number): number {
  if (h === 0 || x.size % h !== 0) {
    throw new Error(`cuda ${op}: x has ${x.size} elements, not rows x ${h}`);
  }
  return x.size / h;
}

function requireDropProb(op: string, p: number): void {
  if (!(p >= 0 && p < 1)) throw new Error(`cuda ${op}: p must be in [0, 1), got ${p}`);
}

/** A [vocab, h] embedding table (or its gradient); returns [vocab, h]. */
function requireTable(op: string, t: Tensor, what: string): readonly number[] {
  if (t.rank !== 2) {
    throw new Error(`cuda ${op}: ${what} must be [vocab, h], got ${shapeStr(t.shape)}`);
  }
  return t.shape;
}

function requireIndex(op: string, t: Tensor, what: string): "i32" | "i64" {
  if (t.dtype !== "i32" && t.dtype !== "i64") {
    throw new Error(`cuda ${op}: ${what} has dtype ${t.dtype}, expected i32 or i64`);
  }
  return t.dtype;
}

/** Host values -> host storage of `dtype` (half types as RNE-rounded bits). */
export function toHostStorage(dtype: DType, n: number, data: ArrayLike<number> | HostArray): HostArray {
  if (data.length !== n) throw new Error(`fromHost: ${data.length} values for ${n} elements`);
  if (isHalf(dtype) && data instanceof Uint16Array) return data;
  if (dtype === "i64" && data instanceof BigInt64Array) return data;
  const out = allocHost(dtype, n);
  if (data instanceof BigInt64Array) {
    for (let i = 0; i < n; i++) (out as Float64Array)[i] = Number(data[i]);
    return out;
  }
  const src = data as ArrayLike<number>;
  switch (dtype) {
    case "f16":
      for (let i = 0; i < n; i++) (out as Uint16Array)[i] = f32ToF16Bits(src[i]);
      break;
    case "bf16":
      for (let i = 0; i < n; i++) (out as Uint16Array)[i] = f32ToBf16Bits(src[i]);
      break;
    case "i64":
      for (let i = 0; i < n; i++) (out as BigInt64Array)[i] = BigInt(Math.trunc(src[i]));
      break;
    default:
      for (let i = 0; i < n; i++) (out as Float32Array)[i] = src[i];
  }
  return out;
}

/** Host storage -> f64 numbers (half bits decoded). */
export function hostToF64(dtype: DType, h: HostArray): Float64Array {
  const out = new Float64Array(h.length);
  if (dtype === "f16") { for (let i = 0; i < h.length; i++) out[i] = f16BitsToF32((h as Uint16Array)[i]); }
  else if (dtype === "bf16") {
    for (let i = 0; i < h.length; i++) out[i] = bf16BitsToF32((h as Uint16Array)[i]);
  } else if (dtype === "i64") { for (let i = 0; i < h.length; i++) out[i] = Number((h as BigInt64Array)[i]); }
  else for (let i = 0; i < h.length; i++) out[i] = (h as Float32Array)[i];
  return out;
}

/** 1/(1-p) correctly rounded to f32 (the CPU reference's scale for kept elements). */
export function keepScale(p: number): number {
  return Math.fround(1 / (1 - Math.fround(p)));
}

export class CudaBackend implements Backend {
  readonly name = "cuda" as const;
  readonly description: string;
  readonly deviceName: string;
  readonly computeCapability: [number, number];
  private readonly alloc: CachingAllocator;
  private readonly smCount: number;
  private readonly alpha32 = new Float32Array(1);
  private readonly beta32 = new Float32Array(1);
  private readonly alpha64 = new Float64Array(1);
  private readonly beta64 = new Float64Array(1);
  private disposed = false;
  fusedAttentionFwd?: (a: FusedAttentionArgs) => void;
  fusedAttentionBwd?: (a: FusedAttentionArgs, g: FusedAttentionGrads) => void;
  /** Set while profiling (startProfiling .. stopProfiling). */
  private prof: CudaProfiler | null = null;
  /** adamStepMulti's device table per kernel (pointers change only when parameters are reallocated,
   *  so the upload happens once, not every step). */
  private readonly adamTables = new Map<string, { host: BigUint64Array; dev: Tensor }>();
  /** Own-property ops (the optional fused ones) replaced while profiling, restored after. */
  private readonly unprofiled = new Map<string, (...a: unknown[]) => unknown>();

  private constructor(
    private readonly rt: Cudart,
    private readonly drv: CudaDriver,
    private readonly blas: Cublas,
    private readonly handle: CublasHandle,
    readonly stream: CudaStream,
    private readonly kernels: KernelLibrary,
    readonly device: number,
    readonly syncCheck: boolean,
    fusedAttention: boolean,
  ) {
    this.setFusedAttention(fusedAttention);
    this.alloc = new CachingAllocator({
      malloc: (b) => rt.tryMalloc(b),
      free: (p) => rt.free(p),
      synchronize: () => rt.streamSynchronize(stream),
    });
    this.smCount = rt.attribute(cudaDevAttrMultiProcessorCount, device);
    this.computeCapability = [
      rt.attribute(cudaDevAttrComputeCapabilityMajor, device),
      rt.attribute(cudaDevAttrComputeCapabilityMinor, device),
    ];
    this.deviceName = drv.deviceName(device);
    const v = rt.runtimeVersion(), dv = drv.driverVersion();
    this.description = `cuda:${device} (${this.deviceName}, sm_${
      this.computeCapability.join("")
    }, CUDA runtime ${cudaVersionString(v)}, driver ${cudaVersionString(dv)}, cuBLAS ${blas.version(handle)}${
      syncCheck ? ", sync-check" : ""
    })`;
  }

  static async create(opts: CudaBackendOptions = {}): Promise<CudaBackend> {
    const env = opts.env ?? realDiscoverEnv();
    const device = opts.device ?? 0;
    const rt = Cudart.open(env);
    const drv = CudaDriver.open(env);
    const blas = Cublas.open(env);
    const count = rt.deviceCount();
    if (device < 0 || device >= count) {
      throw new Error(`cuda: device ${device} requested but ${count} device(s) visible`);
    }
    rt.setDevice(device);
    // Initializes the primary context and makes it current, so driver-API module loads and
    // runtime/cuBLAS calls share one context.
    rt.check("cudaFree(0)", rt.sym.cudaFree(0n));
    drv.init();
    const stream = rt.streamCreate();
    const handle = blas.create();
    blas.setStream(handle, stream);
    // No TF32 for f32 GEMMs, and f32 partial sums for split-K half GEMMs (as the CPU reference).
    blas.setMathMode(handle, CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
    const kernels = await KernelLibrary.load(
      drv,
      opts.kernelsUrl ??
        kernelsDirUrl(
          env.get("MEGATRON_DENO_KERNELS_DIR"),
          new URL("../../../kernels/dist/", import.meta.url),
        ),
    );
    const syncCheck = opts.syncCheck ?? env.get("MEGATRON_DENO_CUDA_SYNC") === "1";
    const fused = opts.fusedAttention ?? env.get("MEGATRON_DENO_FUSED_ATTENTION") === "1";
    return new CudaBackend(rt, drv, blas, handle, stream, kernels, device, syncCheck, fused);
  }

  // ---- plumbing ----------------------------------------------------------------------------
  private ptr(t: Tensor): bigint {
    const s = t.storage as CudaStorage;
    if (!(s instanceof CudaStorage)) throw new Error(`cuda: ${t} is not a CUDA tensor`);
    if (s.freed) throw new Error(`cuda: use of freed tensor ${t}`);
    return s.ptr + BigInt(t.offset * DTYPE_BYTES[t.dtype]);
  }

  private launch(
    name: string,
    grid: [number, number, number],
    block: [number, number, number],
    args: (number | bigint)[],
  ) {
    const k = this.kernels.get(name);
    this.submit(() => this.drv.launch(k.fn, grid, block, 0, this.stream, k.kinds as ArgKind[], args, name));
    if (this.syncCheck) this.checkedSync(`kernel ${name} grid [${grid}] block [${block}]`);
  }

  /** A stream submission (launch, cuBLAS call, copy, memset): counted and timed when profiling. */
  private submit(fn: () => void): void {
    const p = this.prof;
    if (!p) return fn();
    const t0 = performance.now();
    fn();
    p.submitted(performance.now() - t0);
  }

  /** Sync-check mode: wait for the stream and name `what` if it (or anything before it) failed. */
  private checkedSync(what: string): void {
    const rc = this.rt.sym.cudaStreamSynchronize(this.stream);
    if (rc !== 0) {
      throw new Error(`cuda sync check: ${what} failed: ${this.rt.errorString(rc)} (${rc})`);
    }
  }

  /** Stream synchronization whose error says how to find the op that faulted. */
  private sync(): void {
    const rc = this.rt.sym.cudaStreamSynchronize(this.stream);
    if (rc !== 0) {
      throw new Error(
        `cudaStreamSynchronize: ${this.rt.errorString(rc)} (${rc}): an earlier op failed` +
          (this.syncCheck ? "" : "; rerun with MEGATRON_DENO_CUDA_SYNC=1 to name it"),
      );
    }
  }

  /** Grid-stride launch over n elements. */
  private launch1d(name: string, n: number, args: (number | bigint)[]): void {
    if (n === 0) return;
    const blocks = Math.max(1, Math.min(Math.ceil(n / THREADS), this.smCount * 32));
    this.launch(name, [blocks, 1, 1], [THREADS, 1, 1], args);
  }

  /** One block per row. */
  private launchRows(name: string, rows: number, rowLen: number, args: (number | bigint)[]): void {
    if (rows === 0) return;
    if (rows > 2147483647) throw new Error(`cuda ${name}: ${rows} rows exceed the grid limit`);
    const threads = rowLen >= 512 ? 512 : Math.max(32, Math.ceil(rowLen / 32) * 32);
    this.launch(name, [rows, 1, 1], [threads, 1, 1], args);
  }

  private scratch(n: number): Tensor {
    return this.empty("f32", [n]);
  }

  /** Column sums of x [rows, cols] into out [cols] (any float dtype) via f32 partials. */
  private colSums(xName: string, x: bigint, rows: number, cols: number, out: Tensor, accumulate: boolean) {
    if (cols === 0) return;
    const splits = Math.max(1, Math.min(Math.ceil(rows / 64), 128));
    const partial = this.scratch(splits * cols);
    try {
      this.launch(`md_colpartial_${xName}`, [Math.ceil(cols / 32), splits, 1], [32, 8, 1], [
        x,
        this.ptr(partial),
        rows,
        cols,
      ]);
      this.launch1d(`md_colfinish_${out.dtype}`, cols, [
        this.ptr(partial),
        this.ptr(out),
        splits,
        cols,
        accumulate ? 1 : 0,
      ]);
    } finally {
      this.free(partial);
    }
  }

  memoryStats(): MemoryStats {
    return this.alloc.stats();
  }
  deviceMemory(): { free: number; total: number } {
    const { free, total } = this.rt.memInfo();
    const st = this.alloc.stats();
    // Blocks cached by the allocator are free for our own allocations too.
    return { free: free + st.reservedBytes - st.allocatedBytes, total };
  }
  resetPeakMemory(): void {
    this.alloc.resetPeaks();
  }
  emptyCache(): void {
    this.alloc.emptyCache();
  }

  /** Offers (or withdraws) fusedAttentionFwd/Bwd from now on, e.g. to time both attention paths on
   *  one backend (bench:gpu --fused-attention). Not while profiling. */
  setFusedAttention(on: boolean): void {
    if (this.prof) throw new Error("cuda: setFusedAttention while profiling");
    if (on) {
      this.fusedAttentionFwd = (a) => this.flashFwd(a);
      this.fusedAttentionBwd = (a, g) => this.flashBwd(a, g);
    } else {
      delete this.fusedAttentionFwd;
      delete this.fusedAttentionBwd;
    }
  }

  /** Records an event on the compute stream (for timing with elapsedMs). */
  recordEvent(): Deno.PointerValue {
    const e = this.rt.eventCreate();
    this.rt.eventRecord(e, this.stream);
    return e;
  }
  /** Whether the work queued before `e` (from recordEvent) has finished; never blocks (NCCL waits
   *  poll this so they can also watch the communicator's error state and a deadline). */
  eventDone(e: Deno.PointerValue): boolean {
    return this.rt.eventDone(e);
  }
  destroyEvent(e: Deno.PointerValue): void {
    this.rt.eventDestroy(e);
  }
  /** Device address of t's first element, for libraries that take raw pointers (NCCL). */
  devicePtr(t: Tensor): bigint {
    return this.ptr(t);
  }
  /** Milliseconds between two events from recordEvent; waits for `end` and destroys both. */
  elapsedMs(start: Deno.PointerValue, end: Deno.PointerValue): number {
    this.rt.eventSynchronize(end);
    const ms = this.rt.elapsedMs(start, end);
    this.rt.eventDestroy(start);
    this.rt.eventDestroy(end);
    return ms;
  }

  /**
   * Profiling mode: from now on every Backend op (PROFILED_OPS) is bracketed by CUDA events on the
   * stream and its host time and stream submissions are counted; `markProfileStep()` closes a
   * training step; `stopProfiling()` waits for the events and returns the per-op report. The ops run
   * exactly as without profiling (same launches, same results); only the events are added.
   */
  startProfiling(): void {
    if (this.prof) throw new Error("cuda: startProfiling while already profiling");
    const rt = this.rt, stream = this.stream;
    const prof = new CudaProfiler({
      create: () => rt.eventCreate(),
      record: (e) => rt.eventRecord(e, stream),
      synchronize: (e) => rt.eventSynchronize(e),
      elapsedMs: (a, b) => rt.elapsedMs(a, b),
      destroy: (e) => rt.eventDestroy(e),
    });
    const self = this as unknown as Record<string, (...a: unknown[]) => unknown>;
    this.unprofiled.clear();
    for (const op of PROFILED_OPS) {
      const fn = self[op];
      if (typeof fn !== "function") continue; // an optional op this backend does not offer
      if (Object.hasOwn(this, op)) this.unprofiled.set(op, fn);
      // An own property shadows the prototype's method until stopProfiling deletes it.
      self[op] = (...a: unknown[]) => {
        prof.enter(op === "gemm" ? gemmLabel(a[0] as GemmArgs) : op);
        try {
          return fn.apply(this, a);
        } finally {
          prof.exit();
        }
      };
    }
    this.prof = prof;
  }

  /** Closes one training step of the profile. */
  markProfileStep(): void {
    if (!this.prof) throw new Error("cuda: markProfileStep without startProfiling");
    this.prof.markStep();
  }

  /** Ends profiling mode and returns the report (waits for the recorded events). */
  stopProfiling(): ProfileReport {
    const prof = this.prof;
    if (!prof) throw new Error("cuda: stopProfiling without startProfiling");
    const self = this as unknown as Record<string, unknown>;
    for (const op of PROFILED_OPS) {
      delete self[op];
      const own = this.unprofiled.get(op);
      if (own) self[op] = own;
    }
    this.prof = null;
    try {
      return prof.report();
    } finally {
      prof.dispose();
    }
  }

  dispose(): void {
    if (this.disposed) return;
    if (this.prof) this.stopProfiling();
    this.disposed = true;
    this.rt.streamSynchronize(this.stream);
    this.adamTables.clear(); // their blocks go with releaseAll
    this.alloc.releaseAll();
    this.kernels.unload();
    this.blas.destroy(this.handle);
    this.rt.streamDestroy(this.stream);
  }

  // ---- memory ------------------------------------------------------------------------------
  empty(dtype: DType, shape: Shape): Tensor {
    const n = numel(shape);
    const blk = this.alloc.alloc(n * DTYPE_BYTES[dtype]);
    return new Tensor(dtype, shape, new CudaStorage(n, blk.ptr, blk.size));
  }

  zeros(dtype: DType, shape: Shape): Tensor {
    const t = this.empty(dtype, shape);
    if (t.bytes > 0) this.submit(() => this.rt.memsetAsync(this.ptr(t), 0, t.bytes, this.stream));
    return t;
  }

  fromHost(dtype: DType, shape: Shape, data: ArrayLike<number> | HostArray): Tensor {
    const n = numel(shape);
    const host = toHostStorage(dtype, n, data);
    const t = this.empty(dtype, shape);
    if (t.bytes > 0) {
      const view = new Uint8Array(host.buffer as ArrayBuffer, host.byteOffset, t.bytes);
      this.submit(() => this.rt.htod(this.ptr(t), view, t.bytes, this.stream));
    }
    return t;
  }

  toHost(t: Tensor): HostArray {
    const out = allocHost(t.dtype, t.size);
    if (t.bytes > 0) {
      const view = new Uint8Array(out.buffer as ArrayBuffer, 0, t.bytes);
      this.submit(() => this.rt.dtoh(view, this.ptr(t), t.bytes, this.stream));
    }
    this.sync();
    return out;
  }

  toF64(t: Tensor): Float64Array {
    return hostToF64(t.dtype, this.toHost(t));
  }

  free(t: Tensor): void {
    const s = t.storage as CudaStorage;
    if (s.freed) throw new Error(`cuda free: ${t} was already freed`);
    s.freed = true;
    this.alloc.release(s.ptr);
  }

  synchronize(): void {
    this.sync();
  }

  // ---- elementwise / copies ----------------------------------------------------------------
  copy(src: Tensor, dst: Tensor): void {
    requireSize("copy", dst, src.size, "dst");
    if (src.dtype === dst.dtype) {
      if (src.bytes === 0) return;
      const ps = this.ptr(src), pd = this.ptr(dst), n = BigInt(src.bytes);
      if (ps === pd) return;
      if (ps < pd + n && pd < ps + n) {
        // Overlapping views of one storage: cudaMemcpyAsync is undefined there; go through a
        // temporary, which gives what the CPU backend's TypedArray.set gives.
        const tmp = this.empty(src.dtype, [src.size]);
        try {
          this.dtod(this.ptr(tmp), ps, src.bytes);
          this.dtod(pd, this.ptr(tmp), src.bytes);
        } finally {
          this.free(tmp);
        }
        return;
      }
      this.dtod(pd, ps, src.bytes);
      return;
    }
    requireFloat("copy", src, "src");
    requireFloat("copy", dst, "dst");
    this.launch1d(`md_copy_${src.dtype}_${dst.dtype}`, src.size, [this.ptr(src), this.ptr(dst), src.size]);
  }

  private dtod(dst: bigint, src: bigint, bytes: number): void {
    this.submit(() => this.rt.dtod(dst, src, bytes, this.stream));
    if (this.syncCheck) this.checkedSync(`cudaMemcpyAsync(DtoD, ${bytes} bytes)`);
  }

  fill(t: Tensor, value: number): void {
    if (FLOAT_KERNEL_DTYPES.includes(t.dtype)) {
      this.launch1d(`md_fill_${t.dtype}`, t.size, [this.ptr(t), t.size, value]);
    } else if (t.dtype === "i32") {
      this.launch1d("md_fill_i32", t.size, [this.ptr(t), t.size, value]);
    } else if (value === 0) {
      if (t.bytes > 0) this.submit(() => this.rt.memsetAsync(this.ptr(t), 0, t.bytes, this.stream));
    } else {
      throw new Error(`cuda fill: dtype ${t.dtype} supports only value 0, got ${value}`);
    }
  }

  scale(x: Tensor, alpha: number, out: Tensor): void {
    requireFloat("scale", x, "x");
    requireFloat("scale", out, "out");
    requireSize("scale", out, x.size, "out");
    this.launch1d(`md_scale_${x.dtype}_${out.dtype}`, x.size, [this.ptr(x), this.ptr(out), x.size, alpha]);
  }

  add(a: Tensor, b: Tensor, out: Tensor, alpha = 1, beta = 1): void {
    for (const [t, w] of [[a, "a"], [b, "b"], [out, "out"]] as const) requireFloat("add", t, w);
    requireSize("add", b, a.size, "b");
    requireSize("add", out, a.size, "out");
    this.launch1d(`md_add_${a.dtype}_${b.dtype}_${out.dtype}`, a.size, [
      this.ptr(a),
      this.ptr(b),
      this.ptr(out),
      a.size,
      alpha,
      beta,
    ]);
  }

  transpose12(x: Tensor, out: Tensor): void {
    if (x.rank !== 4) throw new Error(`cuda transpose12: x must be 4-D, got ${shapeStr(x.shape)}`);
    const [A, B, C, D] = x.shape;
    requireSame("transpose12", x, out, "x/out");
    if (
      out.rank !== 4 || out.shape[0] !== A || out.shape[1] !== C || out.shape[2] !== B || out.shape[3] !== D
    ) {
      throw new Error(
        `cuda transpose12: out has shape ${shapeStr(out.shape)}, expected ${shapeStr([A, C, B, D])}`,
      );
    }
    this.launch1d(`md_transpose12_b${DTYPE_BYTES[x.dtype]}`, x.size, [
      this.ptr(x),
      this.ptr(out),
      A,
      B,
      C,
      D,
    ]);
  }

  sumRows(x: Tensor, out: Tensor, accumulate: boolean): void {
    requireFloat("sumRows", x, "x");
    requireFloat("sumRows", out, "out");
    const cols = out.size;
    if (cols === 0 || x.size % cols !== 0) {
      throw new Error(`cuda sumRows: x has ${x.size} elements, not a multiple of out's ${cols}`);
    }
    this.colSums(x.dtype, this.ptr(x), x.size / cols, cols, out, accumulate);
  }

  // ---- BLAS --------------------------------------------------------------------------------
  gemm(g: GemmArgs): void {
    const { a, b, c } = g;
    requireSame("gemm", a, b, "A/B");
    if (c.dtype !== a.dtype && c.dtype !== "f32") {
      throw new Error(`cuda gemm: C has dtype ${c.dtype}, expected ${a.dtype} or f32`);
    }
    const err = checkGemmBounds(g, { a: a.size, b: b.size, c: c.size });
    if (err) throw new Error(`cuda ${err}`);
    if (g.m === 0 || g.n === 0) return;
    const s = toCublasGemm(g);
    const f64 = a.dtype === "f64";
    if (f64 && c.dtype !== "f64") throw new Error(`cuda gemm: f64 A/B need an f64 C, got ${c.dtype}`);
    const alpha = f64 ? this.alpha64 : this.alpha32;
    const beta = f64 ? this.beta64 : this.beta32;
    alpha[0] = g.alpha ?? 1;
    beta[0] = g.beta ?? 0;
    const compute = f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
    const ab = cudaDataType(a.dtype);
    const ct = cudaDataType(c.dtype);
    // cuBLAS's first operand is the caller's B (see gemm_map.ts).
    const pa = this.ptr(b), pb = this.ptr(a), pc = this.ptr(c);
    const batch = g.batch ?? 1;
    const t0 = this.prof ? performance.now() : 0;
    if (batch === 1) {
      this.blas.check(
        "cublasGemmEx",
        this.blas.sym.cublasGemmEx(
          this.handle,
          s.transa,
          s.transb,
          s.m,
          s.n,
          s.k,
          alpha,
          pa,
          ab,
          s.lda,
          pb,
          ab,
          s.ldb,
          beta,
          pc,
          ct,
          s.ldc,
          compute,
          CUBLAS_GEMM_DEFAULT,
        ),
      );
    } else if (batch > 1) {
      this.blas.check(
        "cublasGemmStridedBatchedEx",
        this.blas.sym.cublasGemmStridedBatchedEx(
          this.handle,
          s.transa,
          s.transb,
          s.m,
          s.n,
          s.k,
          alpha,
          pa,
          ab,
          s.lda,
          BigInt(s.strideA),
          pb,
          ab,
          s.ldb,
          BigInt(s.strideB),
          beta,
          pc,
          ct,
          s.ldc,
          BigInt(s.strideC),
          batch,
          compute,
          CUBLAS_GEMM_DEFAULT,
        ),
      );
    }
    this.prof?.submitted(performance.now() - t0);
    if (this.syncCheck) {
      this.checkedSync(
        `gemm ${a.dtype}->${c.dtype} ${g.transA ? "T" : "N"}${
          g.transB ? "T" : "N"
        } m=${g.m} n=${g.n} k=${g.k} batch=${batch}`,
      );
    }
  }

  // ---- transformer ops ---------------------------------------------------------------------
  layerNormFwd(
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: number,
    y: Tensor,
    mean: Tensor,
    rstd: Tensor,
  ): void {
    requireFloat("layerNormFwd", x, "x");
    requireSameAsX("layerNormFwd", x, [[gamma, "gamma"], [beta, "beta"], [y, "y"]]);
    const h = gamma.size;
    const rows = rowsOf("layerNormFwd", x, h);
    requireSize("layerNormFwd", beta, h, "beta");
    requireSize("layerNormFwd", y, x.size, "y");
    requireDType("layerNormFwd", mean, "f32", "mean");
    requireDType("layerNormFwd", rstd, "f32", "rstd");
    requireSize("layerNormFwd", mean, rows, "mean");
    requireSize("layerNormFwd", rstd, rows, "rstd");
    this.launchRows(`md_layernorm_fwd_${x.dtype}`, rows, h, [
      this.ptr(x),
      this.ptr(gamma),
      this.ptr(beta),
      eps,
      this.ptr(y),
      this.ptr(mean),
      this.ptr(rstd),
      h,
    ]);
  }

  layerNormBwd(
    dy: Tensor,
    x: Tensor,
    gamma: Tensor,
    mean: Tensor,
    rstd: Tensor,
    dx: Tensor,
    dgamma: Tensor,
    dbeta: Tensor,
    accumulate: boolean,
  ): void {
    requireFloat("layerNormBwd", x, "x");
    requireSameAsX("layerNormBwd", x, [[dy, "dy"], [gamma, "gamma"], [dx, "dx"]]);
    const h = gamma.size;
    const rows = rowsOf("layerNormBwd", x, h);
    requireSize("layerNormBwd", dy, x.size, "dy");
    requireSize("layerNormBwd", dx, x.size, "dx");
    for (
      const [t, w, n] of [[mean, "mean", rows], [rstd, "rstd", rows], [dgamma, "dgamma", h], [
        dbeta,
        "dbeta",
        h,
      ]] as const
    ) {
      requireDType("layerNormBwd", t, "f32", w);
      requireSize("layerNormBwd", t, n, w);
    }
    const px = this.ptr(x), pdy = this.ptr(dy), pm = this.ptr(mean), pr = this.ptr(rstd);
    this.launchRows(`md_layernorm_bwd_dx_${x.dtype}`, rows, h, [
      pdy,
      px,
      this.ptr(gamma),
      pm,
      pr,
      this.ptr(dx),
      h,
    ]);
    if (rows === 0) {
      if (!accumulate) {
        this.fill(dgamma, 0);
        this.fill(dbeta, 0);
      }
      return;
    }
    const splits = Math.max(1, Math.min(Math.ceil(rows / 64), 128));
    const pg = this.scratch(splits * h), pb = this.scratch(splits * h);
    try {
      this.launch(`md_layernorm_bwd_params_${x.dtype}`, [Math.ceil(h / 32), splits, 1], [32, 8, 1], [
        pdy,
        px,
        pm,
        pr,
        this.ptr(pg),
        this.ptr(pb),
        rows,
        h,
      ]);
      const acc = accumulate ? 1 : 0;
      this.launch1d("md_colfinish_f32", h, [this.ptr(pg), this.ptr(dgamma), splits, h, acc]);
      this.launch1d("md_colfinish_f32", h, [this.ptr(pb), this.ptr(dbeta), splits, h, acc]);
    } finally {
      this.free(pg);
      this.free(pb);
    }
  }

  biasGeluFwd(x: Tensor, bias: Tensor, y: Tensor): void {
    requireFloat("biasGeluFwd", x, "x");
    requireSameAsX("biasGeluFwd", x, [[bias, "bias"], [y, "y"]]);
    const f = bias.size;
    rowsOf("biasGeluFwd", x, f);
    requireSize("biasGeluFwd", y, x.size, "y");
    this.launch1d(`md_bias_gelu_fwd_${x.dtype}`, x.size, [
      this.ptr(x),
      this.ptr(bias),
      this.ptr(y),
      x.size,
      f,
    ]);
  }

  biasGeluBwd(dy: Tensor, x: Tensor, bias: Tensor, dx: Tensor): void {
    requireFloat("biasGeluBwd", x, "x");
    requireSameAsX("biasGeluBwd", x, [[dy, "dy"], [bias, "bias"], [dx, "dx"]]);
    const f = bias.size;
    rowsOf("biasGeluBwd", x, f);
    requireSize("biasGeluBwd", dy, x.size, "dy");
    requireSize("biasGeluBwd", dx, x.size, "dx");
    this.launch1d(`md_bias_gelu_bwd_${x.dtype}`, x.size, [
      this.ptr(dy),
      this.ptr(x),
      this.ptr(bias),
      this.ptr(dx),
      x.size,
      f,
    ]);
  }

  activationFwd(kind: Activation, x: Tensor, y: Tensor): void {
    const op = `activationFwd(${kind})`;
    requireFloat(op, x, "x");
    requireSameAsX(op, x, [[y, "y"]]);
    requireSize(op, y, x.size, "y");
    this.launch1d(`md_act_fwd_${x.dtype}`, x.size, [
      this.ptr(x),
      this.ptr(y),
      x.size,
      activationCode(op, kind),
    ]);
  }

  activationBwd(kind: Activation, dy: Tensor, x: Tensor, dx: Tensor): void {
    const op = `activationBwd(${kind})`;
    requireFloat(op, x, "x");
    requireSameAsX(op, x, [[dy, "dy"], [dx, "dx"]]);
    requireSize(op, dy, x.size, "dy");
    requireSize(op, dx, x.size, "dx");
    this.launch1d(`md_act_bwd_${x.dtype}`, x.size, [
      this.ptr(dy),
      this.ptr(x),
      this.ptr(dx),
      x.size,
      activationCode(op, kind),
    ]);
  }

  softmaxFwd(scores: Tensor, scale: number, mask: SoftmaxMask, probs: Tensor): void {
    requireFloat("softmaxFwd", scores, "scores");
    requireFloat("softmaxFwd", probs, "probs");
    requireSize("softmaxFwd", probs, scores.size, "probs");
    const sh = scores.shape;
    if (sh.length < 2) throw new Error(`cuda softmaxFwd: scores must be at least 2-D, got ${shapeStr(sh)}`);
    const sk = sh[sh.length - 1], sq = sh[sh.length - 2];
    const np = sh.length >= 3 ? sh[sh.length - 3] : 1;
    const rows = sk === 0 ? 0 : scores.size / sk;
    let kind = 0;
    let maskPtr = 0n;
    if (mask.kind === "causal") kind = 1;
    else if (mask.kind === "padding") {
      kind = 2;
      const b = np * sq === 0 ? 0 : rows / (np * sq);
      requireDType("softmaxFwd", mask.mask, "u8", "padding mask");
      requireSize("softmaxFwd", mask.mask, b * sq * sk, "padding mask [b, sq, sk]");
      maskPtr = this.ptr(mask.mask);
    }
    this.launchRows(`md_softmax_fwd_${scores.dtype}_${probs.dtype}`, rows, sk, [
      this.ptr(scores),
      this.ptr(probs),
      maskPtr,
      kind,
      scale,
      np,
      sq,
      sk,
    ]);
  }

  softmaxBwd(dprobs: Tensor, probs: Tensor, scale: number, dscores: Tensor): void {
    requireFloat("softmaxBwd", probs, "probs");
    requireSame("softmaxBwd", probs, dprobs, "probs/dprobs");
    requireSame("softmaxBwd", probs, dscores, "probs/dscores");
    requireSize("softmaxBwd", dprobs, probs.size, "dprobs");
    requireSize("softmaxBwd", dscores, probs.size, "dscores");
    const sk = probs.shape[probs.rank - 1] ?? 0;
    const rows = sk === 0 ? 0 : probs.size / sk;
    this.launchRows(`md_softmax_bwd_${probs.dtype}`, rows, sk, [
      this.ptr(dprobs),
      this.ptr(probs),
      scale,
      this.ptr(dscores),
      sk,
    ]);
  }

  /** Checks one fused-attention operand (dtype, head dim, bounds) and returns its kernel strides. */
  private flashOperand(what: string, o: AttentionOperand, a: FusedAttentionArgs, len: number): bigint[] {
    const op = "fusedAttention";
    requireFloat(op, o.t, what);
    requireSame(op, a.q.t, o.t, `q/${what}`);
    for (const k of ["strideB", "strideH", "ld"] as const) {
      if (!Number.isSafeInteger(o[k]) || o[k] < 0) {
        throw new Error(`cuda ${op}: ${what}.${k}=${o[k]} is not valid`);
      }
    }
    const last = (a.b - 1) * o.strideB + (a.np - 1) * o.strideH + (len - 1) * o.ld + a.hn - 1;
    if (last >= o.t.size) {
      throw new Error(
        `cuda ${op}: ${what} [${a.b}, ${a.np}, ${len}, ${a.hn}] with strides (${o.strideB}, ${o.strideH}, ${o.ld}) ` +
          `reaches element ${last} of a ${o.t.size}-element tensor`,
      );
    }
    return [BigInt(o.strideB), BigInt(o.strideH), BigInt(o.ld)];
  }

  /** The kernels' arguments after the pointers (kernels.ts FLASH_TAIL); checks everything. */
  private flashTail(a: FusedAttentionArgs): { mask: bigint; tail: (number | bigint)[] } {
    const op = "fusedAttention";
    const { b, np, sq, sk, hn } = a;
    if (![b, np, sq, sk, hn].every((x) => Number.isInteger(x) && x > 0)) {
      throw new Error(`cuda ${op}: b, np, sq, sk, hn must be positive integers, got ${[b, np, sq, sk, hn]}`);
    }
    if (hn > FLASH_MAX_HEAD_DIM) {
      throw new Error(`cuda ${op}: head dim ${hn} exceeds the kernel's ${FLASH_MAX_HEAD_DIM}`);
    }
    if (b * np > 65535) throw new Error(`cuda ${op}: b * np = ${b * np} exceeds the grid's y limit 65535`);
    requireSize(op, a.lse, b * np * sq, "lse");
    requireDType(op, a.lse, "f32", "lse");
    let mask = 0n, kind = 0;
    if (a.mask.kind === "causal") kind = 1;
    else if (a.mask.kind === "padding") {
      requireDType(op, a.mask.mask, "u8", "mask");
      requireSize(op, a.mask.mask, b * sq * sk, "mask");
      kind = 2;
      mask = this.ptr(a.mask.mask);
    }
    requireDropProb(op, a.dropoutP);
    let rng: (number | bigint)[] = [0, 0, 0, 0n, 0n, 1n];
    if (a.dropoutP > 0) {
      if (!a.dropoutAddr) throw new Error(`cuda ${op}: dropoutP ${a.dropoutP} needs a dropoutAddr`);
      rng = this.rngArgs(op, b * np * sq * sk, a.dropoutAddr);
    }
    const tail = [
      kind,
      a.scale,
      a.dropoutP,
      a.dropoutP > 0 ? keepScale(a.dropoutP) : 1,
      ...rng,
      np,
      sq,
      sk,
      hn,
      ...this.flashOperand("q", a.q, a, sq),
      ...this.flashOperand("k", a.k, a, sk),
      ...this.flashOperand("v", a.v, a, sk),
      ...this.flashOperand("out", a.out, a, sq),
    ];
    return { mask, tail };
  }

  private flashFwd(a: FusedAttentionArgs): void {
    const { mask, tail } = this.flashTail(a);
    // hn = 64 has kernels with the head dimension unrolled at compile time.
    const dt = a.q.t.dtype + (a.hn === 64 ? "_d64" : "");
    this.launch(
      `md_flash_attn_fwd_${dt}`,
      [Math.ceil(a.sq / FLASH_ROWS), a.b * a.np, 1],
      [FLASH_ROWS, 1, 1],
      [
        this.ptr(a.q.t),
        this.ptr(a.k.t),
        this.ptr(a.v.t),
        this.ptr(a.out.t),
        this.ptr(a.lse),
        mask,
        ...tail,
      ],
    );
  }

  private flashBwd(a: FusedAttentionArgs, g: FusedAttentionGrads): void {
    const { mask, tail } = this.flashTail(a);
    // hn = 64 has kernels with the head dimension unrolled at compile time.
    const dt = a.q.t.dtype + (a.hn === 64 ? "_d64" : "");
    for (
      const [t, o, w] of [[g.dOut, a.out, "dOut"], [g.dq, a.q, "dq"], [g.dk, a.k, "dk"], [
        g.dv,
        a.v,
        "dv",
      ]] as const
    ) {
      requireSame("fusedAttention", o.t, t, `${w} and its operand`);
      requireSize("fusedAttention", t, o.t.size, w);
    }
    const delta = this.scratch(a.b * a.np * a.sq);
    try {
      this.launch(`md_flash_attn_bwd_dq_${dt}`, [Math.ceil(a.sq / FLASH_ROWS), a.b * a.np, 1], [
        FLASH_ROWS,
        1,
        1,
      ], [
        this.ptr(a.q.t),
        this.ptr(a.k.t),
        this.ptr(a.v.t),
        this.ptr(a.out.t),
        this.ptr(g.dOut),
        this.ptr(g.dq),
        this.ptr(a.lse),
        this.ptr(delta),
        mask,
        ...tail,
      ]);
      this.launch(`md_flash_attn_bwd_dkv_${dt}`, [Math.ceil(a.sk / FLASH_ROWS), a.b * a.np, 1], [
        FLASH_ROWS,
        1,
        1,
      ], [
        this.ptr(a.q.t),
        this.ptr(a.k.t),
        this.ptr(a.v.t),
        this.ptr(g.dOut),
        this.ptr(g.dk),
        this.ptr(g.dv),
        this.ptr(a.lse),
        this.ptr(delta),
        mask,
        ...tail,
      ]);
    } finally {
      this.free(delta);
    }
  }

  private rngArgs(op: string, n: number, a: RngAddress): (number | bigint)[] {
    if (!Number.isInteger(a.rowLen) || a.rowLen <= 0 || n % a.rowLen !== 0) {
      throw new Error(`cuda ${op}: ${n} elements is not a multiple of addr.rowLen=${a.rowLen}`);
    }
    for (const k of ["base", "rowStride"] as const) {
      if (!Number.isSafeInteger(a[k]) || a[k] < 0) {
        throw new Error(`cuda ${op}: addr.${k}=${a[k]} must be a safe non-negative integer`);
      }
    }
    return [
      a.seed >>> 0,
      a.stream >>> 0,
      a.iteration >>> 0,
      BigInt(a.base),
      BigInt(a.rowStride),
      BigInt(a.rowLen),
    ];
  }

  normalInit(out: Tensor, std: number, addr: RngAddress): void {
    if (out.dtype !== "f64") requireFloat("normalInit", out, "out");
    if (out.size === 0) return;
    this.launch1d(`md_init_normal_${out.dtype}`, out.size, [
      this.ptr(out),
      out.size,
      std,
      ...this.rngArgs("normalInit", out.size, addr),
    ]);
  }

  dropout(x: Tensor, p: number, addr: RngAddress, y: Tensor): void {
    requireFloat("dropout", x, "x");
    requireSame("dropout", x, y, "x/y");
    requireSize("dropout", y, x.size, "y");
    requireDropProb("dropout", p);
    if (p === 0) return this.copy(x, y);
    const rng = this.rngArgs("dropout", x.size, addr);
    this.launch1d(`md_dropout_${x.dtype}`, x.size, [
      this.ptr(x),
      this.ptr(y),
      x.size,
      p,
      keepScale(p),
      ...rng,
    ]);
  }

  biasDropoutAdd(
    x: Tensor,
    bias: Tensor | null,
    residual: Tensor,
    p: number,
    addr: RngAddress,
    out: Tensor,
  ): void {
    requireFloat("biasDropoutAdd", x, "x");
    requireFloat("biasDropoutAdd", residual, "residual");
    requireSame("biasDropoutAdd", residual, out, "residual/out");
    requireSize("biasDropoutAdd", residual, x.size, "residual");
    requireSize("biasDropoutAdd", out, x.size, "out");
    requireDropProb("biasDropoutAdd", p);
    let h = x.shape[x.rank - 1] ?? 1;
    if (bias) {
      requireSame("biasDropoutAdd", x, bias, "x/bias");
      h = bias.size;
      rowsOf("biasDropoutAdd", x, h);
    }
    const rng = p > 0 ? this.rngArgs("biasDropoutAdd", x.size, addr) : [0, 0, 0, 0n, 0n, 1n];
    this.launch1d(`md_bias_dropout_add_${x.dtype}_${out.dtype}`, x.size, [
      this.ptr(x),
      bias ? this.ptr(bias) : 0n,
      this.ptr(residual),
      this.ptr(out),
      x.size,
      Math.max(h, 1),
      p,
      keepScale(p),
      ...rng,
    ]);
  }

  embeddingFwd(ids: Tensor, table: Tensor, out: Tensor, vocabStart: number): void {
    const it = requireIndex("embeddingFwd", ids, "ids");
    requireFloat("embeddingFwd", table, "table");
    requireSame("embeddingFwd", table, out, "table/out");
    const [vocab, h] = requireTable("embeddingFwd", table, "table");
    requireSize("embeddingFwd", out, ids.size * h, "out");
    this.launch1d(`md_embedding_fwd_${it}_${table.dtype}`, ids.size * h, [
      this.ptr(ids),
      this.ptr(table),
      this.ptr(out),
      ids.size,
      h,
      vocab,
      BigInt(vocabStart),
    ]);
  }

  embeddingBwd(ids: Tensor, dout: Tensor, dtable: Tensor, vocabStart: number): void {
    const it = requireIndex("embeddingBwd", ids, "ids");
    requireFloat("embeddingBwd", dout, "dout");
    requireDType("embeddingBwd", dtable, "f32", "dtable");
    const [vocab, h] = requireTable("embeddingBwd", dtable, "dtable");
    requireSize("embeddingBwd", dout, ids.size * h, "dout");
    this.launch1d(`md_embedding_bwd_${it}_${dout.dtype}`, ids.size * h, [
      this.ptr(ids),
      this.ptr(dout),
      this.ptr(dtable),
      ids.size,
      h,
      vocab,
      BigInt(vocabStart),
    ]);
  }

  private ceRows(op: string, logits: Tensor): { rows: number; V: number } {
    requireFloat(op, logits, "logits");
    const V = logits.shape[logits.rank - 1] ?? 0;
    return { rows: V === 0 ? 0 : logits.size / V, V };
  }

  private requireRowsF32(op: string, rows: number, ts: [Tensor, string][]): void {
    for (const [t, w] of ts) {
      requireDType(op, t, "f32", w);
      requireSize(op, t, rows, w);
    }
  }

  ceStats(logits: Tensor, targets: Tensor, vocabStart: number, rowMax: Tensor, targetLogit: Tensor): void {
    const { rows, V } = this.ceRows("ceStats", logits);
    const it = requireIndex("ceStats", targets, "targets");
    requireSize("ceStats", targets, rows, "targets");
    this.requireRowsF32("ceStats", rows, [[rowMax, "rowMax"], [targetLogit, "targetLogit"]]);
    this.launchRows(`md_ce_stats_${it}_${logits.dtype}`, rows, V, [
      this.ptr(logits),
      this.ptr(targets),
      BigInt(vocabStart),
      this.ptr(rowMax),
      this.ptr(targetLogit),
      V,
    ]);
  }

  ceSumExp(logits: Tensor, globalMax: Tensor, sumExp: Tensor): void {
    const { rows, V } = this.ceRows("ceSumExp", logits);
    this.requireRowsF32("ceSumExp", rows, [[globalMax, "globalMax"], [sumExp, "sumExp"]]);
    this.launchRows(`md_ce_sumexp_${logits.dtype}`, rows, V, [
      this.ptr(logits),
      this.ptr(globalMax),
      this.ptr(sumExp),
      V,
    ]);
  }

  ceLoss(globalMax: Tensor, sumExp: Tensor, targetLogit: Tensor, loss: Tensor): void {
    const rows = loss.size;
    this.requireRowsF32("ceLoss", rows, [[globalMax, "globalMax"], [sumExp, "sumExp"], [
      targetLogit,
      "targetLogit",
    ], [
      loss,
      "loss",
    ]]);
    this.launch1d("md_ce_loss", rows, [
      this.ptr(globalMax),
      this.ptr(sumExp),
      this.ptr(targetLogit),
      this.ptr(loss),
      rows,
    ]);
  }

  ceBwd(
    logits: Tensor,
    targets: Tensor,
    vocabStart: number,
    globalMax: Tensor,
    sumExp: Tensor,
    dloss: Tensor,
    dlogits: Tensor,
  ): void {
    const { rows, V } = this.ceRows("ceBwd", logits);
    const it = requireIndex("ceBwd", targets, "targets");
    requireSize("ceBwd", targets, rows, "targets");
    requireSame("ceBwd", logits, dlogits, "logits/dlogits");
    requireSize("ceBwd", dlogits, logits.size, "dlogits");
    this.requireRowsF32("ceBwd", rows, [[globalMax, "globalMax"], [sumExp, "sumExp"], [dloss, "dloss"]]);
    this.launchRows(`md_ce_bwd_${it}_${logits.dtype}`, rows, V, [
      this.ptr(logits),
      this.ptr(targets),
      BigInt(vocabStart),
      this.ptr(globalMax),
      this.ptr(sumExp),
      this.ptr(dloss),
      this.ptr(dlogits),
      V,
    ]);
  }

  // ---- optimizer and reductions ------------------------------------------------------------
  adamStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, a: AdamArgs): void {
    for (const [t, w] of [[param, "param"], [m, "m"], [v, "v"]] as const) {
      requireDType("adamStep", t, "f32", w);
      requireSize("adamStep", t, param.size, w);
    }
    requireFloat("adamStep", grad, "grad");
    requireSize("adamStep", grad, param.size, "grad");
    if (!(a.step >= 1)) throw new Error(`cuda adamStep: step must be >= 1, got ${a.step}`);
    // Bias corrections rounded exactly as the CPU reference rounds them.
    const f = Math.fround;
    const bc1 = f(1 - f(Math.pow(f(a.beta1), a.step)));
    const bc2 = f(1 - f(Math.pow(f(a.beta2), a.step)));
    this.launch1d(`md_adam_${grad.dtype}`, param.size, [
      this.ptr(param),
      this.ptr(grad),
      this.ptr(m),
      this.ptr(v),
      param.size,
      a.lr,
      a.beta1,
      a.beta2,
      a.eps,
      a.weightDecay,
      bc1,
      bc2,
    ]);
  }

  adamStepMulti(list: readonly AdamTensors[], a: AdamArgs): void {
    if (!(a.step >= 1)) throw new Error(`cuda adamStepMulti: step must be >= 1, got ${a.step}`);
    // One launch per (grad dtype, copyTo dtype); one block per chunk of at most ADAM_CHUNK elements.
    const groups = new Map<string, bigint[]>();
    for (const [k, t] of list.entries()) {
      const op = `adamStepMulti[${k}]`;
      for (const [x, w] of [[t.param, "param"], [t.m, "m"], [t.v, "v"]] as const) {
        requireDType(op, x, "f32", w);
        requireSize(op, x, t.param.size, w);
      }
      requireFloat(op, t.grad, "grad");
      requireSize(op, t.grad, t.param.size, "grad");
      if (t.copyTo) {
        requireFloat(op, t.copyTo, "copyTo");
        requireSize(op, t.copyTo, t.param.size, "copyTo");
      }
      const key = `md_adam_multi_${t.grad.dtype}_${t.copyTo?.dtype ?? "f32"}`;
      let g = groups.get(key);
      if (!g) groups.set(key, g = []);
      const [p, gr, m, v] = [t.param, t.grad, t.m, t.v].map((x) => this.ptr(x));
      const o = t.copyTo ? this.ptr(t.copyTo) : 0n;
      const gb = BigInt(DTYPE_BYTES[t.grad.dtype]), ob = t.copyTo ? BigInt(DTYPE_BYTES[t.copyTo.dtype]) : 0n;
      for (let s = 0; s < t.param.size; s += ADAM_CHUNK) {
        const n = Math.min(ADAM_CHUNK, t.param.size - s), bs = BigInt(s);
        g.push(p + 4n * bs, gr + gb * bs, m + 4n * bs, v + 4n * bs, o ? o + ob * bs : 0n, BigInt(n));
      }
    }
    const f = Math.fround;
    const bc1 = f(1 - f(Math.pow(f(a.beta1), a.step)));
    const bc2 = f(1 - f(Math.pow(f(a.beta2), a.step)));
    for (const [name, entries] of groups) {
      if (entries.length === 0) continue; // only empty parameters
      const table = this.adamTable(name, entries);
      this.launch(name, [entries.length / 6, 1, 1], [THREADS, 1, 1], [
        this.ptr(table),
        a.lr,
        a.beta1,
        a.beta2,
        a.eps,
        a.weightDecay,
        bc1,
        bc2,
      ]);
    }
  }

  /** The device copy of a multi-tensor table, uploaded only when its contents changed. */
  private adamTable(name: string, entries: bigint[]): Tensor {
    const cached = this.adamTables.get(name);
    if (cached && cached.host.length === entries.length && entries.every((x, i) => x === cached.host[i])) {
      return cached.dev;
    }
    if (cached) this.free(cached.dev);
    const host = BigUint64Array.from(entries);
    // Stored as i64 elements: the table is raw 64-bit words, never converted.
    const dev = this.fromHost("i64", [host.length], new BigInt64Array(host.buffer));
    this.adamTables.set(name, { host, dev });
    return dev;
  }

  sgdStep(param: Tensor, grad: Tensor, buf: Tensor, a: SgdArgs): void {
    requireDType("sgdStep", param, "f32", "param");
    requireDType("sgdStep", buf, "f32", "momentumBuf");
    requireFloat("sgdStep", grad, "grad");
    requireSize("sgdStep", grad, param.size, "grad");
    requireSize("sgdStep", buf, param.size, "momentumBuf");
    this.launch1d(`md_sgd_${grad.dtype}`, param.size, [
      this.ptr(param),
      this.ptr(grad),
      this.ptr(buf),
      param.size,
      a.lr,
      a.momentum,
      a.weightDecay,
      a.firstStep ? 1 : 0,
    ]);
  }

  sumSquares(x: Tensor, out: Tensor, accumulate: boolean): void {
    this.chunkedReduce("sumSquares", "md_sumsquares", x, out, accumulate);
  }

  countZeros(x: Tensor, out: Tensor, accumulate: boolean): void {
    this.chunkedReduce("countZeros", "md_countzeros", x, out, accumulate);
  }

  /** f64 partials per REDUCE_CHUNK elements, then md_sumpartials into out (f64 [1]). A fixed block
   *  size and chunking make the result independent of the grid (same bits every run). */
  private chunkedReduce(op: string, family: string, x: Tensor, out: Tensor, accumulate: boolean): void {
    requireFloat(op, x, "x");
    requireDType(op, out, "f64", "out");
    requireSize(op, out, 1, "out");
    const chunks = Math.ceil(x.size / REDUCE_CHUNK);
    if (chunks === 0) {
      if (!accumulate) this.submit(() => this.rt.memsetAsync(this.ptr(out), 0, 8, this.stream));
      return;
    }
    const partial = this.empty("f64", [chunks]);
    try {
      const blocks = Math.min(chunks, this.smCount * 32);
      this.launch(`${family}_${x.dtype}`, [blocks, 1, 1], [THREADS, 1, 1], [
        this.ptr(x),
        this.ptr(partial),
        x.size,
      ]);
      this.launch("md_sumpartials", [1, 1, 1], [THREADS, 1, 1], [
        this.ptr(partial),
        this.ptr(out),
        chunks,
        accumulate ? 1 : 0,
      ]);
    } finally {
      this.free(partial);
    }
  }

  nonFinite(x: Tensor, flag: Tensor): void {
    requireFloat("nonFinite", x, "x");
    requireDType("nonFinite", flag, "f32", "flag");
    requireSize("nonFinite", flag, 1, "flag");
    this.launch1d(`md_nonfinite_${x.dtype}`, x.size, [this.ptr(x), this.ptr(flag), x.size]);
  }
}

export function createCudaBackend(opts: CudaBackendOptions = {}): Promise<CudaBackend> {
  return CudaBackend.create(opts);
}

export type CudaProbe = { ok: true; description: string; count: number } | { ok: false; reason: string };

/**
 * Cheap check whether the CUDA backend can run here: the runtime, driver and cuBLAS libraries
 * load, the driver accepts the runtime and at least one GPU is visible. Creates no context.
 * With MEGATRON_DENO_REQUIRE_CUDA=1 a failed probe throws instead (a GPU host must not "pass"
 * by skipping).
 */
export function probeCuda(env: DiscoverEnv = realDiscoverEnv()): CudaProbe {
  const p = probeCudaOnce(env);
  if (!p.ok && env.get("MEGATRON_DENO_REQUIRE_CUDA") === "1") {
    throw new Error(`MEGATRON_DENO_REQUIRE_CUDA=1 but CUDA is not usable: ${p.reason}`);
  }
  return p;
}

function probeCudaOnce(env: DiscoverEnv): CudaProbe {
  // The libraries stay loaded (not dlclosed): the backend reopens the same files right after,
  // and unloading an initialized CUDA runtime buys nothing.
  try {
    const rt = Cudart.open(env);
    const count = rt.deviceCount();
    if (count < 1) return { ok: false, reason: "cudaGetDeviceCount: no CUDA device visible" };
    const drv = CudaDriver.open(env);
    Cublas.open(env);
    const v = rt.runtimeVersion(), dv = drv.driverVersion();
    return {
      ok: true,
      count,
      description: `${count} CUDA device(s), runtime ${cudaVersionString(v)}, driver ${
        cudaVersionString(dv)
      }`,
    };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}
