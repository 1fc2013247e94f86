// f32 kernels for the CPU backend's hottest loops as a hand-assembled WebAssembly SIMD module:
// cross-entropy over the vocabulary (row max, sum of exp, softmax gradient), Adam, tanh-GeLU forward /
// backward, the softmax exp pass, and Philox dropout (and bias-dropout-add).
// Each kernel does the same f32 operations as the scalar loops in cpu_backend.ts, element for element:
// f32x4 add/sub/mul/div/sqrt round exactly like Math.fround of the f64 result. exp is evaluated in f64
// (Cody-Waite reduction and a Taylor polynomial, or a 2^(j/64) table and a short polynomial; error
// ~2e-16 relative) and rounded once, so it equals Math.fround(Math.exp(x)) except when exp(x) lies within
// ~1e-16 of an f32 rounding midpoint (about one element in 10^8, then 1 ulp). Only the order of partial
// sums differs where stated (sumExp and softmax: four f64 lanes). Operands are copied into
// the module's memory in chunks: memcpy is far cheaper than the arithmetic it replaces, and tensors stay
// ordinary TypedArrays. Relaxed-SIMD multiply-add is used when the runtime has it (else mul + add).

import { get, i32c, section, set, simd, tee, uleb } from "./wasm_encode.ts";

const I32 = 0x7f, F32 = 0x7d, V128 = 0x7b;

// Opcodes (core and the 0xfd-prefixed SIMD set).
const MEM = [4, 0]; // memarg: align 2^4, offset 0
const load = simd(0x00, ...MEM), store = simd(0x0b, ...MEM);
const f32x4 = {
  splat: simd(0x13),
  lane: (l: number) => simd(0x1f, l),
  sqrt: simd(0xe3),
  add: simd(0xe4),
  sub: simd(0xe5),
  mul: simd(0xe6),
  div: simd(0xe7),
  pmax: simd(0xeb),
  demote: simd(0x5e), // f32x4.demote_f64x2_zero
};
const f64x2 = {
  promoteLow: simd(0x5f),
  add: simd(0xf0),
  sub: simd(0xf1),
  mul: simd(0xf2),
  div: simd(0xf3),
  pmin: simd(0xf6),
  pmax: simd(0xf7),
};
const i64x2 = { shl: simd(0xcb), add: simd(0xce) };
// Relaxed SIMD: a * b + c and -(a * b) + c, fused where the CPU has FMA (then more accurate, never less).
const RELAXED_MADD = simd(0x107), RELAXED_NMADD = simd(0x108);
const shuffle = (lanes: number[]) => simd(0x0d, ...lanes);
/** Shuffle of 32-bit lanes (0-3 from the first operand, 4-7 from the second). */
const shuffle32 = (l: number[]) => shuffle(l.flatMap((x) => [4 * x, 4 * x + 1, 4 * x + 2, 4 * x + 3]));
const i32x4 = {
  splat: simd(0x11),
  add: simd(0xae),
  sub: simd(0xb1),
  mul: simd(0xb5),
  shrU: simd(0xad),
  ltU: simd(0x3a),
  geU: simd(0x40),
};
const V_AND = simd(0x4e), V_XOR = simd(0x51);
const EXTMUL_LO_U = simd(0xde), EXTMUL_HI_U = simd(0xdf); // i64x2.extmul_{low,high}_i32x4_u
function v128i32(l: number[]): number[] {
  const b = new Uint8Array(16), d = new DataView(b.buffer);
  l.forEach((x, i) => d.setInt32(4 * i, x, true));
  return simd(0x0c, ...b);
}

function v128f64(x: number): number[] {
  const b = new Uint8Array(16), d = new DataView(b.buffer);
  d.setFloat64(0, x, true);
  d.setFloat64(8, x, true);
  return simd(0x0c, ...b);
}

function v128i64(x: bigint): number[] {
  const b = new Uint8Array(16), d = new DataView(b.buffer);
  d.setBigInt64(0, x, true);
  d.setBigInt64(8, x, true);
  return simd(0x0c, ...b);
}

const MAGIC = 6755399441055744; // 1.5 * 2^52: adding it rounds to an integer held in the low mantissa bits
const MAGIC_BITS = 0x4338000000000000n;
const LN2_HI = 0.6931471803691238; // ln 2 with trailing zero bits: k * LN2_HI is exact for |k| < 2^20
const LN2_LO = 1.9082149292705877e-10;

// Constants of the exp kernel, splatted once into consecutive v128 locals before the loop (V8 would
// otherwise rebuild each v128.const inside it).
// The clamp range [lo, hi] must cover the inputs whose result the caller can tell apart from 0 /
// Infinity, with lo >= -708 (2^k stays normal) and hi <= 710 (k <= 1024, where 2^k is +Infinity like
// Math.exp beyond ~709.4).
function expConsts(lo: number, hi: number): number[][] {
  const c = [v128f64(lo), v128f64(hi), v128f64(Math.LOG2E), v128f64(MAGIC), v128f64(LN2_HI)];
  c.push(v128f64(LN2_LO), v128i64(1023n - MAGIC_BITS));
  let fact = 1;
  for (let i = 1; i <= 12; i++) {
    fact *= i;
    c.push(v128f64(1 / fact)); // Taylor coefficient of r^i; r^0 reuses the 1 of r^1
  }
  return c;
}
const NUM_EXP_CONSTS = expConsts(0, 0).length;

/** expf clamp: f32 exp is 0 below -104 and Infinity above 89. */
function initExpConsts(k: number, lo = -120, hi = 100): number[] {
  return expConsts(lo, hi).flatMap((c, i) => [...c, ...set(k + i)]);
}

/** Code for exp of the f64x2 in local `a` (overwritten), leaving the f64x2 result on the stack.
 *  k: first of the NUM_EXP_CONSTS constant locals. */
