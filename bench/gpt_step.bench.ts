// One GPT training step (forward + backward of one micro-batch) on the CPU backend, and the full
// training step of the embedded default (`deno task pretrain:gpt` with no flags: forward, backward, grad
// norm clipping, Adam) through RankState.trainStep.
// tokens/s = (b * s) * iterations/s as reported by deno bench (b * s is in each bench's name).

import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { GPTModel } from "../src/models/mod.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import type { CheckpointMethod, GPTConfig } from "../src/transformer/config.ts";
import { parseArgs, validateForTraining, withDefaults } from "../src/training/config.ts";
import { modelConfigOf } from "../src/training/train.ts";
import { RankState } from "../src/training/rank.ts";
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

// The embedded default, vocab padded to 50304, synthetic tokens.
{
  const cfg = validateForTraining(withDefaults(parseArgs([]), { ...EMBEDDED_DEFAULT, dataPath: ["unused"] }));
  const b = cfg.microBatchSize!, s = cfg.seqLength!, n = b * s;
  const rank = new RankState(
    cfg,
    modelConfigOf(cfg, 50304),
    backend,
    makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    new SingleRankCommunicator(),
    createLrScheduler({ ...cfg, globalBatchSize: b, trainIters: cfg.trainIters!, lr: cfg.lr! }),
    null,
  );
  const tokens = Int32Array.from({ length: n }, (_, i) => (i * 7919) % 50257);
  const labels = tokens.map((t) => (t * 31 + 7) % 50257);
  const lossMask = new Float32Array(n).fill(1);
  let iteration = 0;
  Deno.bench(`embedded default train step L=4 h=128 b=${b} s=${s} V=50304 + Adam (${n} tokens)`, {
    group: "embedded default",
    n: 8,
    warmup: 2,
  }, async () => {
    await rank.trainStep({
      iteration: iteration++,
      numMicroBatches: 1,
      batch: () => ({ tokens, labels, lossMask, b, s }),
      firstGlobalSample: () => 0,
    });
  });
}
