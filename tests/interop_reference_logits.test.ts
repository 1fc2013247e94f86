// End-to-end check of the weight conversions against transformers' own logits
// (tests/data/interop/reference_logits.json, scripts/interop_fixtures.py): the converted weights, in
// Megatron 2021 names and layouts, are run through a small f64 forward written here from Megatron's
// definition (per-head [np, 3, hn] QKV split, pre-LN layers, tanh GeLU, tied logits; BERT with
// --apply-residual-connection-post-layernorm, erf GeLU, LM head and pooler). It is independent of
// src/models, so it checks the name maps and transforms themselves, including BERT's LayerNorm shift.

import assert from "node:assert/strict";
import {
  bertNameMap,
  bertShapeFromConfig,
  gpt2NameMap,
  gpt2ShapeFromConfig,
  hfToMegatron,
  readHfFolder,
  type Tensor2,
} from "../src/interop/hf.ts";
import { readMegatronCheckpoint } from "../src/interop/megatron_checkpoint.ts";
import { geluErf } from "../src/backend/cpu/erf.ts";

const DATA = new URL("./data/interop/", import.meta.url).pathname;
const ref = JSON.parse(Deno.readTextFileSync(`${DATA}reference_logits.json`));

type W = (name: string) => Float64Array;
const weights = (m: Map<string, Tensor2>): W => (name) => {
  const t = m.get(name);
  if (!t) throw new Error(`missing ${name}`);
  return Float64Array.from(t.data as Float32Array);
};

/** y[s, out] = x[s, in] W[out, in]^T + b */
function linear(
  x: Float64Array,
  s: number,
  inD: number,
  w: Float64Array,
  b: Float64Array | null,
  outD: number,
) {
  const y = new Float64Array(s * outD);
  for (let i = 0; i < s; i++) {
    for (let o = 0; o < outD; o++) {
      let acc = b ? b[o] : 0;
      for (let k = 0; k < inD; k++) acc += x[i * inD + k] * w[o * inD + k];
      y[i * outD + o] = acc;
    }
  }
  return y;
}

function layerNorm(x: Float64Array, s: number, h: number, g: Float64Array, b: Float64Array, eps: number) {
  const y = new Float64Array(x.length);
  for (let i = 0; i < s; i++) {
    let m = 0, v = 0;
    for (let k = 0; k < h; k++) m += x[i * h + k];
    m /= h;
    for (let k = 0; k < h; k++) v += (x[i * h + k] - m) ** 2;
    const r = 1 / Math.sqrt(v / h + eps);
    for (let k = 0; k < h; k++) y[i * h + k] = (x[i * h + k] - m) * r * g[k] + b[k];
  }
  return y;
}

/** Megatron's self-attention on [s, h] with query_key_value rows in the [np, 3, hn] order. */
function attention(ln: Float64Array, s: number, h: number, np: number, w: W, p: string, causal: boolean) {
  const hn = h / np;
  const qkv = linear(ln, s, h, w(`${p}query_key_value.weight`), w(`${p}query_key_value.bias`), 3 * h);
  const ctx = new Float64Array(s * h);
  for (let n = 0; n < np; n++) {
    const at = (i: number, part: number, d: number) => qkv[i * 3 * h + n * 3 * hn + part * hn + d];
    for (let i = 0; i < s; i++) {
      const sc: number[] = [];
      for (let j = 0; j < s; j++) {
        let d = 0;
        for (let c = 0; c < hn; c++) d += at(i, 0, c) * at(j, 1, c);
        sc.push(causal && j > i ? -Infinity : d / Math.sqrt(hn));
      }
      const m = Math.max(...sc);
      const e = sc.map((x) => Math.exp(x - m));
      const z = e.reduce((a, b) => a + b, 0);
      for (let c = 0; c < hn; c++) {
        let acc = 0;
        for (let j = 0; j < s; j++) acc += (e[j] / z) * at(j, 2, c);
        ctx[i * h + n * hn + c] = acc;
      }
    }
  }
  return linear(ctx, s, h, w(`${p}dense.weight`), w(`${p}dense.bias`), h);
}

const geluTanh = (x: number) => 0.5 * x * (1 + Math.tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x)));

function mlp(
  x: Float64Array,
  s: number,
  h: number,
  ffn: number,
  w: W,
  p: string,
  act: (x: number) => number,
) {
  const a = linear(x, s, h, w(`${p}dense_h_to_4h.weight`), w(`${p}dense_h_to_4h.bias`), ffn).map(act);
  return linear(a, s, ffn, w(`${p}dense_4h_to_h.weight`), w(`${p}dense_4h_to_h.bias`), h);
}

const add = (a: Float64Array, b: Float64Array) => a.map((x, i) => x + b[i]);

function embed(ids: number[], h: number, w: W, types?: number[]) {
  const we = w("language_model.embedding.word_embeddings.weight");
  const pe = w("language_model.embedding.position_embeddings.weight");
  const te = types ? w("language_model.embedding.tokentype_embeddings.weight") : null;
  const x = new Float64Array(ids.length * h);
  ids.forEach((id, i) => {
    for (let k = 0; k < h; k++) {
      x[i * h + k] = we[id * h + k] + pe[i * h + k] + (te ? te[types![i] * h + k] : 0);
    }
  });
  return x;
}

