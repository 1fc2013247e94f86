// sgemm throughput: BLAS via FFI (when one is found) and the TypeScript fallback, at 512 and 1024.
// `deno bench -A bench/gemm.bench.ts` times each case; GFLOP/s (2 n^3 / time) is also printed once
// from a short timed loop before the benches run.
import { type CpuBackend, createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import type { Tensor } from "../src/tensor/tensor.ts";

const blas = createCpuBackend({ log: () => {} });
const ts = createCpuBackend({ blas: "none", log: () => {} });
const cases: [string, CpuBackend][] = blas.blas ? [[blas.blas.name, blas], ["TS", ts]] : [["TS", ts]];

function operands(be: CpuBackend, n: number): [Tensor, Tensor, Tensor] {
  const a = be.empty("f32", [n, n]), b = be.empty("f32", [n, n]), c = be.empty("f32", [n, n]);
  be.fill(a, 0.5);
  be.fill(b, 0.25);
  return [a, b, c];
}

function run(be: CpuBackend, n: number, [a, b, c]: [Tensor, Tensor, Tensor]): void {
  be.gemm({ transA: false, transB: false, m: n, n, k: n, a, b, c });
}

for (const n of [512, 1024]) {
  for (const [name, be] of cases) {
    const ops = operands(be, n);
    run(be, n, ops); // warm up
    const reps = name === "TS" && n === 1024 ? 1 : 3;
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) run(be, n, ops);
    const s = (performance.now() - t0) / 1000 / reps;
    console.log(
      `sgemm ${n} ${name}: ${((2 * n ** 3) / s / 1e9).toFixed(2)} GFLOP/s (${(s * 1e3).toFixed(1)} ms)`,
    );
    Deno.bench({
      name: `sgemm ${n}x${n}x${n} ${name} (${(2 * n ** 3 / 1e9).toFixed(3)} GFLOP/iter)`,
      group: `sgemm ${n}`,
    }, () => {
      run(be, n, ops);
    });
  }
}
