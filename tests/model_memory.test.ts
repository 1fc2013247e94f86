// Explicit memory lifetimes: after backward (or discard) of every micro-batch, exactly the
// allocations that existed before it are alive; nothing is freed twice. Covers recompute, several
// micro-batches in flight, pipeline stages and forward-only evaluation.

import assert from "node:assert/strict";
import type { Backend } from "../src/backend/backend.ts";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { GPTModel, type GPTStage } from "../src/models/mod.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import type { Storage, Tensor } from "../src/tensor/tensor.ts";
import type { CheckpointMethod, GPTConfig } from "../src/transformer/config.ts";

/** A backend wrapper that tracks live storages and reports double frees. */
function tracked(): { backend: Backend; live: Set<Storage>; errors: string[] } {
  const raw = createCpuBackend({ log: () => {} });
  const live = new Set<Storage>();
  const errors: string[] = [];
  const backend = new Proxy(raw, {
    get(target, key) {
      const v = Reflect.get(target, key);
      if (typeof v !== "function") return v;
      if (key === "empty" || key === "zeros" || key === "fromHost") {
        return (...args: unknown[]) => {
          const t = v.apply(target, args) as Tensor;
          live.add(t.storage);
          return t;
        };
      }
      if (key === "free") {
        return (t: Tensor) => {
          if (!live.delete(t.storage)) errors.push(`free of a storage that is not live: ${t}`);
          v.call(target, t);
        };
      }
      return v.bind(target);
    },
  }) as Backend;
  return { backend, live, errors };
}

function cfgOf(ckpt: CheckpointMethod, n = 1): GPTConfig {
  return {
    numLayers: 4,
    hiddenSize: 8,
    numAttentionHeads: 2,
    seqLength: 5,
    maxPositionEmbeddings: 5,
    vocabSize: 16,
    hiddenDropout: 0.1,
    attentionDropout: 0.1,
    initMethodStd: 0.02,
    paramsDtype: "f32",
    activationsCheckpointMethod: ckpt,
    activationsCheckpointNumLayers: n,
    seed: 3,
  };
}

function batchOf(backend: Backend) {
  const tok = Int32Array.from({ length: 10 }, (_, i) => i % 16);
  return {
    tokens: backend.fromHost("i32", [2, 5], tok),
    labels: backend.fromHost("i32", [2, 5], tok),
    lossMask: backend.fromHost("f32", [2, 5], new Float32Array(10).fill(1)),
  };
}

for (const [ckpt, n] of [[null, 1], ["uniform", 1], ["uniform", 3], ["block", 2]] as const) {
  Deno.test(`memory: no leaks or double frees (recompute ${ckpt ?? "none"} N=${n}, 3 micro-batches in flight)`, async () => {
    const { backend, live, errors } = tracked();
    const ps = makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0);
    const m = new GPTModel(cfgOf(ckpt, n), backend, ps, new SingleRankCommunicator());
    const bt = batchOf(backend);
    const before = live.size;
    const ctxs = [0, 1, 2].map((i) => m.newContext({ iteration: 1, firstGlobalSample: 2 * i }));
    for (const c of ctxs) await m.forward(bt, c);
    assert.ok(live.size > before);
    for (const c of ctxs.reverse()) await m.backward(c, 1);
    assert.equal(live.size, before, "live allocations after backward");
    const ev = m.newContext({ iteration: 1, firstGlobalSample: 0 });
    await m.forward(bt, ev);
    m.discard(ev);
    assert.equal(live.size, before, "live allocations after an evaluation forward + discard");
    assert.deepEqual(errors, []);
  });
}

Deno.test("memory: pipeline stages free their own activations; hidden/grad tensors belong to the caller", async () => {
  const { backend, live, errors } = tracked();
  const cfg = cfgOf("uniform", 1);
  const comm = new SingleRankCommunicator();
  const s0: GPTStage = { preProcess: true, postProcess: false, layers: [0, 1] };
  const s1: GPTStage = { preProcess: false, postProcess: true, layers: [2, 3] };
  const m0 = new GPTModel(cfg, backend, makeParallelState({ tp: 1, pp: 2, dp: 1 }, 0), comm, s0);
  const m1 = new GPTModel(cfg, backend, makeParallelState({ tp: 1, pp: 2, dp: 1 }, 1), comm, s1);
  const bt = batchOf(backend);
  const before = live.size;
  const c0 = m0.newContext({ iteration: 0, firstGlobalSample: 0 });
  const c1 = m1.newContext({ iteration: 0, firstGlobalSample: 0 });
  const hidden = await m0.forward(bt, c0) as Tensor;
  await m1.forward({ hidden, labels: bt.labels, lossMask: bt.lossMask }, c1);
  const dh = (await m1.backward(c1, 1))!;
  backend.free(hidden); // the caller's (received) buffer, kept until stage 1's backward
  await m0.backward(c0, dh);
  backend.free(dh);
  assert.equal(live.size, before);
  assert.deepEqual(errors, []);
});
