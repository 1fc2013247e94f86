// The finetuning heads (src/models/finetune_heads.ts) and the finetuning model (BERT's language model
// with the pooler + a task head, src/finetune/task.ts): f64 finite-difference checks of each head with
// its dropout on, of the cross entropy, and of the whole model's loss for MNLI (3 classes) and RACE
// (4 choices); the loss and correct count on hand-computed logits; init statistics and names.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { BertModel } from "../src/models/bert.ts";
import {
  ClassificationHead,
  ClassificationLoss,
  MultipleChoiceHead,
  type TaskHeadOptions,
} from "../src/models/finetune_heads.ts";
import type { TPEnv } from "../src/parallel/tensor_parallel.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import {
  FinetuneChunk,
  finetuneHostBatch,
  type FinetuneSample,
  type FinetuneTaskName,
  makeFinetuneTask,
  rowsPerSample,
} from "../src/finetune/task.ts";
import type { ChunkSpec, TaskContext } from "../src/training/task.ts";
import { uploadBatch } from "../src/training/task.ts";
import { checkGradients, newMicroBatchContext, type TransformerConfig } from "../src/transformer/mod.ts";
import { dotF64, lcgNoise } from "./helpers/fd_check.ts";

const be = createCpuBackend({ log: () => {} });
const H = 8;

function env(dtype: "f64" | "f32" = "f64"): TPEnv {
  return {
    backend: be,
    comm: new SingleRankCommunicator(),
    ps: makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    dtype,
  };
}
const OPTS: TaskHeadOptions = { hiddenSize: H, hiddenDropout: 0.3, seed: 1234, initMethodStd: 0.3 };
const ctxOf = (training = true) => newMicroBatchContext({ iteration: 5, firstGlobalSample: 3, training });

Deno.test("gradcheck: classification and multiple-choice heads with dropout 0.3 (f64)", async () => {
  for (const kind of ["classification", "multichoice"] as const) {
    const e = env();
    const head = kind === "classification"
      ? new ClassificationHead(e, { ...OPTS, numClasses: 3 })
      : new MultipleChoiceHead(e, { ...OPTS, numChoices: 4 });
    const rows = kind === "classification" ? 2 : 8, out = kind === "classification" ? 6 : 8;
    const pooled = be.fromHost("f64", [rows, H], lcgNoise(rows * H, 11));
    const r = lcgNoise(out, 12);
    const run = (backward: boolean) => {
      const ctx = ctxOf();
      const y = head.forward(pooled, ctx);
      assert.deepEqual(y.shape, kind === "classification" ? [2, 3] : [2, 4]);
      const loss = dotF64(be, y, r);
      if (backward) {
        const dx = head.backward(be.fromHost("f64", y.shape, r), ctx);
        dPooled = be.toF64(dx);
      } else head.discard(ctx);
      return loss;
    };
    let dPooled: Float64Array = new Float64Array(0);
    for (const p of head.params()) be.fill(p.grad, 0);
    run(true);
    // Dropout is on: some pooled gradients are exactly zero, the rest scaled by 1 / (1 - p).
    assert.ok(dPooled.some((v) => v === 0) && dPooled.some((v) => v !== 0));
    const res = await checkGradients(
      be,
      [
        { name: "pooled", value: pooled, grad: dPooled },
        ...head.params().map((p) => ({ name: p.name, value: p.value, grad: p.grad })),
      ],
      () => Promise.resolve(run(false)),
      { samples: 16 },
    );
    assert.deepEqual(res.failures, [], `${kind}: worst ${res.worst} at ${res.worstAt}`);
  }
});

Deno.test("heads: Megatron's names, N(0, std) weights from their own stream, zero bias, no dropout in eval", () => {
  const e = env();
  const big = { ...OPTS, hiddenSize: 512, initMethodStd: 0.02 };
  const c = new ClassificationHead(e, { ...big, numClasses: 3 });
  const m = new MultipleChoiceHead(e, { ...big, numChoices: 4 });
  assert.deepEqual(c.params().map((p) => [p.name, p.value.shape]), [
    ["classification_head.weight", [3, 512]],
    ["classification_head.bias", [3]],
  ]);
  assert.deepEqual(m.params().map((p) => [p.name, p.value.shape]), [
    ["multichoice_head.weight", [1, 512]],
    ["multichoice_head.bias", [1]],
  ]);
  for (const h of [c, m]) {
    const w = be.toF64(h.dense.weight.value);
    const mean = w.reduce((a, b) => a + b, 0) / w.length;
    const std = Math.sqrt(w.reduce((a, b) => a + (b - mean) ** 2, 0) / w.length);
    assert.ok(Math.abs(mean) < 0.004 && Math.abs(std - 0.02) < 0.003, `mean ${mean} std ${std}`);
    assert.ok(be.toF64(h.dense.bias.value).every((v) => v === 0));
  }
  // The two heads draw different weights (separate streams).
  assert.notDeepEqual(be.toF64(c.dense.weight.value).slice(0, 512), be.toF64(m.dense.weight.value));
  // Evaluation: logits = pooled W^T + b exactly (no dropout).
  const pooled = be.fromHost("f64", [1, 512], lcgNoise(512, 3));
  const y = be.toF64(c.forward(pooled, ctxOf(false)));
  const w = be.toF64(c.dense.weight.value), x = be.toF64(pooled);
  for (let k = 0; k < 3; k++) {
    let s = 0;
    for (let j = 0; j < 512; j++) s += w[k * 512 + j] * x[j];
    assert.ok(Math.abs(y[k] - s) < 1e-12);
  }
});

