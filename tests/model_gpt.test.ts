// Whole-GPT checks on the CPU backend: loss gradient by finite differences (f64, dropout on),
// recompute (uniform/block) bit-equal to no recompute, micro-batch accumulation, pipeline-stage seams,
// tensor-parallel equivalence (2 in-process ranks), half-precision params.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { GPTModel, type GPTStage, isLossOutput, type LossOutput } from "../src/models/mod.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import type { Tensor } from "../src/tensor/tensor.ts";
import { checkGradients, type GPTConfig } from "../src/transformer/mod.ts";

const backend = createCpuBackend({ log: () => {} });

function cfgOf(over: Partial<GPTConfig> = {}): GPTConfig {
  return {
    numLayers: 3,
    hiddenSize: 8,
    numAttentionHeads: 2,
    seqLength: 6,
    maxPositionEmbeddings: 8,
    vocabSize: 32,
    hiddenDropout: 0.1,
    attentionDropout: 0.1,
    initMethodStd: 0.2,
    paramsDtype: "f64",
    activationsCheckpointMethod: null,
    seed: 42,
    ...over,
  };
}

const single = () => ({
  ps: makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
  comm: new SingleRankCommunicator(),
});

function model(over: Partial<GPTConfig> = {}): GPTModel {
  const { ps, comm } = single();
  return new GPTModel(cfgOf(over), backend, ps, comm);
}

function batch(b: number, s: number, salt = 1) {
  const tok = new Int32Array(b * s), lab = new Int32Array(b * s), mask = new Float32Array(b * s);
  let x = salt >>> 0;
  for (let i = 0; i < b * s; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    tok[i] = x % 32;
    lab[i] = (x >>> 8) % 32;
    mask[i] = i % 5 === 3 ? 0 : 1;
  }
  return {
    tokens: backend.fromHost("i32", [b, s], tok),
    labels: backend.fromHost("i32", [b, s], lab),
    lossMask: backend.fromHost("f32", [b, s], mask),
  };
}

type Batch = ReturnType<typeof batch>;

async function step(
  m: GPTModel,
  bt: Batch,
  factor = 1,
  iteration = 5,
  firstGlobalSample = 0,
): Promise<number> {
  const ctx = m.newContext({ iteration, firstGlobalSample });
  const out = await m.forward(bt, ctx) as LossOutput;
  assert.equal(await m.backward(ctx, factor), null);
  assert.equal(ctx.saved.size, 0, "backward leaves nothing saved");
  return out.loss;
}

async function lossOnly(m: GPTModel, bt: Batch, iteration = 5): Promise<number> {
  const ctx = m.newContext({ iteration, firstGlobalSample: 0 });
  const out = await m.forward(bt, ctx) as LossOutput;
  m.discard(ctx);
  assert.equal(ctx.saved.size, 0);
  return out.loss;
}

const grads = (m: GPTModel) => new Map(m.params().map((p) => [p.name, backend.toF64(p.grad)]));

Deno.test("gpt: whole-model loss gradient matches central differences (f64, dropout on)", async () => {
  const m = model();
  const bt = batch(2, 6);
  m.zeroGrads();
  await step(m, bt, 1);
  const res = await checkGradients(
    backend,
    m.params().map((p) => ({ name: p.name, value: p.value, grad: p.grad })),
    () => lossOnly(m, bt),
    { samples: 4 },
  );
  assert.deepEqual(res.failures, [], `worst ${res.worst} at ${res.worstAt}`);
  assert.ok(res.checked >= 4 * m.params().length);
});

Deno.test("gpt: dropout masks depend on iteration only through the address; p=0 ignores it", async () => {
  const bt = batch(2, 6);
  const m = model();
  assert.equal(await lossOnly(m, bt, 5), await lossOnly(m, bt, 5));
  assert.notEqual(await lossOnly(m, bt, 5), await lossOnly(m, bt, 6));
  const m0 = model({ hiddenDropout: 0, attentionDropout: 0 });
  assert.equal(await lossOnly(m0, bt, 5), await lossOnly(m0, bt, 6));
  assert.notEqual(await lossOnly(m0, bt, 5), await lossOnly(m, bt, 5));
});

