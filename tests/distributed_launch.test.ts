// The launcher with tiny child scripts (not the trainer): torchrun's environment per child, rank
// prefixes and --log-rank 0, failure propagation (the others stopped, the child's exit code), a child
// killed by a signal, SIGTERM/SIGINT forwarding, bad usage, and the `megatron launch` subcommand.

import assert from "node:assert/strict";
import { childCommand, childEnv, parseLaunchArgs } from "../tasks/launch.ts";

const LAUNCH = new URL("../tasks/launch.ts", import.meta.url).pathname;
const CLI = new URL("../cli.ts", import.meta.url).pathname;
const CHILD = new URL("./distributed/launch_child.ts", import.meta.url).pathname;
const dec = new TextDecoder();

interface Out {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

async function run(args: string[], entry = [LAUNCH]): Promise<Out> {
  const t0 = Date.now();
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", ...entry, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr), ms: Date.now() - t0 };
}

const sortLines = (s: string) => s.trim().split("\n").sort();

Deno.test("torchrun environment per child, output prefixed with the rank", async () => {
  const o = await run([
    "--nproc-per-node",
    "3",
    "--nnodes=2",
    "--node-rank=1",
    "--master-addr",
    "10.0.0.5",
    "--master_port",
    "6001",
    "--",
    CHILD,
    "env",
  ]);
  assert.equal(o.code, 0, o.stderr);
  assert.deepEqual(
    sortLines(o.stdout),
    [0, 1, 2].map((l) =>
      `[rank${3 + l}]: RANK=${3 + l} LOCAL_RANK=${l} WORLD_SIZE=6 LOCAL_WORLD_SIZE=3 MASTER_ADDR=10.0.0.5 ` +
      `MASTER_PORT=6001 GROUP_RANK=1`
    ),
  );
  assert.deepEqual(sortLines(o.stderr), [
    "[rank3]: stderr of 3",
    "[rank4]: stderr of 4",
    "[rank5]: stderr of 5",
  ]);
});

Deno.test("--log-rank 0 shows only rank 0's output, unprefixed", async () => {
  const o = await run(["--nproc-per-node", "2", "--log-rank", "0", "--", CHILD, "env"]);
  assert.equal(o.code, 0, o.stderr);
  assert.equal(
    o.stdout,
    "RANK=0 LOCAL_RANK=0 WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 GROUP_RANK=0\n",
  );
  assert.equal(o.stderr, "stderr of 0\n");
});

Deno.test("a failing child stops the others; the launcher exits with its code", async () => {
  const o = await run(["--nproc-per-node", "3", "--", CHILD, "fail"]);
  assert.equal(o.code, 3);
  assert.match(o.stderr, /^\[rank1\]: rank 1 fails$/m);
  assert.match(o.stderr, /^launch: rank 1 \(pid \d+\) exited with code 3; stopping the other ranks$/m);
  assert.ok(o.ms < 30_000, `took ${o.ms} ms (the others were not stopped)`);
  // With --log-rank 0 the failing rank's last stderr lines are still shown.
  const q = await run(["--nproc-per-node", "2", "--log-rank", "0", "--", CHILD, "fail"]);
  assert.equal(q.code, 3);
  assert.equal(
    q.stderr.replace(/pid \d+/, "pid P"),
    "[rank1]: rank 1 fails\nlaunch: rank 1 (pid P) exited with code 3; stopping the other ranks\n",
  );
});

Deno.test("a child killed by SIGKILL: exit code 137, the others stopped", async () => {
  const o = await run(["--nproc-per-node", "3", "--", CHILD, "crash"]);
  assert.equal(o.code, 137);
  assert.match(o.stderr, /^launch: rank 2 \(pid \d+\) was killed by SIGKILL; stopping the other ranks$/m);
  assert.ok(o.ms < 30_000);
});

for (const sig of ["SIGTERM", "SIGINT"] as const) {
  Deno.test(`${sig} is forwarded to every child`, async () => {
    const p = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-check", LAUNCH, "--nproc-per-node", "2", "--", CHILD, "signal"],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    // Wait until both children are ready, then signal the launcher only (not its process group).
    const reader = p.stdout.getReader();
    let seen = "";
    while ((seen.match(/ready/g) ?? []).length < 2) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += dec.decode(value);
    }
    p.kill(sig);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += dec.decode(value);
    }
    const st = await p.status;
    const err = dec.decode((await new Response(p.stderr).arrayBuffer()) as ArrayBuffer);
    assert.equal(st.code, 7);
    assert.deepEqual(seen.trim().split("\n").sort(), [
      `[rank0]: got ${sig}`,
      "[rank0]: ready",
      `[rank1]: got ${sig}`,
      "[rank1]: ready",
    ]);
    assert.equal(err, `launch: got ${sig}; forwarding it to 2 rank(s)\n`);
  });
}

