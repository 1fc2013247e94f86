// The CPU reference backend: every Backend op on host TypedArrays, written to be obviously correct
// first (the CUDA backend is tested against it) and reasonably fast second (typed-array loops, no
// per-element allocation). Arithmetic is f32 (Float32Array stores / Math.fround) unless every float
// operand is f64, in which case it is f64 throughout (finite-difference gradient checks).
// Half tensors are converted to f32 temporaries on read and rounded RNE on write.
// Hot f32 loops (cross-entropy, Adam, GeLU, softmax exp, dropout, sum of squares) run in the SIMD
// WebAssembly kernels of simd_wasm.ts with the same per-element arithmetic; freed large f32 arrays are
// recycled so the per-step [tokens, vocab] buffers do not pay fresh-page faults.

import {
  allocHost,
  bf16BitsToF32,
  type DType,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  type HostArray,
  isFloat,
  isHalf,
} from "../../tensor/dtype.ts";
import {
  assertDType,
  assertShape,
  numel,
  type Shape,
  shapeStr,
  type Storage,
  Tensor,
} from "../../tensor/tensor.ts";
import {
  type Activation,
  type AdamArgs,
  type Backend,
  type GemmArgs,
  REDUCE_CHUNK,
  type RngAddress,
  type SgdArgs,
  type SoftmaxMask,
} from "../backend.ts";
import { type Cblas, loadCblas } from "../../../ffi/cblas.ts";
import { type GemmScratch, gemmTs, newGemmScratch } from "./gemm_ts.ts";
import { defaultGemmThreads, GemmPool } from "./gemm_wasm.ts";
import { PHILOX_CHUNK_BLOCKS, PhiloxWasm } from "./philox_wasm.ts";
import { SimdKernels } from "./simd_wasm.ts";
import { geluErf, geluErfGrad } from "./erf.ts";
import { KEY_HI, PhiloxStream } from "../../rng/philox.ts";

type F = Float32Array | Float64Array;

const FLOATS: readonly DType[] = ["f32", "f16", "bf16", "f64"];
const STATS: readonly DType[] = ["f32", "f64"];

/** Rows shorter than this stay on the scalar loops (copy-in and call overhead would dominate). */
const SIMD_MIN = 64;

const isF32 = (x: number): boolean => Math.fround(x) === x;

/** GEMMs with m * n * k below this run on one BLAS thread. */
const SMALL_GEMM = 1 << 21;

/** f32 GEMMs (all batch items together) with fewer multiply-adds stay on the TypeScript loops when
 *  no BLAS is used: copying into the WebAssembly memory would cost more than it saves. */
const WASM_GEMM_MIN = 1 << 15;

/** One line on how to get a BLAS, printed when none was found (the speed-up is the embedded default's
 *  step time on 2 cores, OpenBLAS against the WebAssembly GEMM; see bench/gpt_step.bench.ts). */
export const BLAS_INSTALL_HINT = "cpu backend: no BLAS library found; OpenBLAS makes CPU training about " +
  "2-3x faster: apt install libopenblas0 (Debian/Ubuntu), dnf install openblas (Fedora), " +
  "brew install openblas (macOS); or set MEGATRON_DENO_BLAS=/path/to/libopenblas.so";

/** f32 allocations at least this large are recycled after free (see CpuBackend.empty). */
const POOL_MIN_ELEMENTS = 1 << 20;
/** Upper bound on the bytes held by freed, recycled f32 arrays. */
const POOL_MAX_BYTES = 1024 * 1024 * 1024;

/** Host storage for one CPU tensor allocation. */
export class CpuStorage implements Storage {
  freed = false;
  readonly length: number;
  constructor(public data: HostArray | null) {
    this.length = data!.length;
  }
}

export interface CpuBackendOptions {
  /** A CBLAS library path, "none" for the built-in GEMM, or undefined to search (env first). */
  blas?: string | "none";
  /** Built-in f32 GEMM when no BLAS is used: the WebAssembly SIMD GEMM (default) or the TypeScript
   *  loops (kept as the reference; f64 always uses them). */
  fallbackGemm?: "wasm" | "ts";
  /** Threads of the WebAssembly GEMM, this one included (default: the machine's cores, at most 8). */
  gemmThreads?: number;
  /** Libraries to search instead of ffi/cblas.ts' list (tests of the no-BLAS path). */
  blasCandidates?: string[];
  /** Receives the one-line description at creation (default: console.error). */
  log?: (line: string) => void;
}

function raw(op: string, t: Tensor): HostArray {
  const s = t.storage;
  if (!(s instanceof CpuStorage)) throw new Error(`${op}: tensor ${t} does not belong to the cpu backend`);
  if (s.freed || s.data === null) throw new Error(`${op}: tensor used after free`);
  return s.data;
}

/** Raw elements of the view (no copy). */
function rawView(op: string, t: Tensor): HostArray {
  return raw(op, t).subarray(t.offset, t.offset + t.size) as HostArray;
}

/** The f64 [1] accumulator of sumSquares / countZeros. */
function f64Scalar(op: string, out: Tensor): Float64Array {
  assertDType(op, out, "f64", "out");
  if (out.size !== 1) throw new Error(`${op}: out must have 1 element, found ${shapeStr(out.shape)}`);
  return rawView(op, out) as Float64Array;
}

/** The view's values as f32/f64 numbers: zero-copy for f32/f64, a converted copy otherwise. */
function readF(op: string, t: Tensor, what = "tensor"): F {
  const d = rawView(op, t);
  switch (t.dtype) {
    case "f32":
    case "f64":
      return d as F;
    case "f16": {
      const u = d as Uint16Array, o = new Float32Array(u.length);
      for (let i = 0; i < u.length; i++) o[i] = f16BitsToF32(u[i]);
      return o;
    }
    case "bf16": {
      // bf16 -> f32 is a shift: reinterpret through a u32 buffer.
      const u = d as Uint16Array, o = new Float32Array(u.length), ou = new Uint32Array(o.buffer);
      for (let i = 0; i < u.length; i++) ou[i] = u[i] << 16;
      return o;
    }
    default:
      throw new Error(`${op}: ${what} has dtype ${t.dtype}, expected a float dtype`);
  }
}

/** Index-like tensor (i32/i64/u8) as numbers. */
function readInt(op: string, t: Tensor, what: string): Int32Array | Float64Array | Uint8Array {
  const d = rawView(op, t);
  if (t.dtype === "i32") return d as Int32Array;
  if (t.dtype === "u8") return d as Uint8Array;
  if (t.dtype === "i64") {
    const b = d as BigInt64Array, o = new Float64Array(b.length);
    for (let i = 0; i < b.length; i++) o[i] = Number(b[i]);
    return o;
  }
  throw new Error(`${op}: ${what} has dtype ${t.dtype}, expected i32 or i64`);
}

/** Output buffer for a float tensor: the view itself for f32/f64, else an f32 temp (loaded if asked). */
function outF(op: string, t: Tensor, load: boolean, what = "output"): F {
  if (t.dtype === "f32" || t.dtype === "f64") return rawView(op, t) as F;
  if (isHalf(t.dtype)) return load ? readF(op, t, what) : new Float32Array(t.size);
  throw new Error(`${op}: ${what} has dtype ${t.dtype}, expected a float dtype`);
}