function expPolyF64x2(a: number, t: number, r: number, t2: number, k: number, fma: boolean): number[] {
  const LO = k, HI = k + 1, L2E = k + 2, MG = k + 3, H = k + 4, L = k + 5, BIAS = k + 6;
  const coef = (i: number) => k + 6 + Math.max(i, 1); // 1/i!, i >= 1
  const out: number[] = [];
  // Clamp to the constants' range (see expConsts).
  // Pseudo-min/max (one instruction each) keep a NaN in their first operand.
  out.push(...get(a), ...get(LO), ...f64x2.pmax, ...get(HI), ...f64x2.pmin, ...set(a));
  if (fma) {
    // The same steps with multiply-adds (relaxed SIMD); madd(x, y, z) = x * y + z with operands
    // pushed in that order, nmadd = z - x * y.
    out.push(...get(a), ...get(L2E), ...get(MG), ...RELAXED_MADD, ...tee(t));
    out.push(...get(MG), ...f64x2.sub, ...set(r)); // r temporarily holds k
    out.push(...get(r), ...get(H), ...get(a), ...RELAXED_NMADD, ...set(t2)); // a - k hi
    out.push(...get(r), ...get(L), ...get(t2), ...RELAXED_NMADD, ...set(r)); // ... - k lo
    const lin = (i: number) => [...get(r), ...get(coef(i + 1)), ...get(coef(i)), ...RELAXED_MADD];
    const quad = (i: number) => [...lin(i + 2), ...get(a), ...lin(i), ...RELAXED_MADD];
    out.push(...get(r), ...get(r), ...f64x2.mul, ...tee(a), ...get(a), ...f64x2.mul, ...set(t2));
    out.push(...get(coef(12)), ...get(t2), ...quad(8), ...RELAXED_MADD); // B = c12 r^4 + quad(8)
    out.push(...get(t2), ...get(t2), ...f64x2.mul); // r^8
    out.push(...quad(4), ...get(t2), ...quad(0), ...RELAXED_MADD); // A = quad(4) r^4 + quad(0)
    out.push(...RELAXED_MADD); // B r^8 + A
  } else {
    // t = a * log2(e) + MAGIC, so k = round(a / ln2) = bits(t) - bits(MAGIC).
    out.push(...get(a), ...get(L2E), ...f64x2.mul, ...get(MG), ...f64x2.add, ...tee(t));
    // r = a - k ln2 (two-part constant), |r| <= ln2 / 2.
    out.push(...get(MG), ...f64x2.sub, ...set(r)); // r temporarily holds k
    out.push(...get(a), ...get(r), ...get(H), ...f64x2.mul, ...f64x2.sub); // a - k hi
    out.push(...get(r), ...get(L), ...f64x2.mul, ...f64x2.sub, ...set(r)); // - k lo
    // Taylor series of exp(r) to degree 12 (truncation error < 2e-16 for |r| <= ln2 / 2), evaluated
    // by Estrin's scheme (short dependency chains) with r2 = r^2 in `a` and r4 = r^4 in `t2`.
    const lin = (i: number) => [...get(coef(i)), ...get(r), ...get(coef(i + 1)), ...f64x2.mul, ...f64x2.add];
    const quad = (i: number) => [...lin(i), ...lin(i + 2), ...get(a), ...f64x2.mul, ...f64x2.add];
    out.push(...get(r), ...get(r), ...f64x2.mul, ...tee(a), ...get(a), ...f64x2.mul, ...set(t2));
    out.push(...quad(0), ...quad(4), ...get(t2), ...f64x2.mul, ...f64x2.add);
    out.push(...quad(8), ...get(coef(12)), ...get(t2), ...f64x2.mul, ...f64x2.add);
    out.push(...get(t2), ...get(t2), ...f64x2.mul, ...f64x2.mul, ...f64x2.add);
  }
  // 2^k: (bits(t) - bits(MAGIC) + 1023) << 52.
  out.push(...get(t), ...get(BIAS), ...i64x2.add, ...i32c(52), ...i64x2.shl);
  out.push(...f64x2.mul);
  return out;
}

// Table-driven exp for the cross-entropy kernels (needs relaxed multiply-add): k = round(64 x / ln2),
// exp(x) = 2^(k >> 6) * 2^((k & 63) / 64) * exp(r), |r| <= ln2 / 128, exp(r) by a degree-5 Taylor
// polynomial (truncation < 4e-17). The 64 table words are bits(2^(j/64)) - TAB_BIAS, so adding
// (bits(t) >>> 6) << 52 yields the scaled power of two directly (see expTabF64x2). The kernel reads the
// table at its row end (byte p + 4 n), where SimdKernels writes it before each call.
const TAB_BIAS = BigInt.asUintN(64, (MAGIC_BITS >> 6n) << 52n);

/** The 64 table words (u64 bit patterns). */
function expTable(): BigUint64Array {
  const t = new BigUint64Array(64), f = new Float64Array(1), u = new BigUint64Array(f.buffer);
  for (let j = 0; j < 64; j++) {
    f[0] = 2 ** (j / 64);
    t[j] = BigInt.asUintN(64, u[0] - TAB_BIAS);
  }
  return t;
}

function tabConsts(): number[][] {
  return [
    v128f64(-120),
    v128f64(100),
    v128f64(64 / Math.LN2),
    v128f64(MAGIC),
    v128f64(LN2_HI / 64),
    v128f64(LN2_LO / 64),
    v128f64(1),
    v128f64(1 / 2),
    v128f64(1 / 6),
    v128f64(1 / 24),
    v128f64(1 / 120),
  ];
}

/** exp of the f64x2 in local `a` (clamped to [-120, 100], so for expf only) via the table at the byte
 *  address in i32 local `tab`; leaves the f64x2 on the stack. Uses locals t, r, t2; constants at k. */
