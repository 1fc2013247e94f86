// CPU cost of the BERT head activations at one BERT-large micro-batch's LM-head shape (8 x 512 tokens,
// h 1024, f32): the exact erf GeLU (f64 erf per element, rounded once) against the fused tanh bias-GeLU,
// and tanh; then the whole BERT LM head forward + backward (vocab 30592) for scale.
// Run: deno bench -A bench/bert_heads.bench.ts

import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { BertLMHead } from "../src/models/bert_heads.ts";
import { VocabParallelEmbedding } from "../src/parallel/tensor_parallel.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import { newMicroBatchContext } from "../src/transformer/common.ts";
import { headInit, HeadInitKind } from "../src/transformer/tokentype_embedding.ts";

const be = createCpuBackend({ log: () => {} });
const T = 8 * 512, H = 1024, V = 30592;
const vals = new Float32Array(T * H);
for (let i = 0; i < vals.length; i++) vals[i] = Math.sin(i * 0.37) * 3;
const x = be.fromHost("f32", [T, H], vals), y = be.empty("f32", [T, H]), bias = be.zeros("f32", [H]);

Deno.bench("activationFwd gelu_erf [4096, 1024] f32", { group: "act", baseline: true }, () => {
  be.activationFwd("gelu_erf", x, y);
});
Deno.bench("biasGeluFwd (tanh approx) [4096, 1024] f32", { group: "act" }, () => {
  be.biasGeluFwd(x, bias, y);
});
Deno.bench("activationFwd tanh [4096, 1024] f32", { group: "act" }, () => {
  be.activationFwd("tanh", x, y);
});
Deno.bench("activationBwd gelu_erf [4096, 1024] f32", { group: "act" }, () => {
  be.activationBwd("gelu_erf", x, x, y);
});

const env = {
  backend: be,
  comm: new SingleRankCommunicator(),
  ps: makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
  dtype: "f32" as const,
};
const word = new VocabParallelEmbedding(env, "w", V, H, headInit(1, 0.02, 0));
const head = new BertLMHead(env, {
  hiddenSize: H,
  vocabSize: V,
  init: headInit(1, 0.02, HeadInitKind.lmHeadDense),
  layernormEpsilon: 1e-12,
});
const hidden = x.view([8, 512, H]);
Deno.bench("BertLMHead forward + backward [8, 512, 1024] -> 30592 f32", { n: 3, warmup: 1 }, async () => {
  const ctx = newMicroBatchContext({ iteration: 0, firstGlobalSample: 0 });
  const logits = head.forward(hidden, word.weight, ctx);
  const dh = await head.backward(logits, word.weight, ctx);
  be.free(logits);
  be.free(dh);
});
