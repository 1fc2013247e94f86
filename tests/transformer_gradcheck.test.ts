// Finite-difference gradient checks (f64, CPU backend) for every transformer module, with dropout on.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import type { Param } from "../src/tensor/param.ts";
import type { Tensor } from "../src/tensor/tensor.ts";
import {
  checkGradients,
  Embedding,
  type GradTarget,
  LossHead,
  type MicroBatchContext,
  type ModuleEnv,
  newMicroBatchContext,
  paddingMaskFromKeep,
  ParallelAttention,
  ParallelMLP,
  resolveConfig,
  TransformerLayer,
} from "../src/transformer/mod.ts";
import { dotF64, lcgNoise, singleRankEnv } from "./helpers/fd_check.ts";

const backend = createCpuBackend({ log: () => {} });

function env(over: Partial<Parameters<typeof resolveConfig>[0]> = {}): ModuleEnv {
  const cfg = resolveConfig({
    numLayers: 2,
    hiddenSize: 8,
    numAttentionHeads: 2,
    seqLength: 5,
    maxPositionEmbeddings: 7,
    vocabSize: 16,
    hiddenDropout: 0.2,
    attentionDropout: 0.2,
    initMethodStd: 0.3,
    paramsDtype: "f64",
    activationsCheckpointMethod: null,
    seed: 1234,
    ...over,
  });
  return singleRankEnv(cfg, backend);
}

/** Deterministic values in [-1, 1). */
function noise(n: number, salt: number): Float64Array {
  return lcgNoise(n, salt * 7919 + 17);
}

/** Give zero/one-initialized params (biases, LayerNorm) generic values so their paths are exercised. */
function perturbParams(ps: Param[]): void {
  for (const [i, p] of ps.entries()) {
    const v = backend.toF64(p.value);
    const r = noise(v.length, 100 + i);
    for (let j = 0; j < v.length; j++) v[j] += 0.2 * r[j];
    backend.copy(backend.fromHost(p.value.dtype, p.value.shape, v), p.value);
  }
}

const ctxOf = (): MicroBatchContext => newMicroBatchContext({ iteration: 7, firstGlobalSample: 3 });

function dot(t: Tensor, r: Float64Array): number {
  return dotF64(backend, t, r);
}

interface Mod {
  forward(x: Tensor, ctx: MicroBatchContext): Promise<Tensor>;
  backward(dy: Tensor, ctx: MicroBatchContext): Promise<Tensor>;
  discard(ctx: MicroBatchContext): void;
}

/** loss = sum(module(x) * R); checks dL/dx and dL/dparams. */
async function checkModule(mod: Mod, params: Param[], x: Tensor): Promise<void> {
  perturbParams(params);
  const yShape = x.shape;
  const R = noise(x.size, 99);
  for (const p of params) backend.fill(p.grad, 0);
  const ctx = ctxOf();
  const y = await mod.forward(x, ctx);
  assert.deepEqual(y.shape, yShape);
  const dy = backend.fromHost("f64", y.shape, R);
  const dx = await mod.backward(dy, ctx);
  assert.equal(ctx.saved.size, 0, "backward leaves nothing saved");
  const targets: GradTarget[] = [
    { name: "x", value: x, grad: dx },
    ...params.map((p) => ({
      name: p.name,
      value: p.value,
      grad: p.grad,
    })),
  ];
  const res = await checkGradients(backend, targets, async () => {
    const c = ctxOf();
    const out = await mod.forward(x, c);
    const v = dot(out, R);
    mod.discard(c);
    backend.free(out);
    assert.equal(c.saved.size, 0);
    return v;
  });
  assert.deepEqual(res.failures, [], `worst ${res.worst} at ${res.worstAt}`);
  assert.ok(res.checked >= 6 * targets.length - 6);
}

function randomInput(e: ModuleEnv, b = 2): Tensor {
  const n = b * e.cfg.seqLength * e.cfg.hiddenSize;
  return backend.fromHost("f64", [b, e.cfg.seqLength, e.cfg.hiddenSize], noise(n, 5));
}

Deno.test("gradcheck: attention (causal softmax, attention dropout)", async () => {
  const e = env();
  const m = new ParallelAttention(e, 1, "l.self_attention.");
  await checkModule(m, m.params().filter((p) => !p.name.endsWith("dense.bias")), randomInput(e));
});

