// The in-process communicator: each collective's result over Megatron's groups, point-to-point order
// and tags, and the timeout that fails every waiting rank naming the group and the missing ranks.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import { parseArgs } from "../src/training/config.ts";

const be = createCpuBackend();

/** Run fn on every rank of the world concurrently; returns per-rank results in global-rank order. */
function all<T>(world: LocalWorld, fn: (rank: number) => Promise<T>): Promise<T[]> {
  return Promise.all(world.states.map((_, r) => fn(r)));
}

Deno.test("allReduce sum and max over tensor, data, pipeline and world groups", async () => {
  // 8 ranks: TP=2 fastest, then DP=2, then PP=2 (global = pp*4 + dp*2 + tp).
  const world = new LocalWorld(be, { tp: 2, pp: 2, dp: 2 }, { timeoutMs: 5000 });
  const out = await all(world, async (r) => {
    const c = world.communicator(r);
    const t = be.fromHost("f32", [2], [r, -r]);
    await c.allReduce(t, "sum", "tensor");
    const d = be.fromHost("f64", [1], [r]);
    await c.allReduce(d, "sum", "data");
    const p = be.fromHost("f32", [1], [r]);
    await c.allReduce(p, "max", "pipeline");
    const w = be.fromHost("f32", [1], [r === 5 ? 100 : r]);
    await c.allReduce(w, "max", "world");
    const m = be.fromHost("f32", [1], [1]);
    await c.allReduce(m, "sum", "model");
    return {
      t: [...be.toF64(t)],
      d: be.toF64(d)[0],
      p: be.toF64(p)[0],
      w: be.toF64(w)[0],
      m: be.toF64(m)[0],
    };
  });
  out.forEach((o, r) => {
    const tpPair = r - (r % 2);
    assert.deepEqual(o.t, [2 * tpPair + 1, -(2 * tpPair + 1)], `rank ${r} tensor sum`);
    const dpPartner = r ^ 2;
    assert.equal(o.d, r + dpPartner, `rank ${r} data sum`);
    assert.equal(o.p, (r % 4) + 4, `rank ${r} pipeline max`);
    assert.equal(o.w, 100, `rank ${r} world max`);
    assert.equal(o.m, 4, `rank ${r} model group has TP x PP members`);
  });
});

Deno.test("allGather concatenates in group order; reduceScatter gives each member its slice", async () => {
  const world = new LocalWorld(be, { tp: 4, pp: 1, dp: 1 }, { timeoutMs: 5000 });
  const out = await all(world, async (r) => {
    const c = world.communicator(r);
    const src = be.fromHost("f32", [1, 2], [10 * r, 10 * r + 1]);
    const dst = be.empty("f32", [4, 2]);
    await c.allGather(src, dst, "tensor");
    // Each rank contributes [0..7] + r; the sum is 4 * i + 6, and rank r keeps elements 2r, 2r+1.
    const rs = be.fromHost("f32", [8], Array.from({ length: 8 }, (_, i) => i + r));
    const mine = be.empty("f32", [2]);
    await c.reduceScatter(rs, mine, "tensor");
    return { g: [...be.toF64(dst)], s: [...be.toF64(mine)] };
  });
  out.forEach((o, r) => {
    assert.deepEqual(o.g, [0, 1, 10, 11, 20, 21, 30, 31]);
    assert.deepEqual(o.s, [4 * (2 * r) + 6, 4 * (2 * r + 1) + 6]);
  });
});

Deno.test("broadcast copies the root member's tensor to every member of its group only", async () => {
  const world = new LocalWorld(be, { tp: 2, pp: 1, dp: 2 }, { timeoutMs: 5000 });
  const out = await all(world, async (r) => {
    const c = world.communicator(r);
    const t = be.fromHost("f32", [3], [r, r, r]);
    await c.broadcast(t, 1, "data"); // data groups: {0, 2} and {1, 3}; root index 1 = ranks 2 and 3
    return [...be.toF64(t)];
  });
  assert.deepEqual(out, [[2, 2, 2], [3, 3, 3], [2, 2, 2], [3, 3, 3]]);
});

Deno.test("send/recv: messages between a pair arrive in order, tags are checked, shapes too", async () => {
  const world = new LocalWorld(be, { tp: 1, pp: 2, dp: 1 }, { timeoutMs: 5000 });
  const c0 = world.communicator(0), c1 = world.communicator(1);
  // Sends never block: two messages queue before the receiver asks.
  await c0.send(be.fromHost("f32", [2], [1, 2]), 1, "fwd:c0:m0");
  await c0.send(be.fromHost("f32", [2], [3, 4]), 1, "fwd:c0:m1");
  const a = be.empty("f32", [2]), b = be.empty("f32", [2]);
  await c1.recv(a, 0, "fwd:c0:m0");
  // A receive posted before the send resolves when the message arrives.
  const pending = c1.recv(b, 0, "fwd:c0:m1");
  await pending;
  assert.deepEqual([...be.toF64(a), ...be.toF64(b)], [1, 2, 3, 4]);
  const late = be.empty("f32", [2]);
  const waiting = c0.recv(late, 1, "bwd:c0:m0");
  await c1.send(be.fromHost("f32", [2], [5, 6]), 0, "bwd:c0:m0");
  await waiting;
  assert.deepEqual([...be.toF64(late)], [5, 6]);
  // Wrong tag: the receiver names both.
  await c0.send(be.fromHost("f32", [2], [0, 0]), 1, "fwd:c0:m2");
  await assert.rejects(
    c1.recv(be.empty("f32", [2]), 0, "fwd:c0:m3"),
    /expected message fwd:c0:m3, got fwd:c0:m2/,
  );
  // Wrong shape.
  await c0.send(be.fromHost("f32", [2], [0, 0]), 1);
  await assert.rejects(c1.recv(be.empty("f32", [3]), 0), /sent \[2\], receiving into \[3\]/);
});

