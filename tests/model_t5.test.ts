// T5 (Megatron 2021): f64 finite-difference check of the whole model's masked-LM loss with every dropout
// on (shared embedding used twice, padding-masked encoder, causal decoder with cross-attention, tied
// logits + lm_head.bias); parameter names and order as Megatron's state dict; the decoder's layers draw
// their own init (distinct global layer numbers); TP=2 shards give TP=1's loss and grads; one batch is
// overfit in f32, bf16 and fp16 with the dynamic loss scaler.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { MaskedLmLoss } from "../src/models/lm_logits.ts";
import { T5Model } from "../src/models/t5.ts";
import { WeightTable } from "../src/models/weight_names.ts";
import { createGradScaler, createLrScheduler, MegatronOptimizer } from "../src/optimizer/mod.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import type { Param } from "../src/tensor/param.ts";
import type { Tensor } from "../src/tensor/tensor.ts";
import {
  checkGradients,
  type MicroBatchContext,
  newMicroBatchContext,
  paddingMaskFromKeep,
  type ParamsDType,
  type TransformerConfig,
} from "../src/transformer/mod.ts";
import { lcgNoise } from "./helpers/fd_check.ts";

const backend = createCpuBackend({ log: () => {} });

const B = 2, SE = 6, SD = 4, V = 16;

function config(over: Partial<TransformerConfig> = {}): TransformerConfig {
  return {
    numLayers: 2,
    hiddenSize: 8,
    numAttentionHeads: 2,
    seqLength: SE,
    maxPositionEmbeddings: 8,
    vocabSize: V,
    hiddenDropout: 0.2,
    attentionDropout: 0.2,
    initMethodStd: 0.3,
    paramsDtype: "f64",
    activationsCheckpointMethod: null,
    seed: 1234,
    ...over,
  };
}

/** A batch shaped as the T5 dataset makes them: row 0 full, row 1 padded (id 0) at the end of both
 *  encoder and decoder; labels -1 and loss mask 0 on the decoder padding. */
function hostBatch() {
  const enc = [5, 9, 3, 14, 7, 2, 4, 11, 6, 8, 0, 0];
  const dec = [1, 12, 5, 9, 1, 13, 4, 0];
  const labels = [12, 5, 9, 2, 13, 4, 2, -1];
  const lossMask = [1, 1, 1, 1, 1, 1, 1, 0];
  const keepEnc = enc.map((t) => (t >= 1 ? 1 : 0));
  const keepDec = dec.map((t) => (t >= 1 ? 1 : 0));
  const encDec = new Uint8Array(B * SD * SE);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < SD; i++) {
      for (let j = 0; j < SE; j++) {
        encDec[(b * SD + i) * SE + j] = keepDec[b * SD + i] && keepEnc[b * SE + j] ? 0 : 1;
      }
    }
  }
  return { enc, dec, labels, lossMask, encMask: paddingMaskFromKeep(keepEnc, B, SE), encDec };
}

function deviceBatch() {
  const h = hostBatch();
  return {
    inp: {
      textEnc: backend.fromHost("i32", [B, SE], Int32Array.from(h.enc)),
      textDec: backend.fromHost("i32", [B, SD], Int32Array.from(h.dec)),
      encMask: backend.fromHost("u8", [B, SE, SE], h.encMask),
      encDecMask: backend.fromHost("u8", [B, SD, SE], h.encDec),
    },
    labels: backend.fromHost("i32", [B * SD], Int32Array.from(h.labels)),
    lossMask: h.lossMask,
  };
}

function perturb(ps: Param[]): void {
  for (const [i, p] of ps.entries()) {
    const v = backend.toF64(p.value);
    const r = lcgNoise(v.length, 500 + i);
    for (let j = 0; j < v.length; j++) v[j] += 0.2 * r[j];
    const t = backend.fromHost(p.value.dtype, p.value.shape, v);
    backend.copy(t, p.value);
    backend.free(t);
  }
}

const single = () => makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0);
const ctxOf = (): MicroBatchContext => newMicroBatchContext({ iteration: 3, firstGlobalSample: 2 });

/** One forward + loss (+ backward with factor); returns the loss. */
async function step(model: T5Model, batch: ReturnType<typeof deviceBatch>, backwardToo: boolean) {
  const ctx = ctxOf();
  const logits = await model.forward(batch.inp, ctx);
  const tp = { backend, comm: model.comm, ps: model.ps, dtype: model.cfg.paramsDtype };
  const loss = new MaskedLmLoss(tp, model.vocabStart);
  const out = await loss.forward(logits, batch.labels, batch.lossMask, ctx);
  if (backwardToo) {
    const d = loss.backward(ctx, 1);
    await model.backward(ctx, d);
    backend.free(d);
  } else {
    loss.discard(ctx);
    model.discard(ctx);
  }
  return out.loss;
}

