// GPU benchmark (deno task bench:gpu): cuBLAS GEMMs at GPT-345M shapes, the main kernels'
// bandwidth, and GPT-345M training steps (bf16 params, micro-batch 8, seq 1024, dropout 0.1,
// AdamW) on the CUDA backend: tokens/s, TFLOP/s, MFU (against src/training/peak.ts), peak memory,
// the time the device takes to initialize the weights, and the loss of the first and last step
// (exit 1 when it did not fall). Without CUDA it prints one skip line and exits 0, unless
// MEGATRON_DENO_REQUIRE_CUDA=1 (then the probe's reason is an error).
//
//   deno task bench:gpu [--steps 5] [--micro-batch 8] [--layers 24] [--skip-model] [--small] [--profile]
// --profile runs 2 more steps in the backend's profiling mode (after the timed ones, which it does not
// slow) and prints per step: device ms, calls, launches and host time per op (GEMMs by shape), launches
// per step and host time per launch.
// --fused-attention adds a second model run with the flash-attention kernels (kernels/attention.cu)
// (at most 5 timed steps) and prints its step time next to the unfused one.
// --small shrinks every shape (hidden 64, seq 64, vocab 512) to check the script itself, e.g. on
// the CPU emulator of tests/gpu/emulator; its numbers mean nothing.

import { parseArgs } from "node:util";
import { createCudaBackend, type CudaBackend, probeCuda } from "../../src/backend/cuda/cuda_backend.ts";
import { GPTModel, type LossOutput, padVocabSize } from "../../src/models/mod.ts";
import { makeParallelState, SingleRankCommunicator } from "../../src/parallel/types.ts";
import type { DType } from "../../src/tensor/dtype.ts";
import type { Tensor } from "../../src/tensor/tensor.ts";
import { devicePeak } from "../../src/training/peak.ts";
import { formatProfile } from "../../src/backend/cuda/profiler.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    steps: { type: "string", default: "5" },
    "micro-batch": { type: "string", default: "8" },
    layers: { type: "string", default: "24" },
    "skip-model": { type: "boolean", default: false },
    small: { type: "boolean", default: false },
    profile: { type: "boolean", default: false },
    "fused-attention": { type: "boolean", default: false },
  },
});

function timeIt(be: CudaBackend, reps: number, fn: () => void): number {
  fn(); // warm-up (and cuBLAS heuristics)
  be.synchronize();
  const a = be.recordEvent();
  for (let i = 0; i < reps; i++) fn();
  const b = be.recordEvent();
  return be.elapsedMs(a, b) / reps;
}

interface Sizes {
  T: number;
  h: number;
  V: number;
  cube: number;
  heads: number;
  seq: number;
}
const SIZES: Sizes = args.small
  ? { T: 256, h: 64, V: 512, cube: 128, heads: 4, seq: 64 }
  : { T: 8192, h: 1024, V: 50304, cube: 8192, heads: 16, seq: 1024 };

function gemmBench(be: CudaBackend, rows: string[][]): void {
  const { T, h, V, cube } = SIZES;
  const shapes: [string, number, number, number, boolean][] = [
    ["qkv fwd", T, 3 * h, h, true],
    ["attn proj fwd", T, h, h, true],
    ["h->4h fwd", T, 4 * h, h, true],
    ["4h->h fwd", T, h, 4 * h, true],
    ["logits fwd", T, V, h, true],
    [`${cube}^3`, cube, cube, cube, false],
  ];
  for (const [name, m, n, k, transB] of shapes) {
    const a = be.empty("bf16", [m, k]),
      b = be.empty("bf16", transB ? [n, k] : [k, n]),
      c = be.empty("bf16", [m, n]);
    // Varied data: constant operands toggle fewer bits and let tensor cores clock optimistically.
    be.normalInit(a, 1, { seed: 1, stream: 1, iteration: 0, base: 0, rowStride: a.size, rowLen: a.size });
    be.normalInit(b, 1, { seed: 1, stream: 2, iteration: 0, base: 0, rowStride: b.size, rowLen: b.size });
    const ms = timeIt(be, 10, () => be.gemm({ transA: false, transB, m, n, k, a, b, c }));
    rows.push([
      `gemm bf16 ${name}`,
      `${m}x${n}x${k}`,
      ms.toFixed(3),
      `${(2 * m * n * k / ms / 1e9).toFixed(0)} TFLOP/s`,
    ]);
    for (const t of [a, b, c]) be.free(t);
  }
}

