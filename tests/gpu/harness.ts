// Shared GPU-test harness: probes CUDA once per file, runs an op on the CUDA backend and on the
// CPU reference with identical inputs, poisons CUDA outputs with NaN first (so every element must
// be written), and compares with a dtype-dependent relative bound. Results feed a summary table.

import type { Backend } from "../../src/backend/backend.ts";
import { createCpuBackend } from "../../src/backend/cpu/cpu_backend.ts";
import { createCudaBackend, type CudaBackend, probeCuda } from "../../src/backend/cuda/cuda_backend.ts";
import {
  bf16BitsToF32,
  type DType,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  isFloat,
} from "../../src/tensor/dtype.ts";
import type { Shape, Tensor } from "../../src/tensor/tensor.ts";
import { numel } from "../../src/tensor/tensor.ts";
import { buildEmulator } from "./emulator/build.ts";

/**
 * Error bound, as max|cuda - cpu| / max|cpu| over a tensor.
 * - f32: 1e-5. Both sides compute in f32; only summation order (block reductions vs sequential
 *   loops, cuBLAS vs CPU GEMM) and FMA contraction differ, a few ulps of 2^-24 times sqrt(n).
 * - f16: outputs are stored with 11 significant bits. The f32 values before rounding agree to
 *   ~1e-6, which can still move a result across a rounding boundary: one half-ulp step is at most
 *   2^-11 ~ 4.9e-4 of the largest element; allow 2 steps (9.8e-4).
 * - bf16: same argument with 8 significant bits: 2 x 2^-8 ~ 7.8e-3.
 */
export const BOUND: Record<string, number> = { f32: 1e-5, f16: 9.8e-4, bf16: 7.8e-3, i32: 0, i64: 0, u8: 0 };

export interface Row {
  op: string;
  dtype: string;
  relErr: number;
  bound: number;
  ok: boolean;
}

export interface Ctx {
  /** The CUDA backend (a second CPU backend in a dry run). */
  cuda: Backend & Partial<Pick<CudaBackend, "memoryStats">>;
  cpu: Backend;
  rows: Row[];
}

/** Creates both backends, or prints the one skip line and returns null. */
export async function setup(announceSkip = true): Promise<Ctx | null> {
  // MEGATRON_DENO_GPU_TEST_DRYRUN=1 runs the whole suite with a second CPU backend in place of
  // CUDA: it checks the test code itself (shapes, dtypes, argument rules) on a machine without GPU.
  if (Deno.env.get("MEGATRON_DENO_GPU_TEST_DRYRUN") === "1") {
    console.log("test:gpu: DRY RUN — comparing the CPU backend with itself (no CUDA involved)");
    return { cuda: createCpuBackend({ log: () => {} }), cpu: createCpuBackend({ log: () => {} }), rows: [] };
  }
  // MEGATRON_DENO_GPU_TEST_EMULATOR=1 runs the suite on the CPU emulator of the CUDA stack
  // (tests/gpu/emulator: the real kernels, fibers for threads): slow, but checks kernel logic.
  if (Deno.env.get("MEGATRON_DENO_GPU_TEST_EMULATOR") === "1") {
    const built = await buildEmulator();
    if ("skip" in built) throw new Error(`MEGATRON_DENO_GPU_TEST_EMULATOR: ${built.skip}`);
    const lib = built.path;
    const vars: Record<string, string> = {
      MEGATRON_DENO_CUDART: lib,
      MEGATRON_DENO_CUDA: lib,
      MEGATRON_DENO_CUBLAS: lib,
    };
    const env = { get: (n: string) => vars[n], sitePackages: [], pythonSitePackages: () => [] };
    const cuda = await createCudaBackend({ env });
    console.log(`test:gpu: EMULATED — ${cuda.description}`);
    return { cuda, cpu: createCpuBackend({ log: () => {} }), rows: [] };
  }
  const p = probeCuda();
  if (!p.ok) {
    if (announceSkip) console.log(`test:gpu: skipped — no CUDA: ${p.reason}`);
    return null;
  }
  const cuda = await createCudaBackend();
  const cpu = createCpuBackend({ log: () => {} });
  console.log(`test:gpu: ${cuda.description} vs ${cpu.description}`);
  return { cuda, cpu, rows: [] };
}

/** Deterministic inputs: a small LCG so both backends see the same numbers. */
export class Rand {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  next(): number {
    this.s = (Math.imul(this.s, 1664525) + 1013904223) >>> 0;
    return this.s / 4294967296;
  }
  array(n: number, lo = -1, hi = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * this.next();
    return a;
  }
  ints(n: number, lo: number, hi: number): number[] {
    return Array.from({ length: n }, () => lo + Math.floor((hi - lo) * this.next()));
  }
}

