// Bit-exact ports of the random generators Megatron's data pipeline depends on:
// - NumPy's legacy RandomState (MT19937 + the legacy shuffle/random_sample/randint algorithms), which
//   fixes GPT doc/shuffle order and BERT/T5 per-sample choices;
// - C++ std::mt19937 and std::mt19937_64, which helpers.cpp uses for the BERT samples mapping.
// Written from the algorithms' published definitions (Matsumoto & Nishimura; ISO C++ [rand.eng.mers]);
// the NumPy specifics (seeding, masked rejection, 53-bit doubles) are noted where they matter.

const N32 = 624;
const M32 = 397;

/** Integer typed arrays that shuffle() permutes in place. */
export type ShuffleTarget =
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array
  | number[];

/** MT19937 (32-bit Mersenne Twister). `new Mt19937(seed)` equals C++ `std::mt19937 gen(seed)`. */
export class Mt19937 {
  readonly #mt = new Uint32Array(N32);
  #pos = N32;

  constructor(seed = 5489) {
    this.seed(seed);
  }

  /** init_genrand: what std::mt19937(seed) and numpy's RandomState(int) both do. */
  seed(seed: number): void {
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
      throw new Error(`Mt19937.seed: expected an integer in [0, 2^32-1], found ${seed}`);
    }
    const mt = this.#mt;
    mt[0] = seed >>> 0;
    for (let i = 1; i < N32; i++) {
      const p = mt[i - 1];
      mt[i] = (Math.imul(1812433253, p ^ (p >>> 30)) + i) >>> 0;
    }
    this.#pos = N32;
  }

  /** init_by_array (mt19937ar.c), used by numpy for array seeds. */
  seedByArray(key: ArrayLike<number>): void {
    if (key.length === 0) throw new Error("Mt19937.seedByArray: expected a non-empty key, found length 0");
    for (let j = 0; j < key.length; j++) {
      const v = key[j];
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
        throw new Error(`Mt19937.seedByArray: expected key values in [0, 2^32-1], found key[${j}]=${v}`);
      }
    }
    this.seed(19650218);
    const mt = this.#mt;
    let i = 1;
    let j = 0;
    for (let k = Math.max(N32, key.length); k > 0; k--) {
      const p = mt[i - 1];
      mt[i] = ((mt[i] ^ Math.imul(p ^ (p >>> 30), 1664525)) + key[j] + j) >>> 0;
      i++;
      j++;
      if (i >= N32) {
        mt[0] = mt[N32 - 1];
        i = 1;
      }
      if (j >= key.length) j = 0;
    }
    for (let k = N32 - 1; k > 0; k--) {
      const p = mt[i - 1];
      mt[i] = ((mt[i] ^ Math.imul(p ^ (p >>> 30), 1566083941)) - i) >>> 0;
      i++;
      if (i >= N32) {
        mt[0] = mt[N32 - 1];
        i = 1;
      }
    }
    mt[0] = 0x80000000;
    this.#pos = N32;
  }

  #twist(): void {
    const mt = this.#mt;
    for (let k = 0; k < N32; k++) {
      const y = (mt[k] & 0x80000000) | (mt[(k + 1) % N32] & 0x7fffffff);
      mt[k] = mt[(k + M32) % N32] ^ (y >>> 1) ^ ((y & 1) ? 0x9908b0df : 0);
    }
    this.#pos = 0;
  }

  /** Next 32-bit output as a non-negative number. */
  nextUint32(): number {
    if (this.#pos >= N32) this.#twist();
    let y = this.#mt[this.#pos++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }
}

const N64 = 312;
const M64 = 156;
const MASK64 = (1n << 64n) - 1n;

/**
 * MT19937-64. `new Mt19937_64(seed)` equals C++ `std::mt19937_64 gen(seed)`. The state is kept as
 * (hi, lo) 32-bit halves so generation needs no BigInt; only seeding does.
 */
export class Mt19937_64 {
  readonly #hi = new Uint32Array(N64);
  readonly #lo = new Uint32Array(N64);
  #pos = N64;

  constructor(seed: number | bigint = 5489n) {
    this.seed(seed);
  }

  /** Seeds like std::mt19937_64(seed): the seed is taken modulo 2^64 (C++ converts signed values). */
  seed(seed: number | bigint): void {
    if (typeof seed === "number" && !Number.isSafeInteger(seed)) {
      throw new Error(`Mt19937_64.seed: expected a safe integer or bigint, found ${seed}`);
    }
    let x = BigInt(seed) & MASK64;
    this.#hi[0] = Number(x >> 32n);
    this.#lo[0] = Number(x & 0xffffffffn);
    for (let i = 1; i < N64; i++) {
      x = (6364136223846793005n * (x ^ (x >> 62n)) + BigInt(i)) & MASK64;
      this.#hi[i] = Number(x >> 32n);
      this.#lo[i] = Number(x & 0xffffffffn);
    }
    this.#pos = N64;
  }

  #twist(): void {
    const hi = this.#hi;
    const lo = this.#lo;
    for (let k = 0; k < N64; k++) {
      const k1 = (k + 1) % N64;
      const km = (k + M64) % N64;
      // Upper 33 bits of x[k], lower 31 bits of x[k+1].
      const yh = hi[k];
      const yl = (lo[k] & 0x80000000) | (lo[k1] & 0x7fffffff);
      // y >> 1 across the halves.
      let nh = yh >>> 1;
      let nl = ((yl >>> 1) | ((yh & 1) << 31)) >>> 0;
      if (yl & 1) {
        nh ^= 0xb5026f5a;
        nl ^= 0xa96619e9;
      }
      hi[k] = hi[km] ^ nh;
      lo[k] = (lo[km] ^ nl) >>> 0;
    }
    this.#pos = 0;
  }

  /** Next output as [hi, lo] unsigned 32-bit halves (avoids BigInt in hot loops). */
  nextHiLo(): [number, number] {
    if (this.#pos >= N64) this.#twist();
    let h = this.#hi[this.#pos];
    let l = this.#lo[this.#pos];
    this.#pos++;
    // y ^= (y >> 29) & 0x5555555555555555
    let sh = h >>> 29;
    let sl = ((l >>> 29) | (h << 3)) >>> 0;
    h ^= sh & 0x55555555;
    l ^= sl & 0x55555555;
    // y ^= (y << 17) & 0x71D67FFFEDA60000
    sh = ((h << 17) | (l >>> 15)) >>> 0;
    sl = (l << 17) >>> 0;
    h ^= sh & 0x71d67fff;
    l ^= sl & 0xeda60000;
    // y ^= (y << 37) & 0xFFF7EEE000000000 (only the high half changes)
    h ^= (l << 5) & 0xfff7eee0;
    // y ^= y >> 43 (only the low half changes)
    l ^= h >>> 11;
    return [h >>> 0, l >>> 0];
  }

  /** Next 64-bit output. */
  nextUint64(): bigint {
    const [h, l] = this.nextHiLo();
    return (BigInt(h) << 32n) | BigInt(l);
  }

  /** `gen() % m` for 1 <= m < 2^37 without BigInt (helpers.cpp: rand64_gen() % (i + 1)). */
  nextMod(m: number): number {
    if (!Number.isInteger(m) || m < 1 || m >= 2 ** 37) {
      throw new Error(`Mt19937_64.nextMod: expected an integer modulus in [1, 2^37), found ${m}`);
    }
    const [h, l] = this.nextHiLo();
    let x = h % m;
    x = (x * 65536 + (l >>> 16)) % m;
    return (x * 65536 + (l & 0xffff)) % m;
  }
}

/** Smallest all-ones mask >= max (max < 2^53). */
function maskFor(max: number): number {
  let mask = 1;
  while (mask < max) mask = mask * 2 + 1;
  return mask;
}

/**
 * numpy.random.RandomState (the legacy generator) with the methods Megatron's data code calls.
 * Each method consumes exactly the 32-bit words NumPy's does, so interleaved calls stay in step.
 */
export class RandomState {
  readonly #mt = new Mt19937();

  /** RandomState(int) seeds with init_genrand; RandomState(array) with init_by_array. */
  constructor(seed: number | ArrayLike<number>) {
    if (typeof seed === "number") {
      if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
        throw new Error(`RandomState: expected a seed in [0, 2^32-1], found ${seed}`);
      }
      this.#mt.seed(seed);
    } else {
      this.#mt.seedByArray(seed);
    }
  }

  /** One raw 32-bit output (the MT19937 stream). */
  nextUint32(): number {
    return this.#mt.nextUint32();
  }

  /** Two words combined high-first, as NumPy's next_uint64 for MT19937. */
  #nextUint64Masked(mask: number): number {
    const hi = this.#mt.nextUint32();
    const lo = this.#mt.nextUint32();
    const maskHi = Math.floor(mask / 4294967296);
    return (hi & maskHi) * 4294967296 + ((lo & (mask >>> 0)) >>> 0);
  }

  /**
   * A uniform integer in [0, max] by masked rejection (NumPy's random_interval and the legacy
   * bounded "masked" path). max < 2^53. max = 0 draws nothing.
   */
  randomInterval(max: number): number {
    if (max === 0) return 0;
    const mask = maskFor(max);
    if (max <= 0xffffffff) {
      for (;;) {
        const v = (this.#mt.nextUint32() & mask) >>> 0;
        if (v <= max) return v;
      }
    }
    for (;;) {
      const v = this.#nextUint64Masked(mask);
      if (v <= max) return v;
    }
  }

  /** random_sample(): a 53-bit double in [0, 1) from two words. */
  randomSample(): number {
    const a = this.#mt.nextUint32() >>> 5;
    const b = this.#mt.nextUint32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }

  /** Alias of randomSample (np_rng.random()). */
  random(): number {
    return this.randomSample();
  }

  /**
   * randint(low, high): integer in [low, high), legacy int64 path. A one-argument call
   * randint(high) means [0, high). The range must fit in 2^53.
   */
  randint(low: number, high?: number): number {
    if (high === undefined) {
      high = low;
      low = 0;
    }
    if (!Number.isSafeInteger(low) || !Number.isSafeInteger(high) || low >= high) {
      throw new Error(`RandomState.randint: expected integers low < high, found low=${low} high=${high}`);
    }
    const rng = high - low - 1;
    if (rng === 0) return low;
    // A full 32-bit range uses the raw word without masking or rejection.
    if (rng === 0xffffffff) return low + this.#mt.nextUint32();
    return low + this.randomInterval(rng);
  }

  /** In-place Fisher-Yates from the end, as RandomState.shuffle on a 1-D array (or list). */
  shuffle(a: ShuffleTarget): void {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.randomInterval(i);
      const t = a[i];
      a[i] = a[j];
      a[j] = t;
    }
  }

  /**
   * choice(n) or choice(n, p=p) for one index, as legacy RandomState.choice with replacement:
   * without p it is randint(0, n); with p it inverts the sequential cumsum of p (normalized by its
   * last value) at one random_sample, taking the first cdf entry > u (searchsorted side='right').
   */
  choice(n: number, p?: ArrayLike<number>): number {
    if (!Number.isSafeInteger(n) || n <= 0) {
      throw new Error(`RandomState.choice: expected a population size > 0, found ${n}`);
    }
    if (p === undefined) return this.randint(0, n);
    if (p.length !== n) {
      throw new Error(`RandomState.choice: expected ${n} probabilities, found ${p.length}`);
    }
    const cdf = new Float64Array(n);
    let acc = 0;
    for (let i = 0; i < n; i++) {
      if (!(p[i] >= 0)) {
        throw new Error(`RandomState.choice: expected probabilities >= 0, found p[${i}]=${p[i]}`);
      }
      acc += p[i];
      cdf[i] = acc;
    }
    // NumPy rejects p whose sum is off by more than sqrt(eps).
    if (Math.abs(acc - 1) > Math.sqrt(Number.EPSILON)) {
      throw new Error(`RandomState.choice: expected probabilities summing to 1, found ${acc}`);
    }
    const last = cdf[n - 1];
    for (let i = 0; i < n; i++) cdf[i] /= last;
    const u = this.randomSample();
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (cdf[mid] <= u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * geometric(p): trials until the first success, legacy algorithm (T5 span lengths use p = 0.2).
   * p >= 1/3 walks the CDF with one uniform; smaller p inverts it: ceil(log1p(-u) / log(1 - p)).
   */
  geometric(p: number): number {
    if (!(p > 0 && p <= 1)) throw new Error(`RandomState.geometric: expected 0 < p <= 1, found ${p}`);
    if (p >= 0.333333333333333333333333) {
      const q = 1 - p;
      const u = this.randomSample();
      let x = 1;
      let prod = p;
      let sum = p;
      while (u > sum) {
        prod *= q;
        sum += prod;
        x++;
      }
      return x;
    }
    return Math.ceil(Math.log1p(-this.randomSample()) / Math.log(1 - p));
  }

  /** permutation(n): a shuffled arange(n) (int64 in NumPy; numbers here). */
  permutation(n: number): Float64Array {
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = i;
    this.shuffle(out);
    return out;
  }
}