function expTabF64x2(a: number, t: number, r: number, t2: number, k: number, tab: number): number[] {
  const LO = k, HI = k + 1, L2E = k + 2, MG = k + 3, H = k + 4, L = k + 5, ONE = k + 6;
  const C = (i: number) => k + 5 + i; // 1/i!, i = 2..5
  const lane = (l: number) => [
    ...get(t),
    ...simd(0x1d, l), // i64x2.extract_lane
    0xa7, // i32.wrap_i64
    ...i32c(63),
    0x71, // i32.and
    ...i32c(3),
    0x74, // i32.shl
    ...get(tab),
    0x6a,
    0x29,
    3,
    0, // i64.load
  ];
  return [
    ...get(a),
    ...get(LO),
    ...f64x2.pmax,
    ...get(HI),
    ...f64x2.pmin,
    ...tee(a),
    ...get(L2E),
    ...get(MG),
    ...RELAXED_MADD,
    ...tee(t), // t = a 64/ln2 + MAGIC
    ...get(MG),
    ...f64x2.sub,
    ...set(r), // k
    ...get(r),
    ...get(H),
    ...get(a),
    ...RELAXED_NMADD,
    ...set(t2),
    ...get(r),
    ...get(L),
    ...get(t2),
    ...RELAXED_NMADD,
    ...set(r), // r = a - k ln2/64
    // p = (1 + r) + r^2 ((1/2 + r/6) + r^2 (1/24 + r/120))
    ...get(r),
    ...get(C(5)),
    ...get(C(4)),
    ...RELAXED_MADD,
    ...get(r),
    ...get(r),
    ...f64x2.mul,
    ...tee(a),
    ...get(r),
    ...get(C(3)),
    ...get(C(2)),
    ...RELAXED_MADD,
    ...RELAXED_MADD,
    ...get(a),
    ...get(r),
    ...get(ONE),
    ...f64x2.add,
    ...RELAXED_MADD,
    // table word for each lane, plus (bits(t) >>> 6) << 52
    ...lane(0),
    ...simd(0x12), // i64x2.splat
    ...lane(1),
    ...simd(0x1e, 1), // i64x2.replace_lane 1
    ...get(t),
    ...i32c(6),
    ...simd(0xcd), // i64x2.shr_u
    ...i32c(52),
    ...i64x2.shl,
    ...i64x2.add,
    ...f64x2.mul,
  ];
}

/** Code for expf of the f32x4 in local `x`, leaving the f32x4 result on the stack. Uses locals a, t,
 *  r, lo, lo + 1 and the constants at k. */
function expF32x4(
  x: number,
  a: number,
  t: number,
  r: number,
  lo: number,
  k: number,
  fma: boolean,
  tab: number | null = null,
): number[] {
  const hiLanes = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];
  const join = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];
  const expF64x2 = (a: number, t: number, r: number, t2: number, k: number, fma: boolean) =>
    fma && tab !== null ? expTabF64x2(a, t, r, t2, k, tab) : expPolyF64x2(a, t, r, t2, k, fma);
  return [
    ...get(x),
    ...f64x2.promoteLow,
    ...set(a),
    ...expF64x2(a, t, r, lo + 1, k, fma),
    ...f32x4.demote,
    ...set(lo),
    ...get(x),
    ...get(x),
    ...shuffle(hiLanes),
    ...f64x2.promoteLow,
    ...set(a),
    ...get(lo),
    ...expF64x2(a, t, r, lo + 1, k, fma),
    ...f32x4.demote,
    ...shuffle(join),
  ];
}

/** `loop` over p in [p, end) step 16 bytes (p < end checked first); body may use local p. */
function loop16(p: number, end: number, body: number[]): number[] {
  return [
    0x02,
    0x40, // block
    ...get(p),
    ...get(end),
    0x4f,
    0x0d,
    0, // br_if p >= end
    0x03,
    0x40, // loop
    ...body,
    ...get(p),
    ...i32c(16),
    0x6a,
    ...tee(p),
    ...get(end),
    0x49,
    0x0d,
    0, // br_if p < end
    0x0b,
    0x0b,
  ];
}

function func(locals: [number, number][], code: number[]): number[] {
  const body = [...uleb(locals.length), ...locals.flatMap(([n, t]) => [...uleb(n), t]), ...code, 0x0b];
  return [...uleb(body.length), ...body];
}

