// Training throughput of the embedded default (`deno task pretrain:gpt` with no flags): the same
// config (EMBEDDED_DEFAULT) on the bundled corpus, a fixed number of iterations, CPU backend.
// tokens/s counts full training steps (forward, backward, optimizer) after WARMUP iterations, from the
// per-iteration metrics; bench/pytorch_cpu_gpt.py runs the same shapes in PyTorch-CPU:
//
//   deno run -A bench/pretrain_default.bench.ts [iterations]      prints tokens/s (default 20)
//   deno bench -A bench/pretrain_default.bench.ts                 one timed run of 10 iterations
//   python3 bench/pytorch_cpu_gpt.py --num-layers 4 --hidden-size 128 --num-attention-heads 4 \
//     --seq-length 128 --micro-batch-size 8 --vocab 50304 --iters 20

import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { ensureDefaultCorpus } from "../src/data/corpus.ts";
import { parseArgs, validateForTraining, withDefaults } from "../src/training/config.ts";
import { readMetrics } from "../src/training/metrics.ts";
import { pretrainGPT } from "../src/training/train.ts";
import { EMBEDDED_DEFAULT } from "../tasks/pretrain_gpt.ts";

const WARMUP = 2;

/** Train the embedded default for `iters` iterations; tokens/s over the iterations after WARMUP. */
export async function embeddedDefaultTokensPerSecond(iters: number): Promise<{
  tokensPerSecond: number;
  msPerIteration: number;
  tokensPerIteration: number;
  backend: string;
}> {
  const { prefix } = await ensureDefaultCorpus({ log: () => {} });
  const dir = Deno.makeTempDirSync({ prefix: "mdeno_bench_" });
  try {
    const metricsFile = `${dir}/metrics.jsonl`;
    const cfg = validateForTraining(withDefaults(parseArgs([]), {
      ...EMBEDDED_DEFAULT,
      dataPath: [prefix],
      trainIters: WARMUP + iters,
      lrDecayIters: EMBEDDED_DEFAULT.trainIters, // the default's schedule (its warmup is 25 iterations)
      logInterval: 1,
      evalIters: 0,
      save: undefined,
      metricsFile,
    }));
    const backend = createCpuBackend({ log: () => {} });
    await pretrainGPT(cfg, { backend, log: () => {} });
    const recs = readMetrics(metricsFile).filter((r) =>
      r.kind === "train" && (r.iteration as number) > WARMUP
    );
    const ms = recs.reduce((s, r) => s + (r.ms_per_iteration as number), 0);
    const tokensPerIteration = cfg.globalBatchSize! * cfg.seqLength!;
    return {
      tokensPerSecond: (recs.length * tokensPerIteration) / (ms / 1000),
      msPerIteration: ms / recs.length,
      tokensPerIteration,
      backend: backend.description,
    };
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

if (import.meta.main) {
  const iters = Number(Deno.args[0] ?? 20);
  if (!Number.isInteger(iters) || iters < 1) {
    console.error(
      `pretrain_default: expected a positive iteration count, found ${JSON.stringify(Deno.args[0])}`,
    );
    Deno.exit(2);
  }
  const r = await embeddedDefaultTokensPerSecond(iters);
  console.log(
    `embedded default (${r.tokensPerIteration} tokens/iteration, ${iters} timed iterations after ${WARMUP} ` +
      `warmup) on ${r.backend}: ${r.msPerIteration.toFixed(1)} ms/iteration, ${
        r.tokensPerSecond.toFixed(0)
      } tokens/s`,
  );
} else {
  Deno.bench({
    name: "embedded default GPT: 10 training iterations (1024 tokens each)",
    n: 1,
    warmup: 0,
    async fn() {
      await embeddedDefaultTokensPerSecond(10);
    },
  });
}
