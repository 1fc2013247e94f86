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

/** C type of an attribute value: cuBLASLt checks the size it is given against it. */
export type AttrCType = "i32" | "u32" | "i64" | "u64" | "ptr";

/** cublasLtMatmulDescAttributes_t -> value type (cublasLt.h). */
export const MATMUL_DESC_ATTR_TYPES: Readonly<Record<number, AttrCType>> = {
  0: "i32", // COMPUTE_TYPE (cublasComputeType_t)
  1: "i32", // SCALE_TYPE (cudaDataType_t)
  2: "i32", // POINTER_MODE
  [CUBLASLT_MATMUL_DESC_TRANSA]: "i32", // cublasOperation_t
  [CUBLASLT_MATMUL_DESC_TRANSB]: "i32",
  5: "i32", // TRANSC
  6: "i32", // FILL_MODE
  [CUBLASLT_MATMUL_DESC_EPILOGUE]: "u32", // uint32_t
  [CUBLASLT_MATMUL_DESC_BIAS_POINTER]: "ptr", // const void*
  10: "i64", // BIAS_BATCH_STRIDE
  11: "ptr", // EPILOGUE_AUX_POINTER
  12: "i64", // EPILOGUE_AUX_LD
  13: "i64", // EPILOGUE_AUX_BATCH_STRIDE
};

/** cublasLtMatrixLayoutAttribute_t -> value type (cublasLt.h). */
export const LAYOUT_ATTR_TYPES: Readonly<Record<number, AttrCType>> = {
  0: "u32", // TYPE (cudaDataType, passed as uint32_t)
  1: "i32", // ORDER
  2: "u64", // ROWS
  3: "u64", // COLS
  4: "i64", // LD
  [CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT]: "i32",
  [CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET]: "i64",
  7: "i64", // PLANE_OFFSET
};

/**
 * The value of `attr` in a buffer of its C type. Sizing by the JS value's type sent an int64
 * stride given as a number in 4 bytes; an unknown attribute or an out-of-range value throws.
 */
export function attrBuffer(
  call: string,
  types: Readonly<Record<number, AttrCType>>,
  attr: number,
  value: number | bigint,
):
  | Int32Array<ArrayBuffer>
  | Uint32Array<ArrayBuffer>
  | BigInt64Array<ArrayBuffer>
  | BigUint64Array<ArrayBuffer> {
  const t = types[attr];
  if (!t) throw new Error(`${call}: attribute ${attr} has no known C type`);
  const big = BigInt(value);
  const ranges: Record<AttrCType, [bigint, bigint]> = {
    i32: [-(2n ** 31n), 2n ** 31n - 1n],
    u32: [0n, 2n ** 32n - 1n],
    i64: [-(2n ** 63n), 2n ** 63n - 1n],
    u64: [0n, 2n ** 64n - 1n],
    ptr: [0n, 2n ** 64n - 1n],
  };
  const [lo, hi] = ranges[t];
  if (big < lo || big > hi) throw new Error(`${call}: attribute ${attr} value ${value} does not fit ${t}`);
  switch (t) {
    case "i32":
      return new Int32Array([Number(big)]);
    case "u32":
      return new Uint32Array([Number(big)]);
    case "i64":
      return new BigInt64Array([big]);
    default:
      return new BigUint64Array([big]);
  }
}

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
  /** Sets a descriptor attribute with a buffer of the attribute's C type (MATMUL_DESC_ATTR_TYPES). */
  matmulDescSet(d: Deno.PointerValue, attr: number, value: number | bigint): void {
    const buf = attrBuffer("cublasLtMatmulDescSetAttribute", MATMUL_DESC_ATTR_TYPES, attr, value);
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
  /** Sets a layout attribute with a buffer of the attribute's C type (LAYOUT_ATTR_TYPES). */
  layoutSet(l: Deno.PointerValue, attr: number, value: number | bigint): void {
    const buf = attrBuffer("cublasLtMatrixLayoutSetAttribute", LAYOUT_ATTR_TYPES, attr, value);
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