function moduleBytes(fma: boolean): Uint8Array<ArrayBuffer> {
  // rowMax(p, n, init) -> f32: pseudo-max (a < b ? b : a) of init and n floats at byte p; n % 4 == 0.
  // Pseudo-max skips NaN like the scalar `if (x > mx) mx = x`.
  const rowMaxCode = [
    ...get(0),
    ...get(1),
    ...i32c(2),
    0x74,
    0x6a,
    ...set(3),
    ...get(2),
    ...f32x4.splat,
    ...set(4),
    ...loop16(0, 3, [...get(4), ...get(0), ...load, ...f32x4.pmax, ...set(4)]),
    ...[0, 1, 2, 3].flatMap((l) => [
      ...get(4),
      ...f32x4.lane(l),
      ...set(5), // x
      // m = m < x ? x : m
      ...get(5),
      ...get(2),
      ...get(2),
      ...get(5),
      0x5d, // f32.lt
      0x1b, // select
      ...set(2),
    ]),
    ...get(2),
  ];
  // locals after params (p, n, init): 3 end i32, 4 v v128, 5 x f32
  const rowMaxF = func([[1, I32], [1, V128], [1, F32]], rowMaxCode);

  // sumExp(p, n, mx: f64) -> f64: sum of fround(exp(fround(x - mx))) in four f64 lanes (two f64x2
  // accumulators; the f32 terms are exact in f64, so a 50k-term vocabulary row loses nothing to the
  // running sum). mx is an f32 value passed as f64.
  // locals: 0 p, 1 n, 2 mx | 3 end, 4 mxv, 5 acc1, 6 x (then the f32x4 terms), 7 a, 8 t, 9 r, 10-11 lo,
  //   12 acc2, constants from 13
  const hiLanes = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];
  const sumExp = func([[1, I32], [9 + NUM_EXP_CONSTS, V128]], [
    ...(fma ? tabConsts().flatMap((c, i) => [...c, ...set(13 + i)]) : initExpConsts(13)),
    ...get(0),
    ...get(1),
    ...i32c(2),
    0x74,
    0x6a,
    ...set(3),
    ...get(2),
    0xb6, // f32.demote_f64 (exact: mx is an f32 value)
    ...f32x4.splat,
    ...set(4),
    ...loop16(0, 3, [
      ...get(0),
      ...load,
      ...get(4),
      ...f32x4.sub,
      ...set(6),
      ...expF32x4(6, 7, 8, 9, 10, 13, fma, 3),
      ...tee(6),
      ...f64x2.promoteLow,
      ...get(5),
      ...f64x2.add,
      ...set(5),
      ...get(6),
      ...get(6),
      ...shuffle(hiLanes),
      ...f64x2.promoteLow,
      ...get(12),
      ...f64x2.add,
      ...set(12),
    ]),
    // (acc1[0] + acc1[1]) + (acc2[0] + acc2[1])
    ...get(5),
    ...simd(0x21, 0),
    ...get(5),
    ...simd(0x21, 1),
    0xa0,
    ...get(12),
    ...simd(0x21, 0),
    ...get(12),
    ...simd(0x21, 1),
    0xa0,
    0xa0,
  ]);

  // ceGrad(p, n, mx, inv, d): x[i] = d * fround(fround(exp(fround(x[i] - mx))) * inv), in place.
  // locals: 0 p, 1 n, 2 mx, 3 inv, 4 d | 5 end, 6 mxv, 7 invv, 8 dv, 9 x, 10 a, 11 t, 12 r, 13 lo
  const ceGrad = func([[1, I32], [10 + NUM_EXP_CONSTS, V128]], [
    ...(fma ? tabConsts().flatMap((c, i) => [...c, ...set(15 + i)]) : initExpConsts(15)),
    ...get(0),
    ...get(1),
    ...i32c(2),
    0x74,
    0x6a,
    ...set(5),
    ...get(2),
    ...f32x4.splat,
    ...set(6),
    ...get(3),
    ...f32x4.splat,
    ...set(7),
    ...get(4),
    ...f32x4.splat,
    ...set(8),
    ...loop16(0, 5, [
      ...get(0),
      ...get(0),
      ...load,
      ...get(6),
      ...f32x4.sub,
      ...set(9),
      ...expF32x4(9, 10, 11, 12, 13, 15, fma, 5),
      ...get(7),
      ...f32x4.mul,
      ...get(8),
      ...f32x4.mul,
      ...store,
    ]),
  ]);

  // smExp(p, n, mx: f64) -> f64: x[i] = fround(exp(x[i] - mx)) with the difference in f64 (softmaxFwd's
  // f32 path), in place; returns the f64 sum of the rounded values (two lanes per half, then combined).
  // locals: 0 p 1 n 2 mx | 3 end | 4 mxv 5 x 6 a 7 t 8 r 9 lo 10 t2 11 acc1 12 acc2 13 hi, consts from 14
  const join = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];
  const smExp = func([[1, I32], [10 + NUM_EXP_CONSTS, V128]], [
    ...initExpConsts(14),
    ...get(0),
    ...get(1),
    ...i32c(2),
    0x74,
    0x6a,
    ...set(3),
    ...get(2),
    ...simd(0x14), // f64x2.splat
    ...set(4),
    ...loop16(0, 3, [
      ...get(0),
      ...load,
      ...tee(5),
      ...f64x2.promoteLow,
      ...get(4),
      ...f64x2.sub,
      ...set(6),
      ...expPolyF64x2(6, 7, 8, 10, 14, fma),
      ...f32x4.demote,
      ...tee(9),
      ...f64x2.promoteLow,
      ...get(11),
      ...f64x2.add,
      ...set(11),
      ...get(5),
      ...get(5),
      ...shuffle(hiLanes),
      ...f64x2.promoteLow,
      ...get(4),
      ...f64x2.sub,
      ...set(6),
      ...expPolyF64x2(6, 7, 8, 10, 14, fma),
      ...f32x4.demote,
      ...tee(13),
      ...f64x2.promoteLow,
      ...get(12),
      ...f64x2.add,
      ...set(12),
      ...get(0),
      ...get(9),
      ...get(13),
      ...shuffle(join),
      ...store,
    ]),
    // (acc1[0] + acc1[1]) + (acc2[0] + acc2[1])
    ...get(11),
    ...simd(0x21, 0),
    ...get(11),
    ...simd(0x21, 1),
    0xa0,
    ...get(12),
    ...simd(0x21, 0),
    ...get(12),
    ...simd(0x21, 1),
    0xa0,
    0xa0,
  ]);

  // adam(pp, pg, pm, pv, n, b1, b2, ob1, ob2, bc1, bc2, eps, wd, lr): the AdamW update of cpu_backend's
  // adamStep on n floats (n % 4 == 0) at byte offsets pp (param), pg (grad), pm, pv (moments).
  // locals: 0 pp 1 pg 2 pm 3 pv 4 n 5 b1 6 b2 7 ob1 8 ob2 9 bc1 10 bc2 11 eps 12 wd 13 lr |
  //   14 end 15 off | 16..24 splats (b1 b2 ob1 ob2 bc1 bc2 eps wd lr) 25 g 26 mi 27 vi 28 pv
  const sp = (i: number) => 16 + i - 5; // splat local of scalar param i
  const at = (base: number) => [...get(base), ...get(15), 0x6a]; // base + off
  const adam = func([[2, I32], [13, V128]], [
    ...get(4),
    ...i32c(2),
    0x74,
    ...set(14),
    ...[5, 6, 7, 8, 9, 10, 11, 12, 13].flatMap((i) => [...get(i), ...f32x4.splat, ...set(sp(i))]),
    ...loop16(15, 14, [
      ...at(1),
      ...load,
      ...set(25), // g
      // mi = b1 * m + ob1 * g
      ...at(2),
      ...get(sp(5)),
      ...at(2),
      ...load,
      ...f32x4.mul,
      ...get(sp(7)),
      ...get(25),
      ...f32x4.mul,
      ...f32x4.add,
      ...tee(26),
      ...store,
      // vi = b2 * v + (ob2 * g) * g
      ...at(3),
      ...get(sp(6)),
      ...at(3),
      ...load,
      ...f32x4.mul,
      ...get(sp(8)),
      ...get(25),
      ...f32x4.mul,
      ...get(25),
      ...f32x4.mul,
      ...f32x4.add,
      ...tee(27),
      ...store,
      // upd = (mi / bc1) / (sqrt(vi / bc2) + eps) + wd * p; p -= lr * upd
      ...at(0),
      ...load,
      ...set(28),
      ...at(0),
      ...get(28),
      ...get(26),
      ...get(sp(9)),
      ...f32x4.div,
      ...get(27),
      ...get(sp(10)),
      ...f32x4.div,
      ...f32x4.sqrt,
      ...get(sp(11)),
      ...f32x4.add,
      ...f32x4.div,
      ...get(sp(12)),
      ...get(28),
      ...f32x4.mul,
      ...f32x4.add,
      ...get(sp(13)),
      ...f32x4.mul,
      ...f32x4.sub,
      ...store,
    ]),
  ]);

  // geluFwd(px, pb, n, f): x[i] = gelu_tanh(fround(x[i] + b[i % f])) in place; geluBwd(px, pdy, pb, n, f):
  // dy[i] *= fround(gelu_tanh'(fround(x[i] + b[i % f]))) in place. n % 4 == 0, f % 4 == 0. Evaluated in
  // f64 with the operation order of cpu_backend's geluTanh / geluTanhGrad (x * sigmoid(2u) form).
  const gelu = (bwd: boolean) => {
    // params: 0 px, [1 pdy], 1|2 pb, n, f; then i32 end, q, qend; v128 x, a, t, r, lo, t2(lo+1), aa, s,
    // g, consts C K ONE K2 C3 TWO, exp consts.
    const np = bwd ? 5 : 4;
    const PX = 0, PDY = 1, PB = bwd ? 2 : 1, N = np - 2, F = np - 1;
    const END = np, Q = np + 1, QEND = np + 2;
    const X = np + 3, A = X + 1, T = X + 2, R = X + 3, LO = X + 4, AA = X + 6, S = X + 7, G = X + 8;
    const C = X + 9, K = C + 1, ONE = C + 2, K2 = C + 3, C3 = C + 4, TWO = C + 5, EK = C + 6;
    const half = [
      // aa = promoted input; z = K * (aa + ((C * aa) * aa) * aa) into a
      ...get(K),
      ...get(AA),
      ...get(C),
      ...get(AA),
      ...f64x2.mul,
      ...get(AA),
      ...f64x2.mul,
      ...get(AA),
      ...f64x2.mul,
      ...f64x2.add,
      ...f64x2.mul,
      ...set(A),
      // s = 1 / (1 + exp(z))
      ...get(ONE),
      ...get(ONE),
      ...expPolyF64x2(A, T, R, LO + 1, EK, fma),
      ...f64x2.add,
      ...f64x2.div,
      ...set(S),
      ...(bwd
        ? [
          // s + ((((2 aa) s) (1 - s)) K2) (1 + (C3 aa) aa)
          ...get(S),
          ...get(TWO),
          ...get(AA),
          ...f64x2.mul,
          ...get(S),
          ...f64x2.mul,
          ...get(ONE),
          ...get(S),
          ...f64x2.sub,
          ...f64x2.mul,
          ...get(K2),
          ...f64x2.mul,
          ...get(ONE),
          ...get(C3),
          ...get(AA),
          ...f64x2.mul,
          ...get(AA),
          ...f64x2.mul,
          ...f64x2.add,
          ...f64x2.mul,
          ...f64x2.add,
        ]
        : [...get(AA), ...get(S), ...f64x2.mul]),
      ...f32x4.demote,
    ];
    const hiLanes = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];
    const join = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];
    return func([[3, I32], [9 + 6 + NUM_EXP_CONSTS, V128]], [
      ...v128f64(0.044715),
      ...set(C),
      ...v128f64(-1.5957691216057308),
      ...set(K),
      ...v128f64(1),
      ...set(ONE),
      ...v128f64(0.7978845608028654),
      ...set(K2),
      ...v128f64(3 * 0.044715),
      ...set(C3),
      ...v128f64(2),
      ...set(TWO),
      ...initExpConsts(EK, -700, 710),
      ...get(PX),
      ...get(N),
      ...i32c(2),
      0x74,
      0x6a,
      ...set(END),
      ...get(PB),
      ...tee(Q),
      ...get(F),
      ...i32c(2),
      0x74,
      0x6a,
      ...set(QEND),
      ...loop16(PX, END, [
        ...get(PX),
        ...load,
        ...get(Q),
        ...load,
        ...f32x4.add,
        ...tee(X),
        ...f64x2.promoteLow,
        ...set(AA),
        ...half,
        ...set(G),
        ...get(X),
        ...get(X),
        ...shuffle(hiLanes),
        ...f64x2.promoteLow,
        ...set(AA),
        ...get(G),
        ...half,
        ...shuffle(join),
        ...(bwd ? [...set(G), ...get(PDY), ...get(PDY), ...load, ...get(G), ...f32x4.mul, ...store] : [
          ...set(G),
          ...get(PX),
          ...get(G),
          ...store,
        ]),
        ...(bwd ? [...get(PDY), ...i32c(16), 0x6a, ...set(PDY)] : []),
        // q += 16, wrapping to pb at the end of the bias row
        ...get(PB),
        ...get(Q),
        ...i32c(16),
        0x6a,
        ...tee(Q),
        ...get(Q),
        ...get(QEND),
        0x46, // i32.eq
        0x1b, // select(pb, q, q == qend)
        ...set(Q),
      ]),
    ]);
  };
  const geluFwd = gelu(false), geluBwd = gelu(true);

  // philox(out, blo, bhi, nb, c2, c3, k0, k1): Philox4x32-10 blocks blo + 2^32 bhi + [0, nb) (nb % 4 == 0)
  // written as 4 u32 per block at byte `out`, the layout of PhiloxWasm.lanes (src/rng/philox.ts).
  // Four blocks per step, one per lane; the 32x32 -> 64-bit products are extending multiplies.
  // locals: 0 out 1 blo 2 bhi 3 nb 4 c2 5 c3 6 k0 7 k1 | 8 end | 9 lo 10 hi 11 x0 12 x1 13 x2 14 x3
  //   15 kk0 16 kk1 17 p0lo 18 p1lo 19 t0 20 t1 21 t2 22 nlo
  const M0 = 0xd2511f53 | 0, M1 = 0xcd9e8d57 | 0, W0 = 0x9e3779b9 | 0, W1 = 0xbb67ae85 | 0;
  const hiOf = (x: number, m: number) => [
    ...get(x),
    ...v128i32([m, m, m, m]),
    ...EXTMUL_LO_U,
    ...get(x),
    ...v128i32([m, m, m, m]),
    ...EXTMUL_HI_U,
    ...shuffle32([1, 3, 5, 7]),
  ];
  const round = [
    // x0' = hi(M1 x2) ^ x1 ^ kk0, x2' = hi(M0 x0) ^ x3 ^ kk1, x1' = lo(M1 x2), x3' = lo(M0 x0)
    ...get(11),
    ...v128i32([M0, M0, M0, M0]),
    ...i32x4.mul,
    ...set(17),
    ...get(13),
    ...v128i32([M1, M1, M1, M1]),
    ...i32x4.mul,
    ...set(18),
    ...hiOf(11, M0),
    ...get(14),
    ...V_XOR,
    ...get(16),
    ...V_XOR,
    ...set(19), // new x2
    ...hiOf(13, M1),
    ...get(12),
    ...V_XOR,
    ...get(15),
    ...V_XOR,
    ...set(11),
    ...get(19),
    ...set(13),
    ...get(18),
    ...set(12),
    ...get(17),
    ...set(14),
    ...get(15),
    ...v128i32([W0, W0, W0, W0]),
    ...i32x4.add,
    ...set(15),
    ...get(16),
    ...v128i32([W1, W1, W1, W1]),
    ...i32x4.add,
    ...set(16),
  ];
  const philox = func([[1, I32], [14, V128]], [
    // end = out + 16 nb; lo = blo + [0,1,2,3]; hi = bhi + carry
    ...get(0),
    ...get(3),
    ...i32c(4),
    0x74,
    0x6a,
    ...set(8),
    ...get(1),
    ...i32x4.splat,
    ...v128i32([0, 1, 2, 3]),
    ...i32x4.add,
    ...set(9),
    ...get(2),
    ...i32x4.splat,
    ...get(9),
    ...get(1),
    ...i32x4.splat,
    ...i32x4.ltU, // -1 where lo wrapped
    ...i32x4.sub,
    ...set(10),
    ...loop16(0, 8, [
      ...get(9),
      ...set(11),
      ...get(10),
      ...set(12),
      ...get(4),
      ...i32x4.splat,
      ...set(13),
      ...get(5),
      ...i32x4.splat,
      ...set(14),
      ...get(6),
      ...i32x4.splat,
      ...set(15),
      ...get(7),
      ...i32x4.splat,
      ...set(16),
      ...Array.from({ length: 10 }, () => round).flat(),
      // transpose: lane b of x0..x3 -> the 4 words of block b
      ...get(11),
      ...get(12),
      ...shuffle32([0, 4, 1, 5]),
      ...set(19), // a0 a1 b0 b1
      ...get(11),
      ...get(12),
      ...shuffle32([2, 6, 3, 7]),
      ...set(20), // c0 c1 d0 d1
      ...get(13),
      ...get(14),
      ...shuffle32([0, 4, 1, 5]),
      ...set(21), // a2 a3 b2 b3
      ...get(0),
      ...get(19),
      ...get(21),
      ...shuffle32([0, 1, 4, 5]),
      ...store,
      ...get(0),
      ...get(19),
      ...get(21),
      ...shuffle32([2, 3, 6, 7]),
      ...simd(0x0b, 4, 16),
      ...get(13),
      ...get(14),
      ...shuffle32([2, 6, 3, 7]),
      ...set(21), // c2 c3 d2 d3
      ...get(0),
      ...get(20),
      ...get(21),
      ...shuffle32([0, 1, 4, 5]),
      ...simd(0x0b, 4, 32),
      ...get(0),
      ...get(20),
      ...get(21),
      ...shuffle32([2, 3, 6, 7]),
      ...simd(0x0b, 4, 48),
      // next 4 blocks
      ...get(9),
      ...v128i32([4, 4, 4, 4]),
      ...i32x4.add,
      ...set(22),
      ...get(10),
      ...get(22),
      ...get(9),
      ...i32x4.ltU, // -1 where lo wrapped
      ...i32x4.sub,
      ...set(10),
      ...get(22),
      ...set(9),
      // loop16 adds 16 to out; three more stores were 48 bytes further
      ...get(0),
      ...i32c(48),
      0x6a,
      ...set(0),
    ]),
  ]);

  // dropMask(pu, px, n, thr, s): x = (u >>> 8) >= thr ? x * s : 0, in place at px (n % 4 == 0).
  // dropAdd(pu, px, pb, pr, n, f, thr, s): x = r + ((u >>> 8) >= thr ? fround(fround(x + b) * s) : 0),
  // b broadcast over rows of f (f % 4 == 0; pb < 0: no bias).
  // locals dropMask: 0 pu 1 px 2 n 3 thr 4 s | 5 end | 6 thrv 7 sv
  const dropMask = func([[1, I32], [2, V128]], [
    ...get(1),
    ...get(2),
    ...i32c(2),
    0x74,
    0x6a,
    ...set(5),
    ...get(3),
    ...i32x4.splat,
    ...set(6),
    ...get(4),
    ...f32x4.splat,
    ...set(7),
    ...loop16(1, 5, [
      ...get(1),
      ...get(1),
      ...load,
      ...get(7),
      ...f32x4.mul,
      ...get(0),
      ...simd(0x00, 2, 0), // unaligned u32 lanes (align hint 4 bytes)
      ...i32c(8),
      ...i32x4.shrU,
      ...get(6),
      ...i32x4.geU,
      ...V_AND,
      ...store,
      ...get(0),
      ...i32c(16),
      0x6a,
      ...set(0),
    ]),
  ]);
  // locals dropAdd: 0 pu 1 px 2 pb 3 pr 4 n 5 f 6 thr 7 s | 8 end 9 q 10 qend | 11 thrv 12 sv
  const dropAdd = func([[3, I32], [2, V128]], [
    ...get(1),
    ...get(4),
    ...i32c(2),
    0x74,
    0x6a,
    ...set(8),
    ...get(2),
    ...tee(9),
    ...get(5),
    ...i32c(2),
    0x74,
    0x6a,
    ...set(10),
    ...get(6),
    ...i32x4.splat,
    ...set(11),
    ...get(7),
    ...f32x4.splat,
    ...set(12),
    ...loop16(1, 8, [
      ...get(1),
      ...get(3),
      ...load,
      ...get(1),
      ...load,
      ...get(9),
      ...load,
      ...f32x4.add,
      ...get(12),
      ...f32x4.mul,
      ...get(0),
      ...simd(0x00, 2, 0),
      ...i32c(8),
      ...i32x4.shrU,
      ...get(11),
      ...i32x4.geU,
      ...V_AND,
      ...f32x4.add,
      ...store,
      ...get(0),
      ...i32c(16),
      0x6a,
      ...set(0),
      ...get(3),
      ...i32c(16),
      0x6a,
      ...set(3),
      ...get(2),
      ...get(9),
      ...i32c(16),
      0x6a,
      ...tee(9),
      ...get(9),
      ...get(10),
      0x46,
      0x1b,
      ...set(9),
    ]),
  ]);

  const name = (s: string) => [s.length, ...Array.from(s, (c) => c.charCodeAt(0))];
  const types = [
    10,
    ...[0x60, 3, I32, I32, F32, 1, F32], // 0: rowMax
    ...[0x60, 5, I32, I32, F32, F32, F32, 0], // 1: ceGrad
    ...[0x60, 14, I32, I32, I32, I32, I32, ...Array(9).fill(F32), 0], // 2: adam
    ...[0x60, 0, 0], // 3: unused
    ...[0x60, 4, I32, I32, I32, I32, 0], // 4: geluFwd
    ...[0x60, 5, I32, I32, I32, I32, I32, 0], // 5: geluBwd
    ...[0x60, 8, ...Array(8).fill(I32), 0], // 6: philox
    ...[0x60, 5, I32, I32, I32, I32, F32, 0], // 7: dropMask
    ...[0x60, 8, ...Array(7).fill(I32), F32, 0], // 8: dropAdd
    ...[0x60, 3, I32, I32, 0x7c, 1, 0x7c], // 9: sumExp, smExp (i32, i32, f64) -> f64
  ];
  const exports = [
    11,
    ...name("smExp"),
    0,
    9,
    ...name("philox"),
    0,
    6,
    ...name("dropMask"),
    0,
    7,
    ...name("dropAdd"),
    0,
    8,
    ...name("geluFwd"),
    0,
    4,
    ...name("geluBwd"),
    0,
    5,
    ...name("rowMax"),
    0,
    0,
    ...name("sumExp"),
    0,
    1,
    ...name("ceGrad"),
    0,
    2,
    ...name("adam"),
    0,
    3,
    ...name("mem"),
    2,
    0,
  ];
  return new Uint8Array([
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00,
    ...section(1, types),
    ...section(3, [10, 0, 9, 1, 2, 4, 5, 6, 7, 8, 9]),
    ...section(5, [1, 0, 1]), // memory: 1 page initially, grown on demand
    ...section(7, exports),
    ...section(10, [
      10,
      ...rowMaxF,
      ...sumExp,
      ...ceGrad,
      ...adam,
      ...geluFwd,
      ...geluBwd,
      ...philox,
      ...dropMask,
      ...dropAdd,
      ...smExp,
    ]),
  ]);
}