Deno.test("gradcheck: whole T5 model loss (f64, every dropout on, padded encoder and decoder)", async () => {
  const model = new T5Model(config(), backend, single(), new SingleRankCommunicator());
  perturb(model.params());
  const batch = deviceBatch();
  for (const p of model.params()) backend.fill(p.grad, 0);
  const l0 = await step(model, batch, true);
  assert.ok(Number.isFinite(l0) && l0 > 0);
  // The forward is deterministic (same context coordinates => same dropout masks).
  assert.equal(await step(model, batch, false), l0);
  const targets = model.params().map((p) => ({ name: p.name, value: p.value, grad: backend.toF64(p.grad) }));
  const res = await checkGradients(backend, targets, () => step(model, batch, false), {
    samples: 3,
    tol: 1e-6,
  });
  assert.deepEqual(res.failures, [], `worst ${res.worst} at ${res.worstAt}`);
  assert.ok(res.checked >= 3 * targets.length - 10);
  // Every parameter family receives gradient (nothing disconnected): the decoder's cross-attention,
  // both final LayerNorms, the LM-head bias, the position embeddings (used by encoder and decoder).
  for (const p of model.params()) {
    const g = backend.toF64(p.grad);
    if (/key_value\.bias|query_key_value\.bias/.test(p.name)) continue; // key bias: exactly zero grad
    assert.ok(g.some((x) => x !== 0), `${p.name}: zero gradient`);
  }
});

Deno.test("T5 parameter names: Megatron's state dict, weight table rules, decoder init distinct", () => {
  const model = new T5Model(config({ numLayers: 1 }), backend, single(), new SingleRankCommunicator());
  const names = model.params().map((p) => p.name);
  const layer = (w: string) =>
    [
      "input_layernorm.weight",
      "input_layernorm.bias",
      "self_attention.query_key_value.weight",
      "self_attention.query_key_value.bias",
      "self_attention.dense.weight",
      "self_attention.dense.bias",
      "post_attention_layernorm.weight",
      "post_attention_layernorm.bias",
      ...(w === "decoder"
        ? [
          "inter_attention.query.weight",
          "inter_attention.query.bias",
          "inter_attention.key_value.weight",
          "inter_attention.key_value.bias",
          "inter_attention.dense.weight",
          "inter_attention.dense.bias",
          "post_inter_attention_layernorm.weight",
          "post_inter_attention_layernorm.bias",
        ]
        : []),
      "mlp.dense_h_to_4h.weight",
      "mlp.dense_h_to_4h.bias",
      "mlp.dense_4h_to_h.weight",
      "mlp.dense_4h_to_h.bias",
    ].map((n) => `language_model.${w}.layers.0.${n}`);
  assert.deepEqual(names, [
    "language_model.embedding.word_embeddings.weight",
    "language_model.embedding.position_embeddings.weight",
    ...layer("encoder"),
    "language_model.encoder.final_layernorm.weight",
    "language_model.encoder.final_layernorm.bias",
    ...layer("decoder"),
    "language_model.decoder.final_layernorm.weight",
    "language_model.decoder.final_layernorm.bias",
    "lm_head.bias",
  ]);
  const table = new WeightTable([{ params: () => model.params(), layers: [0] }]);
  assert.equal(table.entries.length, names.length);
  const byName = new Map(model.params().map((p) => [p.name, backend.toF64(p.value)]));
  const enc = byName.get("language_model.encoder.layers.0.mlp.dense_h_to_4h.weight")!;
  const dec = byName.get("language_model.decoder.layers.0.mlp.dense_h_to_4h.weight")!;
  assert.notDeepEqual(enc, dec, "decoder layer 0 must not repeat encoder layer 0's init");
  assert.ok(byName.get("lm_head.bias")!.every((x) => x === 0), "lm_head.bias starts at zero");
});

Deno.test("T5 rejects pipeline parallelism with one line", () => {
  assert.throws(
    () =>
      new T5Model(
        config(),
        backend,
        makeParallelState({ tp: 1, pp: 2, dp: 1 }, 0),
        new SingleRankCommunicator(),
      ),
    /^Error: T5Model: pipeline parallelism is not supported for T5 \(as in Megatron 2021\), found 2 stages$/,
  );
});

