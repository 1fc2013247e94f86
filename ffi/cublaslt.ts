// cuBLASLt bindings: handle, matmul descriptors and layouts, and cublasLtMatmul (which takes the
// epilogue, e.g. bias or GeLU+bias, as a descriptor attribute). Enum values from cublasLt.h.

import { cString, type DiscoverEnv, openLibrary, statusError } from "./discover.ts";

export const SYMBOLS = {
  cublasLtCreate: { parameters: ["buffer"], result: "i32" },
  cublasLtDestroy: { parameters: ["pointer"], result: "i32" },
  cublasLtGetVersion: { parameters: [], result: "usize" },
  cublasLtGetStatusString: { parameters: ["i32"], result: "pointer" },
  cublasLtMatmulDescCreate: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  cublasLtMatmulDescDestroy: { parameters: ["pointer"], result: "i32" },
  cublasLtMatmulDescSetAttribute: { parameters: ["pointer", "i32", "buffer", "usize"], result: "i32" },
  cublasLtMatrixLayoutCreate: { parameters: ["buffer", "i32", "u64", "u64", "i64"], result: "i32" },
  cublasLtMatrixLayoutDestroy: { parameters: ["pointer"], result: "i32" },
  cublasLtMatrixLayoutSetAttribute: { parameters: ["pointer", "i32", "buffer", "usize"], result: "i32" },
  cublasLtMatmul: {
    parameters: [
      "pointer", // handle
      "pointer", // computeDesc
      "buffer", // alpha
      "u64", // A
      "pointer", // Adesc
      "u64", // B
      "pointer", // Bdesc
      "buffer", // beta
      "u64", // C
      "pointer", // Cdesc
      "u64", // D
      "pointer", // Ddesc
      "pointer", // algo (null: implicit heuristic)
      "u64", // workspace
      "usize", // workspaceSizeInBytes
      "pointer", // stream
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** cublasLtMatmulDescAttributes_t */
export const CUBLASLT_MATMUL_DESC_TRANSA = 3;
export const CUBLASLT_MATMUL_DESC_TRANSB = 4;
export const CUBLASLT_MATMUL_DESC_EPILOGUE = 7;
export const CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8;
/** cublasLtEpilogue_t */
export const CUBLASLT_EPILOGUE_DEFAULT = 1;
export const CUBLASLT_EPILOGUE_BIAS = 4;
export const CUBLASLT_EPILOGUE_GELU = 32;
export const CUBLASLT_EPILOGUE_GELU_BIAS = 36;
/** cublasLtMatrixLayoutAttribute_t */
export const CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5;
export const CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6;

export class CublasLt {
  readonly sym: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
  private readonly out = new BigUint64Array(1);

  constructor(private readonly lib: Deno.DynamicLibrary<typeof SYMBOLS>, readonly path: string) {
    this.sym = lib.symbols;
  }
  static open(env?: DiscoverEnv): CublasLt {
    const { lib, path } = openLibrary("cublaslt", SYMBOLS, env);
    return new CublasLt(lib, path);
  }
  statusString(code: number): string {
    return cString(this.sym.cublasLtGetStatusString(code), "unknown cuBLASLt status");
  }
  check(call: string, code: number): void {
    if (code !== 0) throw statusError(call, this.statusString(code), code);
  }
  version(): number {
    return Number(this.sym.cublasLtGetVersion());
  }
  create(): Deno.PointerValue {
    this.check("cublasLtCreate", this.sym.cublasLtCreate(this.out));
    return Deno.UnsafePointer.create(this.out[0]);
  }
  destroy(h: Deno.PointerValue): void {
    this.check("cublasLtDestroy", this.sym.cublasLtDestroy(h));
  }
  matmulDescCreate(computeType: number, scaleType: number): Deno.PointerValue {
    this.check(
      "cublasLtMatmulDescCreate",
      this.sym.cublasLtMatmulDescCreate(this.out, computeType, scaleType),
    );
    return Deno.UnsafePointer.create(this.out[0]);
  }
  matmulDescDestroy(d: Deno.PointerValue): void {
    this.check("cublasLtMatmulDescDestroy", this.sym.cublasLtMatmulDescDestroy(d));
  }
  /** Sets an i32-valued (transpose, epilogue) or u64-valued (pointer) descriptor attribute. */
  matmulDescSet(d: Deno.PointerValue, attr: number, value: number | bigint): void {
    const buf = typeof value === "bigint" ? new BigUint64Array([value]) : new Int32Array([value]);
    this.check(
      "cublasLtMatmulDescSetAttribute",
      this.sym.cublasLtMatmulDescSetAttribute(d, attr, buf, BigInt(buf.byteLength)),
    );
  }
  layoutCreate(dataType: number, rows: number, cols: number, ld: number): Deno.PointerValue {
    this.check(
      "cublasLtMatrixLayoutCreate",
      this.sym.cublasLtMatrixLayoutCreate(this.out, dataType, BigInt(rows), BigInt(cols), BigInt(ld)),
    );
    return Deno.UnsafePointer.create(this.out[0]);
  }
  layoutSet(l: Deno.PointerValue, attr: number, value: number | bigint): void {
    const buf = typeof value === "bigint" ? new BigInt64Array([value]) : new Int32Array([value]);
    this.check(
      "cublasLtMatrixLayoutSetAttribute",
      this.sym.cublasLtMatrixLayoutSetAttribute(l, attr, buf, BigInt(buf.byteLength)),
    );
  }
  layoutDestroy(l: Deno.PointerValue): void {
    this.check("cublasLtMatrixLayoutDestroy", this.sym.cublasLtMatrixLayoutDestroy(l));
  }
  close(): void {
    this.lib.close();
  }
}