for (const [method, n] of [["uniform", 1], ["uniform", 2], ["block", 2], ["block", 3]] as const) {
  Deno.test(`gpt: ${method} recompute (N=${n}) gives bit-identical loss and gradients`, async () => {
    const bt = batch(2, 6);
    const ref = model();
    const rc = model({ activationsCheckpointMethod: method, activationsCheckpointNumLayers: n });
    ref.zeroGrads();
    rc.zeroGrads();
    // Two micro-batches so accumulation is covered too.
    const l1 = [await step(ref, bt, 0.5, 3, 0), await step(ref, batch(2, 6, 9), 0.5, 3, 2)];
    const l2 = [await step(rc, bt, 0.5, 3, 0), await step(rc, batch(2, 6, 9), 0.5, 3, 2)];
    assert.deepEqual(l2, l1);
    const g1 = grads(ref), g2 = grads(rc);
    for (const [name, g] of g1) assert.deepEqual(g2.get(name), g, name);
  });
}

for (const method of ["uniform", "block"] as const) {
  Deno.test(`gpt: ${method} recompute passes the finite-difference check`, async () => {
    const m = model({ activationsCheckpointMethod: method, activationsCheckpointNumLayers: 2 });
    const bt = batch(2, 6, 3);
    m.zeroGrads();
    await step(m, bt, 2);
    const res = await checkGradients(
      backend,
      m.params().map((p) => ({ name: p.name, value: p.value, grad: p.grad })),
      async () => 2 * await lossOnly(m, bt),
      { samples: 2 },
    );
    assert.deepEqual(res.failures, [], `worst ${res.worst} at ${res.worstAt}`);
  });
}

Deno.test("gpt: two micro-batches of 2 equal one batch of 4 (global dropout addressing)", async () => {
  const big = batch(4, 6, 11);
  const all = (t: Tensor) => backend.toF64(t);
  const half = (t: Tensor, dt: "i32" | "f32", i: number) =>
    backend.fromHost(dt, [2, 6], all(t).subarray(i * 12, (i + 1) * 12));
  // Equal mask sums per half so that mean(4) = (mean(first 2) + mean(last 2)) / 2.
  const maskHost = new Float32Array(24).fill(1);
  const bigB = { ...big, lossMask: backend.fromHost("f32", [4, 6], maskHost) };
  const parts = [0, 1].map((i) => ({
    tokens: half(big.tokens, "i32", i),
    labels: half(big.labels, "i32", i),
    lossMask: half(bigB.lossMask, "f32", i),
  }));
  const a = model(), b = model();
  a.zeroGrads();
  b.zeroGrads();
  const lossA = await step(a, bigB, 1, 8, 0);
  const l0 = await step(b, parts[0], 0.5, 8, 0);
  const l1 = await step(b, parts[1], 0.5, 8, 2);
  assert.ok(Math.abs(lossA - (l0 + l1) / 2) < 1e-12, `${lossA} vs ${(l0 + l1) / 2}`);
  const ga = grads(a), gb = grads(b);
  for (const [name, g] of ga) {
    const h = gb.get(name)!;
    for (let i = 0; i < g.length; i++) assert.ok(Math.abs(g[i] - h[i]) < 1e-12, `${name}[${i}]`);
  }
});