/** Writes an outF buffer back (rounds RNE to half; no-op for f32/f64 views). */
function commit(op: string, t: Tensor, o: F): void {
  if (!isHalf(t.dtype)) return;
  const d = rawView(op, t) as Uint16Array;
  if (t.dtype === "bf16") { for (let i = 0; i < o.length; i++) d[i] = f32ToBf16Bits(o[i]); }
  else for (let i = 0; i < o.length; i++) d[i] = f32ToF16Bits(o[i]);
}

function all64(...ts: (Tensor | null)[]): boolean {
  for (const t of ts) if (t && isFloat(t.dtype) && t.dtype !== "f64") return false;
  return true;
}

function checkFloat(op: string, t: Tensor, what: string): void {
  assertDType(op, t, FLOATS, what);
}

function sameSize(op: string, a: Tensor, b: Tensor, an: string, bn: string): void {
  if (a.size !== b.size) {
    throw new Error(
      `${op}: ${an} ${shapeStr(a.shape)} and ${bn} ${shapeStr(b.shape)} differ in element count`,
    );
  }
}

function lastDim(op: string, t: Tensor, what: string): number {
  if (t.rank < 1) throw new Error(`${op}: ${what} must have rank >= 1, found ${shapeStr(t.shape)}`);
  return t.shape[t.rank - 1];
}

// GeLU, tanh approximation: 0.5 x (1 + tanh(u)), u = 0.7978845608028654 (x + 0.044715 x^3).
// Computed as x * sigmoid(2u) (identical, since 1 + tanh(u) = 2 sigmoid(2u)): one Math.exp instead of
// Math.tanh, and no cancellation in 1 + tanh(u) for negative x. exp(-2u) below e^-40 cannot change
// 1 + e^-2u, so it is skipped (Math.exp is slow far below its underflow).
function sigmoid2u(x: number): number {
  const z = -1.5957691216057308 * (x + 0.044715 * x * x * x); // -2u
  return 1 / (1 + (z < -40 ? 0 : Math.exp(z)));
}

function geluTanh(x: number): number {
  return x * sigmoid2u(x);
}

/** d/dx of 0.5 x (1 + tanh u) = 0.5 (1 + t) + 0.5 x (1 - t^2) u' = s + 2 x s (1 - s) u', s = sigmoid(2u). */
function geluTanhGrad(x: number): number {
  const s = sigmoid2u(x);
  return s + 2 * x * s * (1 - s) * 0.7978845608028654 * (1 + 3 * 0.044715 * x * x);
}

/** The activation (or its derivative) as an f64 function. */
function activationFn(op: string, kind: Activation, grad: boolean): (v: number) => number {
  switch (kind) {
    case "tanh":
      return grad
        ? (v) => {
          const t = Math.tanh(v);
          return 1 - t * t;
        }
        : Math.tanh;
    case "gelu_erf":
      return grad ? geluErfGrad : geluErf;
    default:
      throw new Error(`${op}: unknown activation ${kind}, expected tanh or gelu_erf`);
  }
}

function checkAddr(op: string, size: number, addr: RngAddress): number {
  const { rowLen, rowStride, base } = addr;
  if (!Number.isInteger(rowLen) || rowLen <= 0 || size % rowLen !== 0) {
    throw new Error(`${op}: addr.rowLen ${rowLen} must be a positive divisor of the element count ${size}`);
  }
  if (!Number.isInteger(base) || base < 0 || !Number.isInteger(rowStride) || rowStride < 0) {
    throw new Error(`${op}: addr.base ${base} and addr.rowStride ${rowStride} must be non-negative integers`);
  }
  return size / rowLen;
}

/** Integer form of dropoutMask's test: (bits >>> 8) >= fround(p) * 2^24 <=> (bits >>> 8) >= ceil(...). */
function keepThr(p: number): number {
  return Math.ceil(Math.fround(p) * 16777216);
}

function checkP(op: string, p: number): void {
  if (!(p >= 0 && p < 1)) throw new Error(`${op}: dropout probability must be in [0, 1), found ${p}`);
}

/**
 * keep[i] = 1 for kept elements of the [rows, rowLen] view. Counter index e = base + r*rowStride + i;
 * bits(e) is lane e%4 of Philox block floor(e/4) (src/rng/philox.ts). Blocks are generated once per
 * 4 lanes, in chunks, and contiguous rows are treated as one range.
 */
function dropoutMask(addr: RngAddress, p: number, rows: number, keep: Uint8Array, pw: PhiloxWasm): void {
  // uniform(e) >= fround(p)  <=>  (bits >>> 8) >= fround(p) * 2^24 (exact).
  const thr = Math.fround(p) * 16777216;
  const merged = addr.rowStride === addr.rowLen;
  const nrows = merged ? Math.min(rows, 1) : rows;
  const len = merged ? rows * addr.rowLen : addr.rowLen;
  const U = pw.lanes;
  for (let r = 0; r < nrows; r++) {
    const e0 = addr.base + r * addr.rowStride, o = r * len;
    let i = 0;
    while (i < len) {
      const b0 = Math.floor((e0 + i) / 4);
      const nb = Math.min(PHILOX_CHUNK_BLOCKS, Math.floor((e0 + len - 1) / 4) - b0 + 1);
      pw.generate(b0, nb, addr.seed, addr.stream, addr.iteration);
      const lim = Math.min(len, (b0 + nb) * 4 - e0);
      const shift = e0 - b0 * 4; // element i's lane is U[i + shift]
      for (; i < lim; i++) keep[o + i] = U[i + shift] >>> 8 >= thr ? 1 : 0;
    }
  }
}

export class CpuBackend implements Backend {
  readonly name = "cpu" as const;
  readonly description: string;
  /** The CBLAS in use, or null for the built-in GEMM. */
  readonly blas: Cblas | null;
  /** The WebAssembly SIMD GEMM used for f32 when there is no BLAS (null with a BLAS or fallbackGemm "ts"). */
  readonly wasmGemm: GemmPool | null;
  private readonly scratch: GemmScratch = newGemmScratch();
  private readonly philox = new PhiloxWasm();
  private readonly simd = new SimdKernels();
  /** Freed large f32 arrays by length. Re-zeroing one (memset) is several times cheaper than the page
   *  faults of fresh memory, which the [tokens, vocab] logits and their gradient pay every step. */
  private readonly pool = new Map<number, Float32Array[]>();
  private pooledBytes = 0;

  constructor(opts: CpuBackendOptions = {}) {
    const r = loadCblas(opts.blas, opts.blasCandidates);
    this.blas = r.blas;
    this.wasmGemm = r.blas || opts.fallbackGemm === "ts"
      ? null
      : new GemmPool(opts.gemmThreads ?? defaultGemmThreads());
    const gemm = this.wasmGemm ? this.wasmGemm.label : "TypeScript GEMM";
    this.description = r.blas ? `cpu (${r.blas.name} via FFI: ${r.blas.path})` : `cpu (${gemm}; ${r.reason})`;
    const line = r.blas
      ? `cpu backend: ${r.blas.name} (${r.blas.path})`
      : `cpu backend: ${gemm} (${r.reason})`;
    const log = opts.log ?? ((l: string) => console.error(l));
    log(line);
    if (r.notFound) log(BLAS_INSTALL_HINT);
  }