function kernelBench(be: CudaBackend, rows: string[][]): void {
  const dt: DType = "bf16";
  const { T, h, heads, seq } = SIZES;
  const x = be.empty(dt, [T, h]), y = be.empty(dt, [T, h]), g = be.empty(dt, [h]), bb = be.empty(dt, [h]);
  const mean = be.empty("f32", [T]), rstd = be.empty("f32", [T]);
  for (const t of [x, g, bb]) be.fill(t, 0.5);
  const gb = (bytes: number, ms: number) => `${(bytes / ms / 1e6).toFixed(0)} GB/s`;
  let ms = timeIt(be, 20, () => be.layerNormFwd(x, g, bb, 1e-5, y, mean, rstd));
  rows.push(["layerNormFwd bf16", `${T}x${h}`, ms.toFixed(3), gb(4 * T * h, ms)]);
  const addr = { seed: 1, stream: 2, iteration: 3, base: 0, rowStride: h, rowLen: h };
  ms = timeIt(be, 20, () => be.dropout(x, 0.1, addr, y));
  rows.push(["dropout bf16 p=0.1", `${T}x${h}`, ms.toFixed(3), gb(4 * T * h, ms)]);
  const x4 = be.empty(dt, [T, 4 * h]), y4 = be.empty(dt, [T, 4 * h]), b4 = be.empty(dt, [4 * h]);
  be.fill(x4, 0.1);
  be.fill(b4, 0.1);
  ms = timeIt(be, 20, () => be.biasGeluFwd(x4, b4, y4));
  rows.push(["biasGeluFwd bf16", `${T}x${4 * h}`, ms.toFixed(3), gb(4 * T * 4 * h, ms)]);
  const sShape = [T / seq, heads, seq, seq];
  const s = be.empty(dt, sShape), p = be.empty(dt, sShape);
  be.fill(s, 0.1);
  ms = timeIt(be, 10, () => be.softmaxFwd(s, 0.125, { kind: "causal" }, p));
  rows.push(["softmaxFwd causal bf16", sShape.join("x"), ms.toFixed(3), gb(4 * s.size, ms)]);
  for (const t of [x, y, g, bb, mean, rstd, x4, y4, b4, s, p]) be.free(t);
}

