// The rendezvous store with real processes on loopback: set/get/add/wait/barrier across 4 ranks, the
// start-up agreement check, and one clear line for each fault (seed mismatch, master unreachable, port in
// use, world-size mismatch, two processes claiming one rank, a killed rank, a barrier timeout).

import assert from "node:assert/strict";
import { TcpStore } from "../src/distributed/store.ts";

const CHILD = new URL("./distributed/store_child.ts", import.meta.url).pathname;

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  return p;
}

interface Out {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

function spawn(args: string[]): Promise<Out> {
  const t0 = Date.now();
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", CHILD, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return p.then((o) => ({
    code: o.code,
    stdout: new TextDecoder().decode(o.stdout).trim(),
    stderr: new TextDecoder().decode(o.stderr).trim(),
    ms: Date.now() - t0,
  }));
}

function world(port: number, n: number, minutes: number, mode: (r: number) => string): Promise<Out[]> {
  return Promise.all(
    Array.from({ length: n }, (_, r) => spawn([`${port}`, `${r}`, `${n}`, `${minutes}`, mode(r)])),
  );
}

Deno.test("4 ranks: set/get/add/wait/barrier and agreement", async () => {
  const outs = await world(freePort(), 4, 1, () => "ok");
  for (const [r, o] of outs.entries()) {
    assert.equal(o.code, 0, o.stderr);
    const j = JSON.parse(o.stdout);
    assert.equal(j.rank, r);
    assert.equal(j.after, 1 + 2 + 3 + 4);
    assert.deepEqual(j.vals, ["0", "10", "20", "30"]);
  }
  // Every add returned a distinct running total.
  assert.deepEqual(outs.map((o) => JSON.parse(o.stdout).totalSeen).sort((a, b) => a - b).length, 4);
  assert.equal(new Set(outs.map((o) => JSON.parse(o.stdout).totalSeen)).size, 4);
});

Deno.test("agreement mismatch names the rank and the flag", async () => {
  const outs = await world(freePort(), 3, 0.5, (r) => (r === 2 ? "seed=7" : "ok"));
  assert.equal(outs[2].code, 1);
  assert.equal(outs[2].stderr, "start-up check: rank 2 has --seed 7 but rank 0 has 1234");
  assert.equal(outs[0].code, 1);
  assert.equal(outs[0].stderr, "start-up check: rank 2 has --seed 7 but rank 0 has 1234");
  assert.equal(outs[1].code, 1);
  assert.equal(outs[1].stderr, "start-up check: rank 2 has --seed 7 but rank 0 has 1234");
});

Deno.test("master unreachable", async () => {
  const port = freePort();
  const o = await spawn([`${port}`, "1", "2", "0.02", "ok"]);
  assert.equal(o.code, 1);
  assert.match(
    o.stderr,
    new RegExp(
      `^store: cannot reach the master at 127\\.0\\.0\\.1:${port} within 0\\.02 min \\(last error: .*\\)$`,
    ),
  );
});

Deno.test("port in use", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  try {
    const o = await spawn([`${port}`, "0", "2", "0.02", "ok"]);
    assert.equal(o.code, 1);
    assert.equal(
      o.stderr,
      `store: cannot listen on 127.0.0.1:${port}: the port is in use (another job? choose another --master-port / MASTER_PORT)`,
    );
  } finally {
    l.close();
  }
});

Deno.test("world-size mismatch", async () => {
  const port = freePort();
  const [a, b] = await Promise.all([
    spawn([`${port}`, "0", "2", "0.2", "ok"]),
    spawn([`${port}`, "1", "3", "0.2", "ok"]),
  ]);
  assert.equal(b.code, 1);
  assert.match(b.stderr, /^world size mismatch: rank 1 \(pid \d+ on .+\) has world size 3, rank 0 has 2$/);
  assert.equal(a.code, 1);
  assert.equal(a.stderr, b.stderr);
});

Deno.test("two processes claiming one rank", async () => {
  const port = freePort();
  const dup = await Promise.all([
    spawn([`${port}`, "0", "3", "0.2", "barrier"]),
    spawn([`${port}`, "1", "3", "0.2", "barrier"]),
    spawn([`${port}`, "1", "3", "0.2", "barrier"]),
  ]);
  for (const o of dup) {
    assert.equal(o.code, 1);
    assert.match(o.stderr, /^two processes claim rank 1: pid \d+ on .+ and pid \d+ on .+$/);
  }
});

Deno.test("a killed rank fails the others at once, naming it", async () => {
  const outs = await world(freePort(), 3, 0.5, (r) => (r === 2 ? "die" : "survive"));
  assert.notEqual(outs[2].code, 0);
  for (const o of outs.slice(0, 2)) {
    assert.equal(o.code, 1);
    assert.match(
      o.stderr,
      /^rank 2 \(pid \d+ on .+\) lost its connection to the store: it exited or was killed$/,
    );
    assert.ok(o.ms < 25_000, `took ${o.ms} ms`);
  }
});

Deno.test("a barrier times out naming the missing rank", async () => {
  const o = await spawn([`${freePort()}`, "0", "2", "0.02", "barrier"]);
  assert.equal(o.code, 1);
  assert.equal(o.stderr, "store: barrier b#0 timed out after 0.02 min: rank(s) 1 did not arrive");
});

Deno.test("get and wait are bounded by the timeout (in-process pair of ranks)", async () => {
  const port = freePort();
  const opts = { host: "127.0.0.1", port, worldSize: 2, timeoutMs: 0.01 * 60_000 };
  const [a, b] = await Promise.all([
    TcpStore.connect({ ...opts, rank: 0 }),
    TcpStore.connect({ ...opts, rank: 1 }),
  ]);
  try {
    await assert.rejects(() => b.get("nokey"), {
      message: "store: waiting for key(s) nokey timed out after 0.01 min",
    });
    await a.set("k1", "v");
    await assert.rejects(() => a.wait(["k1", "k2"]), {
      message: "store: waiting for key(s) k2 timed out after 0.01 min",
    });
    // A value set later wakes the waiter.
    const got = b.get("late");
    await a.set("late", "x");
    assert.equal(await got, "x");
    assert.equal(await a.add("n", 5), 5);
    assert.equal(await b.add("n", -2), 3);
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
});