Deno.test("gradcheck: attention with kvChannels != h/heads and 3 heads", async () => {
  const e = env({ numAttentionHeads: 3, kvChannels: 5 });
  const m = new ParallelAttention(e, 0, "l.self_attention.");
  await checkModule(m, m.params().filter((p) => !p.name.endsWith("dense.bias")), randomInput(e, 3));
});

Deno.test("gradcheck: MLP (bias + tanh GeLU)", async () => {
  const e = env({ ffnHiddenSize: 12 });
  const m = new ParallelMLP(e, 0, "l.mlp.");
  await checkModule(m, m.params().filter((p) => !p.name.endsWith("4h_to_h.bias")), randomInput(e));
});

Deno.test("gradcheck: MLP without the bias-GeLU fusion (bias in the linear, erf GeLU)", async () => {
  const e = env({ ffnHiddenSize: 12, biasGeluFusion: false });
  const m = new ParallelMLP(e, 0, "l.mlp.");
  await checkModule(m, m.params().filter((p) => !p.name.endsWith("4h_to_h.bias")), randomInput(e));
});

Deno.test("gradcheck: transformer layer (both dropouts, bias-dropout-add)", async () => {
  const e = env();
  const m = new TransformerLayer(e, 1, "layers.1.");
  assert.equal(m.params().length, 12);
  await checkModule(m, m.params(), randomInput(e));
});

Deno.test("gradcheck: embedding (word + position, embedding dropout)", async () => {
  const e = env();
  const m = new Embedding(e);
  perturbParams(m.params());
  const tokens = backend.fromHost("i32", [2, 5], [0, 3, 15, 3, 7, 9, 9, 1, 0, 14]);
  const R = noise(2 * 5 * 8, 3);
  for (const p of m.params()) backend.fill(p.grad, 0);
  const ctx = ctxOf();
  const y = await m.forward(tokens, ctx);
  await m.backward(backend.fromHost("f64", y.shape, R), ctx);
  assert.equal(ctx.saved.size, 0);
  const res = await checkGradients(
    backend,
    m.params().map((p) => ({ name: p.name, value: p.value, grad: p.grad })),
    async () => {
      const c = ctxOf();
      const out = await m.forward(tokens, c);
      const v = dot(out, R);
      m.discard(c);
      backend.free(out);
      return v;
    },
    { samples: 24 },
  );
  assert.deepEqual(res.failures, [], `worst ${res.worst} at ${res.worstAt}`);
  // Rows of tokens that never occur get exactly zero gradient.
  const g = backend.toF64(m.wordEmbeddings.grad);
  for (const row of [2, 4, 5]) for (let j = 0; j < 8; j++) assert.equal(g[row * 8 + j], 0);
});

Deno.test("gradcheck: final LayerNorm + tied logits + cross-entropy with a loss mask", async () => {
  const e = env();
  const emb = new Embedding(e);
  const head = new LossHead(e, emb.wordEmbeddings, 0);
  const params = [emb.wordEmbeddings, ...head.params()];
  perturbParams(params);
  const x = randomInput(e);
  const labels = backend.fromHost("i32", [2, 5], [1, 2, 3, 4, 5, 15, 0, 8, 8, 11]);
  const mask = backend.fromHost("f32", [2, 5], [1, 1, 0, 1, 1, 1, 1, 1, 0, 1]);
  const factor = 3.5;
  for (const p of params) backend.fill(p.grad, 0);
  const ctx = ctxOf();
  const out = await head.forward(x, labels, mask, ctx);
  assert.equal(out.tokens, 8);
  assert.ok(Math.abs(out.loss - out.lossSum / 8) < 1e-15);
  const dx = await head.backward(ctx, factor);
  assert.deepEqual(dx.shape, x.shape);
  assert.equal(ctx.saved.size, 0);
  // Independent loss on the host from the head's own logits definition: mean masked CE.
  const res = await checkGradients(
    backend,
    [
      { name: "x", value: x, grad: dx },
      ...params.map((p) => ({ name: p.name, value: p.value, grad: p.grad })),
    ],
    async () => {
      const c = ctxOf();
      const o = await head.forward(x, labels, mask, c);
      head.discard(c);
      return o.loss * factor;
    },
  );
  assert.deepEqual(res.failures, [], `worst ${res.worst} at ${res.worstAt}`);
});