/** Elements per Adam chunk (4 arrays of this many floats live in the module's memory at once). */
export const ADAM_CHUNK = 16384;

/** One instance per backend: the SIMD kernels and their memory. */
export class SimdKernels {
  private readonly mem: WebAssembly.Memory;
  private readonly k: {
    rowMax(p: number, n: number, init: number): number;
    sumExp(p: number, n: number, mx: number): number;
    ceGrad(p: number, n: number, mx: number, inv: number, d: number): void;
    adam(
      pp: number,
      pg: number,
      pm: number,
      pv: number,
      n: number,
      b1: number,
      b2: number,
      ob1: number,
      ob2: number,
      bc1: number,
      bc2: number,
      eps: number,
      wd: number,
      lr: number,
    ): void;
    geluFwd(px: number, pb: number, n: number, f: number): void;
    geluBwd(px: number, pdy: number, pb: number, n: number, f: number): void;
    philox(
      out: number,
      blo: number,
      bhi: number,
      nb: number,
      c2: number,
      c3: number,
      k0: number,
      k1: number,
    ): void;
    dropMask(pu: number, px: number, n: number, thr: number, s: number): void;
    dropAdd(
      pu: number,
      px: number,
      pb: number,
      pr: number,
      n: number,
      f: number,
      thr: number,
      s: number,
    ): void;
    smExp(p: number, n: number, mx: number): number;
  };
  private f32: Float32Array;
  private readonly table = expTable();

