// The pipeline schedules on a blocking, unbuffered communicator (tests/helpers/blocking_world.ts: a send
// completes only when received, a batch when all its operations are matched, deadlock = every rank
// blocked). Every schedule shape (p 1..4, v 1..3, several m, 2-stage interleaving, TP/DP peers) runs the
// training step and the forward-only pass through runSchedule / runForwardOnly to the exact toy losses
// and gradients, bit-equal to LocalWorld's, with one batch per exchange step; the old order (each send
// and receive its own blocking call) deadlocks with p = 2, m = 4, and the error says who waits for whom.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import { buildForwardOnlySchedule, buildSchedule, type PipeOp, runOps } from "../src/pipeline/schedules.ts";
import { BlockingWorld } from "./helpers/blocking_world.ts";
import { runToyRank, toyBits, type ToyResult, toyStage, weightOf } from "./helpers/toy_stage.ts";

const be = createCpuBackend({ log: () => {} });

interface Layout {
  tp: number;
  pp: number;
  dp: number;
  vp: number;
  m: number;
}

const LAYOUTS: Layout[] = [];
for (let pp = 1; pp <= 4; pp++) {
  for (const m of [1, 2, 3, 4, 5, 8]) LAYOUTS.push({ tp: 1, pp, dp: 1, vp: 1, m });
  for (let vp = 2; vp <= 3; vp++) {
    for (const k of [1, 2, 3]) LAYOUTS.push({ tp: 1, pp, dp: 1, vp, m: k * pp });
  }
}
// Peers that are not neighbouring global ranks (TP and DP inside each stage).
LAYOUTS.push({ tp: 2, pp: 2, dp: 1, vp: 1, m: 4 }, { tp: 1, pp: 2, dp: 2, vp: 2, m: 4 });
LAYOUTS.push({ tp: 2, pp: 2, dp: 1, vp: 3, m: 6 }, { tp: 1, pp: 4, dp: 2, vp: 2, m: 8 });

const name = (l: Layout) => `tp=${l.tp} pp=${l.pp} dp=${l.dp} v=${l.vp} m=${l.m}`;

function checkExact(l: Layout, states: { ppRank: number }[], res: ToyResult[]): void {
  const p = l.pp, v = l.vp, m = l.m;
  let prod = 1;
  for (let r = 0; r < p; r++) for (let c = 0; c < v; c++) prod *= weightOf(p, r, c);
  const sumK = (m * (m + 1)) / 2;
  res.forEach((o, g) => {
    const r = states[g].ppRank;
    if (r === p - 1) {
      for (let k = 0; k < m; k++) {
        assert.ok(Math.abs(o.losses[k] - (k + 1) * prod) < 1e-12 * prod * m, `${name(l)}: loss ${k}`);
        assert.equal(o.evalLosses[k], o.losses[k], `${name(l)}: eval loss ${k}`);
      }
    } else {
      assert.equal(o.losses.length, 0);
    }
    for (let c = 0; c < v; c++) {
      const want = sumK * prod / weightOf(p, r, c);
      assert.ok(Math.abs(o.grads[c] - want) < 1e-12 * want, `${name(l)} rank ${g} chunk ${c}`);
    }
  });
}

Deno.test("blocking world: every schedule shape completes with exact results, bit-equal to LocalWorld", async () => {
  for (const l of LAYOUTS) {
    const sizes = { tp: l.tp, pp: l.pp, dp: l.dp, vp: l.vp };
    const blocking = new BlockingWorld(be, sizes);
    const got = await blocking.run((g) => runToyRank(be, blocking.states[g], blocking.communicator(g), l.m));
    checkExact(l, blocking.states, got);
    const local = new LocalWorld(be, sizes, { timeoutMs: 10_000 });
    const want = await local.run((g) => runToyRank(be, local.states[g], local.communicator(g), l.m));
    got.forEach((x, g) => assert.equal(toyBits(x), toyBits(want[g]), `${name(l)} rank ${g}`));
    // One batch per exchange step: training and forward-only lists together.
    blocking.states.forEach((ps, g) => {
      const s = { p: l.pp, r: ps.ppRank, m: l.m, v: l.vp };
      const exchanges = [...buildSchedule(s), ...buildForwardOnlySchedule(s)].filter((o) =>
        o.op === "exchange"
      );
      assert.equal(blocking.batches[g], exchanges.length, `${name(l)} rank ${g}: batches`);
    });
  }
});

/** The order before paired exchanges: each receive just before its compute step and each send just
 *  after it, every one its own blocking call. */