Deno.test("gpt: two pipeline stages reproduce the one-stage model (hidden in, input grad out, tied copy)", async () => {
  const cfg = cfgOf();
  const full = model();
  const ps0 = makeParallelState({ tp: 1, pp: 2, dp: 1 }, 0);
  const ps1 = makeParallelState({ tp: 1, pp: 2, dp: 1 }, 1);
  const comm = new SingleRankCommunicator();
  const s0: GPTStage = { preProcess: true, postProcess: false, layers: [0] };
  const s1: GPTStage = { preProcess: false, postProcess: true, layers: [1, 2] };
  const st0 = new GPTModel(cfg, backend, ps0, comm, s0);
  const st1 = new GPTModel(cfg, backend, ps1, comm, s1);
  assert.equal(st1.wordEmbeddingsForHead?.name, "word_embeddings_for_head.weight");
  assert.equal(st1.wordEmbeddingsForHead?.shared, true);
  assert.equal(st0.tiedEmbeddingParam(), st0.embedding!.wordEmbeddings);
  assert.equal(st1.tiedEmbeddingParam(), st1.wordEmbeddingsForHead);
  assert.deepEqual(
    backend.toF64(st1.wordEmbeddingsForHead!.value),
    backend.toF64(full.embedding!.wordEmbeddings.value),
  );
  const bt = batch(2, 6);
  full.zeroGrads();
  const lossFull = await step(full, bt, 1, 4, 0);
  st0.zeroGrads();
  st1.zeroGrads();
  const c0 = st0.newContext({ iteration: 4, firstGlobalSample: 0 });
  const c1 = st1.newContext({ iteration: 4, firstGlobalSample: 0 });
  const hidden = await st0.forward(bt, c0) as Tensor;
  assert.deepEqual(hidden.shape, [2, 6, 8]);
  const out = await st1.forward({ hidden, labels: bt.labels, lossMask: bt.lossMask }, c1) as LossOutput;
  assert.equal(out.loss, lossFull);
  const dHidden = await st1.backward(c1, 1);
  assert.ok(dHidden !== null);
  assert.equal(await st0.backward(c0, dHidden!), null);
  backend.free(hidden);
  backend.free(dHidden!);
  const gf = grads(full);
  const g0 = grads(st0), g1 = grads(st1);
  // Stage-local layer names: stage 1's layers.0 is global layer 1.
  const rename = (n: string, off: number) =>
    n.replace(/layers\.(\d+)\./, (_, i) => `layers.${Number(i) + off}.`);
  for (const [n, g] of g0) if (!n.includes("word_embeddings")) assert.deepEqual(g, gf.get(rename(n, 0)), n);
  for (const [n, g] of g1) if (!n.includes("word_embeddings")) assert.deepEqual(g, gf.get(rename(n, 1)), n);
  // The tied weight's grad is split between the two copies (summed by the embedding-group all-reduce).
  const we = "language_model.embedding.word_embeddings.weight";
  const sum = g0.get(we)!.map((v, i) => v + g1.get("word_embeddings_for_head.weight")![i]);
  const ref = gf.get(we)!;
  for (let i = 0; i < ref.length; i++) assert.ok(Math.abs(sum[i] - ref[i]) < 1e-14, `${we}[${i}]`);
});

Deno.test("gpt: tensor parallel 2 (in-process ranks) equals TP=1: loss and sharded gradients", async () => {
  const cfg = cfgOf({ numAttentionHeads: 4, hiddenSize: 8 });
  const ref = model({ numAttentionHeads: 4 });
  const bt = batch(2, 6, 21);
  ref.zeroGrads();
  const lossRef = await step(ref, bt, 1, 2, 0);
  const gRef = grads(ref);
  const world = new LocalWorld(backend, { tp: 2, pp: 1, dp: 1 }, { timeoutMs: 10_000 });
  const ranks = [0, 1].map((r) => new GPTModel(cfg, backend, world.states[r], world.communicator(r)));
  const losses = await Promise.all(ranks.map(async (m) => {
    m.zeroGrads();
    return await step(m, bt, 1, 2, 0);
  }));
  for (const l of losses) assert.ok(Math.abs(l - lossRef) < 1e-12, `${l} vs ${lossRef}`);
  for (const [r, m] of ranks.entries()) {
    for (const p of m.params()) {
      const full = gRef.get(p.name)!;
      const g = backend.toF64(p.grad);
      const shape = p.grad.shape;
      const tp = p.tensorParallel;
      for (let i = 0; i < g.length; i++) {
        let fi = i;
        if (tp?.partitionDim === 0) fi = r * g.length + i;
        else if (tp?.partitionDim === 1) {
          const cols = shape[1], row = Math.floor(i / cols), c = i % cols;
          fi = row * cols * 2 + r * cols + c;
        }
        assert.ok(Math.abs(g[i] - full[fi]) < 1e-12, `rank ${r} ${p.name}[${i}]: ${g[i]} vs ${full[fi]}`);
      }
    }
  }
});

