// The GPT forward against an independent naive f64 implementation written from the architecture
// description (per-head [heads, 3, hn] QKV layout, causal softmax with 1/sqrt(hn), tanh GeLU, pre-LN,
// tied logits, masked-mean CE). Dropout off, so the two must agree to rounding.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { GPTModel, type LossOutput } from "../src/models/mod.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import type { GPTConfig } from "../src/transformer/config.ts";

const backend = createCpuBackend({ log: () => {} });

type Mat = Float64Array[];

function matmulT(x: Mat, w: Float64Array, out: number, inF: number, bias?: Float64Array): Mat {
  return x.map((row) => {
    const y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let s = bias ? bias[o] : 0;
      for (let i = 0; i < inF; i++) s += row[i] * w[o * inF + i];
      y[o] = s;
    }
    return y;
  });
}

function layerNorm(x: Mat, g: Float64Array, b: Float64Array, eps: number): Mat {
  return x.map((row) => {
    const n = row.length;
    const mean = row.reduce((a, v) => a + v, 0) / n;
    const v = row.reduce((a, x) => a + (x - mean) ** 2, 0) / n;
    return row.map((x, i) => ((x - mean) / Math.sqrt(v + eps)) * g[i] + b[i]);
  });
}

const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x)));

function referenceLoss(m: GPTModel, tokens: number[][], labels: number[][], mask: number[][]): number {
  const P = new Map(m.params().map((p) => [p.name, backend.toF64(p.value)]));
  const get = (n: string) => P.get(n)!;
  const { hiddenSize: h, numAttentionHeads: heads, kvChannels: hn, ffnHiddenSize: f, vocabSize: V } = m.cfg;
  const wte = get("language_model.embedding.word_embeddings.weight");
  const wpe = get("language_model.embedding.position_embeddings.weight");
  let lossSum = 0, count = 0;
  for (let bi = 0; bi < tokens.length; bi++) {
    const s = tokens[bi].length;
    let x: Mat = tokens[bi].map((t, p) =>
      Float64Array.from({ length: h }, (_, j) => wte[t * h + j] + wpe[p * h + j])
    );
    for (let l = 0; l < m.cfg.numLayers; l++) {
      const L = (n: string) => get(`language_model.encoder.layers.${l}.${n}`);
      const ln1 = layerNorm(x, L("input_layernorm.weight"), L("input_layernorm.bias"), 1e-5);
      const qkv = matmulT(
        ln1,
        L("self_attention.query_key_value.weight"),
        3 * heads * hn,
        h,
        L("self_attention.query_key_value.bias"),
      );
      const ctx: Mat = Array.from({ length: s }, () => new Float64Array(heads * hn));
      for (let hd = 0; hd < heads; hd++) {
        const base = hd * 3 * hn;
        for (let i = 0; i < s; i++) {
          const sc: number[] = [];
          for (let j = 0; j <= i; j++) {
            let d = 0;
            for (let c = 0; c < hn; c++) d += qkv[i][base + c] * qkv[j][base + hn + c];
            sc.push(d / Math.sqrt(hn));
          }
          const mx = Math.max(...sc);
          const e = sc.map((v) => Math.exp(v - mx));
          const z = e.reduce((a, v) => a + v, 0);
          for (let j = 0; j <= i; j++) {
            for (let c = 0; c < hn; c++) ctx[i][hd * hn + c] += (e[j] / z) * qkv[j][base + 2 * hn + c];
          }
        }
      }
      const attn = matmulT(
        ctx,
        L("self_attention.dense.weight"),
        h,
        heads * hn,
        L("self_attention.dense.bias"),
      );
      x = x.map((r, i) => r.map((v, j) => v + attn[i][j]));
      const ln2 = layerNorm(
        x,
        L("post_attention_layernorm.weight"),
        L("post_attention_layernorm.bias"),
        1e-5,
      );
      const a = matmulT(ln2, L("mlp.dense_h_to_4h.weight"), f, h, L("mlp.dense_h_to_4h.bias")).map((r) =>
        r.map(gelu)
      );
      const o = matmulT(a, L("mlp.dense_4h_to_h.weight"), h, f, L("mlp.dense_4h_to_h.bias"));
      x = x.map((r, i) => r.map((v, j) => v + o[i][j]));
    }
    const y = layerNorm(
      x,
      get("language_model.encoder.final_layernorm.weight"),
      get("language_model.encoder.final_layernorm.bias"),
      1e-5,
    );
    const logits = matmulT(y, wte, V, h);
    for (let i = 0; i < s; i++) {
      const mx = Math.max(...logits[i]);
      const lse = Math.log(logits[i].reduce((acc, v) => acc + Math.exp(v - mx), 0)) + mx;
      lossSum += (lse - logits[i][labels[bi][i]]) * mask[bi][i];
      count += mask[bi][i];
    }
  }
  return lossSum / count;
}

for (const over of [{}, { numAttentionHeads: 4, kvChannels: 3, ffnHiddenSize: 20 }] as Partial<GPTConfig>[]) {
  Deno.test(`reference: GPT loss equals a naive f64 implementation ${JSON.stringify(over)}`, async () => {
    const cfg: GPTConfig = {
      numLayers: 2,
      hiddenSize: 8,
      numAttentionHeads: 2,
      seqLength: 7,
      maxPositionEmbeddings: 9,
      vocabSize: 24,
      hiddenDropout: 0,
      attentionDropout: 0,
      initMethodStd: 0.4,
      paramsDtype: "f64",
      activationsCheckpointMethod: null,
      seed: 77,
      ...over,
    };
    const m = new GPTModel(
      cfg,
      backend,
      makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
      new SingleRankCommunicator(),
    );
    // Non-zero biases and LayerNorm params so their layout matters too.
    for (const [k, p] of m.params().entries()) {
      if (p.value.rank !== 1) continue;
      const v = backend.toF64(p.value).map((x, i) => x + 0.3 * Math.sin(7 * i + k));
      backend.copy(backend.fromHost("f64", p.value.shape, v), p.value);
    }
    const tokens = [[1, 5, 9, 23, 0, 7, 7], [3, 3, 12, 18, 2, 1, 22]];
    const labels = [[5, 9, 23, 0, 7, 7, 4], [3, 12, 18, 2, 1, 22, 6]];
    const mask = [[1, 1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 0, 1]];
    const ctx = m.newContext({ iteration: 0, firstGlobalSample: 0 });
    const out = await m.forward({
      tokens: backend.fromHost("i32", [2, 7], tokens.flat()),
      labels: backend.fromHost("i32", [2, 7], labels.flat()),
      lossMask: backend.fromHost("f32", [2, 7], mask.flat()),
    }, ctx) as LossOutput;
    m.discard(ctx);
    const ref = referenceLoss(m, tokens, labels, mask);
    assert.ok(ref > 1, `reference loss ${ref} is not trivial`);
    assert.ok(Math.abs(out.loss - ref) < 1e-12 * ref, `model ${out.loss} vs reference ${ref}`);
    assert.equal(out.tokens, 12);
  });
}