function unpaired(p: number, r: number, v: number, ops: PipeOp[]): PipeOp[] {
  const first = (c: number) => r === 0 && c === 0;
  const last = (c: number) => r === p - 1 && c === v - 1;
  const out: PipeOp[] = [];
  for (const o of ops) {
    if (o.op === "forward") {
      const t = { chunk: o.chunk, mb: o.mb };
      if (!first(o.chunk)) {
        out.push({ op: "exchange", name: "recv_forward", transfers: [{ kind: "recvPrev", ...t }] });
      }
      out.push(o);
      if (!last(o.chunk)) {
        out.push({ op: "exchange", name: "send_forward", transfers: [{ kind: "sendNext", ...t }] });
      }
    } else if (o.op === "backward") {
      const t = { chunk: o.chunk, mb: o.mb };
      if (!last(o.chunk)) {
        out.push({ op: "exchange", name: "recv_backward", transfers: [{ kind: "recvNext", ...t }] });
      }
      out.push(o);
      if (!first(o.chunk)) {
        out.push({ op: "exchange", name: "send_backward", transfers: [{ kind: "sendPrev", ...t }] });
      }
    }
  }
  return out;
}

async function runUnpaired(world: BlockingWorld | LocalWorld, p: number, m: number, v: number) {
  return await world.run(async (g) => {
    const r = world.states[g].ppRank;
    const s = { p, r, m, v };
    const stage = toyStage(be, p, r, v, [], new Array(v).fill(0));
    const peers = { prev: (r + p - 1) % p, next: (r + 1) % p };
    return await runOps(s, unpaired(p, r, v, buildSchedule(s)), stage, world.communicator(g), peers);
  });
}

Deno.test("blocking world: the old unpaired order deadlocks 1F1B with p=2, m=4 (buffered sends hid it)", async () => {
  // Stage 0 blocks sending micro-batch 1 forward, stage 1 sending micro-batch 0's gradient back.
  await assert.rejects(runUnpaired(new BlockingWorld(be, { tp: 1, pp: 2, dp: 1 }), 2, 4, 1), {
    message: "deadlock: rank 0 waits for rank 1 (send fwd:c0:m1); rank 1 waits for rank 0 (send bwd:c0:m0)",
  });
  await runUnpaired(new LocalWorld(be, { tp: 1, pp: 2, dp: 1 }, { timeoutMs: 10_000 }), 2, 4, 1);
  // Interleaved, 4 stages: a cycle of forward sends around the ring (the last stage feeds stage 0).
  await assert.rejects(
    runUnpaired(new BlockingWorld(be, { tp: 1, pp: 4, dp: 1, vp: 2 }), 4, 8, 2),
    {
      message:
        "deadlock: rank 0 waits for rank 1 (send fwd:c0:m3); rank 1 waits for rank 2 (send fwd:c0:m2); " +
        "rank 2 waits for rank 3 (send fwd:c0:m1); rank 3 waits for rank 0 (send fwd:c1:m0)",
    },
  );
});

Deno.test("blocking world: sends wait for the receiver, batches for all their operations", async () => {
  const w = new BlockingWorld(be, { tp: 1, pp: 2, dp: 1 });
  const log: string[] = [];
  await w.run(async (g) => {
    const c = w.communicator(g);
    if (g === 0) {
      await c.send(be.fromHost("f32", [2], [1, 2]), 1, "fwd:c0:m0");
      log.push("sent");
      const got = be.zeros("f32", [2]);
      await c.batchIsendIrecv([
        { op: "send", tensor: be.fromHost("f32", [2], [3, 4]), peer: 1, tag: "fwd:c0:m1" },
        { op: "recv", tensor: got, peer: 1, tag: "bwd:c0:m0" },
      ]);
      log.push(`batch ${[...be.toF64(got)]}`);
    } else {
      await new Promise((r) => setTimeout(r, 5));
      log.push("recv posted");
      const a = be.zeros("f32", [2]);
      await c.recv(a, 0, "fwd:c0:m0");
      // Both directions in flight at once: the gradient goes back while the next input arrives.
      const b = be.zeros("f32", [2]);
      await c.batchIsendIrecv([
        { op: "send", tensor: be.fromHost("f32", [2], [5, 6]), peer: 0, tag: "bwd:c0:m0" },
        { op: "recv", tensor: b, peer: 0, tag: "fwd:c0:m1" },
      ]);
      log.push(`got ${[...be.toF64(a)]} ${[...be.toF64(b)]}`);
    }
  });
  assert.deepEqual(log, ["recv posted", "sent", "batch 5,6", "got 1,2 3,4"]);

  const bad = new BlockingWorld(be, { tp: 1, pp: 2, dp: 1 });
  await assert.rejects(
    bad.run(async (g) => {
      const c = bad.communicator(g);
      if (g === 0) await c.send(be.zeros("f32", [2]), 1, "fwd:c0:m1");
      else await c.recv(be.zeros("f32", [2]), 0, "fwd:c0:m0");
    }),
    { message: "recv on rank 1 from rank 0: expected message fwd:c0:m0, got fwd:c0:m1" },
  );
  const lone = new BlockingWorld(be, { tp: 1, pp: 2, dp: 1 });
  await assert.rejects(
    lone.run(async (g) => {
      if (g === 1) await lone.communicator(g).recv(be.zeros("f32", [2]), 0, "bwd:c0:m3");
    }),
    { message: "deadlock: rank 1 waits for rank 0 (recv bwd:c0:m3); finished: rank 0" },
  );
});