  /** Unloads the BLAS library and stops the GEMM workers; the backend must not be used afterwards. */
  close(): void {
    this.blas?.close();
    this.wasmGemm?.close();
  }

  // ---- memory ---------------------------------------------------------------------------------

  empty(dtype: DType, shape: Shape): Tensor {
    const n = numel(shape);
    if (dtype === "f32" && n >= POOL_MIN_ELEMENTS) {
      const a = this.pool.get(n)?.pop();
      if (a) {
        this.pooledBytes -= a.byteLength;
        a.fill(0);
        return new Tensor(dtype, shape, new CpuStorage(a));
      }
    }
    return new Tensor(dtype, shape, new CpuStorage(allocHost(dtype, n)));
  }

  zeros(dtype: DType, shape: Shape): Tensor {
    return this.empty(dtype, shape);
  }

  fromHost(dtype: DType, shape: Shape, data: ArrayLike<number> | HostArray): Tensor {
    const n = numel(shape);
    if (data.length !== n) {
      throw new Error(
        `fromHost: data has ${data.length} elements, expected ${n} for shape ${shapeStr(shape)}`,
      );
    }
    const t = this.empty(dtype, shape);
    const d = (t.storage as CpuStorage).data!;
    if (data instanceof BigInt64Array) {
      if (dtype === "i64") (d as BigInt64Array).set(data);
      else for (let i = 0; i < n; i++) this.setNum(dtype, d, i, Number(data[i]));
    } else if (isHalf(dtype) && data instanceof Uint16Array) {
      (d as Uint16Array).set(data);
    } else {
      const src = data as ArrayLike<number>;
      for (let i = 0; i < n; i++) this.setNum(dtype, d, i, src[i]);
    }
    return t;
  }

  private setNum(dtype: DType, d: HostArray, i: number, x: number): void {
    switch (dtype) {
      case "f16":
        (d as Uint16Array)[i] = f32ToF16Bits(x);
        break;
      case "bf16":
        (d as Uint16Array)[i] = f32ToBf16Bits(x);
        break;
      case "i64":
        (d as BigInt64Array)[i] = BigInt(Math.trunc(x));
        break;
      default:
        (d as Float32Array)[i] = x;
    }
  }

  toHost(t: Tensor): HostArray {
    return rawView("toHost", t).slice() as HostArray;
  }

  toF64(t: Tensor): Float64Array {
    const d = rawView("toF64", t);
    const o = new Float64Array(t.size);
    if (t.dtype === "f16") { for (let i = 0; i < o.length; i++) o[i] = f16BitsToF32((d as Uint16Array)[i]); }
    else if (t.dtype === "bf16") {
      for (let i = 0; i < o.length; i++) o[i] = bf16BitsToF32((d as Uint16Array)[i]);
    } else if (t.dtype === "i64") {
      for (let i = 0; i < o.length; i++) {
        o[i] = Number((d as BigInt64Array)[i]);
      }
    } else o.set(d as ArrayLike<number>);
    return o;
  }

  free(t: Tensor): void {
    const s = t.storage as CpuStorage;
    if (s.freed) throw new Error(`free: tensor ${t} already freed`);
    const d = s.data;
    s.freed = true;
    s.data = null;
    if (
      d instanceof Float32Array && d.length >= POOL_MIN_ELEMENTS && d.byteOffset === 0 &&
      d.byteLength === d.buffer.byteLength && this.pooledBytes + d.byteLength <= POOL_MAX_BYTES
    ) {
      const list = this.pool.get(d.length) ?? [];
      list.push(d);
      this.pool.set(d.length, list);
      this.pooledBytes += d.byteLength;
    }
  }

  synchronize(): void {}

  // ---- elementwise / copies -------------------------------------------------------------------

  copy(src: Tensor, dst: Tensor): void {
    const op = "copy";
    sameSize(op, src, dst, "src", "dst");
    const s = rawView(op, src), d = rawView(op, dst);
    if (src.dtype === dst.dtype) {
      (d as Float32Array).set(s as Float32Array);
      return;
    }
    if (src.dtype === "i64" || dst.dtype === "i64") {
      const v = this.toF64(src);
      for (let i = 0; i < v.length; i++) this.setNum(dst.dtype, d, i, v[i]);
      return;
    }
    if (isFloat(dst.dtype)) {
      const v = isFloat(src.dtype) ? readF(op, src) : (s as ArrayLike<number> as F);
      const o = outF(op, dst, false);
      o.set(v);
      commit(op, dst, o);
      return;
    }
    // Float or int -> int: truncate toward zero (as a C cast).
    const v = isFloat(src.dtype) ? readF(op, src) : (s as ArrayLike<number> as F);
    for (let i = 0; i < v.length; i++) (d as Int32Array)[i] = Math.trunc(v[i]);
  }

  fill(t: Tensor, value: number): void {
    const d = rawView("fill", t);
    if (t.dtype === "f16") (d as Uint16Array).fill(f32ToF16Bits(value));
    else if (t.dtype === "bf16") (d as Uint16Array).fill(f32ToBf16Bits(value));
    else if (t.dtype === "i64") (d as BigInt64Array).fill(BigInt(Math.trunc(value)));
    else (d as Float32Array).fill(value);
  }

  scale(x: Tensor, alpha: number, out: Tensor): void {
    const op = "scale";
    checkFloat(op, x, "x");
    checkFloat(op, out, "out");
    sameSize(op, x, out, "x", "out");
    const v = readF(op, x), o = outF(op, out, false);
    const a = all64(x, out) ? alpha : Math.fround(alpha);
    for (let i = 0; i < v.length; i++) o[i] = a * v[i];
    commit(op, out, o);
  }

  add(a: Tensor, b: Tensor, out: Tensor, alpha = 1, beta = 1): void {
    const op = "add";
    checkFloat(op, a, "a");
    checkFloat(op, b, "b");
    checkFloat(op, out, "out");
    sameSize(op, a, b, "a", "b");
    sameSize(op, a, out, "a", "out");
    const va = readF(op, a), vb = readF(op, b), o = outF(op, out, false);
    if (all64(a, b, out)) {
      for (let i = 0; i < o.length; i++) o[i] = alpha * va[i] + beta * vb[i];
    } else {
      const al = Math.fround(alpha), be = Math.fround(beta);
      for (let i = 0; i < o.length; i++) o[i] = Math.fround(al * va[i]) + Math.fround(be * vb[i]);
    }
    commit(op, out, o);
  }

  transpose12(x: Tensor, out: Tensor): void {
    const op = "transpose12";
    if (x.rank !== 4) throw new Error(`${op}: x must be rank 4 [A, B, C, D], found ${shapeStr(x.shape)}`);
    const [A, B, C, D] = x.shape;
    assertShape(op, out, [A, C, B, D], "out");
    assertDType(op, out, x.dtype, "out");
    const s = rawView(op, x) as Float32Array, d = rawView(op, out) as Float32Array;
    for (let a = 0; a < A; a++) {
      for (let bb = 0; bb < B; bb++) {
        for (let c = 0; c < C; c++) {
          const si = ((a * B + bb) * C + c) * D;
          const di = ((a * C + c) * B + bb) * D;
          d.set(s.subarray(si, si + D), di);
        }
      }
    }
  }

