// cuBLAS bindings: handle, stream, math mode, GemmEx and GemmStridedBatchedEx (column-major, as
// cuBLAS defines them; the row-major mapping lives in src/backend/cuda). alpha/beta are host
// pointers (the default pointer mode) to f32 values.

import { cString, type DiscoverEnv, openLibrary, statusError } from "./discover.ts";

const GEMM_PARAMS = [
  "pointer", // handle
  "i32", // transa
  "i32", // transb
  "i32", // m
  "i32", // n
  "i32", // k
  "buffer", // alpha
  "u64", // A
  "i32", // Atype
  "i32", // lda
  "u64", // B
  "i32", // Btype
  "i32", // ldb
  "buffer", // beta
  "u64", // C
  "i32", // Ctype
  "i32", // ldc
  "i32", // computeType
  "i32", // algo
] as const;

const GEMM_BATCHED_PARAMS = [
  "pointer", // handle
  "i32", // transa
  "i32", // transb
  "i32", // m
  "i32", // n
  "i32", // k
  "buffer", // alpha
  "u64", // A
  "i32", // Atype
  "i32", // lda
  "i64", // strideA
  "u64", // B
  "i32", // Btype
  "i32", // ldb
  "i64", // strideB
  "buffer", // beta
  "u64", // C
  "i32", // Ctype
  "i32", // ldc
  "i64", // strideC
  "i32", // batchCount
  "i32", // computeType
  "i32", // algo
] as const;

export const SYMBOLS = {
  cublasCreate_v2: { parameters: ["buffer"], result: "i32" },
  cublasDestroy_v2: { parameters: ["pointer"], result: "i32" },
  cublasGetVersion_v2: { parameters: ["pointer", "buffer"], result: "i32" },
  cublasSetStream_v2: { parameters: ["pointer", "pointer"], result: "i32" },
  cublasSetMathMode: { parameters: ["pointer", "i32"], result: "i32" },
  cublasSetWorkspace_v2: { parameters: ["pointer", "u64", "usize"], result: "i32" },
  cublasGetStatusString: { parameters: ["i32"], result: "pointer" },
  cublasGemmEx: { parameters: GEMM_PARAMS, result: "i32" },
  cublasGemmStridedBatchedEx: { parameters: GEMM_BATCHED_PARAMS, result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

export const CUBLAS_OP_N = 0;
export const CUBLAS_OP_T = 1;
/** cublasMath_t: DEFAULT keeps f32 GEMMs in full f32 (no TF32). */
export const CUBLAS_DEFAULT_MATH = 0;
export const CUBLAS_TF32_TENSOR_OP_MATH = 3;
/** Math-mode flag: no reduced-precision (f16/bf16) reductions in split-K GEMMs, so half GEMMs keep
 *  f32 partial sums as the CPU reference does. OR-ed with the mode. */
export const CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16;
/** cudaDataType_t (library_types.h). */
export const CUDA_R_32F = 0;
export const CUDA_R_64F = 1;
export const CUDA_R_16F = 2;
export const CUDA_R_16BF = 14;
/** cublasComputeType_t. */
export const CUBLAS_COMPUTE_32F = 68;
export const CUBLAS_COMPUTE_32F_PEDANTIC = 69;
export const CUBLAS_COMPUTE_64F = 70;
export const CUBLAS_GEMM_DEFAULT = -1;

export type CublasHandle = Deno.PointerValue;

export class Cublas {
  readonly sym: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
  private readonly out = new BigUint64Array(1);
  private readonly i32out = new Int32Array(1);

  constructor(private readonly lib: Deno.DynamicLibrary<typeof SYMBOLS>, readonly path: string) {
    this.sym = lib.symbols;
  }

  static open(env?: DiscoverEnv): Cublas {
    const { lib, path } = openLibrary("cublas", SYMBOLS, env);
    return new Cublas(lib, path);
  }

  statusString(code: number): string {
    return cString(this.sym.cublasGetStatusString(code), "unknown cuBLAS status");
  }
  check(call: string, code: number): void {
    if (code !== 0) throw statusError(call, this.statusString(code), code);
  }
  create(): CublasHandle {
    this.check("cublasCreate", this.sym.cublasCreate_v2(this.out));
    return Deno.UnsafePointer.create(this.out[0]);
  }
  destroy(h: CublasHandle): void {
    this.check("cublasDestroy", this.sym.cublasDestroy_v2(h));
  }
  version(h: CublasHandle): number {
    this.check("cublasGetVersion", this.sym.cublasGetVersion_v2(h, this.i32out));
    return this.i32out[0];
  }
  setStream(h: CublasHandle, stream: Deno.PointerValue): void {
    this.check("cublasSetStream", this.sym.cublasSetStream_v2(h, stream));
  }
  setMathMode(h: CublasHandle, mode: number): void {
    this.check("cublasSetMathMode", this.sym.cublasSetMathMode(h, mode));
  }
  setWorkspace(h: CublasHandle, ptr: bigint, bytes: number): void {
    this.check("cublasSetWorkspace", this.sym.cublasSetWorkspace_v2(h, ptr, BigInt(bytes)));
  }
  close(): void {
    this.lib.close();
  }
}
