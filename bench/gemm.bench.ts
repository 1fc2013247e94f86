// sgemm throughput: BLAS via FFI (when one is found), the WebAssembly SIMD GEMM (the no-BLAS fallback)
// on 1 thread and on all cores (at most 8), and the TypeScript loops, at 512^3 and at the embedded
// default's logits shapes (tokens 1024 = mb 8 x seq 128, hidden 128, vocab 50304): forward
// [1024,128] x [50304,128]^T, input grad [1024,50304] x [50304,128], weight grad [1024,50304]^T x [1024,128].
// `deno bench -A bench/gemm.bench.ts` times each case; GFLOP/s (2 m n k / time, best run) and GFLOP per
// CPU-second (all threads) are also printed from a short timed loop before the benches run
// (`--filter none` prints only those).
import { type CpuBackend, createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { defaultGemmThreads } from "../src/backend/cpu/gemm_wasm.ts";
import type { Tensor } from "../src/tensor/tensor.ts";

const blas = createCpuBackend({ log: () => {} });
const threads = defaultGemmThreads();
const wasmAll = createCpuBackend({ blas: "none", gemmThreads: threads, log: () => {} });
const wasm1 = createCpuBackend({ blas: "none", gemmThreads: 1, log: () => {} });
const ts = createCpuBackend({ blas: "none", fallbackGemm: "ts", log: () => {} });
const cases: [string, CpuBackend][] = [
  ...(blas.blas ? [[blas.blas.name, blas] as [string, CpuBackend]] : []),
  [`wasm ${threads}t`, wasmAll],
  ["wasm 1t", wasm1],
  ["TS", ts],
];

interface Shape {
  name: string;
  m: number;
  n: number;
  k: number;
  tA: boolean;
  tB: boolean;
}
const shapes: Shape[] = [
  { name: "512^3", m: 512, n: 512, k: 512, tA: false, tB: false },
  { name: "logits fwd", m: 1024, n: 50304, k: 128, tA: false, tB: true },
  { name: "logits dX", m: 1024, n: 128, k: 50304, tA: false, tB: false },
  { name: "logits dW", m: 50304, n: 128, k: 1024, tA: true, tB: false },
];

function operands(be: CpuBackend, s: Shape): [Tensor, Tensor, Tensor] {
  const a = be.empty("f32", s.tA ? [s.k, s.m] : [s.m, s.k]),
    b = be.empty("f32", s.tB ? [s.n, s.k] : [s.k, s.n]);
  be.fill(a, 0.5);
  be.fill(b, 0.25);
  return [a, b, be.empty("f32", [s.m, s.n])];
}

function run(be: CpuBackend, s: Shape, [a, b, c]: [Tensor, Tensor, Tensor]): void {
  be.gemm({ transA: s.tA, transB: s.tB, m: s.m, n: s.n, k: s.k, a, b, c });
}

// Let the workers start before anything is timed (they join jobs once ready).
wasmAll.wasmGemm!.start();
const t0 = Date.now();
while (wasmAll.wasmGemm!.readyWorkers() < threads - 1 && Date.now() - t0 < 30_000) {
  await new Promise((r) => setTimeout(r, 5));
}

/** CPU seconds used by this process so far (all threads; Linux /proc, else null). On a shared machine
 *  wall-clock rates depend on what else runs; GFLOP per CPU-second shows the code's own efficiency. */
function cpuSeconds(): number | null {
  try {
    const f = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in USER_HZ = 100 ticks
  } catch {
    return null;
  }
}

for (const s of shapes) {
  const flop = 2 * s.m * s.n * s.k;
  for (const [name, be] of cases) {
    if (name === "TS" && s.name !== "512^3") continue; // ~10 s per logits GEMM
    const ops = operands(be, s);
    run(be, s, ops); // warm up
    let best = Infinity, reps = 0;
    const c0 = cpuSeconds(), t0 = performance.now();
    // At least 2 runs and 0.5 s, so the 10 ms CPU-time ticks are fine enough.
    while (reps < 2 || performance.now() - t0 < 500) {
      const t = performance.now();
      run(be, s, ops);
      best = Math.min(best, performance.now() - t);
      reps++;
    }
    const c1 = cpuSeconds();
    const perCpu = c0 === null || c1 === null
      ? ""
      : `, ${(flop * reps / (c1 - c0) / 1e9).toFixed(1)} GFLOP/CPU-s`;
    console.log(
      `sgemm ${s.name} ${s.m}x${s.n}x${s.k} ${name}: ${
        (flop / best / 1e6).toFixed(1)
      } GFLOP/s (best of ${reps}: ${best.toFixed(1)} ms${perCpu})`,
    );
    Deno.bench(
      { name: `sgemm ${s.name} ${name} (${(flop / 1e9).toFixed(2)} GFLOP/iter)`, group: s.name },
      () => {
        run(be, s, ops);
      },
    );
  }
}