Deno.test("bad usage: one line, exit 2", async () => {
  const cases: [string[], string][] = [
    [["--nproc-per-node", "0", "--", "x.ts"], 'launch: --nproc-per-node expects an integer >= 1, got "0"'],
    [
      ["--nproc-per-node", "2"],
      "launch: no task given after --; " +
      "usage: launch [--nproc-per-node N] [--nnodes K --node-rank R --master-addr HOST --master-port P] " +
      "[--log-rank 0|all] -- <task> <flags>",
    ],
    [["--log-rank", "1", "--", "x.ts"], 'launch: --log-rank expects 0 or all, got "1"'],
    [
      ["--nnodes", "2", "--node-rank", "2", "--master-addr", "h", "--", "x.ts"],
      'launch: --node-rank expects an integer in 0..1, got "2"',
    ],
    [["--nnodes", "2", "--", "x.ts"], "launch: --nnodes > 1 needs --master-addr (the host of node rank 0)"],
    [
      ["--master-port", "99999", "--", "x.ts"],
      'launch: --master-port expects an integer in 1..65535, got "99999"',
    ],
    [
      ["--bogus", "1", "--", "x.ts"],
      "launch: unknown flag --bogus; usage: launch [--nproc-per-node N] [--nnodes K --node-rank R --master-addr HOST --master-port P] [--log-rank 0|all] -- <task> <flags>",
    ],
  ];
  for (const [args, line] of cases) {
    assert.throws(() => parseLaunchArgs(args), { message: line });
  }
  const o = await run(["--nproc-per-node", "x", "--", CHILD, "env"]);
  assert.equal(o.code, 2);
  assert.equal(o.stderr, 'launch: --nproc-per-node expects an integer >= 1, got "x"\n');
  const missing = await run(["--", "/nonexistent/program"]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^launch: cannot start "\/nonexistent\/program": .+\n$/);
});

Deno.test("task mapping and the megatron launch subcommand", async () => {
  const cli = new URL("file:///repo/cli.ts");
  assert.deepEqual(childCommand(["pretrain:gpt", "--seed", "1"], cli), [
    Deno.execPath(),
    "run",
    "-A",
    "/repo/cli.ts",
    "pretrain-gpt",
    "--seed",
    "1",
  ]);
  assert.deepEqual(childCommand(["a.ts", "x"], cli), [Deno.execPath(), "run", "-A", "a.ts", "x"]);
  assert.deepEqual(childCommand(["python3", "t.py"], cli), ["python3", "t.py"]);
  assert.deepEqual(childEnv(parseLaunchArgs(["--nproc-per-node", "2", "--", "a.ts"]), 1), {
    RANK: "1",
    LOCAL_RANK: "1",
    WORLD_SIZE: "2",
    LOCAL_WORLD_SIZE: "2",
    GROUP_RANK: "0",
    MASTER_ADDR: "127.0.0.1",
    MASTER_PORT: "29500",
  });
  const o = await run(["launch", "--nproc-per-node", "2", "--", CHILD, "env"], [CLI]);
  assert.equal(o.code, 0, o.stderr);
  assert.equal(sortLines(o.stdout).length, 2);
  assert.match(o.stdout, /^\[rank1\]: RANK=1 /m);
});

const JOIN = new URL("./distributed/join_child.ts", import.meta.url).pathname;

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  return p;
}

Deno.test("launcher + store: ranks join, rank 0 names the rank source once; a seed mismatch is one line", async () => {
  const port = freePort();
  const o = await run(["--nproc-per-node", "3", "--master-port", `${port}`, "--", JOIN, "1234"]);
  assert.equal(o.code, 0, o.stderr);
  assert.deepEqual(sortLines(o.stdout), [
    `[rank0]: distributed: rank source torchrun: world size 3, master 127.0.0.1:${port}`,
    "[rank0]: rank 0 of 3 ok",
    "[rank1]: rank 1 of 3 ok",
    "[rank2]: rank 2 of 3 ok",
  ]);
  const bad = await run(["--nproc-per-node", "3", "--master-port", `${freePort()}`, "--", JOIN, "1234", "2"]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /^\[rank\d\]: start-up check: rank 2 has --seed 7 but rank 0 has 1234$/m);
  assert.match(bad.stderr, /^launch: rank \d \(pid \d+\) exited with code 1; stopping the other ranks$/m);
});