for (const dt of ["f32", "f16", "bf16"] as const) {
  Deno.test(`gpt: ${dt} params train-step runs with f32 grads${dt === "f32" ? "" : " and f32 main copies"}`, async () => {
    // Attention backward writes dq/dk/dv as strided views (ldc = 3hn) of one buffer; a backend that
    // clobbers the gaps between C rows zeroes dq. Check that contract directly for a clear message.
    const c = backend.empty(dt, [2, 6]);
    backend.fill(c, 7);
    const eye = backend.fromHost(dt, [2, 2], [1, 0, 0, 1]);
    backend.gemm({
      transA: false,
      transB: false,
      m: 2,
      n: 2,
      k: 2,
      a: eye,
      b: eye,
      c: c.flat(2, 10),
      ldc: 6,
    });
    assert.deepEqual(
      Array.from(backend.toF64(c)),
      [7, 7, 1, 0, 7, 7, 7, 7, 0, 1, 7, 7],
      `${dt} gemm with ldc > n must leave the elements between C rows untouched (backend bug)`,
    );
    const m = model({ paramsDtype: dt });
    const ref = model();
    for (const p of m.params()) {
      assert.equal(p.value.dtype, dt);
      assert.equal(p.grad.dtype, "f32");
      assert.equal(p.main?.dtype ?? null, dt === "f32" ? null : "f32");
    }
    const bt = batch(2, 6);
    m.zeroGrads();
    ref.zeroGrads();
    const l = await step(m, bt, 1024);
    const lr = await step(ref, bt, 1024);
    assert.ok(Math.abs(l - lr) < (dt === "f32" ? 1e-5 : 3e-2), `${dt} loss ${l} vs f64 ${lr}`);
    const tol = dt === "f32" ? 1e-5 : dt === "f16" ? 2e-2 : 8e-2;
    const mp = m.params(), rp = ref.params();
    for (let k = 0; k < mp.length; k++) {
      const g = backend.toF64(mp[k].grad), gr = backend.toF64(rp[k].grad);
      let num = 0, den = 0;
      for (let i = 0; i < g.length; i++) {
        assert.ok(Number.isFinite(g[i]), `${mp[k].name}[${i}] is not finite`);
        num += (g[i] - gr[i]) ** 2;
        den += gr[i] ** 2;
      }
      const rel = Math.sqrt(num / den);
      assert.ok(rel < tol, `${dt} ${mp[k].name}: relative grad error ${rel} vs the f64 model`);
    }
  });
}

Deno.test("gpt: collectives per step: 2 tensor all-reduces per layer each way, plus embedding and CE", async () => {
  const calls: string[] = [];
  const inner = new SingleRankCommunicator();
  const comm = Object.assign(Object.create(inner), {
    allReduce(_t: Tensor, op: "sum" | "max", group: string) {
      calls.push(`${op}:${group}`);
      return Promise.resolve();
    },
  });
  const m = new GPTModel(cfgOf(), backend, makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0), comm);
  const ctx = m.newContext({ iteration: 0, firstGlobalSample: 0 });
  const out = await m.forward(batch(2, 6), ctx);
  assert.ok(isLossOutput(out));
  // embedding 1 + 2 per layer + CE (max, target sum, exp sum) 3
  assert.deepEqual(calls, [
    "sum:tensor",
    ...Array(6).fill("sum:tensor"),
    "max:tensor",
    "sum:tensor",
    "sum:tensor",
  ]);
  calls.length = 0;
  await m.backward(ctx, 1);
  // logits input grad 1 + 2 per layer
  assert.deepEqual(calls, Array(7).fill("sum:tensor"));
});