function gptLogits(w: W, ids: number[], layers: number, h: number, np: number, vocab: number) {
  const s = ids.length, eps = 1e-5;
  let x = embed(ids, h, w);
  for (let l = 0; l < layers; l++) {
    const p = `language_model.encoder.layers.${l}.`;
    const ln = layerNorm(x, s, h, w(`${p}input_layernorm.weight`), w(`${p}input_layernorm.bias`), eps);
    const y = add(x, attention(ln, s, h, np, w, `${p}self_attention.`, true));
    const ln2 = layerNorm(
      y,
      s,
      h,
      w(`${p}post_attention_layernorm.weight`),
      w(`${p}post_attention_layernorm.bias`),
      eps,
    );
    x = add(y, mlp(ln2, s, h, 4 * h, w, `${p}mlp.`, geluTanh));
  }
  const f = layerNorm(
    x,
    s,
    h,
    w("language_model.encoder.final_layernorm.weight"),
    w("language_model.encoder.final_layernorm.bias"),
    eps,
  );
  return linear(f, s, h, w("language_model.embedding.word_embeddings.weight"), null, vocab);
}

function assertClose(got: Float64Array, want: number[], cols: number, wantCols: number, what: string) {
  let worst = 0, scale = 0;
  for (let i = 0; i < want.length / wantCols; i++) {
    for (let j = 0; j < wantCols; j++) {
      worst = Math.max(worst, Math.abs(got[i * cols + j] - want[i * wantCols + j]));
      scale = Math.max(scale, Math.abs(want[i * wantCols + j]));
    }
  }
  assert.ok(worst <= 1e-5 * scale, `${what}: max abs diff ${worst} vs scale ${scale}`);
}

Deno.test("HF GPT-2 converted to Megatron names gives transformers' logits (rel 1e-5)", () => {
  const f = readHfFolder(`${DATA}hf_gpt2`);
  const shape = gpt2ShapeFromConfig(f.config);
  const meg = hfToMegatron(gpt2NameMap(shape), new Map(f.tensors.map((t) => [t.name, t])), shape);
  const logits = gptLogits(weights(meg), ref.input_ids, shape.numLayers, shape.hidden, shape.heads, 128);
  assertClose(logits, ref.hf_gpt2_logits, 128, shape.vocab, "gpt2");
  // Permuting QKV the wrong way (HF blocks read as if per-head) must not pass.
  const wrong = hfToMegatron(gpt2NameMap(shape), new Map(f.tensors.map((t) => [t.name, t])), {
    ...shape,
    qkvLayout: "v0",
  });
  assert.throws(() =>
    assertClose(gptLogits(weights(wrong), ref.input_ids, 2, 8, 2, 128), ref.hf_gpt2_logits, 128, 50, "wrong")
  );
});

Deno.test("the torch-written Megatron checkpoint (and its version 0 / 1 copies) gives GPT-2's logits", () => {
  for (
    const file of [
      "megatron_gpt_zip.pt",
      "megatron_gpt_legacy.pt",
      "megatron_gpt_v0.pt",
      "megatron_gpt_v1.pt",
    ]
  ) {
    const c = readMegatronCheckpoint(`${DATA}${file}`);
    const m = new Map(
      [...c.chunks[0]].map(([k, t]) => [k, { shape: t.shape, data: t.data as Float32Array }]),
    );
    const a = c.args as Record<string, number>;
    const logits = gptLogits(
      weights(m),
      ref.input_ids,
      a.num_layers,
      a.hidden_size,
      a.num_attention_heads,
      a.padded_vocab_size,
    );
    assertClose(logits, ref.megatron_gpt_logits, 128, 128, file);
  }
});

Deno.test("HF BERT converted (post-LN shift) gives transformers' MLM and NSP logits (rel 1e-5)", () => {
  const f = readHfFolder(`${DATA}hf_bert`);
  const sh = bertShapeFromConfig(f.config);
  const w = weights(hfToMegatron(bertNameMap(sh), new Map(f.tensors.map((t) => [t.name, t])), sh));
  const ids: number[] = ref.input_ids, s = ids.length, h = sh.hidden, eps = sh.layerNormEps;
  let x = embed(ids, h, w, ref.bert_token_type_ids);
  for (let l = 0; l < sh.numLayers; l++) {
    const p = `language_model.encoder.layers.${l}.`;
    // --apply-residual-connection-post-layernorm: the residuals are the LayerNorm outputs.
    const ln = layerNorm(x, s, h, w(`${p}input_layernorm.weight`), w(`${p}input_layernorm.bias`), eps);
    const y = add(ln, attention(ln, s, h, sh.heads, w, `${p}self_attention.`, false));
    const ln2 = layerNorm(
      y,
      s,
      h,
      w(`${p}post_attention_layernorm.weight`),
      w(`${p}post_attention_layernorm.bias`),
      eps,
    );
    x = add(ln2, mlp(ln2, s, h, sh.ffn, w, `${p}mlp.`, geluErf));
  }
  const fin = layerNorm(
    x,
    s,
    h,
    w("language_model.encoder.final_layernorm.weight"),
    w("language_model.encoder.final_layernorm.bias"),
    eps,
  );
  const t = layerNorm(
    linear(fin, s, h, w("lm_head.dense.weight"), w("lm_head.dense.bias"), h).map(geluErf),
    s,
    h,
    w("lm_head.layernorm.weight"),
    w("lm_head.layernorm.bias"),
    eps,
  );
  const logits = linear(
    t,
    s,
    h,
    w("language_model.embedding.word_embeddings.weight"),
    w("lm_head.bias"),
    128,
  );
  assertClose(logits, ref.hf_bert_prediction_logits, 128, sh.vocab, "bert mlm");
  const pooled = linear(
    fin.subarray(0, h),
    1,
    h,
    w("language_model.pooler.dense.weight"),
    w("language_model.pooler.dense.bias"),
    h,
  ).map(Math.tanh);
  const nsp = linear(pooled, 1, h, w("binary_head.weight"), w("binary_head.bias"), 2);
  assertClose(nsp, ref.hf_bert_seq_relationship_logits, 2, 2, "bert binary head");
});