/** Tensor factory for one backend: inputs from host data, poisoned outputs, freed at the end. */
export class Maker {
  readonly made: Tensor[] = [];
  constructor(readonly be: Backend, private readonly poison: boolean) {}
  inp(dtype: DType, shape: Shape, data: ArrayLike<number>): Tensor {
    if (data.length !== numel(shape)) throw new Error(`harness: ${data.length} values for shape [${shape}]`);
    const t = this.be.fromHost(dtype, shape, data);
    this.made.push(t);
    return t;
  }
  out(dtype: DType, shape: Shape): Tensor {
    // The kernels have no f64 fill: f64 outputs (the reductions' accumulators) are poisoned by upload.
    const t = this.poison && dtype === "f64"
      ? this.be.fromHost(dtype, shape, new Float64Array(numel(shape)).fill(NaN))
      : this.be.zeros(dtype, shape);
    if (this.poison && isFloat(dtype) && dtype !== "f64") this.be.fill(t, NaN);
    this.made.push(t);
    return t;
  }
  freeAll(): void {
    for (const t of this.made) this.be.free(t);
    this.made.length = 0;
  }
}

export function relErr(got: Float64Array, want: Float64Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    const w = want[i], g = got[i];
    if (Number.isNaN(w) && Number.isNaN(g)) continue;
    if (!Number.isFinite(g) || !Number.isFinite(w)) {
      if (g !== w) return Infinity; // unwritten (NaN poison) or wrongly non-finite
      continue;
    }
    num = Math.max(num, Math.abs(g - w));
    den = Math.max(den, Math.abs(w));
  }
  return den === 0 ? num : num / den;
}

/**
 * Runs `body` on both backends with the same seed and compares the returned tensors pairwise.
 * `body` must derive all inputs from `r` so both runs see identical data.
 */
export function compare(
  ctx: Ctx,
  op: string,
  dtype: string,
  seed: number,
  body: (m: Maker, r: Rand) => Tensor[],
  bound?: number,
): number {
  // Default: the bound of the output dtype, the last dtype named in the label ("i32/bf16" -> bf16).
  bound ??= BOUND[dtype.split(/[^a-z0-9]+/).filter((s) => s in BOUND).pop() ?? "f32"];
  const mc = new Maker(ctx.cuda, true), mr = new Maker(ctx.cpu, false);
  try {
    const outC = body(mc, new Rand(seed));
    const outR = body(mr, new Rand(seed));
    let worst = 0;
    for (let i = 0; i < outR.length; i++) {
      const e = relErr(ctx.cuda.toF64(outC[i]), ctx.cpu.toF64(outR[i]));
      worst = Math.max(worst, e);
    }
    const ok = worst <= bound!;
    ctx.rows.push({ op, dtype, relErr: worst, bound: bound!, ok });
    if (!ok) throw new Error(`${op} (${dtype}): relative error ${worst.toExponential(2)} exceeds ${bound}`);
    return worst;
  } finally {
    mc.freeAll();
    mr.freeAll();
  }
}

/** Host values as `dtype` stores them (f32, then f16/bf16 RNE), in f64: a reference's inputs. */
export function roundTo(dtype: DType, v: ArrayLike<number>): Float64Array {
  const out = Float64Array.from(v, Math.fround);
  if (dtype === "bf16") {
    for (let i = 0; i < out.length; i++) {
      out[i] = bf16BitsToF32(f32ToBf16Bits(out[i]));
    }
  }
  if (dtype === "f16") { for (let i = 0; i < out.length; i++) out[i] = f16BitsToF32(f32ToF16Bits(out[i])); }
  return out;
}

/**
 * Like compare, but against an f64 reference computed in JS from the same random stream instead
 * of the CPU backend: for sums, where the CPU's sequential f32 order would eat the margin.
 * `ref` must draw from `r` in the order `body` does.
 */
export function compareToF64(
  ctx: Ctx,
  op: string,
  dtype: string,
  seed: number,
  body: (m: Maker, r: Rand) => Tensor[],
  ref: (r: Rand) => Float64Array[],
  bound: number,
): number {
  const mc = new Maker(ctx.cuda, true);
  try {
    const outC = body(mc, new Rand(seed));
    const want = ref(new Rand(seed));
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, relErr(ctx.cuda.toF64(outC[i]), want[i]));
    const ok = worst <= bound;
    ctx.rows.push({ op: `${op} vs f64`, dtype, relErr: worst, bound, ok });
    if (!ok) {
      throw new Error(`${op} (${dtype}) vs f64: relative error ${worst.toExponential(2)} exceeds ${bound}`);
    }
    return worst;
  } finally {
    mc.freeAll();
  }
}

export function printTable(title: string, rows: Row[]): void {
  const lines = [
    `${title}`,
    `${"op".padEnd(34)} ${"dtype".padEnd(14)} ${"rel.err".padStart(9)} ${"bound".padStart(8)}  ok`,
  ];
  for (const r of rows) {
    lines.push(
      `${r.op.padEnd(34)} ${r.dtype.padEnd(14)} ${r.relErr.toExponential(2).padStart(9)} ${
        r.bound.toExponential(1).padStart(8)
      }  ${r.ok ? "yes" : "NO"}`,
    );
  }
  console.log(lines.join("\n"));
}
