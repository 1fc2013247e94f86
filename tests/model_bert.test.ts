// The whole BERT model (embeddings with token types, padding-mask encoder, final LayerNorm, LM head,
// pooler, binary head) with bertTask's loss (lm + sop): an f64 finite-difference check of every
// parameter's gradient with dropout on, and one-batch overfitting (MLM + SOP) in f32, bf16 and fp16
// with Megatron's dynamic loss scaler.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import type { BertSample } from "../src/data/bert_dataset.ts";
import { BertModel } from "../src/models/bert.ts";
import { createGradScaler, createLrScheduler, MegatronOptimizer } from "../src/optimizer/mod.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import type { Tensor } from "../src/tensor/tensor.ts";
import { BertChunk, bertHostBatch, makeBertTask } from "../src/training/bert_task.ts";
import type { ChunkSpec, TaskContext, TrainingTask } from "../src/training/task.ts";
import { uploadBatch } from "../src/training/task.ts";
import {
  checkGradients,
  type GradTarget,
  newMicroBatchContext,
  type ParamsDType,
  type TransformerConfig,
} from "../src/transformer/mod.ts";
import { lcgNoise } from "./helpers/fd_check.ts";

const backend = createCpuBackend({ log: () => {} });
const SPEC: ChunkSpec = {
  preProcess: true,
  postProcess: true,
  layers: [0, 1],
  virtualChunk: 0,
  virtualChunks: 1,
};

/** Deterministic BERT samples: [CLS] A [SEP] B [SEP] [PAD]..., some tokens [MASK]ed with labels. */
function samples(b: number, s: number, vocab: number): BertSample[] {
  const out: BertSample[] = [];
  let x = 2463534242;
  const next = (n: number) => {
    x ^= x << 13, x ^= x >>> 17, x ^= x << 5;
    return (x >>> 0) % n;
  };
  for (let i = 0; i < b; i++) {
    const real = s - 2 * i; // sample i has 2i pad positions
    const text = new Int32Array(s), types = new Int32Array(s), labels = new Int32Array(s).fill(-1);
    const lossMask = new Int32Array(s), pad = new Int32Array(s);
    const sepA = Math.floor(real / 2);
    for (let j = 0; j < s; j++) {
      if (j >= real) continue; // [PAD] = 0, type 0
      pad[j] = 1;
      text[j] = j === 0 ? 2 : j === sepA || j === real - 1 ? 3 : 5 + next(vocab - 5);
      types[j] = j > sepA ? 1 : 0;
      if (text[j] >= 5 && j % 3 === 1) {
        labels[j] = text[j];
        lossMask[j] = 1;
        text[j] = 4; // [MASK]
      }
    }
    out.push({ text, types, labels, is_random: i % 2, loss_mask: lossMask, padding_mask: pad, truncated: 0 });
  }
  return out;
}

function modelCfg(dtype: ParamsDType, over: Partial<TransformerConfig> = {}): TransformerConfig {
  return {
    numLayers: 2,
    hiddenSize: 8,
    numAttentionHeads: 2,
    seqLength: 7,
    maxPositionEmbeddings: 9,
    vocabSize: 16,
    hiddenDropout: 0.2,
    attentionDropout: 0.2,
    initMethodStd: 0.3,
    paramsDtype: dtype,
    activationsCheckpointMethod: null,
    seed: 1234,
    ...over,
  };
}

function build(cfg: TransformerConfig, binaryHead: boolean) {
  const ps = makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0);
  const model = new BertModel(cfg, backend, ps, new SingleRankCommunicator(), SPEC, { binaryHead });
  return { model, chunk: new BertChunk(model, SPEC), task: makeBertTask(binaryHead) };
}

/** Forward + loss; with `grad` also backward(1). Returns the loss. */
async function step(
  chunk: BertChunk,
  task: TrainingTask<BertSample>,
  batch: Record<string, Tensor>,
  grad: boolean,
  iteration = 7,
  factor = 1,
): Promise<{ loss: number; scalars: Record<string, number> }> {
  const ctx = newMicroBatchContext({ iteration, firstGlobalSample: 3 });
  const outs = await chunk.forward(batch, [], ctx);
  const l = await task.loss({} as TaskContext, chunk, outs, batch);
  if (grad) await chunk.backward(ctx, l.backward(factor));
  else {
    l.discard();
    chunk.discard(ctx);
  }
  assert.equal(ctx.saved.size, 0, "nothing left saved");
  return { loss: l.loss, scalars: l.scalars };
}

for (
  const [label, over, binaryHead] of [
    ["lm + sop, dropout 0.2", {}, true],
    ["--apply-residual-connection-post-layernorm", { applyResidualConnectionPostLayernorm: true }, true],
    ["--bert-no-binary-head (lm only)", {}, false],
  ] as const
) {
  Deno.test(`gradcheck: whole BERT loss, ${label} (f64)`, async () => {
    const cfg = modelCfg("f64", over);
    const { model, chunk, task } = build(cfg, binaryHead);
    // Give zero/one-initialized params (biases, LayerNorms) generic values so their paths count.
    for (const [i, p] of model.params().entries()) {
      const v = backend.toF64(p.value), r = lcgNoise(v.length, 100 + i);
      for (let j = 0; j < v.length; j++) v[j] += 0.2 * r[j];
      backend.copy(backend.fromHost("f64", p.value.shape, v), p.value);
    }
    const names = model.params().map((p) => p.name);
    assert.ok(names.includes("language_model.embedding.tokentype_embeddings.weight"));
    assert.equal(names.includes("binary_head.weight"), binaryHead);
    assert.equal(names.includes("language_model.pooler.dense.weight"), binaryHead);
    const batch = uploadBatch(backend, bertHostBatch(samples(2, 7, 16), 7), chunk.batchFields);
    for (const p of model.params()) backend.fill(p.grad, 0);
    const { scalars } = await step(chunk, task, batch, true);
    assert.ok(scalars["lm loss"] > 0);
    if (binaryHead) assert.ok(scalars["sop loss"] > 0);
    const targets: GradTarget[] = model.params().map((p) => ({ name: p.name, value: p.value, grad: p.grad }));
    const res = await checkGradients(
      backend,
      targets,
      async () => (await step(chunk, task, batch, false)).loss,
    );
    assert.deepEqual(res.failures, [], `worst ${res.worst} at ${res.worstAt}`);
    assert.ok(res.checked >= 5 * targets.length);
  });
}

