// Greedy decoding speed with and without the key/value cache (generate-gpt's default vs --recompute),
// for the embedded default's shape (4 layers, hidden 128, GPT-2 vocabulary) and a GPT-2 125M shape (12
// layers, hidden 768, 12 heads). Weights are deterministic pseudo-random values; the cost does not depend
// on them. One bench iteration = 32 new tokens after a 16-token prompt (8 after 16 for 125M). tokens/s =
// new tokens / the reported time. Cached variants: KvCacheGpt in TypeScript, KvCacheGpt with its
// matrix-vector products as backend GEMMs (generate-gpt's path before the layouts), and generate-gpt's
// path now (LayoutGpt: every op on the backend), also split TP 2 x PP 2 in one process. With CUDA (the
// probe finds a GPU) the cached and recomputed paths run on it too; without one those benches are absent.
// Run: deno bench -A bench/generate.bench.ts   (CUDA only: --filter cuda)

import type { Backend } from "../src/backend/backend.ts";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { createCudaBackend, probeCuda } from "../src/backend/cuda/cuda_backend.ts";
import { generateAll } from "../src/generation/generate.ts";
import { KvCacheGpt, nextLogitsFn } from "../src/inference/gpt_runner.ts";
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
const cudaProbe = probeCuda();
const cuda: Backend | null = cudaProbe.ok ? await createCudaBackend() : null;
if (!cudaProbe.ok) console.log(`generate bench: no CUDA benches (${cudaProbe.reason})`);
const prompt = Array.from({ length: 16 }, (_, i) => 100 + i * 37);
// -1 as eod: never drawn, so every run produces exactly outSeqLength tokens.
const opts = (out: number, seq: number) => ({
  greedy: true,
  outSeqLength: out,
  seqLength: seq,
  eod: -1,
  seed: 1,
});

/** KvCacheGpt with its GEMVs on the CPU backend (weights uploaded once), one token at a time. */
function gemvLogits(full: FullGpt): (tokens: readonly number[]) => Promise<Float32Array> {
  const kv = new KvCacheGpt(full, backend);
  let last: Float32Array = new Float32Array(0);
  return (tokens) => {
    if (tokens.length <= kv.length) kv.reset();
    for (let i = kv.length; i < tokens.length; i++) last = kv.step(tokens[i]);
    return Promise.resolve(last);
  };
}

type Next = (tokens: readonly number[]) => Promise<Float32Array>;

/** The benches of one model shape (group), `out` new tokens each. Models are built once per variant,
 *  outside the timed part (the first iteration builds; warmup runs it); each iteration is a new prompt,
 *  so every cache starts over. */
function shape(name: string, full: FullGpt, out: number, seq: number, slow: { n: number; warmup: number }) {
  const variant = (label: string, make: () => Next, o: { baseline?: boolean; n?: number } = {}) => {
    let next: Next | null = null;
    Deno.bench(`${name}: ${out} tokens, ${label}`, { group: name, ...slow, warmup: 1, ...o }, async (b) => {
      next ??= make();
      b.start();
      await generateAll(prompt, next, opts(out, seq));
      b.end();
    });
  };
  variant("KV cache, TypeScript", () => nextLogitsFn(full, { cache: true }), { baseline: true });
  variant("KV cache, backend GEMV", () => gemvLogits(full));
  variant("KV cache, backend ops", () => nextLogitsFn(full, { cache: true, backend }));
  variant(
    "KV cache, backend ops TP 2 x PP 2",
    () => nextLogitsFn(full, { cache: true, backend, tp: 2, pp: 2 }),
  );
  variant("--recompute", () => nextLogitsFn(full, { cache: false, backend }), { n: 2 });
  if (cuda) {
    variant("KV cache, cuda", () => nextLogitsFn(full, { cache: true, backend: cuda }));
    variant("--recompute, cuda", () => nextLogitsFn(full, { cache: false, backend: cuda }));
  }
}

shape("embedded default shape", fakeGpt(4, 128, 4, 128), 32, 128, { n: 5, warmup: 1 });
shape("125M shape", fakeGpt(12, 768, 12, 1024), 8, 1024, { n: 3, warmup: 1 });
