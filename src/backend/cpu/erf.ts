// erf / erfc in f64 for the exact (erf) GeLU; JavaScript's Math has no erf. Relative error about
// 1e-15 for erf and erfc wherever they are representable (tests/backend_cpu_activation.test.ts
// checks known values), so f64 gradient checks of the GeLU are not limited by it.

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

/** erfc(z) for z >= 1.5: e^{-z^2}/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...)))), evaluated from
 *  a fixed depth upwards (100 levels converge to f64 from z = 1.5). */
function erfcFraction(z: number): number {
  let f = z;
  for (let k = 100; k >= 1; k--) f = z + (k / 2) / f;
  return ONE_OVER_SQRT_PI * Math.exp(-z * z) / f;
}

/** Complementary error function 1 - erf(z), accurate also where it is tiny (z large). */
export function erfc(z: number): number {
  if (Number.isNaN(z)) return NaN;
  if (z < 0) return 2 - erfc(-z);
  if (z < 1.5) return 1 - erfSeries(z); // erfc >= 0.03 here: the subtraction loses < 2 bits
  if (z > 27) return 0; // below the smallest f64
  return erfcFraction(z);
}

/** Error function. */
export function erf(z: number): number {
  if (Number.isNaN(z)) return NaN;
  if (z < 0) return -erf(-z);
  if (z < 3) return erfSeries(z);
  if (z > 6) return 1; // erfc(6) = 2e-17 < half an ulp of 1
  return 1 - erfcFraction(z);
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
