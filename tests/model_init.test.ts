// GPT parameters: exact Megatron names, shapes, init statistics, determinism, layout independence
// (a TP shard is a slice of the TP=1 weight), and the padded-vocabulary rule.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { GPTModel, padVocabSize } from "../src/models/mod.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import { fillNormal } from "../src/rng/philox.ts";
import { type GPTConfig, initStream, ParamKind } from "../src/transformer/mod.ts";

const backend = createCpuBackend({ log: () => {} });

function cfgOf(over: Partial<GPTConfig> = {}): GPTConfig {
  return {
    numLayers: 2,
    hiddenSize: 16,
    numAttentionHeads: 4,
    seqLength: 8,
    maxPositionEmbeddings: 16,
    vocabSize: 64,
    hiddenDropout: 0.1,
    attentionDropout: 0.1,
    initMethodStd: 0.02,
    paramsDtype: "f32",
    activationsCheckpointMethod: null,
    seed: 1234,
    ...over,
  };
}

function build(over: Partial<GPTConfig> = {}, tp = 1, tpRank = 0): GPTModel {
  const ps = makeParallelState({ tp, pp: 1, dp: 1 }, tpRank);
  return new GPTModel(cfgOf(over), backend, ps, new SingleRankCommunicator());
}

Deno.test("padVocabSize: Megatron's rule (GPT-2 and BERT numbers) and bad input", () => {
  assert.equal(padVocabSize(50257, 128, 1), 50304);
  assert.equal(padVocabSize(50257, 128, 2), 50432);
  assert.equal(padVocabSize(50257, 128, 8), 51200);
  assert.equal(padVocabSize(30524, 128, 1), 30592);
  assert.equal(padVocabSize(256, 128, 1), 256);
  assert.throws(() => padVocabSize(0, 128, 1), /vocab must be a positive integer, found 0/);
});

Deno.test("params: exact Megatron state-dict names, order, shapes, flags", () => {
  const m = build();
  const layer = (i: number) =>
    [
      "input_layernorm.weight",
      "input_layernorm.bias",
      "self_attention.query_key_value.weight",
      "self_attention.query_key_value.bias",
      "self_attention.dense.weight",
      "self_attention.dense.bias",
      "post_attention_layernorm.weight",
      "post_attention_layernorm.bias",
      "mlp.dense_h_to_4h.weight",
      "mlp.dense_h_to_4h.bias",
      "mlp.dense_4h_to_h.weight",
      "mlp.dense_4h_to_h.bias",
    ].map((n) => `language_model.encoder.layers.${i}.${n}`);
  assert.deepEqual(m.params().map((p) => p.name), [
    "language_model.embedding.word_embeddings.weight",
    "language_model.embedding.position_embeddings.weight",
    ...layer(0),
    ...layer(1),
    "language_model.encoder.final_layernorm.weight",
    "language_model.encoder.final_layernorm.bias",
  ]);
  const by = new Map(m.params().map((p) => [p.name.replace(/layers\.\d+\./, "L."), p]));
  const shape = (n: string) => by.get(n)!.value.shape;
  assert.deepEqual(shape("language_model.embedding.word_embeddings.weight"), [64, 16]);
  assert.deepEqual(shape("language_model.embedding.position_embeddings.weight"), [16, 16]);
  assert.deepEqual(shape("language_model.encoder.L.self_attention.query_key_value.weight"), [48, 16]);
  assert.deepEqual(shape("language_model.encoder.L.self_attention.dense.weight"), [16, 16]);
  assert.deepEqual(shape("language_model.encoder.L.mlp.dense_h_to_4h.weight"), [64, 16]);
  assert.deepEqual(shape("language_model.encoder.L.mlp.dense_4h_to_h.weight"), [16, 64]);
  for (const p of m.params()) {
    const isNoWd = p.name.endsWith(".bias") || p.name.includes("layernorm");
    assert.equal(p.noWeightDecay, isNoWd, p.name);
    assert.equal(p.shared, false);
    assert.equal(p.grad.dtype, "f32");
    assert.equal(p.main, null);
    const col = /word_embeddings|query_key_value|dense_h_to_4h/.test(p.name);
    const row = /self_attention\.dense\.weight|dense_4h_to_h\.weight/.test(p.name);
    assert.equal(p.tensorParallel?.partitionDim ?? null, col ? 0 : row ? 1 : null, p.name);
  }
});

