// Schedule simulation: every rank's op list for p = 4, m = 8 and 1 or 2 virtual chunks (and p = 2
// interleaved, which Megatron 2021 rejects) runs to completion under blocking receives and
// non-blocking sends, respects data dependencies, matches Megatron's formulas, and keeps at most
// the expected number of micro-batches' activations alive.

import assert from "node:assert/strict";
import { buildSchedule, chunkOf, microBatchOf, type PipeOp, warmupCount } from "../src/pipeline/schedules.ts";

interface SimResult {
  maxInFlight: number[];
  forwards: string[][];
  backwards: string[][];
}

/** Runs all ranks round-robin; a receive blocks until the matching send happened. */
function simulate(p: number, m: number, v: number): SimResult {
  const lists = Array.from({ length: p }, (_, r) => buildSchedule({ p, r, m, v }));
  const pc = new Array(p).fill(0);
  const sent = new Set<string>();
  const done = new Set<string>(); // "F|B:r:c:mb"
  const inFlight = new Array(p).fill(0);
  const maxInFlight = new Array(p).fill(0);
  const forwards: string[][] = Array.from({ length: p }, () => []);
  const backwards: string[][] = Array.from({ length: p }, () => []);
  // Model chunk index along the whole pipeline: chunk c on stage r is global stage c*p + r.
  const g = (r: number, c: number) => c * p + r;
  const canRun = (r: number, o: PipeOp): boolean => {
    if (o.op === "recvForward") return sent.has(`F:${g(r, o.chunk) - 1}:${o.mb}`);
    if (o.op === "recvBackward") return sent.has(`B:${g(r, o.chunk) + 1}:${o.mb}`);
    return true;
  };
  let progressed = true;
  while (progressed) {
    progressed = false;
    for (let r = 0; r < p; r++) {
      while (pc[r] < lists[r].length && canRun(r, lists[r][pc[r]])) {
        const o = lists[r][pc[r]++];
        progressed = true;
        const gs = g(r, o.chunk);
        switch (o.op) {
          case "forward":
            if (gs > 0) assert.ok(sent.has(`F:${gs - 1}:${o.mb}`), `forward before its input on rank ${r}`);
            done.add(`F:${gs}:${o.mb}`);
            forwards[r].push(`${o.chunk}:${o.mb}`);
            inFlight[r]++;
            maxInFlight[r] = Math.max(maxInFlight[r], inFlight[r]);
            break;
          case "backward":
            assert.ok(done.has(`F:${gs}:${o.mb}`), `backward before forward on rank ${r}`);
            if (gs < p * v - 1) assert.ok(sent.has(`B:${gs + 1}:${o.mb}`), "backward before its output grad");
            backwards[r].push(`${o.chunk}:${o.mb}`);
            inFlight[r]--;
            break;
          case "sendForward":
            assert.ok(done.has(`F:${gs}:${o.mb}`));
            sent.add(`F:${gs}:${o.mb}`);
            break;
          case "sendBackward":
            sent.add(`B:${gs}:${o.mb}`);
            break;
        }
      }
    }
  }
  for (let r = 0; r < p; r++) {
    assert.equal(
      pc[r],
      lists[r].length,
      `deadlock: rank ${r} stuck at op ${JSON.stringify(lists[r][pc[r]])}`,
    );
    assert.equal(inFlight[r], 0);
  }
  return { maxInFlight, forwards, backwards };
}

Deno.test("1F1B p=4 m=8: completes, FIFO backward order, at most p-r micro-batches in flight", () => {
  const { maxInFlight, forwards, backwards } = simulate(4, 8, 1);
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
  const { maxInFlight, forwards, backwards } = simulate(4, 8, 2);
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
  simulate(4, 4, 2);
  const kinds = buildSchedule({ p: 4, r: 2, m: 4, v: 2 }).filter((o) =>
    o.op === "forward" || o.op === "backward"
  )
    .map((o) => o.op[0]).join("");
  assert.equal(kinds, "ffffffffbbbbbbbb");
});

Deno.test("interleaved with 2 stages (rejected by Megatron 2021) completes", () => {
  simulate(2, 4, 2);
  simulate(2, 6, 3);
});

Deno.test("no pipelining: forward and backward per micro-batch", () => {
  const ops = buildSchedule({ p: 1, r: 0, m: 3, v: 1 }).map((o) => o.op[0] + o.mb).join(" ");
  assert.equal(ops, "f0 b0 f1 b1 f2 b2");
});

Deno.test("interleaved needs m divisible by p", () => {
  assert.throws(
    () => buildSchedule({ p: 4, r: 0, m: 6, v: 2 }),
    /number of micro-batches \(6\) to be a multiple of the pipeline size \(4\)/,
  );
});
