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
//   normal(e): Box-Muller on the lane pair (0,1) or (2,3) of the same block, computed in f64 on the
//   host (initialization always happens on the host, then the values are copied to the device).

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

  /** Standard normal by Box-Muller over the lane pair of element e (f64). */
  normal(e: number): number {
    const blk = this.blockAt(Math.floor(e / 4));
    const lane = e % 4;
    const pair = lane < 2 ? 0 : 2;
    const u1 = (blk[pair] + 0.5) * 2.3283064365386963e-10;
    const u2 = (blk[pair + 1] + 0.5) * 2.3283064365386963e-10;
    const r = Math.sqrt(-2 * Math.log(u1));
    const t = 2 * Math.PI * u2;
    return (lane & 1) === 0 ? r * Math.cos(t) : r * Math.sin(t);
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
