// Greedy decoding speed on the CPU with and without the key/value cache (generate-gpt's default vs
// --recompute), for the embedded default's shape (4 layers, hidden 128, GPT-2 vocabulary) and a
// GPT-2 125M shape (12 layers, hidden 768, 12 heads). Weights are deterministic pseudo-random values;
// the cost does not depend on them. One bench iteration = 32 new tokens after a 16-token prompt (8
// after 16 for 125M). tokens/s = new tokens / the reported time.
// Run: deno bench -A bench/generate.bench.ts

import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { generateAll } from "../src/generation/generate.ts";
import { nextLogitsFn } from "../src/inference/gpt_runner.ts";
import type { FullGpt, FullTensor } from "../src/inference/gpt_weights.ts";

function fakeGpt(layers: number, h: number, heads: number, positions: number): FullGpt {
  let seed = 1;
  const t = (shape: number[], scale = 0.02): FullTensor => {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = Math.sin(seed++ * 12.9898) * scale;
    return { dtype: "f32", shape, data };
  };
  const ones = (n: number): FullTensor => ({ dtype: "f32", shape: [n], data: new Float32Array(n).fill(1) });
  const m = new Map<string, FullTensor>();
  m.set("language_model.embedding.word_embeddings.weight", t([50304, h]));
  m.set("language_model.embedding.position_embeddings.weight", t([positions, h]));
  for (let l = 0; l < layers; l++) {
    const p = `language_model.encoder.layers.${l}.`;
    m.set(`${p}input_layernorm.weight`, ones(h));
    m.set(`${p}input_layernorm.bias`, t([h]));
    m.set(`${p}self_attention.query_key_value.weight`, t([3 * h, h]));
    m.set(`${p}self_attention.query_key_value.bias`, t([3 * h]));
    m.set(`${p}self_attention.dense.weight`, t([h, h]));
    m.set(`${p}self_attention.dense.bias`, t([h]));
    m.set(`${p}post_attention_layernorm.weight`, ones(h));
    m.set(`${p}post_attention_layernorm.bias`, t([h]));
    m.set(`${p}mlp.dense_h_to_4h.weight`, t([4 * h, h]));
    m.set(`${p}mlp.dense_h_to_4h.bias`, t([4 * h]));
    m.set(`${p}mlp.dense_4h_to_h.weight`, t([h, 4 * h]));
    m.set(`${p}mlp.dense_4h_to_h.bias`, t([h]));
  }
  m.set("language_model.encoder.final_layernorm.weight", ones(h));
  m.set("language_model.encoder.final_layernorm.bias", t([h]));
  return {
    arch: {
      numLayers: layers,
      hiddenSize: h,
      numAttentionHeads: heads,
      maxPositionEmbeddings: positions,
      seqLength: positions,
      vocabSize: 50257,
      makeVocabSizeDivisibleBy: 128,
      layernormEpsilon: 1e-5,
      tokenizerType: "GPT2BPETokenizer",
    },
    tensors: m,
    iteration: "release",
  };
}

const backend = createCpuBackend({ log: () => {} });
const prompt = Array.from({ length: 16 }, (_, i) => 100 + i * 37);
// -1 as eod: never drawn, so every run produces exactly outSeqLength tokens.
const opts = (out: number, seq: number) => ({
  greedy: true,
  outSeqLength: out,
  seqLength: seq,
  eod: -1,
  seed: 1,
});

const small = fakeGpt(4, 128, 4, 128);
Deno.bench("embedded default shape: 32 tokens, KV cache", { group: "default", baseline: true }, async () => {
  await generateAll(prompt, nextLogitsFn(small, { cache: true }), opts(32, 128));
});
Deno.bench("embedded default shape: 32 tokens, KV cache, backend GEMV", { group: "default" }, async () => {
  await generateAll(prompt, nextLogitsFn(small, { cache: true, backend }), opts(32, 128));
});
Deno.bench(
  "embedded default shape: 32 tokens, --recompute",
  { group: "default", n: 3, warmup: 1 },
  async () => {
    await generateAll(prompt, nextLogitsFn(small, { cache: false, backend }), opts(32, 128));
  },
);

const big = fakeGpt(12, 768, 12, 1024);
Deno.bench("125M shape: 8 tokens, KV cache", { group: "125M", baseline: true, n: 2, warmup: 0 }, async () => {
  await generateAll(prompt, nextLogitsFn(big, { cache: true }), opts(8, 1024));
});
Deno.bench("125M shape: 8 tokens, KV cache, backend GEMV", { group: "125M", n: 2, warmup: 0 }, async () => {
  await generateAll(prompt, nextLogitsFn(big, { cache: true, backend }), opts(8, 1024));
});
Deno.bench("125M shape: 8 tokens, --recompute", { group: "125M", n: 2, warmup: 0 }, async () => {
  await generateAll(prompt, nextLogitsFn(big, { cache: false, backend }), opts(8, 1024));
});