Deno.test("T5 with TP=2: loss and merged grads equal TP=1 (f64, dropout on)", async () => {
  const cfg = config({ numAttentionHeads: 2 });
  const ref = new T5Model(cfg, backend, single(), new SingleRankCommunicator());
  const batch = deviceBatch();
  for (const p of ref.params()) backend.fill(p.grad, 0);
  const refLoss = await step(ref, batch, true);
  const refGrads = new Map(ref.params().map((p) => [p.name, backend.toF64(p.grad)]));
  const world = new LocalWorld(backend, { tp: 2, pp: 1, dp: 1 }, { timeoutMs: 10_000 });
  const ranks = [0, 1].map((r) => new T5Model(cfg, backend, world.states[r], world.communicator(r)));
  for (const m of ranks) for (const p of m.params()) backend.fill(p.grad, 0);
  const losses = await world.run((r) => step(ranks[r], batch, true));
  for (const l of losses) assert.ok(Math.abs(l - refLoss) <= 1e-12 * refLoss, `TP=2 loss ${l} vs ${refLoss}`);
  const { mergeShards, weightRule } = await import("../src/models/weight_names.ts");
  for (const [i, p] of ranks[0].params().entries()) {
    const shards = ranks.map((m) => backend.toF64(m.params()[i].grad));
    const merged = mergeShards(shards, p.grad.shape, weightRule(p.name).split).data;
    const want = refGrads.get(p.name)!;
    let d = 0, n = 0;
    for (let j = 0; j < want.length; j++) {
      d = Math.max(d, Math.abs(merged[j] - want[j]));
      n = Math.max(n, Math.abs(want[j]));
    }
    assert.ok(d <= 1e-10 * Math.max(n, 1e-3), `${p.name}: TP=2 grad differs by ${d} (max ${n})`);
  }
});

// One-batch overfit with the library's optimizer and scaler (as the trainer wires them).
async function overfit(dtype: ParamsDType, flags: { fp16?: boolean; bf16?: boolean }) {
  const model = new T5Model(
    config({
      paramsDtype: dtype,
      hiddenDropout: 0,
      attentionDropout: 0,
      initMethodStd: 0.02,
      hiddenSize: 32,
      numAttentionHeads: 4,
    }),
    backend,
    single(),
    new SingleRankCommunicator(),
  );
  const MAX = 150;
  const scheduler = createLrScheduler({
    lr: 5e-3,
    lrDecayStyle: "constant",
    globalBatchSize: B,
    trainIters: MAX,
  });
  const opt = new MegatronOptimizer(backend, model.params(), scheduler, {
    scaler: createGradScaler(flags),
    weightDecay: 0.01,
  });
  const batch = deviceBatch();
  const tp = { backend, comm: model.comm, ps: model.ps, dtype };
  const losses: number[] = [], skipped: number[] = [];
  for (let it = 0; it < MAX; it++) {
    opt.zeroGrads();
    const ctx = newMicroBatchContext({ iteration: it, firstGlobalSample: 0 });
    const logits: Tensor = await model.forward(batch.inp, ctx);
    const loss = new MaskedLmLoss(tp, model.vocabStart);
    const out = await loss.forward(logits, batch.labels, batch.lossMask, ctx);
    assert.ok(Number.isFinite(out.loss), `${dtype}: step ${it} loss ${out.loss}`);
    const d = loss.backward(ctx, opt.lossScale);
    await model.backward(ctx, d);
    backend.free(d);
    const res = await opt.step(B);
    losses.push(out.loss);
    if (res.skipped) skipped.push(it);
    if (out.loss < 0.05 * losses[0]) break;
  }
  opt.free();
  return { losses, skipped, finalScale: opt.lossScale };
}

for (
  const [dtype, flags] of [["f32", {}], ["bf16", { bf16: true }], ["f16", { fp16: true }]] as [
    ParamsDType,
    { fp16?: boolean; bf16?: boolean },
  ][]
) {
  Deno.test(`T5 overfits one batch: ${dtype}${flags.fp16 ? " with the dynamic loss scaler" : ""}`, async () => {
    const r = await overfit(dtype, flags);
    const first = r.losses[0], last = r.losses.at(-1)!;
    // A fresh model predicts nearly uniformly over the 16 ids.
    assert.ok(Math.abs(first - Math.log(V)) < 0.1, `first loss ${first}, expected ~ln(${V})`);
    assert.ok(last < 0.05 * first, `${dtype}: loss ${first} -> ${last} in ${r.losses.length} steps`);
    if (flags.fp16) {
      // Megatron's initial scale 2^32 overflows at once: the first steps are skipped, then none.
      assert.ok(r.skipped.length >= 2 && r.skipped[0] === 0, `skipped ${r.skipped}`);
      assert.deepEqual(r.skipped, Array.from({ length: r.skipped.length }, (_, i) => i));
      assert.ok(r.finalScale < 2 ** 32);
    } else {
      assert.deepEqual(r.skipped, []);
    }
  });
}