Deno.test("gradcheck: the checker itself rejects a wrong gradient", async () => {
  const e = env();
  const m = new ParallelMLP(e, 0, "l.mlp.");
  const x = randomInput(e);
  const R = noise(x.size, 1);
  const ctx = ctxOf();
  const y = await m.forward(x, ctx);
  const dx = await m.backward(backend.fromHost("f64", y.shape, R), ctx);
  const wrong = backend.toF64(dx);
  wrong[0] *= 1.00001;
  const res = await checkGradients(backend, [{ name: "x", value: x, grad: wrong }], async () => {
    const c = ctxOf();
    const out = await m.forward(x, c);
    m.discard(c);
    return dot(out, R);
  });
  assert.equal(res.failures.length, 1);
  assert.match(res.failures[0], /^x\[0\]/);
});

// ---- encoder/decoder layers: padding mask, cross-attention, post-LN residual ----------------------

/** A deterministic padding mask u8 [b, sq, sk] (1 = masked) leaving every row at least one key. */
function paddingMask(b: number, sq: number, sk: number, salt: number): Tensor {
  const r = noise(b * sq * sk, salt);
  const m = new Uint8Array(b * sq * sk);
  for (let i = 0; i < m.length; i++) m[i] = (i % sk) !== 0 && r[i] > 0.2 ? 1 : 0;
  return backend.fromHost("u8", [b, sq, sk], m);
}

/** loss = sum(f(x, enc) * R): checks d/dx, d/d encoder output and d/d params of a module with a
 *  second input that it accumulates the grad of. */
async function checkWithEncoder(
  run: {
    forward(x: Tensor, ctx: MicroBatchContext): Promise<Tensor>;
    backward(dy: Tensor, ctx: MicroBatchContext, dEnc: Tensor): Promise<Tensor>;
    discard(ctx: MicroBatchContext): void;
  },
  params: Param[],
  x: Tensor,
  enc: Tensor,
): Promise<void> {
  perturbParams(params);
  const R = noise(x.size, 99);
  for (const p of params) backend.fill(p.grad, 0);
  const ctx = ctxOf();
  const y = await run.forward(x, ctx);
  assert.deepEqual(y.shape, x.shape);
  const dEnc = backend.zeros("f64", enc.shape);
  const dx = await run.backward(backend.fromHost("f64", y.shape, R), ctx, dEnc);
  assert.equal(ctx.saved.size, 0, "backward leaves nothing saved");
  const targets: GradTarget[] = [
    { name: "x", value: x, grad: dx },
    { name: "encoderOutput", value: enc, grad: dEnc },
    ...params.map((p) => ({ name: p.name, value: p.value, grad: p.grad })),
  ];
  const res = await checkGradients(backend, targets, async () => {
    const c = ctxOf();
    const out = await run.forward(x, c);
    const v = dot(out, R);
    run.discard(c);
    backend.free(out);
    assert.equal(c.saved.size, 0);
    return v;
  });
  assert.deepEqual(res.failures, [], `worst ${res.worst} at ${res.worstAt}`);
  assert.ok(res.checked >= 6 * targets.length - 6);
}

Deno.test("gradcheck: padding-masked self-attention (mask input [b, s, s], attention dropout)", async () => {
  const e = env();
  const m = new ParallelAttention(e, 1, "l.self_attention.", { maskType: "padding" });
  const mask = paddingMask(2, 5, 5, 41);
  const mod: Mod = {
    forward: (x, c) => m.forward(x, c, { mask }),
    backward: (dy, c) => m.backward(dy, c),
    discard: (c) => m.discard(c),
  };
  await checkModule(mod, m.params().filter((p) => !p.name.endsWith("dense.bias")), randomInput(e));
});

