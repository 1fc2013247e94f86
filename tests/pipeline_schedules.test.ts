// Schedule simulation: every rank's op list for p = 4, m = 8 and 1 or 2 virtual chunks (and p = 2
// interleaved, which Megatron 2021 rejects) runs to completion, under buffered sends (a send completes at
// once) and under blocking, unbuffered semantics (an exchange completes only when every one of its sends
// and receives is matched by the peers' exchanges), respects data dependencies, matches Megatron's
// formulas and its p2p_communication calls, and keeps at most the expected number of micro-batches'
// activations alive.

import assert from "node:assert/strict";
import {
  buildForwardOnlySchedule,
  buildSchedule,
  chunkOf,
  microBatchOf,
  type PipeOp,
  type ScheduleShape,
  transferTag,
  warmupCount,
} from "../src/pipeline/schedules.ts";

interface SimResult {
  maxInFlight: number[];
  forwards: string[][];
  backwards: string[][];
}

type Mode = "buffered" | "blocking";

/** Runs all ranks round-robin. A message is keyed by its tag and its (from, to) pair; an exchange waits
 *  for its receives (buffered) or for all its transfers (blocking) to be matched. */
function simulate(p: number, m: number, v: number, mode: Mode = "blocking", forwardOnly = false): SimResult {
  const shape = (r: number): ScheduleShape => ({ p, r, m, v });
  const lists = Array.from(
    { length: p },
    (_, r) => (forwardOnly ? buildForwardOnlySchedule : buildSchedule)(shape(r)),
  );
  const pc = new Array(p).fill(0);
  /** Per rank: the exchange it has posted and not completed, as message keys it still waits for. */
  const posted: (Set<string> | null)[] = new Array(p).fill(null);
  const sendsOut = new Set<string>(); // posted sends not yet received
  const recvsOut = new Set<string>(); // posted receives not yet matched
  const arrived = new Set<string>(); // matched messages, "from->to:tag"
  const done = new Set<string>(); // "F|B:globalStage:mb" compute steps run
  const inFlight = new Array(p).fill(0);
  const maxInFlight = new Array(p).fill(0);
  const forwards: string[][] = Array.from({ length: p }, () => []);
  const backwards: string[][] = Array.from({ length: p }, () => []);
  // Model chunk index along the whole pipeline: chunk c on stage r is global stage c*p + r.
  const g = (r: number, c: number) => c * p + r;
  const next = (r: number) => (r + 1) % p, prev = (r: number) => (r + p - 1) % p;
  let progressed = true;
  while (progressed) {
    progressed = false;
    for (let r = 0; r < p; r++) {
      while (pc[r] < lists[r].length) {
        const o = lists[r][pc[r]];
        if (o.op === "exchange") {
          if (posted[r] === null) {
            const waits = new Set<string>();
            for (const t of o.transfers) {
              const tag = transferTag(shape(r), t);
              const send = t.kind === "sendNext" || t.kind === "sendPrev";
              const peer = t.kind === "sendNext" || t.kind === "recvNext" ? next(r) : prev(r);
              const key = send ? `${r}->${peer}:${tag}` : `${peer}->${r}:${tag}`;
              if (send) {
                if (t.kind === "sendNext") {
                  assert.ok(done.has(`F:${g(r, t.chunk)}:${t.mb}`), "send before forward");
                } else assert.ok(done.has(`B:${g(r, t.chunk)}:${t.mb}`), "send before backward");
              }
              const other = send ? recvsOut : sendsOut;
              if (other.has(key)) {
                other.delete(key);
                arrived.add(key);
                for (const w of [...posted, waits]) w?.delete(key);
              } else {
                (send ? sendsOut : recvsOut).add(key);
                // Buffered: a send completes at once, its message waits for the receiver.
                if (mode === "blocking" || !send) waits.add(key);
              }
            }
            posted[r] = waits;
            progressed = true;
          }
          if (posted[r]!.size > 0) break;
          posted[r] = null;
          pc[r]++;
          progressed = true;
          continue;
        }
        pc[r]++;
        progressed = true;
        const gs = g(r, o.chunk);
        if (o.op === "forward") {
          if (gs > 0) {
            assert.ok(done.has(`F:${gs - 1}:${o.mb}`), `forward before its input on rank ${r}`);
            assert.ok(
              arrived.has(`${prev(r)}->${r}:fwd:c${o.chunk}:m${o.mb}`),
              `input not received on rank ${r}`,
            );
          }
          done.add(`F:${gs}:${o.mb}`);
          forwards[r].push(`${o.chunk}:${o.mb}`);
          inFlight[r]++;
          maxInFlight[r] = Math.max(maxInFlight[r], inFlight[r]);
        } else {
          assert.ok(done.has(`F:${gs}:${o.mb}`), `backward before forward on rank ${r}`);
          if (gs < p * v - 1) {
            assert.ok(done.has(`B:${gs + 1}:${o.mb}`), "backward before its output grad");
            assert.ok(
              arrived.has(`${next(r)}->${r}:bwd:c${o.chunk}:m${o.mb}`),
              `grad not received on rank ${r}`,
            );
          }
          done.add(`B:${gs}:${o.mb}`);
          backwards[r].push(`${o.chunk}:${o.mb}`);
          inFlight[r]--;
        }
      }
    }
  }
  for (let r = 0; r < p; r++) {
    assert.equal(
      pc[r],
      lists[r].length,
      `${mode} p=${p} m=${m} v=${v}: deadlock: rank ${r} stuck at op ${JSON.stringify(lists[r][pc[r]])}`,
    );
    if (!forwardOnly) assert.equal(inFlight[r], 0);
  }
  assert.equal(sendsOut.size + recvsOut.size, 0, "unmatched messages");
  return { maxInFlight, forwards, backwards };
}