  constructor() {
    let mod: WebAssembly.Module;
    try {
      mod = new WebAssembly.Module(moduleBytes(true));
    } catch {
      mod = new WebAssembly.Module(moduleBytes(false)); // no relaxed SIMD in this runtime
    }
    const inst = new WebAssembly.Instance(mod);
    this.mem = inst.exports.mem as WebAssembly.Memory;
    this.k = inst.exports as unknown as SimdKernels["k"];
    this.f32 = new Float32Array(this.mem.buffer);
  }

  /** A view of at least n floats of module memory (grown as needed). */
  private floats(n: number): Float32Array {
    if (this.f32.length < n) {
      const need = Math.ceil((n * 4 - this.mem.buffer.byteLength) / 65536);
      this.mem.grow(need);
      this.f32 = new Float32Array(this.mem.buffer);
    }
    return this.f32;
  }

  /** Max over x[o, o + n4) (n4 % 4 == 0) folded into init with `if (x > m) m = x` semantics. */
  rowMax(x: Float32Array, o: number, n4: number, init: number): number {
    const m = this.floats(n4);
    m.set(x.subarray(o, o + n4));
    return this.k.rowMax(0, n4, init);
  }

  /** Stages x[o, o + n4) at the start of memory with the exp table right after it. */
  private stageRow(x: Float32Array, o: number, n4: number): Float32Array {
    const m = this.floats(n4 + 128);
    m.set(x.subarray(o, o + n4));
    new BigUint64Array(this.mem.buffer, 4 * n4, 64).set(this.table);
    return m;
  }

