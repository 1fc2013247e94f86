// The start-up memory estimate (src/training/memory_estimate.ts) against what a real training run
// allocates: pretrainGPT on a backend wrapper that counts live bytes, in several layouts, dtypes and
// recompute settings. The parameter count is exact; the total (params + grads + optimizer +
// activations) must be at least the peak of live bytes over the run (eval included) and at most 10% above it. Also:
// MemAvailable parsing and the one-line "does not fit" message.

import assert from "node:assert/strict";
import type { Backend } from "../src/backend/backend.ts";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { parseArgs, validateForTraining } from "../src/training/config.ts";
import { checkFits, estimateMemory, formatBytes, hostMemAvailable } from "../src/training/memory_estimate.ts";
import { modelConfigOf, pretrainGPT } from "../src/training/train.ts";
import { DTYPE_BYTES } from "../src/tensor/dtype.ts";
import type { Storage, Tensor } from "../src/tensor/tensor.ts";
import { preprocessTinyCorpus } from "./helpers/tiny_corpus.ts";

const DIR = Deno.makeTempDirSync({ prefix: "mdeno_mem_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));

const DATA = preprocessTinyCorpus(
  DIR,
  Array.from({ length: 60 }, (_, d) => Array.from({ length: 80 + d }, (_, i) => (i * 7 + d) % 60).join(" ")),
  60,
);

/** A CPU backend that tracks live bytes and their peak; the set of live storages per rank is shared. */
function counting(): { backend: Backend; peak: () => number } {
  const raw = createCpuBackend({ log: () => {} });
  const sizes = new Map<Storage, number>();
  let live = 0, peak = 0;
  const backend = new Proxy(raw, {
    get(target, key) {
      const v = Reflect.get(target, key);
      if (typeof v !== "function") return v;
      if (key === "empty" || key === "zeros" || key === "fromHost") {
        return (...args: unknown[]) => {
          const t = v.apply(target, args) as Tensor;
          const n = t.size * DTYPE_BYTES[t.dtype];
          sizes.set(t.storage, n);
          live += n;
          peak = Math.max(peak, live);
          return t;
        };
      }
      if (key === "free") {
        return (t: Tensor) => {
          live -= sizes.get(t.storage) ?? 0;
          sizes.delete(t.storage);
          v.call(target, t);
        };
      }
      return v.bind(target);
    },
  }) as Backend;
  return { backend, peak: () => peak };
}

const CASES: [string, string[]][] = [
  ["f32, no pipelining, 2 micro-batches", ["--micro-batch-size", "2", "--global-batch-size", "4"]],
  ["bf16, attention dropout 0", ["--bf16", "--attention-dropout", "0"]],
  ["fp16, SGD", ["--fp16", "--optimizer", "sgd"]],
  ["uniform recompute 2", [
    "--activations-checkpoint-method",
    "uniform",
    "--activations-checkpoint-num-layers",
    "2",
  ]],
  ["block recompute 1", [
    "--activations-checkpoint-method",
    "block",
    "--activations-checkpoint-num-layers",
    "1",
  ]],
  ["1F1B over 2 stages, 4 micro-batches", [
    "--pipeline-model-parallel-size",
    "2",
    "--global-batch-size",
    "8",
  ]],
  ["TP 2 x DP 2", ["--tensor-model-parallel-size", "2", "--world-size", "4", "--global-batch-size", "4"]],
  [
    "interleaved 2 stages x 2 chunks",
    [
      "--pipeline-model-parallel-size",
      "2",
      "--num-layers-per-virtual-pipeline-stage",
      "1",
      "--global-batch-size",
      "4",
    ],
  ],
];

for (const [name, extra] of CASES) {
  Deno.test(`memory estimate: ${name} is at most 10% above the peak live bytes of a real run, never below`, async () => {
    const args = [
      ...["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32"],
      ...["--max-position-embeddings", "32", "--micro-batch-size", "1", "--lr", "1e-3", "--train-iters", "2"],
      ...["--eval-interval", "1", "--eval-iters", "1", "--split", "80,20,0", "--data-path", await DATA],
      ...["--tokenizer-type", "NullTokenizer", "--vocab-size", "60", "--log-interval", "1"],
      ...extra,
    ];
    const cfg = validateForTraining(parseArgs(args));
    const { backend, peak } = counting();
    const lines: string[] = [];
    const result = await pretrainGPT(cfg, { backend, log: (l) => lines.push(l) });
    const padded = result.paddedVocabSize;
    const dp = cfg.dataParallelSize;
    const est = estimateMemory(modelConfigOf(cfg, padded), {
      tp: cfg.tensorModelParallelSize,
      pp: cfg.pipelineModelParallelSize,
      dp,
      vp: cfg.virtualPipelineModelParallelSize,
      microBatchSize: cfg.microBatchSize!,
      numMicroBatches: cfg.globalBatchSize! / (cfg.microBatchSize! * dp),
      optimizer: cfg.optimizer as "adam" | "sgd",
    });
    // Parameters: the logged count (shared copies excluded) from an independent closed form.
    const h = 32, L = 4, V = padded, s = 32;
    const closed = L * (12 * h * h + 13 * h) + V * h + s * h + 2 * h;
    const logged = lines.find((l) => l.startsWith("> model:"))!;
    assert.ok(logged.includes(`${(closed / 1e6).toFixed(2)}M parameters`), logged);
    const tp = cfg.tensorModelParallelSize, pp = cfg.pipelineModelParallelSize;
    const estParams = est.ranks.reduce((a, r) => a + r.params, 0);
    // Each TP rank holds 1/tp of the split weights plus full copies of LayerNorms, biases of row-parallel
    // layers and position embeddings; the last stage (pp > 1) holds a copy of the word embedding.
    const replicated = L * (2 * 2 * h + 2 * h) + s * h + 2 * h;
    const want = (closed - replicated) + tp * replicated + (pp > 1 ? V * h : 0);
    assert.equal(estParams, want);
    // Micro-batches in flight per stage: Megatron's warm-up count + 1 (1F1B: p - r; interleaved:
    // (p - r - 1) * 2 + (v - 1) * p + 1), 1 without pipelining.
    const inFlight = est.ranks.filter((r) => r.tp === 0).map((r) => r.inFlight);
    if (pp === 1) assert.deepEqual(inFlight, [1]);
    else if (cfg.virtualPipelineModelParallelSize === 1) assert.deepEqual(inFlight, [2, 1]);
    else assert.deepEqual(inFlight, [5, 3]);
    const ratio = est.total / peak();
    assert.ok(
      ratio >= 1 && ratio < 1.1,
      `estimate ${est.total} B vs peak ${peak()} B (ratio ${ratio.toFixed(3)})`,
    );
    assert.ok(logged.includes(`memory estimate ${formatBytes(est.total)}`), logged);
  });
}

Deno.test("memory estimate: MemAvailable parsing and the one-line message", () => {
  const meminfo = "MemTotal:       16318040 kB\nMemFree:          123456 kB\nMemAvailable:    8000000 kB\n";
  assert.equal(hostMemAvailable(meminfo), 8000000 * 1024);
  assert.equal(hostMemAvailable("MemTotal: 1 kB\n"), null);
  const cfg = validateForTraining(parseArgs([
    ...["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "2", "--seq-length", "16"],
    ...["--max-position-embeddings", "16", "--micro-batch-size", "1", "--lr", "1e-3", "--train-iters", "1"],
    ...["--data-path", "x", "--tokenizer-type", "NullTokenizer", "--vocab-size", "60"],
  ]));
  const est = estimateMemory(modelConfigOf(cfg, 64), {
    tp: 1,
    pp: 1,
    dp: 1,
    vp: 1,
    microBatchSize: 1,
    numMicroBatches: 1,
    optimizer: "adam",
  });
  // 2 (12 h^2 + 13 h) + V h + s h + 2 h parameters, 4 bytes each; grads 4; Adam 8.
  const n = 2 * (12 * 64 * 64 + 13 * 64) + 64 * 64 + 16 * 64 + 2 * 64;
  assert.equal(est.paramBytes, 4 * n);
  assert.equal(est.gradBytes, 4 * n);
  assert.equal(est.optimizerBytes, 8 * n);
  assert.equal(checkFits(est, { bytes: est.total, what: "x" }), null);
  assert.equal(
    checkFits(est, { bytes: 1024, what: "available host memory (MemAvailable in /proc/meminfo)" }),
    `the model does not fit: memory estimate ${formatBytes(est.total)} (params ${formatBytes(4 * n)}, ` +
      `grads ${formatBytes(4 * n)}, optimizer ${formatBytes(8 * n)}, activations ` +
      `${
        formatBytes(est.activationBytes)
      }) exceeds the 1.00 KiB of available host memory (MemAvailable in /proc/meminfo)`,
  );
});