Deno.test("gradcheck: the BERT check fails when one gradient is wrong", async () => {
  const { model, chunk, task } = build(modelCfg("f64"), true);
  const batch = uploadBatch(backend, bertHostBatch(samples(2, 7, 16), 7), chunk.batchFields);
  for (const p of model.params()) backend.fill(p.grad, 0);
  await step(chunk, task, batch, true);
  const tt = model.params().find((p) => p.name.endsWith("tokentype_embeddings.weight"))!;
  const g = backend.toF64(tt.grad);
  g[3] *= 1.01;
  const res = await checkGradients(
    backend,
    [{ name: tt.name, value: tt.value, grad: g }],
    async () => (await step(chunk, task, batch, false)).loss,
    { samples: 16 },
  );
  assert.equal(res.failures.length, 1, res.failures.join("\n"));
});

const MAX_STEPS = 200;

async function overfit(dtype: ParamsDType, flags: { fp16?: boolean; bf16?: boolean }) {
  const V = 64, S = 16, B = 4;
  const cfg = {
    ...modelCfg(dtype),
    hiddenSize: 32,
    numAttentionHeads: 4,
    seqLength: S,
    maxPositionEmbeddings: S,
    vocabSize: V,
    hiddenDropout: 0,
    attentionDropout: 0,
    initMethodStd: 0.02,
  };
  const { model, chunk, task } = build(cfg, true);
  const scheduler = createLrScheduler({
    lr: 5e-3,
    lrDecayStyle: "constant",
    globalBatchSize: B,
    trainIters: MAX_STEPS,
  });
  const scaler = createGradScaler(flags);
  const opt = new MegatronOptimizer(backend, model.params(), scheduler, { scaler, weightDecay: 0.01 });
  const batch = uploadBatch(backend, bertHostBatch(samples(B, S, V), S), chunk.batchFields);
  const lm: number[] = [], sop: number[] = [], skipped: number[] = [];
  const initialScale = opt.lossScale;
  for (let it = 0; it < MAX_STEPS; it++) {
    opt.zeroGrads();
    const r = await step(chunk, task, batch, true, it, opt.lossScale);
    const res = await opt.step(B);
    if (res.skipped) skipped.push(it);
    lm.push(r.scalars["lm loss"]);
    sop.push(r.scalars["sop loss"]);
    if (lm[it] < 0.05 * lm[0] && sop[it] < 0.05 * sop[0]) break;
  }
  opt.free();
  return { lm, sop, skipped, initialScale };
}

function assertOverfit(what: string, r: Awaited<ReturnType<typeof overfit>>) {
  const n = r.lm.length;
  console.log(
    `${what}: lm ${r.lm[0].toFixed(4)} -> ${r.lm[n - 1].toFixed(4)}, sop ${r.sop[0].toFixed(4)} -> ` +
      `${r.sop[n - 1].toFixed(4)} in ${n} steps, ${r.skipped.length} skipped`,
  );
  // A fresh model predicts nearly uniformly: ln(64) over the vocabulary, ln(2) for sentence order.
  assert.ok(Math.abs(r.lm[0] - Math.log(64)) < 0.1, `${what}: first lm loss ${r.lm[0]}`);
  assert.ok(Math.abs(r.sop[0] - Math.log(2)) < 0.05, `${what}: first sop loss ${r.sop[0]}`);
  assert.ok(r.lm[n - 1] < 0.05 * r.lm[0], `${what}: lm loss ${r.lm[n - 1]} not below 5% of ${r.lm[0]}`);
  assert.ok(r.sop[n - 1] < 0.05 * r.sop[0], `${what}: sop loss ${r.sop[n - 1]} not below 5% of ${r.sop[0]}`);
}

Deno.test("overfit one BERT batch (MLM + SOP): f32", async () => {
  const r = await overfit("f32", {});
  assertOverfit("f32", r);
  assert.deepEqual(r.skipped, []);
});

Deno.test("overfit one BERT batch (MLM + SOP): bf16", async () => {
  const r = await overfit("bf16", { bf16: true });
  assertOverfit("bf16", r);
  assert.deepEqual(r.skipped, []);
});

Deno.test("overfit one BERT batch (MLM + SOP): fp16 with the dynamic loss scaler", async () => {
  const r = await overfit("f16", { fp16: true });
  assertOverfit("fp16", r);
  assert.equal(r.initialScale, 2 ** 32);
  // At 2^32 the first steps overflow and are skipped; the scaler then brings the scale down.
  assert.ok(r.skipped.length >= 2 && r.skipped[0] === 0, `skipped ${r.skipped}`);
});
