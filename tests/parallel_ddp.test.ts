// Local DDP pieces: the contiguous gradient buffer (views, zeroing, bucketed DP mean), the scalar
// reducer the optimizer uses over the model group, and the tied-embedding all-reduce.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { allReduceTiedEmbedding, GradBuffer, scalarReducer } from "../src/parallel/ddp.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import type { Param } from "../src/tensor/param.ts";

const be = createCpuBackend();

function param(name: string, shape: number[], grad: number[]): Param {
  return {
    name,
    value: be.zeros("f32", shape),
    grad: be.fromHost("f32", shape, grad),
    main: null,
    noWeightDecay: false,
    tensorParallel: null,
    shared: false,
  };
}

Deno.test("GradBuffer: grads become views of one buffer; DP mean over buckets of 3 elements", async () => {
  const world = new LocalWorld(be, { tp: 1, pp: 1, dp: 2 }, { timeoutMs: 5000 });
  const out = await world.run(async (r) => {
    const a = param("a", [2, 2], [1, 2, 3, 4].map((x) => x * (r + 1)));
    const b = param("b", [3], [10, 20, 30].map((x) => x * (r + 1)));
    const buf = new GradBuffer(be, [a, b], 3);
    assert.equal(buf.numel, 7);
    assert.equal(a.grad.storage, buf.buffer.storage);
    assert.equal(b.grad.offset, a.grad.offset + 4);
    assert.deepEqual(
      [...be.toF64(buf.buffer)],
      [1, 2, 3, 4, 10, 20, 30].map((x) => x * (r + 1)),
      "copied in",
    );
    await buf.allReduceMean(world.communicator(r), 2);
    const mean = [...be.toF64(a.grad), ...be.toF64(b.grad)];
    buf.zero();
    return { mean, zero: [...be.toF64(b.grad)] };
  });
  for (const o of out) {
    assert.deepEqual(o.mean, [1.5, 3, 4.5, 6, 15, 30, 45], "(g + 2g) / 2");
    assert.deepEqual(o.zero, [0, 0, 0]);
  }
});

Deno.test("scalar reducer over the model group and the tied-embedding all-reduce over first/last stage", async () => {
  // TP=2, PP=3: model group = all 6 ranks; embedding group = stages 0 and 2 of each TP rank.
  const world = new LocalWorld(be, { tp: 2, pp: 3, dp: 1 }, { timeoutMs: 5000 });
  const out = await world.run(async (r) => {
    const ps = world.states[r];
    const comm = world.communicator(r);
    const red = scalarReducer(be, comm, ps, "model");
    const sum = await red.allReduceSum(r);
    const max = await red.allReduceMax(r === 4 ? 100 : r);
    const emb = ps.isFirstStage || ps.isLastStage ? param("w", [2], [r, 1]) : null;
    await allReduceTiedEmbedding(comm, ps, emb);
    return { sum, max, emb: emb ? [...be.toF64(emb.grad)] : null };
  });
  out.forEach((o, r) => {
    assert.equal(o.sum, 15);
    assert.equal(o.max, 100);
    const tp = r % 2;
    // Stage 0 holds global rank tp, stage 2 holds 4 + tp.
    if (o.emb) assert.deepEqual(o.emb, [tp + 4 + tp, 2], `rank ${r}`);
    else assert.equal(Math.floor(r / 2), 1, "only the middle stage has no tied embedding");
  });
});
