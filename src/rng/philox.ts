// Counter-based RNG: Philox4x32-10 (Salmon et al., Random123). Every random number in a run is a
// pure function of (seed, stream, iteration, element index), so any backend and any parallel layout
// reproduces the same numbers when it addresses elements by their *global* coordinate.
//
// Addressing contract (the CUDA kernels implement exactly this):
//   block = floor(e / 4), lane = e % 4
//   counter = [block mod 2^32, floor(block / 2^32), iteration, stream]
//   key     = [seed, KEY_HI]
//   bits(e) = philox4x32_10(counter, key)[lane]
//   uniform(e) = (bits(e) >>> 8) * 2^-24          (exact in f32, in [0, 1))
//   dropout keeps element e when uniform(e) >= p  (p rounded to f32 first)
//   normal(e): Box-Muller on the lane pair (0,1) or (2,3) of the same block, in f64 with a log and a
//   sine/cosine built from + - * / and sqrt alone (logU32, circleU32), which IEEE-754 rounds the
//   same way everywhere: kernels/init_normal.cuh computes the same doubles on the GPU, so a model
//   initialized on the device is bit-equal to one initialized here.

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;

/** Second key word: a constant so that the seed alone selects the run. */
export const KEY_HI = 0x4d454741; // "MEGA"

