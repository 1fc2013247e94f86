// One BERT training micro-batch (forward, lm + sop loss, backward) at the embedded default's shape
// (`deno task pretrain:bert` with no flags: 2 layers, hidden 128, seq 128, micro-batch 8, padded
// bert-base-uncased vocabulary 30592), against a GPT micro-batch of the same shape: the difference is
// BERT's LM head (dense + GeLU + LayerNorm before the tied logits), token types, pooler and binary head.
// tokens/s = 1024 * iterations/s.
//   deno bench -A bench/bert_step.bench.ts

import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import type { BertSample } from "../src/data/bert_dataset.ts";
import { BertModel } from "../src/models/bert.ts";
import { GPTModel } from "../src/models/gpt.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import { BertChunk, bertHostBatch, bertTask } from "../src/training/bert_task.ts";
import { type TaskContext, uploadBatch } from "../src/training/task.ts";
import type { TransformerConfig } from "../src/transformer/config.ts";
import { newMicroBatchContext } from "../src/transformer/common.ts";

const backend = createCpuBackend({ log: () => {} });
const B = 8, S = 128, V = 30592;
const cfg: TransformerConfig = {
  numLayers: 2,
  hiddenSize: 128,
  numAttentionHeads: 4,
  seqLength: S,
  maxPositionEmbeddings: S,
  vocabSize: V,
  hiddenDropout: 0.1,
  attentionDropout: 0.1,
  initMethodStd: 0.02,
  paramsDtype: "f32",
  activationsCheckpointMethod: null,
  seed: 1,
};
const ps = makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0);
const spec = { preProcess: true, postProcess: true, layers: [0, 1], virtualChunk: 0, virtualChunks: 1 };

// 15% of the tokens masked, the last 16 positions of every sample padding.
const samples: BertSample[] = Array.from({ length: B }, (_, b) => {
  const text = Int32Array.from({ length: S }, (_, i) => (i < S - 16 ? 1000 + ((i * 7919 + b) % 20000) : 0));
  const labels = text.map((t, i) => (i % 7 === 3 && i < S - 16 ? t : -1));
  return {
    text,
    types: Int32Array.from({ length: S }, (_, i) => (i >= S / 2 && i < S - 16 ? 1 : 0)),
    labels,
    is_random: b % 2,
    loss_mask: labels.map((l) => (l >= 0 ? 1 : 0)),
    padding_mask: Int32Array.from({ length: S }, (_, i) => (i < S - 16 ? 1 : 0)),
    truncated: 0,
  };
});
const bert = new BertModel(cfg, backend, ps, new SingleRankCommunicator(), spec, { binaryHead: true });
const chunk = new BertChunk(bert, spec);
const bertBatch = uploadBatch(backend, bertHostBatch(samples, S), chunk.batchFields);
let it = 0;

Deno.bench(
  `bert micro-batch h=128 L=2 b=${B} s=${S} V=${V} (${B * S} tokens)`,
  { group: "step" },
  async () => {
    const ctx = newMicroBatchContext({ iteration: it++, firstGlobalSample: 0 });
    const outs = await chunk.forward(bertBatch, [], ctx);
    const l = await bertTask.loss({} as TaskContext, chunk, outs, bertBatch);
    await chunk.backward(ctx, l.backward(1));
  },
);

const gpt = new GPTModel(cfg, backend, ps, new SingleRankCommunicator());
const tok = Int32Array.from({ length: B * S }, (_, i) => 1000 + ((i * 7919) % 20000));
const gptBatch = {
  tokens: backend.fromHost("i32", [B, S], tok),
  labels: backend.fromHost("i32", [B, S], tok),
  lossMask: backend.fromHost("f32", [B, S], new Float32Array(B * S).fill(1)),
};
Deno.bench(`gpt micro-batch, same shape (${B * S} tokens)`, { group: "step", baseline: true }, async () => {
  const ctx = gpt.newContext({ iteration: it++, firstGlobalSample: 0 });
  await gpt.forward(gptBatch, ctx);
  await gpt.backward(ctx, 1);
});
