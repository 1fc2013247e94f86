// One GPT training step (forward + backward of one micro-batch) on the CPU backend, and the full
// training step of the embedded default (`deno task pretrain:gpt` with no flags: forward, backward, grad
// norm clipping, Adam) through RankState.trainStep.
// tokens/s = (b * s) * iterations/s as reported by deno bench (b * s is in each bench's name).
// GPT_STEP_PROFILE=<steps> first prints the embedded default's per-op time breakdown (ms per step,
// GEMMs by shape) over that many steps after 2 warm-up steps:
//   GPT_STEP_PROFILE=8 deno bench -A bench/gpt_step.bench.ts --filter embedded

import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { GPTModel } from "../src/models/mod.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import type { CheckpointMethod, GPTConfig } from "../src/transformer/config.ts";
import type { Backend, GemmArgs } from "../src/backend/backend.ts";
import { parseArgs, validateForTraining, withDefaults } from "../src/training/config.ts";
import { gptHostBatch, gptTask } from "../src/training/gpt_task.ts";
import { RankState } from "../src/training/rank.ts";
import type { TrainingTask } from "../src/training/task.ts";
import { createLrScheduler } from "../src/optimizer/lr_schedule.ts";
import { EMBEDDED_DEFAULT } from "../tasks/pretrain_gpt.ts";

const backend = createCpuBackend({ log: () => {} });

function setup(h: number, layers: number, b: number, s: number, ckpt: CheckpointMethod) {
  const cfg: GPTConfig = {
    numLayers: layers,
    hiddenSize: h,
    numAttentionHeads: h / 32,
    seqLength: s,
    maxPositionEmbeddings: s,
    vocabSize: 1024,
    hiddenDropout: 0.1,
    attentionDropout: 0.1,
    initMethodStd: 0.02,
    paramsDtype: "f32",
    activationsCheckpointMethod: ckpt,
    seed: 1,
  };
  const model = new GPTModel(
    cfg,
    backend,
    makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    new SingleRankCommunicator(),
  );
  const n = b * s;
  const tok = Int32Array.from({ length: n }, (_, i) => (i * 7919) % 1024);
  const batch = {
    tokens: backend.fromHost("i32", [b, s], tok),
    labels: backend.fromHost("i32", [b, s], tok.map((t) => (t + 1) % 1024)),
    lossMask: backend.fromHost("f32", [b, s], new Float32Array(n).fill(1)),
  };
  let iteration = 0;
  return async () => {
    const ctx = model.newContext({ iteration: iteration++, firstGlobalSample: 0 });
    await model.forward(batch, ctx);
    await model.backward(ctx, 1);
  };
}

for (
  const [h, layers, b, s, ckpt] of [[128, 2, 4, 128, null], [128, 2, 4, 128, "uniform"], [
    256,
    4,
    4,
    256,
    null,
  ]] as const
) {
  const fn = setup(h, layers, b, s, ckpt);
  Deno.bench(`gpt step h=${h} L=${layers} b=${b} s=${s} ckpt=${ckpt ?? "none"} (${b * s} tokens)`, {
    group: `gpt h=${h}`,
    baseline: ckpt === null,
  }, async () => {
    await fn();
  });
}

/** A view of `be` that adds each op's wall time (ms) into `times`, GEMMs keyed by shape. */
function timed(be: Backend, times: Map<string, [number, number]>): Backend {
  return new Proxy(be, {
    get(target, key, recv) {
      const v = Reflect.get(target, key, recv);
      if (typeof v !== "function") return v;
      return (...args: unknown[]) => {
        const t0 = performance.now();
        const out = v.apply(target, args);
        let name = String(key);
        if (name === "gemm") {
          const g = args[0] as GemmArgs;
          name = `gemm ${g.transA ? "T" : "N"}${g.transB ? "T" : "N"} ${g.m}x${g.n}x${g.k}` +
            (g.batch ? ` batch ${g.batch}` : "");
        }
        const e = times.get(name) ?? [0, 0];
        e[0] += performance.now() - t0;
        e[1]++;
        times.set(name, e);
        return out;
      };
    },
  });
}

// The embedded default, vocab padded to 50304, synthetic tokens.
function embeddedDefault(be: Backend) {
  const cfg = validateForTraining(withDefaults(parseArgs([]), { ...EMBEDDED_DEFAULT, dataPath: ["unused"] }));
  const b = cfg.microBatchSize!, s = cfg.seqLength!, n = b * s;
  const rank = new RankState(
    cfg,
    gptTask as TrainingTask<unknown>,
    // Batches are given directly, so the task never reads the tokenizer.
    { cfg, paddedVocab: 50304, tokenizer: null as never, log: () => {} },
    be,
    makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    new SingleRankCommunicator(),
    createLrScheduler({ ...cfg, globalBatchSize: b, trainIters: cfg.trainIters!, lr: cfg.lr! }),
    null,
  );
  const tokens = Int32Array.from({ length: n }, (_, i) => (i * 7919) % 50257);
  const labels = tokens.map((t) => (t * 31 + 7) % 50257);
  const lossMask = new Float32Array(n).fill(1);
  const batch = gptHostBatch(tokens, labels, lossMask, b, s);
  let iteration = 0;
  const step = () =>
    rank.trainStep({
      iteration: iteration++,
      numMicroBatches: 1,
      batch: () => batch,
      firstGlobalSample: () => 0,
    });
  return { b, s, n, step, free: () => rank.free() };
}

const profileSteps = Number(Deno.env.get("GPT_STEP_PROFILE") ?? 0);
if (profileSteps > 0) {
  const times = new Map<string, [number, number]>();
  const run = embeddedDefault(timed(backend, times));
  for (let i = 0; i < 2; i++) await run.step();
  times.clear();
  const t0 = performance.now();
  for (let i = 0; i < profileSteps; i++) await run.step();
  const per = (performance.now() - t0) / profileSteps;
  run.free();
  console.log(`embedded default: ${per.toFixed(1)} ms/step, ${(run.n / per * 1000).toFixed(0)} tokens/s`);
  for (const [k, [t, c]] of [...times].sort((a, b) => b[1][0] - a[1][0])) {
    if (t / profileSteps >= 0.5) {
      console.log(
        `${(t / profileSteps).toFixed(1).padStart(8)} ms  ${String(c / profileSteps).padStart(4)}x  ${k}`,
      );
    }
  }
}

{
  const { b, s, n, step } = embeddedDefault(backend);
  Deno.bench(`embedded default train step L=4 h=128 b=${b} s=${s} V=50304 + Adam (${n} tokens)`, {
    group: "embedded default",
    n: 8,
    warmup: 2,
  }, async () => {
    await step();
  });
}