Deno.test("classification loss: cross entropy and correct count on hand-computed logits, label -1 ignored", async () => {
  const ce = new ClassificationLoss(env());
  // Sample 0: logits [0, ln 3, 0], label 1 -> p = 3/5, CE = ln(5/3), correct. Sample 1: [2, 0, 0],
  // label 2 -> CE = ln(e^2 + 2), wrong (argmax 0). Sample 2: ignored.
  const z = [0, Math.log(3), 0, 2, 0, 0, 9, 0, 0];
  const logits = be.fromHost("f64", [3, 3], z);
  const ctx = ctxOf();
  const out = ce.forward(logits, [1, 2, -1], ctx);
  const want = (Math.log(5 / 3) + Math.log(Math.exp(2) + 2)) / 2;
  assert.ok(Math.abs(out.loss - want) < 1e-14, `${out.loss} vs ${want}`);
  assert.deepEqual([out.samples, out.correct, [...out.predictions]], [2, 1, [1, 0, 0]]);
  const d = be.toF64(ce.backward(ctx, 2));
  // d/dz = factor / count * (softmax - onehot); the ignored row is zero.
  assert.ok(Math.abs(d[1] - (3 / 5 - 1)) < 1e-14 && Math.abs(d[0] - 1 / 5) < 1e-14);
  assert.deepEqual([...d.slice(6)], [0, 0, 0]);
  const res = await checkGradients(
    be,
    [{ name: "logits", value: logits, grad: d.map((v) => v / 2) }],
    () => {
      const c = ctxOf();
      const l = ce.forward(logits, [1, 2, -1], c).loss;
      ce.discard(c);
      return Promise.resolve(l);
    },
    { samples: 9 },
  );
  assert.deepEqual(res.failures, []);
  assert.throws(() => ce.forward(logits, [1, 3, 0], ctxOf()), /label 3 of sample 1 is outside \[0, 3\)/);
});

const SPEC: ChunkSpec = {
  preProcess: true,
  postProcess: true,
  layers: [0, 1],
  virtualChunk: 0,
  virtualChunks: 1,
};

function modelCfg(): TransformerConfig {
  return {
    numLayers: 2,
    hiddenSize: H,
    numAttentionHeads: 2,
    seqLength: 7,
    maxPositionEmbeddings: 9,
    vocabSize: 16,
    hiddenDropout: 0.2,
    attentionDropout: 0.2,
    initMethodStd: 0.3,
    paramsDtype: "f64",
    activationsCheckpointMethod: null,
    seed: 1234,
  };
}

/** [CLS] a [SEP] b [SEP] [PAD]... rows with sample-dependent lengths and labels. */
function samples(task: FinetuneTaskName, b: number): FinetuneSample[] {
  const rows = rowsPerSample(task), s = 7;
  return Array.from({ length: b }, (_, i) => {
    const text: number[][] = [], types: number[][] = [], pads: number[][] = [];
    for (let r = 0; r < rows; r++) {
      const real = 7 - ((i + r) % 3);
      text.push(
        Array.from(
          { length: s },
          (_, j) =>
            j >= real ? 0 : j === 0 ? 2 : j === 3 || j === real - 1 ? 3 : 5 + (i * 5 + r * 3 + j) % 11,
        ),
      );
      types.push(Array.from({ length: s }, (_, j) => j > 3 && j < real ? 1 : 0));
      pads.push(Array.from({ length: s }, (_, j) => j < real ? 1 : 0));
    }
    return { text, types, paddingMask: pads, label: i % (task === "MNLI" ? 3 : 4), uid: i };
  });
}

for (const task of ["MNLI", "RACE"] as const) {
  Deno.test(`gradcheck: whole finetuning model + loss, ${task}, dropout 0.2 (f64)`, async () => {
    const ps = makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0);
    const model = new BertModel(modelCfg(), be, ps, new SingleRankCommunicator(), SPEC, {
      binaryHead: false,
      pooledOutput: true,
    });
    const chunk = new FinetuneChunk(model, SPEC, task);
    const t = makeFinetuneTask(task, { train: [], valid: null });
    const names = chunk.params().map((p) => p.name);
    assert.ok(names.includes("language_model.pooler.dense.weight"));
    assert.ok(!names.some((n) => n.startsWith("lm_head") || n.startsWith("binary_head")));
    assert.equal(names.at(-1), task === "RACE" ? "multichoice_head.bias" : "classification_head.bias");
    for (const [i, p] of chunk.params().entries()) {
      const v = be.toF64(p.value), r = lcgNoise(v.length, 100 + i);
      for (let j = 0; j < v.length; j++) v[j] += 0.2 * r[j];
      be.copy(be.fromHost("f64", p.value.shape, v), p.value);
    }
    const batch = uploadBatch(
      be,
      finetuneHostBatch(samples(task, 2), 7, rowsPerSample(task)),
      chunk.batchFields,
    );
    const step = async (grad: boolean) => {
      const ctx = newMicroBatchContext({ iteration: 7, firstGlobalSample: 3 });
      const outs = await chunk.forward(batch, [], ctx);
      const l = await t.loss({} as TaskContext, chunk, outs, batch);
      if (grad) await chunk.backward(ctx, l.backward(1));
      else {
        l.discard();
        chunk.discard(ctx);
      }
      assert.equal(ctx.saved.size, 0, "nothing left saved");
      return l;
    };
    for (const p of chunk.params()) be.fill(p.grad, 0);
    const l = await step(true);
    assert.equal(l.scalars.samples, 2);
    const targets = chunk.params().map((p) => ({ name: p.name, value: p.value, grad: p.grad }));
    const res = await checkGradients(be, targets, async () => (await step(false)).loss);
    assert.deepEqual(res.failures, [], `worst ${res.worst} at ${res.worstAt}`);
    assert.ok(res.checked >= 5 * targets.length);
  });
}