async function modelBench(
  be: CudaBackend,
  rows: string[][],
  profile: string[],
  fused: boolean,
): Promise<void> {
  be.setFusedAttention(fused);
  // The fused-attention run is capped at 5 timed steps: its kernels' speed is unknown until measured,
  // and scripts/gpu_check.sh gives the whole bench a fixed time budget.
  const layers = Number(args.layers), mb = Number(args["micro-batch"]);
  const steps = fused ? Math.min(5, Number(args.steps)) : Number(args.steps);
  const { h, heads, seq } = SIZES;
  const vocab = args.small ? SIZES.V : padVocabSize(50257, 128, 1);
  const ps = makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0);
  be.synchronize();
  const tInit = performance.now();
  const model = new GPTModel(
    {
      numLayers: layers,
      hiddenSize: h,
      numAttentionHeads: heads,
      seqLength: seq,
      maxPositionEmbeddings: seq,
      vocabSize: vocab,
      hiddenDropout: 0.1,
      attentionDropout: 0.1,
      initMethodStd: 0.02,
      paramsDtype: "bf16",
      activationsCheckpointMethod: null,
      seed: 1234,
    },
    be,
    ps,
    new SingleRankCommunicator(),
  );
  const params = model.params();
  be.synchronize();
  const initSec = (performance.now() - tInit) / 1000; // weights drawn on the device (normalInit)
  const nParams = params.reduce((s, p) => s + p.value.size, 0);
  const st = params.map((p) => ({ m: be.zeros("f32", p.value.shape), v: be.zeros("f32", p.value.shape) }));
  const tok = new Int32Array(mb * seq).map((_, i) => (i * 7919) % vocab);
  const lab = tok.map((t) => (t + 1) % vocab);
  const ids: Tensor[] = [be.fromHost("i32", [mb, seq], tok), be.fromHost("i32", [mb, seq], lab)];
  const mask = be.fromHost("f32", [mb, seq], new Float32Array(mb * seq).fill(1));
  let lastLoss = 0, firstLoss = NaN;
  const step = async (it: number) => {
    model.zeroGrads();
    const ctx = model.newContext({ iteration: it, firstGlobalSample: it * mb });
    const out = await model.forward({ tokens: ids[0], labels: ids[1], lossMask: mask }, ctx) as LossOutput;
    await model.backward(ctx, 1);
    // Multi-tensor Adam (few launches), as MegatronOptimizer uses it on this backend.
    be.adamStepMulti(
      params.map((p, i) => ({
        param: p.main ?? p.value,
        grad: p.grad,
        m: st[i].m,
        v: st[i].v,
        copyTo: p.main ? p.value : null,
      })),
      { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01, step: it },
    );
    lastLoss = out.loss;
    if (Number.isNaN(firstLoss)) firstLoss = out.loss;
  };
  await step(1);
  await step(2);
  be.synchronize();
  be.resetPeakMemory();
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) await step(3 + i);
  be.synchronize();
  const sec = (performance.now() - t0) / 1000 / steps;
  const tokens = mb * seq;
  // Megatron's model FLOPs per iteration without recompute: 72 B s l h^2 (1 + s/(6h) + V/(12 l h)).
  const flops = 72 * mb * seq * layers * h * h * (1 + seq / (6 * h) + vocab / (12 * layers * h));
  const mem = be.memoryStats();
  // --small runs on emulators, where the peak's fallback (a 4096^3 GEMM) would take hours.
  const peak = args.small ? null : devicePeak(be, "bf16");
  const fell = lastLoss < firstLoss;
  rows.push([
    `GPT${args.small ? " (--small)" : "-345M-shape"} train step (${layers} layers, ${
      (nParams / 1e6).toFixed(1)
    }M params${fused ? ", fused attention" : ""})`,
    `bf16 mb=${mb} s=${seq}`,
    (sec * 1000).toFixed(1),
    `${fell ? "" : "FAILED (loss did not fall) "}${(tokens / sec).toFixed(0)} tok/s, ${
      (flops / sec / 1e12).toFixed(0)
    } TFLOP/s, ${
      peak ? `MFU ${(100 * flops / sec / peak.flops).toFixed(1)}% of ${peak.what}` : "MFU n/a (--small)"
    }, loss ${firstLoss.toFixed(3)} -> ${lastLoss.toFixed(3)} over ${steps + 2} steps, peak ${
      (mem.peakAllocatedBytes / 2 ** 30).toFixed(1)
    } GiB (reserved ${(mem.peakReservedBytes / 2 ** 30).toFixed(1)}), init on device ${initSec.toFixed(2)} s`,
  ]);
  if (args.profile) {
    be.startProfiling();
    for (let i = 0; i < 2; i++) {
      await step(3 + steps + i);
      be.markProfileStep();
    }
    profile.push(`${fused ? "fused" : "unfused"} attention:\n${formatProfile(be.stopProfiling())}`);
  }
}

async function main(): Promise<number> {
  const p = probeCuda();
  if (!p.ok) {
    console.log(`bench:gpu: skipped — no CUDA: ${p.reason}`);
    return 0;
  }
  const be = await createCudaBackend();
  console.log(`bench:gpu on ${be.description}`);
  const rows: string[][] = [];
  const profile: string[] = [];
  gemmBench(be, rows);
  kernelBench(be, rows);
  if (!args["skip-model"]) {
    try {
      await modelBench(be, rows, profile, false);
    } catch (e) {
      rows.push(["GPT-345M train step", "-", "-", `FAILED: ${(e as Error).message}`]);
    }
    if (args["fused-attention"]) {
      be.emptyCache();
      try {
        await modelBench(be, rows, profile, true);
      } catch (e) {
        rows.push(["GPT-345M train step, fused attention", "-", "-", `FAILED: ${(e as Error).message}`]);
      }
    }
  }
  console.log(["what".padEnd(58) + " " + "shape".padEnd(20) + " " + "ms".padStart(9) + "  rate"].join(""));
  for (const r of rows) console.log(`${r[0].padEnd(58)} ${r[1].padEnd(20)} ${r[2].padStart(9)}  ${r[3]}`);
  for (const p of profile) console.log(`\nprofile of one training step (mean of 2, --profile):\n${p}`);
  return rows.some((r) => r[3].includes("FAILED")) ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