Deno.test("padding mask: masked keys get exactly zero probability, and [b, s] keep-masks expand as Megatron", async () => {
  // Megatron's bert_extended_attention_mask: (i, j) is kept only when tokens i and j are both real.
  assert.deepEqual([...paddingMaskFromKeep([1, 1, 0], 1, 3)], [0, 0, 1, 0, 0, 1, 1, 1, 1]);
  const e = env({ attentionDropout: 0 });
  const m = new ParallelAttention(e, 0, "l.self_attention.", { maskType: "padding" });
  const x = randomInput(e, 1);
  // A value change at a masked key position must not change any output row that masks it.
  const keep = [1, 1, 1, 0, 0];
  const mask = backend.fromHost("u8", [1, 5, 5], paddingMaskFromKeep(keep, 1, 5));
  const ctx = newMicroBatchContext({ iteration: 1, firstGlobalSample: 0, training: false });
  const y0 = backend.toF64(await m.forward(x, ctx, { mask }));
  m.discard(ctx);
  const xv = backend.toF64(x);
  for (let f = 0; f < 8; f++) xv[4 * 8 + f] += 1; // token 4 (padding)
  const x2 = backend.fromHost("f64", x.shape, xv);
  const y1 = backend.toF64(await m.forward(x2, ctx, { mask }));
  m.discard(ctx);
  for (let i = 0; i < 3 * 8; i++) assert.equal(y1[i], y0[i], `real token output ${i} changed`);
  await assert.rejects(
    () => m.forward(x, newMicroBatchContext({ iteration: 1, firstGlobalSample: 0 })),
    /the padding mask must be u8 \[1, 5, 5\] \(1 = masked\), found none/,
  );
});

Deno.test("gradcheck: cross-attention (query 5, keys 3, padding mask, dropout) incl. encoder output", async () => {
  const e = env({ numAttentionHeads: 2, kvChannels: 3 });
  const m = new ParallelAttention(e, 1, "l.inter_attention.", { attnType: "cross", maskType: "padding" });
  assert.deepEqual(
    m.params().map((p) => p.name.slice(2)),
    [
      "inter_attention.query.weight",
      "inter_attention.query.bias",
      "inter_attention.key_value.weight",
      "inter_attention.key_value.bias",
      "inter_attention.dense.weight",
      "inter_attention.dense.bias",
    ],
  );
  const enc = backend.fromHost("f64", [2, 3, 8], noise(2 * 3 * 8, 61));
  const mask = paddingMask(2, 5, 3, 43);
  await checkWithEncoder(
    {
      forward: (x, c) => m.forward(x, c, { mask, encoderOutput: enc }),
      backward: (dy, c, dEnc) => m.backward(dy, c, { dEncoderOutput: dEnc }),
      discard: (c) => m.discard(c),
    },
    m.params().filter((p) => !p.name.endsWith("dense.bias")),
    randomInput(e),
    enc,
  );
});

Deno.test("gradcheck: decoder layer (causal self-attn, cross-attn, MLP; three dropouts)", async () => {
  const e = env();
  const m = new TransformerLayer(e, 1, "layers.1.", { layerType: "decoder" });
  assert.equal(m.params().length, 20);
  const enc = backend.fromHost("f64", [2, 4, 8], noise(2 * 4 * 8, 67));
  const encDecMask = paddingMask(2, 5, 4, 47);
  await checkWithEncoder(
    {
      forward: (x, c) => m.forward(x, c, { encoderOutput: enc, encDecMask }),
      backward: (dy, c, dEnc) => m.backward(dy, c, { dEncoderOutput: dEnc }),
      discard: (c) => m.discard(c),
    },
    m.params(),
    randomInput(e),
    enc,
  );
});

Deno.test("gradcheck: padding-mask encoder layer with the residual after the LayerNorm (BERT flag)", async () => {
  const e = env({ applyResidualConnectionPostLayernorm: true });
  const m = new TransformerLayer(e, 0, "layers.0.", { selfAttnMaskType: "padding" });
  const mask = paddingMask(2, 5, 5, 53);
  const mod: Mod = {
    forward: (x, c) => m.forward(x, c, { mask }),
    backward: (dy, c) => m.backward(dy, c),
    discard: (c) => m.discard(c),
  };
  await checkModule(mod, m.params(), randomInput(e));
});

Deno.test("gradcheck: Hugging Face BERT's layer form (post-LN residual, LayerNorm eps 1e-12, erf GeLU)", async () => {
  const e = env({
    applyResidualConnectionPostLayernorm: true,
    layernormEpsilon: 1e-12,
    biasGeluFusion: false,
  });
  const m = new TransformerLayer(e, 0, "layers.0.", { selfAttnMaskType: "padding" });
  const mask = paddingMask(2, 5, 5, 59);
  const mod: Mod = {
    forward: (x, c) => m.forward(x, c, { mask }),
    backward: (dy, c) => m.backward(dy, c),
    discard: (c) => m.discard(c),
  };
  await checkModule(mod, m.params(), randomInput(e));
});