Deno.test("timeout: a collective where one rank never arrives fails every waiting rank, naming the group and the missing rank", async () => {
  const world = new LocalWorld(be, { tp: 4, pp: 1, dp: 1 }, { timeoutMs: 30 });
  const waiting = [0, 1, 3].map((r) =>
    world.communicator(r).allReduce(be.fromHost("f32", [1], [r]), "sum", "tensor")
  );
  const errors = await Promise.all(waiting.map((p) => p.then(() => null, (e: Error) => e.message)));
  for (const m of errors) {
    assert.ok(m !== null, "every waiting rank fails");
    assert.match(m, /allReduce:sum on the tensor group \(ranks 0,1,2,3\) timed out after 30 ms/);
    assert.match(m, /rank\(s\) 2 did not arrive/);
  }
  // Two missing ranks are both named.
  const w2 = new LocalWorld(be, { tp: 1, pp: 1, dp: 4 }, { timeoutMs: 20 });
  const e2 = await w2.communicator(1).barrier("data").then(() => "", (e: Error) => e.message);
  assert.match(e2, /barrier on the data group .* rank\(s\) 0,2,3 did not arrive/);
  // A receive whose sender never sends fails too.
  const w3 = new LocalWorld(be, { tp: 1, pp: 2, dp: 1 }, { timeoutMs: 20 });
  await assert.rejects(
    w3.communicator(1).recv(be.empty("f32", [1]), 0),
    /recv on rank 1 from rank 0 timed out after 20 ms/,
  );
});

Deno.test("mismatched collectives are reported instead of mixing data", async () => {
  const world = new LocalWorld(be, { tp: 2, pp: 1, dp: 1 }, { timeoutMs: 1000 });
  const a = world.communicator(0).allReduce(be.fromHost("f32", [1], [1]), "sum", "tensor");
  const b = world.communicator(1).barrier("tensor");
  const msgs = await Promise.all([a, b].map((p) => p.then(() => "", (e: Error) => e.message)));
  for (const m of msgs) assert.match(m, /collective mismatch on the tensor group/);
});

Deno.test("--distributed-timeout-minutes: default 10, configurable", () => {
  assert.equal(parseArgs([]).distributedTimeoutMinutes, 10);
  assert.equal(parseArgs(["--distributed-timeout-minutes", "0.5"]).distributedTimeoutMinutes, 0.5);
  assert.throws(() => parseArgs(["--distributed-timeout-minutes", "0"]), /--distributed-timeout-minutes/);
});

Deno.test("sums per dtype: f64 without f32 rounding, bf16, i32 (host path); f64 all-gather", async () => {
  const world = new LocalWorld(be, { tp: 2, pp: 1, dp: 1 }, { timeoutMs: 5000 });
  const out = await all(world, async (r) => {
    const c = world.communicator(r);
    const d = be.fromHost("f64", [1], [r === 0 ? 0.1 : 0.2]);
    await c.allReduce(d, "sum", "tensor");
    const h = be.fromHost("bf16", [2], r === 0 ? [1.5, 256] : [2.25, 2]);
    await c.allReduce(h, "sum", "tensor");
    const i = be.fromHost("i32", [1], [r + 5]);
    await c.allReduce(i, "sum", "tensor");
    const g = be.fromHost("f64", [2], [r + 0.1, r + 0.2]);
    const gd = be.empty("f64", [4]);
    await c.allGather(g, gd, "tensor");
    return { d: be.toF64(d)[0], h: [...be.toF64(h)], i: be.toF64(i)[0], gd: [...be.toF64(gd)] };
  });
  for (const o of out) {
    assert.equal(o.d, 0.1 + 0.2, "f64 sum without f32 rounding");
    assert.deepEqual(o.h, [3.75, 258]);
    assert.equal(o.i, 11);
    assert.deepEqual(o.gd, [0.1, 0.2, 1.1, 1.2]);
  }
});

Deno.test("run: when one rank fails, waiting ranks are released at once and the first error is rethrown", async () => {
  const world = new LocalWorld(be, { tp: 2, pp: 2, dp: 1 }, { timeoutMs: 60_000 });
  const outcome: string[] = new Array(4).fill("");
  const t0 = performance.now();
  await assert.rejects(
    world.run(async (r) => {
      try {
        const c = world.communicator(r);
        if (r === 1) throw new Error("rank 1: bad micro-batch");
        if (r === 3) await c.recv(be.empty("f32", [1]), 1); // waits on the failed rank
        else await c.allReduce(be.fromHost("f32", [1], [r]), "sum", r === 0 ? "tensor" : "pipeline");
        outcome[r] = "finished";
      } catch (e) {
        outcome[r] = (e as Error).message;
        throw e;
      }
    }),
    /rank 1: bad micro-batch/,
  );
  assert.ok(performance.now() - t0 < 5000, "no rank waited for the 60 s timeout");
  for (const r of [0, 2, 3]) {
    assert.match(outcome[r], /aborted because another rank failed: rank 1: bad micro-batch/);
  }
  await assert.rejects(world.communicator(0).barrier("world"), /aborted/);
});
