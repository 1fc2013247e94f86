// Backend activations (tanh, exact erf GeLU) on the CPU: erf/erfc against Python's math.erf/erfc
// values, the f64 derivative against central differences of the forward, and f32/bf16 as the f64
// value rounded once.
import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { erf, erfc, erfcReference, geluErf } from "../src/backend/cpu/erf.ts";
import { bf16BitsToF32, f32ToBf16Bits } from "../src/tensor/dtype.ts";

const be = createCpuBackend({ log: () => {} });

// [z, math.erf(z), math.erfc(z)] from CPython 3 (libm).
const KNOWN: [number, number, number][] = [
  [0, 0, 1],
  [0.1, 0.1124629160182849, 0.8875370839817152],
  [0.5, 0.5204998778130465, 0.4795001221869535],
  [1, 0.8427007929497149, 0.15729920705028513],
  [0.7, 0.6778011938374184, 0.32219880616258156],
  [0.9, 0.7969082124228322, 0.20309178757716786],
  [1.2, 0.9103139782296353, 0.08968602177036465],
  [1.4375, 0.95794060605646, 0.04205939394353994],
  [2, 0.9953222650189527, 0.004677734981047265],
  [2.9, 0.9999589021219005, 4.109787809945886e-05],
  [3, 0.9999779095030014, 2.2090496998585438e-05],
  [3.5, 0.9999992569016276, 7.430983723414128e-07],
  [4, 0.9999999845827421, 1.541725790028002e-08],
  [5, 0.9999999999984626, 1.5374597944280351e-12],
  [6, 1.0, 2.1519736712498916e-17],
  [-1.3, -0.9340079449406524, 1.9340079449406524],
];

Deno.test("erf / erfc: known values to 1e-15 / 5e-15 relative", () => {
  for (const [z, e, ec] of KNOWN) {
    assert.ok(
      Math.abs(erf(z) - e) <= 1e-15 * Math.max(1e-300, Math.abs(e)) + 1e-300,
      `erf(${z}) = ${erf(z)}`,
    );
    assert.ok(Math.abs(erfc(z) - ec) <= 5e-15 * ec, `erfc(${z}) = ${erfc(z)} vs ${ec}`);
  }
  // GeLU(x) = x Phi(x): Phi(1) = 0.8413447460685429, Phi(-2) = 0.022750131948179195 (scipy.stats.norm.cdf).
  assert.ok(Math.abs(geluErf(1) - 0.8413447460685429) < 1e-15);
  assert.ok(Math.abs(geluErf(-2) - -2 * 0.022750131948179195) < 1e-15);
});

Deno.test("erfc: the tabulated fast path equals the series / continued-fraction reference to 5e-15", () => {
  let worst = 0;
  for (let i = 0; i <= 29000; i++) {
    const z = -3 + i * 0.001 + 1e-7; // off the grid points too; erfc > 0 down to z = 27
    const a = erfc(z), r = erfcReference(z);
    worst = Math.max(worst, Math.abs(a - r) / r);
  }
  for (const z of [6.0001, 7, 10, 20, 26.5]) {
    worst = Math.max(worst, Math.abs(erfc(z) - erfcReference(z)) / erfcReference(z));
  }
  assert.ok(worst < 5e-15, `worst relative difference ${worst}`);
});

for (const kind of ["tanh", "gelu_erf"] as const) {
  Deno.test(`activation ${kind}: f64 backward = central difference of forward`, () => {
    const xs = Array.from({ length: 41 }, (_, i) => -6 + i * 0.3 + 0.01);
    const n = xs.length, h = 1e-6;
    const fwd = (v: number[]) => {
      const x = be.fromHost("f64", [v.length], v), y = be.empty("f64", [v.length]);
      be.activationFwd(kind, x, y);
      const out = be.toF64(y);
      be.free(x);
      be.free(y);
      return out;
    };
    const yp = fwd(xs.map((v) => v + h)), ym = fwd(xs.map((v) => v - h));
    const x = be.fromHost("f64", [n], xs), dy = be.fromHost("f64", [n], xs.map((_, i) => 1 + i / 10));
    const dx = be.empty("f64", [n]);
    be.activationBwd(kind, dy, x, dx);
    const g = be.toF64(dx);
    for (let i = 0; i < n; i++) {
      const num = (1 + i / 10) * (yp[i] - ym[i]) / (2 * h);
      assert.ok(
        Math.abs(g[i] - num) <= 1e-8 * Math.max(1, Math.abs(num)),
        `${kind}'(${xs[i]}): ${g[i]} vs ${num}`,
      );
    }
    // tanh known value; the erf GeLU at 0 has slope 1/2.
    const y = fwd([0.5, 0]);
    if (kind === "tanh") assert.equal(y[0], Math.tanh(0.5));
    else assert.equal(y[1], 0);
  });

  Deno.test(`activation ${kind}: f32 and bf16 are the f64 result rounded once`, () => {
    const xs = Array.from({ length: 64 }, (_, i) => Math.fround(-4 + i * 0.127));
    const ref = be.empty("f64", [64]);
    const x64 = be.fromHost("f64", [64], xs);
    be.activationFwd(kind, x64, ref);
    const r = be.toF64(ref);
    const x32 = be.fromHost("f32", [64], xs), y32 = be.empty("f32", [64]);
    be.activationFwd(kind, x32, y32);
    assert.deepEqual([...be.toF64(y32)], [...r].map(Math.fround));
    const xb = be.fromHost("bf16", [64], xs), yb = be.empty("bf16", [64]);
    be.activationFwd(kind, xb, yb);
    const xbv = be.toF64(xb);
    const want = [...xbv].map((v) => {
      const t = be.fromHost("f64", [1], [v]), o = be.empty("f64", [1]);
      be.activationFwd(kind, t, o);
      return bf16BitsToF32(f32ToBf16Bits(Math.fround(be.toF64(o)[0])));
    });
    assert.deepEqual([...be.toF64(yb)], want);
  });
}

Deno.test("activation: an unknown kind and a shape mismatch are one clear line", () => {
  const x = be.zeros("f32", [4]), y = be.zeros("f32", [5]);
  assert.throws(
    () => be.activationFwd("relu" as "tanh", x, be.zeros("f32", [4])),
    /activationFwd\(relu\): unknown activation relu, expected tanh or gelu_erf/,
  );
  assert.throws(() => be.activationFwd("tanh", x, y), /activationFwd\(tanh\)/);
});