/** High 32 bits of the 64-bit product of two u32. */
function mulhi(a: number, b: number): number {
  const aL = a & 0xffff, aH = a >>> 16, bL = b & 0xffff, bH = b >>> 16;
  const ll = aL * bL;
  const lh = aL * bH;
  const hl = aH * bL;
  const hh = aH * bH;
  const mid = (ll >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  return (hh + (lh >>> 16) + (hl >>> 16) + Math.floor(mid / 65536)) >>> 0;
}

/** Philox4x32 with `rounds` rounds (10 is the standard). Writes 4 u32 into out. */
export function philox4x32(
  c0: number,
  c1: number,
  c2: number,
  c3: number,
  k0: number,
  k1: number,
  out: Uint32Array,
  rounds = 10,
): Uint32Array {
  c0 >>>= 0, c1 >>>= 0, c2 >>>= 0, c3 >>>= 0, k0 >>>= 0, k1 >>>= 0;
  for (let r = 0; r < rounds; r++) {
    if (r > 0) {
      k0 = (k0 + W0) >>> 0;
      k1 = (k1 + W1) >>> 0;
    }
    const hi0 = mulhi(M0, c0), lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi(M1, c2), lo1 = Math.imul(M1, c2) >>> 0;
    const n0 = (hi1 ^ c1 ^ k0) >>> 0;
    const n2 = (hi0 ^ c3 ^ k1) >>> 0;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
  return out;
}

// ---- log and sine/cosine of Philox outputs from correctly rounded operations only ------------
// Math.log/cos/sin are implementation-defined (V8, glibc and CUDA's libdevice differ in the last
// bit), which would make a device-side initialization differ from this one. These use + - * /
// and sqrt in a fixed order (each op is IEEE-754 round-to-nearest in JS, C and CUDA's __d*_rn);
// kernels/init_normal.cuh is the same code, operation for operation. Accuracy ~1 ulp.

const LN2_HI = 0.6931471803691238;
const LN2_LO = 1.9082149292705877e-10;
const SQRT2 = 1.4142135623730951;
/** 2 pi / 2^32 (the exact scaling of the double 2 pi). */
const TWO_PI_2M32 = 1.4629180792671596e-9;

/** log((k + 0.5) 2^-32) for a u32 k: log(m 2^e) with m in [sqrt(1/2), sqrt(2)], log(m) = 2 atanh(s). */
export function logU32(k: number): number {
  k >>>= 0;
  const t = k + 0.5; // exact
  let e = 31 - Math.clz32(k); // t in [2^e, 2^(e+1)); -1 for k = 0 (t = 0.5)
  let m = e >= 0 ? t / ((1 << e) >>> 0) : t * 2; // exact power-of-two scaling
  if (m > SQRT2) {
    m = m * 0.5;
    e = e + 1;
  }
  const s = (m - 1) / (m + 1);
  const z = s * s; // <= 0.0295: 11 odd terms of atanh reach 2^-53
  let p = 0.043478260869565216;
  p = p * z + 0.047619047619047616;
  p = p * z + 0.05263157894736842;
  p = p * z + 0.058823529411764705;
  p = p * z + 0.06666666666666667;
  p = p * z + 0.07692307692307693;
  p = p * z + 0.09090909090909091;
  p = p * z + 0.1111111111111111;
  p = p * z + 0.14285714285714285;
  p = p * z + 0.2;
  p = p * z + 0.3333333333333333;
  const logm = 2 * (s + s * (z * p));
  const E = e - 32;
  return E * LN2_HI + (E * LN2_LO + logm);
}

/** sin (sine = true) or cos of 2 pi (j + 0.5) 2^-32 for a u32 j: quadrant from the top two bits,
 *  the rest folded to [0, pi/4] and evaluated by Taylor polynomials. */
export function circleU32(j: number, sine: boolean): number {
  j >>>= 0;
  const q = j >>> 30;
  const f = j & 0x3fffffff;
  const fold = f >= 0x20000000; // angle in the quadrant > pi/4: use pi/2 - angle
  const a = fold ? (0x40000000 - f) - 0.5 : f + 0.5; // exact
  const x = a * TWO_PI_2M32;
  const z = x * x;
  let ps = -8.22063524662433e-18;
  ps = ps * z + 2.8114572543455206e-15;
  ps = ps * z + -7.647163731819816e-13;
  ps = ps * z + 1.6059043836821613e-10;
  ps = ps * z + -2.505210838544172e-8;
  ps = ps * z + 2.7557319223985893e-6;
  ps = ps * z + -0.0001984126984126984;
  ps = ps * z + 0.008333333333333333;
  ps = ps * z + -0.16666666666666666;
  const sx = x + x * (z * ps);
  let pc = -1.5619206968586225e-16;
  pc = pc * z + 4.779477332387385e-14;
  pc = pc * z + -1.1470745597729725e-11;
  pc = pc * z + 2.08767569878681e-9;
  pc = pc * z + -2.755731922398589e-7;
  pc = pc * z + 2.48015873015873e-5;
  pc = pc * z + -0.001388888888888889;
  pc = pc * z + 0.041666666666666664;
  pc = pc * z + -0.5;
  const cx = 1 + z * pc;
  const s = fold ? cx : sx, c = fold ? sx : cx;
  // (sin, cos)(phi + q pi/2)
  switch (q) {
    case 0:
      return sine ? s : c;
    case 1:
      return sine ? c : -s;
    case 2:
      return sine ? -s : -c;
    default:
      return sine ? -c : s;
  }
}

/** What a random stream is used for; packed with the global layer number into `stream`. */
export const Purpose = {
  init: 1,
  embeddingDropout: 2,
  attentionDropout: 3,
  attentionOutputDropout: 4,
  mlpOutputDropout: 5,
  /** A decoder layer's cross-attention probabilities and output (T5). */
  crossAttentionDropout: 6,
  crossAttentionOutputDropout: 7,
  /** Free for models/tasks to extend (BERT masking, heads, ...). */
  user: 16,
} as const;

/** stream = purpose << 20 | (param/layer id < 2^20). */
export function streamId(purpose: number, id: number): number {
  if (id < 0 || id >= 1 << 20 || purpose < 0 || purpose >= 1 << 12) {
    throw new Error(`streamId: purpose ${purpose} or id ${id} out of range`);
  }
  return ((purpose << 20) | id) >>> 0;
}

/** A reusable generator for one (seed, stream, iteration); holds only a scratch block. */
export class PhiloxStream {
  private readonly block = new Uint32Array(4);
  private cached = -1;
  constructor(readonly seed: number, readonly stream: number, readonly iteration: number) {}

  /** Raw 4 x u32 block for block index b. */
  blockAt(b: number): Uint32Array {
    if (b !== this.cached) {
      philox4x32(
        b % 4294967296,
        Math.floor(b / 4294967296),
        this.iteration,
        this.stream,
        this.seed,
        KEY_HI,
        this.block,
      );
      this.cached = b;
    }
    return this.block;
  }

  bits(e: number): number {
    return this.blockAt(Math.floor(e / 4))[e % 4];
  }

  /** Uniform in [0, 1), exactly representable in f32. */
  uniform(e: number): number {
    return (this.bits(e) >>> 8) * 5.9604644775390625e-8;
  }

  /** Standard normal by Box-Muller over the lane pair of element e (f64):
   *  sqrt(-2 log u1) * (cos | sin)(2 pi u2), u = (bits + 0.5) 2^-32. */
  normal(e: number): number {
    const blk = this.blockAt(Math.floor(e / 4));
    const lane = e % 4;
    const pair = lane < 2 ? 0 : 2;
    const r = Math.sqrt(-2 * logU32(blk[pair]));
    return r * circleU32(blk[pair + 1], (lane & 1) === 1);
  }
}

/** Fill out[i] = std * normal(base + i) for i in [0, out.length). */
export function fillNormal(
  out: Float32Array | Float64Array,
  seed: number,
  stream: number,
  iteration: number,
  std: number,
  base = 0,
): void {
  const g = new PhiloxStream(seed, stream, iteration);
  for (let i = 0; i < out.length; i++) out[i] = std * g.normal(base + i);
}