Deno.test("1F1B p=4 m=8: completes, FIFO backward order, at most p-r micro-batches in flight", () => {
  const buffered = simulate(4, 8, 1, "buffered");
  const { maxInFlight, forwards, backwards } = simulate(4, 8, 1, "blocking");
  assert.deepEqual(buffered, { maxInFlight, forwards, backwards });
  const seq = Array.from({ length: 8 }, (_, i) => `0:${i}`);
  for (let r = 0; r < 4; r++) {
    assert.deepEqual(forwards[r], seq);
    assert.deepEqual(backwards[r], seq);
    assert.equal(maxInFlight[r], Math.min(4 - r, 8));
    assert.equal(warmupCount({ p: 4, r, m: 8, v: 1 }), 3 - r);
  }
  // Rank 1: warm-up of 2 forwards, then alternate F/B, then a cooldown of 2 backwards.
  const kinds = buildSchedule({ p: 4, r: 1, m: 8, v: 1 }).filter((o) =>
    o.op === "forward" || o.op === "backward"
  )
    .map((o) => (o.op === "forward" ? "F" : "B") + o.mb).join(" ");
  assert.equal(kinds, "F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 F6 B4 F7 B5 B6 B7");
});

Deno.test("interleaved p=4 m=8 v=2: Megatron's warm-up and chunk order", () => {
  const buffered = simulate(4, 8, 2, "buffered");
  const { maxInFlight, forwards, backwards } = simulate(4, 8, 2, "blocking");
  assert.deepEqual(buffered, { maxInFlight, forwards, backwards });
  // Forward k runs chunk floor((k mod 8)/4) on micro-batch floor(k/8)*4 + k mod 4.
  const expectF = [
    "0:0",
    "0:1",
    "0:2",
    "0:3",
    "1:0",
    "1:1",
    "1:2",
    "1:3",
    "0:4",
    "0:5",
    "0:6",
    "0:7",
    "1:4",
    "1:5",
    "1:6",
    "1:7",
  ];
  const expectB = [
    "1:0",
    "1:1",
    "1:2",
    "1:3",
    "0:0",
    "0:1",
    "0:2",
    "0:3",
    "1:4",
    "1:5",
    "1:6",
    "1:7",
    "0:4",
    "0:5",
    "0:6",
    "0:7",
  ];
  for (let r = 0; r < 4; r++) {
    assert.deepEqual(forwards[r], expectF);
    assert.deepEqual(backwards[r], expectB);
    const w = Math.min((4 - r - 1) * 2 + 4, 16);
    assert.equal(warmupCount({ p: 4, r, m: 8, v: 2 }), w);
    assert.equal(maxInFlight[r], w + 1);
  }
  assert.equal(chunkOf(5, { p: 4, r: 0, m: 8, v: 2 }, true), 1);
  assert.equal(chunkOf(5, { p: 4, r: 0, m: 8, v: 2 }, false), 0);
  assert.equal(microBatchOf(9, { p: 4, r: 0, m: 8, v: 2 }), 5);
});

Deno.test("interleaved with m == p runs all forwards first", () => {
  simulate(4, 4, 2, "blocking");
  simulate(4, 4, 2, "buffered");
  const kinds = buildSchedule({ p: 4, r: 2, m: 4, v: 2 }).filter((o) =>
    o.op === "forward" || o.op === "backward"
  )
    .map((o) => o.op[0]).join("");
  assert.equal(kinds, "ffffffffbbbbbbbb");
});

Deno.test("interleaved with 2 stages (rejected by Megatron 2021) completes", () => {
  for (const mode of ["buffered", "blocking"] as const) {
    simulate(2, 4, 2, mode);
    simulate(2, 6, 3, mode);
    simulate(2, 2, 2, mode);
  }
});

