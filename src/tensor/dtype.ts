// Element types and the exact fp16/bf16 rounding the GPU uses (round-to-nearest-even).
// Half types are stored as raw 16-bit patterns (Uint16Array) on the host so that bytes copied
// from or to a GPU buffer are bit-identical.

export type DType = "f32" | "f16" | "bf16" | "f64" | "i32" | "i64" | "u8";

export const DTYPES: readonly DType[] = ["f32", "f16", "bf16", "f64", "i32", "i64", "u8"];

export const DTYPE_BYTES: Readonly<Record<DType, number>> = {
  f32: 4,
  f16: 2,
  bf16: 2,
  f64: 8,
  i32: 4,
  i64: 8,
  u8: 1,
};

export function isFloat(d: DType): boolean {
  return d === "f32" || d === "f16" || d === "bf16" || d === "f64";
}

export function isHalf(d: DType): boolean {
  return d === "f16" || d === "bf16";
}

/** Host storage type for each dtype. */
export type HostArray =
  | Float32Array
  | Float64Array
  | Uint16Array
  | Int32Array
  | BigInt64Array
  | Uint8Array;

export function allocHost(dtype: DType, n: number): HostArray {
  switch (dtype) {
    case "f32":
      return new Float32Array(n);
    case "f64":
      return new Float64Array(n);
    case "f16":
    case "bf16":
      return new Uint16Array(n);
    case "i32":
      return new Int32Array(n);
    case "i64":
      return new BigInt64Array(n);
    case "u8":
      return new Uint8Array(n);
  }
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** f32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN (as __float2bfloat16). */
export function f32ToBf16Bits(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  const rounded = (u + 0x7fff + ((u >>> 16) & 1)) >>> 0;
  return rounded >>> 16;
}

export function bf16BitsToF32(b: number): number {
  u32buf[0] = (b & 0xffff) << 16;
  return f32buf[0];
}

/** f32 -> f16 bits, round to nearest even (Math.f16round rounds the double exactly once). */
export function f32ToF16Bits(x: number): number {
  // Round the f32 value (not a wider double) so that results match __float2half(float).
  f32buf[0] = x;
  const v = f32buf[0];
  if (Number.isNaN(v)) return 0x7e00;
  const h = Math.f16round(v);
  // Encode the exactly representable half value into bits.
  if (h === 0) return Object.is(h, -0) ? 0x8000 : 0;
  const sign = h < 0 ? 0x8000 : 0;
  const a = Math.abs(h);
  if (a === Infinity) return sign | 0x7c00;
  if (a < 6.103515625e-5) return sign | Math.round(a / 5.960464477539063e-8); // subnormal
  let e = Math.floor(Math.log2(a));
  let m = a / 2 ** e;
  if (m >= 2) {
    m /= 2;
    e += 1;
  } else if (m < 1) {
    m *= 2;
    e -= 1;
  }
  return sign | ((e + 15) << 10) | Math.round((m - 1) * 1024);
}

export function f16BitsToF32(b: number): number {
  const sign = b & 0x8000 ? -1 : 1;
  const e = (b >>> 10) & 0x1f;
  const m = b & 0x3ff;
  if (e === 0) return sign * m * 5.960464477539063e-8;
  if (e === 31) return m ? NaN : sign * Infinity;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** Round a number as storing it in `dtype` would (f32 arithmetic results stored back). */
export function roundTo(dtype: DType, x: number): number {
  switch (dtype) {
    case "f32":
      return Math.fround(x);
    case "f16":
      return Math.f16round(Math.fround(x));
    case "bf16":
      return bf16BitsToF32(f32ToBf16Bits(x));
    case "f64":
      return x;
    case "i32":
    case "i64":
    case "u8":
      return Math.trunc(x);
  }
}