  sumRows(x: Tensor, out: Tensor, accumulate: boolean): void {
    const op = "sumRows";
    checkFloat(op, x, "x");
    checkFloat(op, out, "out");
    const cols = out.size;
    if (cols === 0 && x.size === 0) return;
    if (cols === 0 || x.size % cols !== 0) {
      throw new Error(
        `${op}: x ${shapeStr(x.shape)} is not a whole number of rows of out ${shapeStr(out.shape)}`,
      );
    }
    const rows = x.size / cols;
    const v = readF(op, x);
    // Accumulate in f64 and round once on store: an f32 running sum over the 16k tokens of a
    // GPT-3-sized micro-batch (a bias gradient) drifts by ~1e-6 of the sum of magnitudes.
    const acc = new Float64Array(cols);
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      for (let j = 0; j < cols; j++) acc[j] += v[o + j];
    }
    const o = outF(op, out, accumulate);
    if (accumulate) { for (let j = 0; j < cols; j++) o[j] += acc[j]; }
    else o.set(acc);
    commit(op, out, o);
  }

  // ---- BLAS -----------------------------------------------------------------------------------

  gemm(args: GemmArgs): void {
    const op = "gemm";
    const { transA, transB, m, n, k, a, b, c } = args;
    const alpha = args.alpha ?? 1, beta = args.beta ?? 0;
    const batch = args.batch ?? 1;
    checkFloat(op, a, "A");
    assertDType(op, b, a.dtype, "B");
    assertDType(op, c, a.dtype === "f32" ? "f32" : [a.dtype, "f32"], "C");
    for (const [nm, v] of [["m", m], ["n", n], ["k", k], ["batch", batch]] as const) {
      if (!Number.isInteger(v) || v < 0) {
        throw new Error(`${op}: ${nm} must be a non-negative integer, found ${v}`);
      }
    }
    const aRows = transA ? k : m, aCols = transA ? m : k;
    const bRows = transB ? n : k, bCols = transB ? k : n;
    const lda = args.lda ?? Math.max(1, aCols),
      ldb = args.ldb ?? Math.max(1, bCols),
      ldc = args.ldc ?? Math.max(1, n);
    const sA = args.strideA ?? aRows * lda, sB = args.strideB ?? bRows * ldb, sC = args.strideC ?? m * ldc;
    const extent = (
      nm: string,
      t: Tensor,
      rows: number,
      cols: number,
      ld: number,
      stride: number,
    ): number => {
      if (ld < Math.max(1, cols)) {
        throw new Error(`${op}: ld${nm} ${ld} is less than the ${cols} columns of ${nm}`);
      }
      const need = rows === 0 || cols === 0 || batch === 0
        ? 0
        : (batch - 1) * stride + (rows - 1) * ld + cols;
      if (need > t.size) {
        throw new Error(
          `${op}: ${nm} ${shapeStr(t.shape)} has ${t.size} elements, but ${batch} x [${rows}, ${cols}] ` +
            `with ld${nm}=${ld}, stride${nm}=${stride} needs ${need}`,
        );
      }
      return need;
    };
    const eA = extent("A", a, aRows, aCols, lda, sA);
    const eB = extent("B", b, bRows, bCols, ldb, sB);
    extent("C", c, m, n, ldc, sC);
    if (batch === 0 || m === 0 || n === 0) return;
    const f64 = all64(a, b, c);
    // Operands in the compute type: zero-copy for f32/f64 views, converted copies otherwise.
    const conv = (t: Tensor, ext: number): F => {
      const v = readF(op, t.flat(0, ext));
      if (f64 || v instanceof Float32Array) return v;
      return Float32Array.from(v);
    };
    const A = conv(a, eA), B = conv(b, eB);
    let C: F;
    const cDirect = (f64 && c.dtype === "f64") || (!f64 && c.dtype === "f32");
    if (cDirect) C = rawView(op, c) as F;
    else {
      C = f64 ? new Float64Array(c.size) : new Float32Array(c.size);
      // Load even when beta == 0: elements between rows (ldc > n) must survive the write-back,
      // and half -> f32 -> half is exact. BLAS and gemmTs ignore C's values when beta == 0.
      C.set(readF(op, c));
    }
    const pool = this.wasmGemm;
    if (
      pool !== null && !f64 && k > 0 && alpha !== 0 && m * n * k * batch >= WASM_GEMM_MIN &&
      pool.fits(eA, eB, batch, m, n)
    ) {
      // The whole batch in one job, so batched GEMMs (attention) split across threads by item.
      const [a32, b32, c32] = [A as Float32Array, B as Float32Array, C as Float32Array];
      pool.gemm({
        ...{ transA, transB, m, n, k, alpha, a: a32, oA: 0, lda, sA, eA, b: b32, oB: 0, ldb, sB, eB },
        ...{ beta, c: c32, oC: 0, ldc, sC, batch },
      });
      if (!cDirect) {
        if (c.dtype === "f32") (rawView(op, c) as Float32Array).set(C);
        else commit(op, c, C);
      }
      return;
    }
    // Small products lose more to waking OpenBLAS's threads than they gain from them.
    const single = this.blas !== null && this.blas.threads > 1 && m * n * k < SMALL_GEMM;
    if (single) this.blas!.setThreads(1);
    for (let bi = 0; bi < batch; bi++) {
      const oa = bi * sA, ob = bi * sB, oc = bi * sC;
      if (this.blas) {
        if (f64) {
          this.blas.dgemm(
            transA,
            transB,
            m,
            n,
            k,
            alpha,
            (A as Float64Array).subarray(oa),
            lda,
            (B as Float64Array).subarray(ob),
            ldb,
            beta,
            (C as Float64Array).subarray(oc),
            ldc,
          );
        } else {
          this.blas.sgemm(
            transA,
            transB,
            m,
            n,
            k,
            alpha,
            (A as Float32Array).subarray(oa),
            lda,
            (B as Float32Array).subarray(ob),
            ldb,
            beta,
            (C as Float32Array).subarray(oc),
            ldc,
          );
        }
      } else {
        gemmTs(transA, transB, m, n, k, alpha, A, oa, lda, B, ob, ldb, beta, C, oc, ldc, this.scratch);
      }
    }
    if (single) this.blas!.setThreads(this.blas!.threads);
    if (!cDirect) {
      if (c.dtype === "f32") (rawView(op, c) as Float32Array).set(C);
      else commit(op, c, C);
    }
  }

  // ---- transformer ops ------------------------------------------------------------------------

  layerNormFwd(
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: number,
    y: Tensor,
    mean: Tensor,
    rstd: Tensor,
  ): void {
    const op = "layerNormFwd";
    checkFloat(op, x, "x");
    const h = lastDim(op, x, "x");
    const rows = h === 0 ? 0 : x.size / h;
    assertShape(op, gamma, [h], "gamma");
    assertShape(op, beta, [h], "beta");
    assertShape(op, y, x.shape, "y");
    if (mean.size !== rows || rstd.size !== rows) {
      throw new Error(
        `${op}: mean ${shapeStr(mean.shape)} / rstd ${
          shapeStr(rstd.shape)
        } must have ${rows} elements (rows of x ${shapeStr(x.shape)})`,
      );
    }
    assertDType(op, mean, STATS, "mean");
    assertDType(op, rstd, STATS, "rstd");
    const X = readF(op, x), G = readF(op, gamma, "gamma"), Bt = readF(op, beta, "beta");
    const Y = outF(op, y, false), M = outF(op, mean, false), R = outF(op, rstd, false);
    const f64 = all64(x, gamma, beta, y);
    for (let r = 0; r < rows; r++) {
      const o = r * h;
      // Row statistics accumulate in f64 and are rounded once: an f32 running sum over h = 12288
      // (GPT-3) is ~3e-6 off in the mean and rstd, 30x the f32 rounding of the result.
      let s = 0;
      for (let j = 0; j < h; j++) s += X[o + j];
      const mu = f64 ? s / h : Math.fround(s / h);
      let q = 0;
      if (f64) {
        for (let j = 0; j < h; j++) {
          const d = X[o + j] - mu;
          q += d * d;
        }
      } else {
        for (let j = 0; j < h; j++) {
          const d = Math.fround(X[o + j] - mu);
          q += d * d;
        }
      }
      const rs = f64 ? 1 / Math.sqrt(q / h + eps) : Math.fround(1 / Math.sqrt(q / h + eps));
      M[r] = mu;
      R[r] = rs;
      if (f64) { for (let j = 0; j < h; j++) Y[o + j] = (X[o + j] - mu) * rs * G[j] + Bt[j]; }
      else {
        for (let j = 0; j < h; j++) {
          Y[o + j] = Math.fround(Math.fround(Math.fround(X[o + j] - mu) * rs) * G[j]) + Bt[j];
        }
      }
    }
    commit(op, y, Y);
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
    const op = "layerNormBwd";
    checkFloat(op, x, "x");
    const h = lastDim(op, x, "x");
    const rows = h === 0 ? 0 : x.size / h;
    assertShape(op, dy, x.shape, "dy");
    assertShape(op, dx, x.shape, "dx");
    assertShape(op, gamma, [h], "gamma");
    assertShape(op, dgamma, [h], "dgamma");
    assertShape(op, dbeta, [h], "dbeta");
    assertDType(op, dgamma, STATS, "dgamma");
    assertDType(op, dbeta, STATS, "dbeta");
    if (mean.size !== rows || rstd.size !== rows) {
      throw new Error(`${op}: mean/rstd must have ${rows} elements, found ${mean.size}/${rstd.size}`);
    }
    const DY = readF(op, dy, "dy"), X = readF(op, x), G = readF(op, gamma, "gamma");
    const M = readF(op, mean, "mean"), R = readF(op, rstd, "rstd");
    const DX = outF(op, dx, false);
    const f64 = all64(dy, x, gamma, dx);
    // dgamma / dbeta sum over every token: f64 accumulators (as sumRows), rounded once on store.
    const dg = new Float64Array(h);
    const db = new Float64Array(h);
    for (let r = 0; r < rows; r++) {
      const o = r * h, mu = M[r], rs = R[r];
      // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma.
      let sg = 0, sgx = 0;
      for (let j = 0; j < h; j++) {
        const xh = (X[o + j] - mu) * rs;
        const g = DY[o + j] * G[j];
        sg += g;
        sgx += g * xh;
        dg[j] += DY[o + j] * xh;
        db[j] += DY[o + j];
      }
      if (!f64) {
        sg = Math.fround(sg);
        sgx = Math.fround(sgx);
      }
      const mg = sg / h, mgx = sgx / h;
      for (let j = 0; j < h; j++) {
        const xh = (X[o + j] - mu) * rs;
        DX[o + j] = rs * (DY[o + j] * G[j] - mg - xh * mgx);
      }
    }
    commit(op, dx, DX);
    const DG = outF(op, dgamma, accumulate), DB = outF(op, dbeta, accumulate);
    if (accumulate) {
      for (let j = 0; j < h; j++) {
        DG[j] += dg[j];
        DB[j] += db[j];
      }
    } else {
      DG.set(dg);
      DB.set(db);
    }
  }

  biasGeluFwd(x: Tensor, bias: Tensor, y: Tensor): void {
    const op = "biasGeluFwd";
    checkFloat(op, x, "x");
    const f = lastDim(op, x, "x");
    assertShape(op, bias, [f], "bias");
    assertShape(op, y, x.shape, "y");
    const X = readF(op, x), Bs = readF(op, bias, "bias"), Y = outF(op, y, false);
    const f64 = all64(x, bias, y);
    if (
      !f64 && f % 4 === 0 && X.length >= SIMD_MIN && X instanceof Float32Array && Bs instanceof Float32Array
    ) {
      this.simd.geluFwd(X, Bs, Y as Float32Array);
      commit(op, y, Y);
      return;
    }
    for (let o = 0; o < X.length; o += f) {
      for (let j = 0; j < f; j++) {
        const v = f64 ? X[o + j] + Bs[j] : Math.fround(X[o + j] + Bs[j]);
        Y[o + j] = geluTanh(v);
      }
    }
    commit(op, y, Y);
  }

  biasGeluBwd(dy: Tensor, x: Tensor, bias: Tensor, dx: Tensor): void {
    const op = "biasGeluBwd";
    checkFloat(op, x, "x");
    const f = lastDim(op, x, "x");
    assertShape(op, bias, [f], "bias");
    assertShape(op, dy, x.shape, "dy");
    assertShape(op, dx, x.shape, "dx");
    const X = readF(op, x), Bs = readF(op, bias, "bias"), DY = readF(op, dy, "dy"), DX = outF(op, dx, false);
    const f64 = all64(dy, x, bias, dx);
    if (
      !f64 && f % 4 === 0 && X.length >= SIMD_MIN && X instanceof Float32Array &&
      Bs instanceof Float32Array &&
      DY instanceof Float32Array
    ) {
      this.simd.geluBwd(DY, X, Bs, DX as Float32Array);
      commit(op, dx, DX);
      return;
    }
    for (let o = 0; o < X.length; o += f) {
      for (let j = 0; j < f; j++) {
        const v = f64 ? X[o + j] + Bs[j] : Math.fround(X[o + j] + Bs[j]);
        DX[o + j] = DY[o + j] * (f64 ? geluTanhGrad(v) : Math.fround(geluTanhGrad(v)));
      }
    }
    commit(op, dx, DX);
  }

  activationFwd(kind: Activation, x: Tensor, y: Tensor): void {
    const op = `activationFwd(${kind})`;
    checkFloat(op, x, "x");
    assertShape(op, y, x.shape, "y");
    const X = readF(op, x, "x"), Y = outF(op, y, false, "y");
    const f = activationFn(op, kind, false);
    // f64 in, rounded once to the output (f32 storage rounds on write).
    for (let i = 0; i < X.length; i++) Y[i] = f(X[i]);
    commit(op, y, Y);
  }

  activationBwd(kind: Activation, dy: Tensor, x: Tensor, dx: Tensor): void {
    const op = `activationBwd(${kind})`;
    checkFloat(op, x, "x");
    assertShape(op, dy, x.shape, "dy");
    assertShape(op, dx, x.shape, "dx");
    const X = readF(op, x, "x"), DY = readF(op, dy, "dy"), DX = outF(op, dx, false, "dx");
    const g = activationFn(op, kind, true);
    const f64 = all64(dy, x, dx);
    for (let i = 0; i < X.length; i++) DX[i] = DY[i] * (f64 ? g(X[i]) : Math.fround(g(X[i])));
    commit(op, dx, DX);
  }

  softmaxFwd(scores: Tensor, scale: number, mask: SoftmaxMask, probs: Tensor): void {
    const op = "softmaxFwd";
    checkFloat(op, scores, "scores");
    if (scores.rank !== 4) {
      throw new Error(`${op}: scores must be [b, np, sq, sk], found ${shapeStr(scores.shape)}`);
    }
    const [b, np, sq, sk] = scores.shape;
    assertShape(op, probs, scores.shape, "probs");
    let pm: Uint8Array | null = null;
    if (mask.kind === "padding") {
      assertDType(op, mask.mask, "u8", "mask");
      assertShape(op, mask.mask, [b, sq, sk], "mask");
      pm = rawView(op, mask.mask) as Uint8Array;
    }
    const causal = mask.kind === "causal";
    const S = readF(op, scores, "scores"), P = outF(op, probs, false);
    const f64 = all64(scores, probs);
    const sc = f64 ? scale : Math.fround(scale);
    // f32 rows of a multiple of 4 are staged in the SIMD module's memory for the exp pass.
    const simd = !f64 && sk % 4 === 0 && sk >= 16;
    const row = simd ? this.simd.staging(sk) : f64 ? new Float64Array(sk) : new Float32Array(sk);
    const cut = f64 ? -746 : -110;
    for (let bi = 0; bi < b; bi++) {
      for (let hi = 0; hi < np; hi++) {
        for (let i = 0; i < sq; i++) {
          const o = ((bi * np + hi) * sq + i) * sk;
          const mo = (bi * sq + i) * sk;
          // Causal: keys j > i + (sk - sq) are masked, i.e. only j < end are scored.
          const end = causal ? Math.min(sk, Math.max(0, i + (sk - sq) + 1)) : sk;
          let mx = -Infinity;
          for (let j = 0; j < end; j++) {
            row[j] = pm !== null && pm[mo + j] !== 0 ? -10000 : sc * S[o + j];
            if (row[j] > mx) mx = row[j];
          }
          if (end < sk) {
            row.fill(-10000, end, sk);
            if (mx < -10000) mx = -10000;
          }
          let sum = 0;
          if (simd) sum = this.simd.softmaxExp(sk, mx);
          else {
            for (let j = 0; j < sk; j++) {
              // Math.exp takes a slow path far below its underflow; expf is already 0 there.
              const d = row[j] - mx;
              row[j] = d < cut ? 0 : Math.exp(d);
              sum += row[j];
            }
          }
          if (!f64) sum = Math.fround(sum);
          for (let j = 0; j < sk; j++) P[o + j] = row[j] / sum;
        }
      }
    }
    commit(op, probs, P);
  }

  softmaxBwd(dprobs: Tensor, probs: Tensor, scale: number, dscores: Tensor): void {
    const op = "softmaxBwd";
    checkFloat(op, probs, "probs");
    const sk = lastDim(op, probs, "probs");
    assertShape(op, dprobs, probs.shape, "dprobs");
    assertShape(op, dscores, probs.shape, "dscores");
    const DP = readF(op, dprobs, "dprobs"), P = readF(op, probs, "probs"), DS = outF(op, dscores, false);
    const f64 = all64(dprobs, probs, dscores);
    const sc = f64 ? scale : Math.fround(scale);
    for (let o = 0; o < P.length; o += sk) {
      let s = 0;
      for (let j = 0; j < sk; j++) s += DP[o + j] * P[o + j];
      if (!f64) s = Math.fround(s);
      for (let j = 0; j < sk; j++) DS[o + j] = sc * P[o + j] * (DP[o + j] - s);
    }
    commit(op, dscores, DS);
  }

  /** The SIMD dropout applies: f32 data, a whole number of 4-lane groups, one contiguous counter range. */
  private simdDropout(f64: boolean, addr: RngAddress, rows: number, X: F, Y: F): boolean {
    return !f64 && (addr.rowStride === addr.rowLen || rows === 1) && X instanceof Float32Array &&
      Y instanceof Float32Array && X.length % 4 === 0 && X.length >= SIMD_MIN;
  }

  private key(addr: RngAddress) {
    return { seed: addr.seed, stream: addr.stream, iteration: addr.iteration, keyHi: KEY_HI };
  }

  normalInit(out: Tensor, std: number, addr: RngAddress): void {
    const op = "normalInit";
    checkFloat(op, out, "out");
    if (out.size === 0) return;
    checkAddr(op, out.size, addr);
    const g = new PhiloxStream(addr.seed, addr.stream, addr.iteration);
    const d = rawView(op, out);
    const { base, rowStride, rowLen } = addr;
    for (let i = 0, r = 0; r < out.size / rowLen; r++) {
      const e0 = base + r * rowStride;
      for (let c = 0; c < rowLen; c++, i++) this.setNum(out.dtype, d, i, std * g.normal(e0 + c));
    }
  }

  dropout(x: Tensor, p: number, addr: RngAddress, y: Tensor): void {
    const op = "dropout";
    checkFloat(op, x, "x");
    checkFloat(op, y, "y");
    assertShape(op, y, x.shape, "y");
    checkP(op, p);
    const rows = checkAddr(op, x.size, addr);
    if (p === 0) {
      this.copy(x, y);
      return;
    }
    const X = readF(op, x), Y = outF(op, y, false);
    const f64 = all64(x, y);
    const s = f64 ? 1 / (1 - p) : Math.fround(1 / (1 - Math.fround(p)));
    if (this.simdDropout(f64, addr, rows, X, Y)) {
      this.simd.dropout(
        X as Float32Array,
        Y as Float32Array,
        X.length,
        addr.base,
        this.key(addr),
        keepThr(p),
        s,
        null,
      );
      commit(op, y, Y);
      return;
    }
    const keep = new Uint8Array(x.size);
    dropoutMask(addr, p, rows, keep, this.philox);
    for (let i = 0; i < X.length; i++) Y[i] = keep[i] ? X[i] * s : 0;
    commit(op, y, Y);
  }

  biasDropoutAdd(
    x: Tensor,
    bias: Tensor | null,
    residual: Tensor,
    p: number,
    addr: RngAddress,
    out: Tensor,
  ): void {
    const op = "biasDropoutAdd";
    checkFloat(op, x, "x");
    const h = lastDim(op, x, "x");
    if (bias) assertShape(op, bias, [h], "bias");
    assertShape(op, residual, x.shape, "residual");
    assertShape(op, out, x.shape, "out");
    checkP(op, p);
    const rows = checkAddr(op, x.size, addr);
    const X = readF(op, x), Bs = bias ? readF(op, bias, "bias") : null, Rs = readF(op, residual, "residual");
    const O = outF(op, out, false);
    const f64 = all64(x, bias, residual, out);
    const s = f64 ? 1 / (1 - p) : Math.fround(1 / (1 - Math.fround(p)));
    if (
      p > 0 && h % 4 === 0 && (Bs === null || Bs instanceof Float32Array) && Rs instanceof Float32Array &&
      this.simdDropout(f64, addr, rows, X, O)
    ) {
      this.simd.dropout(
        X as Float32Array,
        O as Float32Array,
        X.length,
        addr.base,
        this.key(addr),
        keepThr(p),
        s,
        {
          bias: Bs as Float32Array | null,
          r: Rs,
          f: h,
        },
      );
      commit(op, out, O);
      return;
    }
    let keep: Uint8Array | null = null;
    if (p > 0) {
      keep = new Uint8Array(x.size);
      dropoutMask(addr, p, rows, keep, this.philox);
    }
    for (let o = 0; o < X.length; o += h) {
      for (let j = 0; j < h; j++) {
        const i = o + j;
        let v = Bs ? X[i] + Bs[j] : X[i];
        if (!f64) v = Math.fround(v);
        if (keep) v = keep[i] ? (f64 ? v * s : Math.fround(v * s)) : 0;
        O[i] = Rs[i] + v;
      }
    }
    commit(op, out, O);
  }

  embeddingFwd(ids: Tensor, table: Tensor, out: Tensor, vocabStart: number): void {
    const op = "embeddingFwd";
    checkFloat(op, table, "table");
    if (table.rank !== 2) throw new Error(`${op}: table must be [rows, h], found ${shapeStr(table.shape)}`);
    const [vr, h] = table.shape;
    if (out.size !== ids.size * h) {
      throw new Error(
        `${op}: out ${shapeStr(out.shape)} must hold ids ${shapeStr(ids.shape)} x ${h} elements`,
      );
    }
    assertDType(op, out, table.dtype, "out");
    const I = readInt(op, ids, "ids");
    const T = rawView(op, table) as Float32Array, O = rawView(op, out) as Float32Array;
    for (let i = 0; i < I.length; i++) {
      const r = I[i] - vocabStart;
      if (r >= 0 && r < vr) O.set(T.subarray(r * h, r * h + h), i * h);
      else O.fill(0, i * h, i * h + h);
    }
  }

  embeddingBwd(ids: Tensor, dout: Tensor, dtable: Tensor, vocabStart: number): void {
    const op = "embeddingBwd";
    checkFloat(op, dout, "dout");
    assertDType(op, dtable, STATS, "dtable");
    if (dtable.rank !== 2) {
      throw new Error(`${op}: dtable must be [rows, h], found ${shapeStr(dtable.shape)}`);
    }
    const [vr, h] = dtable.shape;
    if (dout.size !== ids.size * h) {
      throw new Error(
        `${op}: dout ${shapeStr(dout.shape)} must hold ids ${shapeStr(ids.shape)} x ${h} elements`,
      );
    }
    const I = readInt(op, ids, "ids"), D = readF(op, dout, "dout"), T = rawView(op, dtable) as F;
    for (let i = 0; i < I.length; i++) {
      const r = I[i] - vocabStart;
      if (r < 0 || r >= vr) continue;
      const to = r * h, doff = i * h;
      for (let j = 0; j < h; j++) T[to + j] += D[doff + j];
    }
  }

  // ---- cross-entropy --------------------------------------------------------------------------

  private ceRows(op: string, logits: Tensor): [number, number] {
    checkFloat(op, logits, "logits");
    const v = lastDim(op, logits, "logits");
    return [v === 0 ? 0 : logits.size / v, v];
  }

  private statVec(op: string, t: Tensor, rows: number, what: string): void {
    assertDType(op, t, STATS, what);
    if (t.size !== rows) throw new Error(`${op}: ${what} ${shapeStr(t.shape)} must have ${rows} elements`);
  }

  private targetsVec(op: string, targets: Tensor, rows: number): void {
    if (targets.size !== rows) {
      throw new Error(
        `${op}: targets ${shapeStr(targets.shape)} must have ${rows} elements (rows of logits)`,
      );
    }
  }

  ceStats(logits: Tensor, targets: Tensor, vocabStart: number, rowMax: Tensor, targetLogit: Tensor): void {
    const op = "ceStats";
    const [rows, V] = this.ceRows(op, logits);
    this.targetsVec(op, targets, rows);
    this.statVec(op, rowMax, rows, "rowMax");
    this.statVec(op, targetLogit, rows, "targetLogit");
    const L = readF(op, logits, "logits"), Tg = readInt(op, targets, "targets");
    const MX = rawView(op, rowMax) as F, TL = rawView(op, targetLogit) as F;
    const V4 = L instanceof Float32Array && V >= SIMD_MIN ? V & ~3 : 0;
    for (let r = 0; r < rows; r++) {
      const o = r * V;
      let mx = V4 > 0 ? this.simd.rowMax(L as Float32Array, o, V4, -Infinity) : -Infinity;
      for (let j = V4; j < V; j++) if (L[o + j] > mx) mx = L[o + j];
      MX[r] = mx;
      const t = Tg[r] - vocabStart;
      TL[r] = t >= 0 && t < V ? L[o + t] : 0;
    }
  }

  ceSumExp(logits: Tensor, globalMax: Tensor, sumExp: Tensor): void {
    const op = "ceSumExp";
    const [rows, V] = this.ceRows(op, logits);
    this.statVec(op, globalMax, rows, "globalMax");
    this.statVec(op, sumExp, rows, "sumExp");
    const L = readF(op, logits, "logits"), GM = readF(op, globalMax), SE = rawView(op, sumExp) as F;
    const f64 = all64(logits, sumExp);
    const simdOk = !f64 && L instanceof Float32Array && V >= SIMD_MIN;
    for (let r = 0; r < rows; r++) {
      const o = r * V, mx = GM[r];
      let s = 0;
      if (f64) { for (let j = 0; j < V; j++) s += Math.exp(L[o + j] - mx); }
      else {
        // f32 terms summed in f64 (SIMD: four lanes, then the tail), rounded once on store: an f32
        // running sum over a 50k vocabulary row is ~1e-5 off for peaked logits.
        const j0 = simdOk && isF32(mx) ? V & ~3 : 0;
        if (j0 > 0) s = this.simd.sumExp(L as Float32Array, o, j0, mx);
        for (let j = j0; j < V; j++) s += Math.fround(Math.exp(Math.fround(L[o + j] - mx)));
      }
      SE[r] = s;
    }
  }

  ceLoss(globalMax: Tensor, sumExp: Tensor, targetLogit: Tensor, loss: Tensor): void {
    const op = "ceLoss";
    const rows = loss.size;
    this.statVec(op, globalMax, rows, "globalMax");
    this.statVec(op, sumExp, rows, "sumExp");
    this.statVec(op, targetLogit, rows, "targetLogit");
    this.statVec(op, loss, rows, "loss");
    const GM = readF(op, globalMax), SE = readF(op, sumExp), TL = readF(op, targetLogit);
    const LS = rawView(op, loss) as F;
    for (let r = 0; r < rows; r++) LS[r] = Math.log(SE[r]) + GM[r] - TL[r];
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
    const op = "ceBwd";
    const [rows, V] = this.ceRows(op, logits);
    this.targetsVec(op, targets, rows);
    this.statVec(op, globalMax, rows, "globalMax");
    this.statVec(op, sumExp, rows, "sumExp");
    this.statVec(op, dloss, rows, "dloss");
    assertShape(op, dlogits, logits.shape, "dlogits");
    const L = readF(op, logits, "logits"), Tg = readInt(op, targets, "targets");
    const GM = readF(op, globalMax), SE = readF(op, sumExp), DL = readF(op, dloss);
    const O = outF(op, dlogits, false);
    const f64 = all64(logits, dlogits);
    const simdOk = !f64 && L instanceof Float32Array && O instanceof Float32Array && V >= SIMD_MIN;
    for (let r = 0; r < rows; r++) {
      const o = r * V, mx = GM[r], inv = 1 / SE[r], d = DL[r];
      // The target's gradient is computed before the row is written, so dlogits may alias logits.
      const t = Tg[r] - vocabStart;
      const hit = t >= 0 && t < V;
      const gt = !hit ? 0 : f64 ? d * (Math.exp(L[o + t] - mx) * inv - 1) : d *
        Math.fround(
          Math.fround(Math.fround(Math.exp(Math.fround(L[o + t] - mx))) * Math.fround(inv)) - 1,
        );
      if (f64) { for (let j = 0; j < V; j++) O[o + j] = d * (Math.exp(L[o + j] - mx) * inv); }
      else {
        const invf = Math.fround(inv);
        const j0 = simdOk && isF32(mx) && isF32(d) ? V & ~3 : 0;
        if (j0 > 0) this.simd.ceGrad(L as Float32Array, o, j0, mx, invf, d, O as Float32Array, o);
        for (let j = j0; j < V; j++) {
          O[o + j] = d * Math.fround(Math.fround(Math.exp(Math.fround(L[o + j] - mx))) * invf);
        }
      }
      if (hit) O[o + t] = gt;
    }
    commit(op, dlogits, O);
  }

  // ---- optimizer and reductions ---------------------------------------------------------------

  adamStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, args: AdamArgs): void {
    const op = "adamStep";
    for (const [t, nm] of [[param, "param"], [grad, "grad"], [m, "m"], [v, "v"]] as const) {
      assertDType(op, t, STATS, nm);
      if (t !== param) assertShape(op, t, param.shape, nm);
    }
    const P = rawView(op, param) as F,
      G = rawView(op, grad) as F,
      M = rawView(op, m) as F,
      Vv = rawView(op, v) as F;
    const f = Math.fround;
    const { step } = args;
    if (!Number.isInteger(step) || step < 1) {
      throw new Error(`${op}: step must be an integer >= 1, found ${step}`);
    }
    const b1 = f(args.beta1),
      b2 = f(args.beta2),
      lr = f(args.lr),
      eps = f(args.eps),
      wd = f(args.weightDecay);
    const ob1 = f(1 - b1), ob2 = f(1 - b2);
    const bc1 = f(1 - f(Math.pow(b1, step))), bc2 = f(1 - f(Math.pow(b2, step)));
    let i0 = 0;
    if (
      P instanceof Float32Array && G instanceof Float32Array && M instanceof Float32Array &&
      Vv instanceof Float32Array && P.length >= SIMD_MIN
    ) {
      // SIMD: the same f32 operations four lanes at a time; the tail below.
      i0 = P.length & ~3;
      this.simd.adam(P, G, M, Vv, i0, { b1, b2, ob1, ob2, bc1, bc2, eps, wd, lr });
    }
    for (let i = i0; i < P.length; i++) {
      const g = G[i];
      const mi = f(f(b1 * M[i]) + f(ob1 * g));
      const vi = f(f(b2 * Vv[i]) + f(f(ob2 * g) * g));
      M[i] = mi;
      Vv[i] = vi;
      const mhat = f(mi / bc1), vhat = f(vi / bc2);
      const upd = f(f(mhat / f(f(Math.sqrt(vhat)) + eps)) + f(wd * P[i]));
      P[i] = f(P[i] - f(lr * upd));
    }
  }

  sgdStep(param: Tensor, grad: Tensor, momentumBuf: Tensor, args: SgdArgs): void {
    const op = "sgdStep";
    for (const [t, nm] of [[param, "param"], [grad, "grad"], [momentumBuf, "momentumBuf"]] as const) {
      assertDType(op, t, STATS, nm);
      if (t !== param) assertShape(op, t, param.shape, nm);
    }
    const P = rawView(op, param) as F, G = rawView(op, grad) as F, B = rawView(op, momentumBuf) as F;
    const f = Math.fround;
    const lr = f(args.lr), mo = f(args.momentum), wd = f(args.weightDecay);
    for (let i = 0; i < P.length; i++) {
      const g = wd !== 0 ? f(G[i] + f(wd * P[i])) : G[i];
      const b = args.firstStep ? g : f(f(mo * B[i]) + g);
      B[i] = b;
      P[i] = f(P[i] - f(lr * b));
    }
  }

  sumSquares(x: Tensor, out: Tensor, accumulate: boolean): void {
    const op = "sumSquares";
    checkFloat(op, x, "x");
    const X = readF(op, x), O = f64Scalar(op, out);
    // In order within each REDUCE_CHUNK chunk, chunk sums in order: one f64 chain per chunk keeps the
    // rounding at ~chunk * 2^-53 whatever the tensor's length (an f32 running sum loses the small
    // squares of a long tensor: ~10% of a 38.6M-element embedding's sum).
    let s = 0;
    for (let c = 0; c < X.length; c += REDUCE_CHUNK) {
      const end = Math.min(X.length, c + REDUCE_CHUNK);
      let p = 0;
      for (let i = c; i < end; i++) p += X[i] * X[i];
      s += p;
    }
    O[0] = accumulate ? O[0] + s : s;
  }

  countZeros(x: Tensor, out: Tensor, accumulate: boolean): void {
    const op = "countZeros";
    checkFloat(op, x, "x");
    const X = readF(op, x), O = f64Scalar(op, out);
    let z = 0;
    for (let i = 0; i < X.length; i++) if (X[i] === 0) z++;
    O[0] = accumulate ? O[0] + z : z;
  }

  nonFinite(x: Tensor, flag: Tensor): void {
    const op = "nonFinite";
    checkFloat(op, x, "x");
    assertDType(op, flag, "f32", "flag");
    if (flag.size !== 1) throw new Error(`${op}: flag must have 1 element, found ${shapeStr(flag.shape)}`);
    const X = readF(op, x), Fl = rawView(op, flag) as Float32Array;
    let bad = 0;
    // x - x is NaN exactly for inf and NaN.
    for (let i = 0; i < X.length; i++) {
      if (X[i] - X[i] !== 0) {
        bad = 1;
        break;
      }
    }
    if (bad === 1 && !(Fl[0] >= 1)) Fl[0] = 1;
  }
}

export function createCpuBackend(opts?: CpuBackendOptions): CpuBackend {
  return new CpuBackend(opts);
}