  /** Sum over x[o, o + n4) of fround(exp(fround(x - mx))) in f64 (four lanes); mx must be an f32 value. */
  sumExp(x: Float32Array, o: number, n4: number, mx: number): number {
    this.stageRow(x, o, n4);
    return this.k.sumExp(0, n4, mx);
  }

  /** out[oo + i] = d * fround(fround(exp(fround(x[o + i] - mx))) * inv) for i < n4; mx, inv, d f32 values. */
  ceGrad(
    x: Float32Array,
    o: number,
    n4: number,
    mx: number,
    inv: number,
    d: number,
    out: Float32Array,
    oo: number,
  ): void {
    const m = this.stageRow(x, o, n4);
    this.k.ceGrad(0, n4, mx, inv, d);
    out.set(m.subarray(0, n4), oo);
  }

  /** y = gelu_tanh(fround(x + bias)) for x [rows, f] (f % 4 == 0), as cpu_backend's biasGeluFwd. */
  geluFwd(x: Float32Array, bias: Float32Array, y: Float32Array): void {
    this.gelu(x, bias, null, y);
  }

  /** dx = dy * fround(gelu_tanh'(fround(x + bias))) (f % 4 == 0), as cpu_backend's biasGeluBwd. */
  geluBwd(dy: Float32Array, x: Float32Array, bias: Float32Array, dx: Float32Array): void {
    this.gelu(x, bias, dy, dx);
  }