Deno.test("every shape (p 1..4, v 1..3, several m), training and forward-only, buffered and blocking", () => {
  let n = 0;
  for (let p = 1; p <= 4; p++) {
    for (let v = 1; v <= 3; v++) {
      const ms = v === 1 ? [1, 2, 3, 4, 5, 7, 8, 12] : [p, 2 * p, 3 * p, 4 * p];
      for (const m of ms) {
        for (const mode of ["buffered", "blocking"] as const) {
          const { forwards, backwards } = simulate(p, m, v, mode);
          const fo = simulate(p, m, v, mode, true);
          for (let r = 0; r < p; r++) {
            assert.equal(forwards[r].length, m * v);
            assert.equal(backwards[r].length, m * v);
            assert.deepEqual(fo.forwards[r], forwards[r], "forward-only runs the training forwards in order");
            assert.equal(fo.backwards[r].length, 0);
          }
          n++;
        }
      }
    }
  }
  assert.equal(n, 2 * 4 * (8 + 2 * 4));
});

/** Compute steps as F/B<chunk>.<mb>, exchanges as Megatron's call with its transfers. */
function describe(ops: PipeOp[]): string {
  return ops.map((o) =>
    o.op === "exchange"
      ? `${o.name}(${o.transfers.map((t) => `${t.kind}:${t.chunk}.${t.mb}`).join(" ")})`
      : `${o.op === "forward" ? "F" : "B"}${o.chunk}.${o.mb}`
  ).join(" ");
}

Deno.test("exchanges are Megatron's p2p_communication calls (1F1B and interleaved, p=2, m=4)", () => {
  // 1F1B: stage 0 has one warm-up forward; the last stage goes straight to the steady state.
  assert.equal(
    describe(buildSchedule({ p: 2, r: 0, m: 4, v: 1 })),
    "F0.0 send_forward(sendNext:0.0) " +
      "F0.1 send_forward_recv_backward(sendNext:0.1 recvNext:0.0) B0.0 " +
      "F0.2 send_forward_recv_backward(sendNext:0.2 recvNext:0.1) B0.1 " +
      "F0.3 send_forward_recv_backward(sendNext:0.3 recvNext:0.2) B0.2 " +
      "recv_backward(recvNext:0.3) B0.3",
  );
  assert.equal(
    describe(buildSchedule({ p: 2, r: 1, m: 4, v: 1 })),
    "recv_forward(recvPrev:0.0) F0.0 B0.0 send_backward_recv_forward(sendPrev:0.0 recvPrev:0.1) " +
      "F0.1 B0.1 send_backward_recv_forward(sendPrev:0.1 recvPrev:0.2) " +
      "F0.2 B0.2 send_backward_recv_forward(sendPrev:0.2 recvPrev:0.3) F0.3 B0.3 send_backward(sendPrev:0.3)",
  );
  // Interleaved, 2 stages: the last warm-up exchange also receives the first gradient; stage 0 looks
  // p - 1 forwards back to know whether the last stage sends it an input in the same step.
  assert.equal(
    describe(buildSchedule({ p: 2, r: 0, m: 4, v: 2 })),
    "F0.0 send_forward_recv_forward(sendNext:0.0) " +
      "F0.1 send_forward_recv_forward(recvPrev:1.0 sendNext:0.1) " +
      "F1.0 send_forward_recv_forward(recvPrev:1.1 sendNext:1.0) " +
      "F1.1 send_forward_backward_recv_forward_backward(sendNext:1.1 recvNext:1.0) " +
      "F0.2 B1.0 send_forward_backward_recv_forward_backward(sendPrev:1.0 sendNext:0.2 recvNext:1.1) " +
      "F0.3 B1.1 send_forward_backward_recv_forward_backward(sendPrev:1.1 recvPrev:1.2 sendNext:0.3 recvNext:0.0) " +
      "F1.2 B0.0 send_forward_backward_recv_forward_backward(recvPrev:1.3 sendNext:1.2 recvNext:0.1) " +
      "F1.3 B0.1 send_forward_backward_recv_forward_backward(sendNext:1.3 recvNext:1.2) " +
      "B1.2 send_backward_recv_backward(sendPrev:1.2 recvNext:1.3) " +
      "B1.3 send_backward_recv_backward(sendPrev:1.3 recvNext:0.2) " +
      "B0.2 send_backward_recv_backward(recvNext:0.3) B0.3",
  );
  // Forward-only (evaluation), interleaved: send_forward_recv_forward throughout.
  assert.equal(
    describe(buildForwardOnlySchedule({ p: 2, r: 1, m: 2, v: 2 })),
    "recv_forward(recvPrev:0.0) F0.0 send_forward_recv_forward(recvPrev:0.1 sendNext:0.0) " +
      "F0.1 send_forward_recv_forward(recvPrev:1.0 sendNext:0.1) F1.0 send_forward_recv_forward(recvPrev:1.1) F1.1",
  );
});

Deno.test("no pipelining: forward and backward per micro-batch", () => {
  assert.equal(describe(buildSchedule({ p: 1, r: 0, m: 3, v: 1 })), "F0.0 B0.0 F0.1 B0.1 F0.2 B0.2");
});

Deno.test("interleaved needs m divisible by p", () => {
  assert.throws(
    () => buildSchedule({ p: 4, r: 0, m: 6, v: 2 }),
    /number of micro-batches \(6\) to be a multiple of the pipeline size \(4\)/,
  );
});