Deno.test("init: deterministic per seed; first rows equal a direct fillNormal on the parameter's stream", () => {
  const a = build(), b = build(), c = build({ seed: 1235 });
  for (const [i, p] of a.params().entries()) {
    assert.deepEqual(backend.toF64(p.value), backend.toF64(b.params()[i].value), p.name);
  }
  const wa = backend.toF64(a.params()[0].value), wc = backend.toF64(c.params()[0].value);
  assert.notDeepEqual(wa, wc);
  // QKV of global layer 1: std 0.02 on stream (layer 1, qkv), element index = row * h + col.
  const qkv = a.params().find((p) =>
    p.name === "language_model.encoder.layers.1.self_attention.query_key_value.weight"
  )!;
  const direct = new Float64Array(3 * 16);
  fillNormal(direct, 1234, initStream(1, ParamKind.qkv), 0, 0.02);
  assert.deepEqual(backend.toF64(qkv.value).subarray(0, 48), Float64Array.from(direct, Math.fround));
  // 4h->h uses the scaled std 0.02 / sqrt(2 * numLayers).
  const w2 = a.params().find((p) => p.name === "language_model.encoder.layers.0.mlp.dense_4h_to_h.weight")!;
  const d2 = new Float64Array(64);
  fillNormal(d2, 1234, initStream(0, ParamKind.fourhh), 0, 0.02 / Math.sqrt(4));
  assert.deepEqual(backend.toF64(w2.value).subarray(0, 64), Float64Array.from(d2, Math.fround));
  // Different parameters use different streams.
  assert.notDeepEqual(
    backend.toF64(a.params()[0].value).subarray(0, 16),
    backend.toF64(a.params()[1].value).subarray(0, 16),
  );
});

Deno.test("init: statistics (mean 0, std 0.02 and 0.02/sqrt(2L)), biases 0, LayerNorm 1/0", () => {
  const m = build({ hiddenSize: 64, numAttentionHeads: 4, vocabSize: 512, numLayers: 8 });
  const stat = (name: string) => {
    const v = backend.toF64(m.params().find((p) => p.name === name)!.value);
    let s = 0, s2 = 0;
    for (const x of v) {
      s += x;
      s2 += x * x;
    }
    const mean = s / v.length;
    return { mean, std: Math.sqrt(s2 / v.length - mean * mean), n: v.length };
  };
  for (
    const [name, std] of [
      ["language_model.embedding.word_embeddings.weight", 0.02],
      ["language_model.encoder.layers.3.self_attention.query_key_value.weight", 0.02],
      ["language_model.encoder.layers.3.mlp.dense_h_to_4h.weight", 0.02],
      ["language_model.encoder.layers.3.self_attention.dense.weight", 0.02 / 4],
      ["language_model.encoder.layers.7.mlp.dense_4h_to_h.weight", 0.02 / 4],
    ] as const
  ) {
    const st = stat(name);
    // n >= 4096: the sample std is within ~3% and the mean within a few std/sqrt(n).
    assert.ok(Math.abs(st.std / std - 1) < 0.04, `${name} std ${st.std} expected ${std}`);
    assert.ok(Math.abs(st.mean) < 5 * std / Math.sqrt(st.n), `${name} mean ${st.mean}`);
  }
  for (const p of m.params()) {
    if (p.name.endsWith(".bias")) assert.ok(backend.toF64(p.value).every((x) => x === 0), p.name);
    if (p.name.endsWith("layernorm.weight")) assert.ok(backend.toF64(p.value).every((x) => x === 1), p.name);
  }
});

Deno.test("init: a TP=2 shard is exactly the slice of the TP=1 weight (rows or columns)", () => {
  const full = build();
  const fullBy = new Map(full.params().map((p) => [p.name, p]));
  for (const r of [0, 1]) {
    const m = build({}, 2, r);
    for (const p of m.params()) {
      const f = fullBy.get(p.name)!;
      const fv = backend.toF64(f.value), v = backend.toF64(p.value);
      const tp = p.tensorParallel;
      if (tp === null) {
        assert.deepEqual(v, fv, p.name);
      } else if (tp.partitionDim === 0) {
        assert.equal(v.length * 2, fv.length);
        assert.deepEqual(v, fv.subarray(r * v.length, (r + 1) * v.length), p.name);
      } else {
        const [rows, cols] = p.value.shape;
        assert.equal(cols * 2, f.value.shape[1]);
        for (let i = 0; i < rows; i++) {
          assert.deepEqual(
            v.subarray(i * cols, (i + 1) * cols),
            fv.subarray(i * 2 * cols + r * cols, i * 2 * cols + (r + 1) * cols),
            `${p.name} row ${i}`,
          );
        }
      }
    }
  }
});

Deno.test("init: half models keep an f32 main copy equal to the f64 draw; value is its rounding", () => {
  const h = build({ paramsDtype: "bf16" }), d = build({ paramsDtype: "f64" });
  const ph = h.params()[2 + 2], pd = d.params()[2 + 2]; // layers.0 QKV weight
  assert.equal(ph.value.dtype, "bf16");
  assert.equal(ph.main!.dtype, "f32");
  const dv = backend.toF64(pd.value);
  assert.deepEqual(backend.toF64(ph.main!), Float64Array.from(dv, Math.fround));
  const hv = backend.toF64(ph.value);
  for (let i = 0; i < dv.length; i++) assert.ok(Math.abs(hv[i] - dv[i]) <= Math.abs(dv[i]) * 2 ** -8);
});

Deno.test("config: one clear error line for bad input", () => {
  assert.throws(() => build({ numAttentionHeads: 3 }), /kvChannels must be a positive integer/);
  assert.throws(() => build({}, 8, 0), /numAttentionHeads 4 is not divisible by tensor-parallel size 8/);
  assert.throws(() => build({ seqLength: 32 }), /seqLength 32 exceeds maxPositionEmbeddings 16/);
  assert.throws(() => build({ hiddenDropout: 1 }), /hiddenDropout must be in \[0, 1\), found 1/);
});
