// erf / erfc in f64 for the exact (erf) GeLU; JavaScript's Math has no erf. Accurate to ~5e-15 relative
// wherever representable (tests/backend_cpu_activation.test.ts checks libm's values and the fast path
// against the series / continued-fraction reference), so an f32 result is the true value rounded once.

const TWO_OVER_SQRT_PI = 1.1283791670955126;
const ONE_OVER_SQRT_PI = 0.5641895835477563;

/** erf(z) for 0 <= z < 3: (2/sqrt pi) e^{-z^2} sum_n (2z^2)^n z / (1 3 ... (2n+1)), all terms positive
 *  (no cancellation), about 60 terms at z = 3. */
function erfSeries(z: number): number {
  const z2 = 2 * z * z;
  let term = z, sum = z;
  for (let n = 0; n < 200; n++) {
    term *= z2 / (2 * n + 3);
    sum += term;
    if (term < 1e-17 * sum) break;
  }
  return TWO_OVER_SQRT_PI * Math.exp(-z * z) * sum;
}

/** erfc(z): e^{-z^2}/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...)))), evaluated from a fixed depth
 *  upwards (400 levels converge to f64 from z = 0.8, 40 from z = 6). */
function erfcFraction(z: number, depth: number): number {
  let f = z;
  for (let k = depth; k >= 1; k--) f = z + (k / 2) / f;
  return ONE_OVER_SQRT_PI * Math.exp(-z * z) / f;
}

/** Reference erfc (slow: up to 400 steps per value); builds the table and checks the fast path. */
export function erfcReference(z: number): number {
  if (Number.isNaN(z)) return NaN;
  if (z < 0) return 2 - erfcReference(-z);
  if (z < 0.8) return 1 - erfSeries(z); // erfc > 0.25 here: the subtraction loses < 2 bits
  if (z > 27) return 0; // below the smallest f64
  return erfcFraction(z, 400);
}

// Fast erfc on [0, 6]: a Taylor polynomial around the nearest grid point z_k = k / 32 (|dz| <= 1/64).
// erfc^(n)(z) = -(2/sqrt pi) (-1)^(n-1) H_(n-1)(z) e^{-z^2} (physicists' Hermite H), so the
// coefficients follow from a recurrence; 14 terms leave a remainder below 1e-20 relative.
const GRID = 32, ZMAX = 6, ORDER = 14;

/** Coefficients [k * ORDER + n] = erfc^(n)(k / GRID) / n!. A constant table, built once per import. */
function buildTable(): Float64Array {
  const pts = ZMAX * GRID + 1, t = new Float64Array(pts * ORDER);
  for (let k = 0; k < pts; k++) {
    const z = k / GRID, g = TWO_OVER_SQRT_PI * Math.exp(-z * z);
    t[k * ORDER] = erfcReference(z);
    let hPrev = 0, h = 1, fact = 1; // H_-1 (unused), H_0
    for (let n = 1; n < ORDER; n++) {
      fact *= n;
      // coefficient of dz^n uses H_(n-1)
      t[k * ORDER + n] = -g * ((n - 1) % 2 === 0 ? 1 : -1) * h / fact;
      const hNext = 2 * z * h - 2 * (n - 1) * hPrev; // H_n = 2z H_(n-1) - 2(n-1) H_(n-2)
      hPrev = h;
      h = hNext;
    }
  }
  return t;
}
const TABLE = buildTable();

/** Complementary error function 1 - erf(z), accurate also where it is tiny (z large). */
export function erfc(z: number): number {
  if (z < 0) return 2 - erfc(-z);
  if (z <= ZMAX) {
    const k = Math.round(z * GRID), dz = z - k / GRID, o = k * ORDER;
    let s = TABLE[o + ORDER - 1];
    for (let n = ORDER - 2; n >= 0; n--) s = s * dz + TABLE[o + n];
    return s;
  }
  if (z > 27) return 0;
  if (Number.isNaN(z)) return NaN;
  return erfcFraction(z, 40);
}

/** Error function. */
export function erf(z: number): number {
  if (Number.isNaN(z)) return NaN;
  if (z < 0) return -erf(-z);
  // Small z: the series keeps the relative accuracy that 1 - erfc(z) would lose.
  if (z < 0.5) return erfSeries(z);
  return 1 - erfc(z);
}

const SQRT1_2 = Math.SQRT1_2;
const ONE_OVER_SQRT_2PI = 0.3989422804014327;

/** Exact GeLU x Phi(x) = 0.5 x erfc(-x / sqrt 2) (erfc keeps negative x free of cancellation). */
export function geluErf(x: number): number {
  return 0.5 * x * erfc(-x * SQRT1_2);
}

/** d/dx [x Phi(x)] = Phi(x) + x phi(x). */
export function geluErfGrad(x: number): number {
  return 0.5 * erfc(-x * SQRT1_2) + x * ONE_OVER_SQRT_2PI * Math.exp(-0.5 * x * x);
}