  private gelu(x: Float32Array, bias: Float32Array, dy: Float32Array | null, out: Float32Array): void {
    const f = bias.length, rowsPer = Math.max(1, Math.floor(16384 / f)), C = rowsPer * f;
    const m = this.floats(f + 2 * C), pb = 0, px = 4 * f, pd = 4 * (f + C);
    m.set(bias, 0);
    for (let s = 0; s < x.length; s += C) {
      const n = Math.min(C, x.length - s), e = s + n;
      m.set(x.subarray(s, e), f);
      if (dy) {
        m.set(dy.subarray(s, e), f + C);
        this.k.geluBwd(px, pd, pb, n, f);
        out.set(m.subarray(f + C, f + C + n), s);
      } else {
        this.k.geluFwd(px, pb, n, f);
        out.set(m.subarray(f, f + n), s);
      }
    }
  }

  /** Module memory as floats (at least n); a view for callers that stage rows themselves. */
  staging(n: number): Float32Array {
    return this.floats(n);
  }

  /** In place on staging(n)[0, n) (n % 4 == 0): x = fround(exp(x - mx)) (difference in f64); returns
   *  the f64 sum of the results. */
  softmaxExp(n: number, mx: number): number {
    return this.k.smExp(0, n, mx);
  }

  /** Philox blocks [first, first + nb) (nb % 4 == 0) of counter [., ., iteration, stream], key [seed, keyHi],
   *  as u32 words (4 per block) at the start of module memory; returns that view. */
  philoxBlocks(
    first: number,
    nb: number,
    seed: number,
    stream: number,
    iteration: number,
    keyHi: number,
  ): Uint32Array {
    this.floats(4 * nb);
    this.k.philox(
      0,
      first % 4294967296,
      Math.floor(first / 4294967296),
      nb,
      iteration | 0,
      stream | 0,
      seed | 0,
      keyHi | 0,
    );
    return new Uint32Array(this.mem.buffer, 0, 4 * nb);
  }

  /**
   * Dropout over the contiguous counter range e0 + [0, n): out[i] = keep ? fround(v * s) : 0 with
   * keep = (bits(e0 + i) >>> 8) >= thrInt and v = x[i], or for biasDropoutAdd (bias given)
   * out[i] = r[i] + (keep ? fround(fround(x[i] + bias[i % f]) * s) : 0). bits(e) is lane e % 4 of Philox
   * block floor(e / 4). n % 4 == 0 and f % 4 == 0 are the caller's to ensure.
   */
  dropout(
    x: Float32Array,
    out: Float32Array,
    n: number,
    e0: number,
    key: { seed: number; stream: number; iteration: number; keyHi: number },
    thrInt: number,
    s: number,
    add: { bias: Float32Array | null; r: Float32Array; f: number } | null,
  ): void {
    const C = 16384, BL = C / 4 + 8; // elements per chunk; blocks per chunk (with alignment slack)
    const f = add ? add.f : 0;
    // memory: [lanes 16 BL bytes][x C floats][r C floats][bias f floats]
    const xo = 4 * BL, ro = xo + C, bo = ro + C;
    const m = this.floats(bo + f);
    if (add) {
      if (add.bias) m.set(add.bias, bo);
      else m.fill(-0, bo, bo + f); // x + (-0) == x exactly, signed zeros included
    }
    for (let i = 0; i < n; i += C) {
      const len = Math.min(C, n - i), e = e0 + i;
      const b0 = Math.floor(e / 4), shift = e - 4 * b0;
      const nb = (Math.floor((e + len - 1) / 4) - b0 + 1 + 3) & ~3;
      this.k.philox(
        0,
        b0 % 4294967296,
        Math.floor(b0 / 4294967296),
        nb,
        key.iteration | 0,
        key.stream | 0,
        key.seed | 0,
        key.keyHi | 0,
      );
      m.set(x.subarray(i, i + len), xo);
      if (add) {
        m.set(add.r.subarray(i, i + len), ro);
        this.k.dropAdd(4 * shift, 4 * xo, 4 * bo, 4 * ro, len, f, thrInt, s);
      } else this.k.dropMask(4 * shift, 4 * xo, len, thrInt, s);
      out.set(m.subarray(xo, xo + len), i);
    }
  }

  /** AdamW on elements [0, n4) (n4 % 4 == 0) with f32 constants (see cpu_backend adamStep). */
  adam(
    P: Float32Array,
    G: Float32Array,
    M: Float32Array,
    V: Float32Array,
    n4: number,
    c: {
      b1: number;
      b2: number;
      ob1: number;
      ob2: number;
      bc1: number;
      bc2: number;
      eps: number;
      wd: number;
      lr: number;
    },
  ): void {
    const C = ADAM_CHUNK, m = this.floats(4 * C);
    for (let s = 0; s < n4; s += C) {
      const n = Math.min(C, n4 - s), e = s + n;
      m.set(P.subarray(s, e), 0);
      m.set(G.subarray(s, e), C);
      m.set(M.subarray(s, e), 2 * C);
      m.set(V.subarray(s, e), 3 * C);
      this.k.adam(0, 4 * C, 8 * C, 12 * C, n, c.b1, c.b2, c.ob1, c.ob2, c.bc1, c.bc2, c.eps, c.wd, c.lr);
      P.set(m.subarray(0, n), s);
      M.set(m.subarray(2 * C, 2 * C + n), s);
      V.set(m.subarray(3 * C, 3 * C + n), s);
    }
  }
}
