// One process per rank through the real CLI (issue 9, "Must show"): `mpiexec -n 4 ... pretrain-gpt
// --distributed-backend mpi` for (TP,PP,DP) = (2,2,1), (1,2,2) interleaved, (1,1,4) and (4,1,1) logs the
// losses of the in-process run of the same layout bit for bit (and one rank's to 1e-5), once per
// iteration from the last rank, and saves checkpoint shards byte-identical to the in-process run's; the
// same through `launch --nproc-per-node 4`; a checkpoint saved by processes resumes in one process and
// vice versa to the uninterrupted run's bytes; BERT's two losses likewise. Faults, each with a real
// process: a rank SIGKILLed mid-training, an exception in one rank (a corrupt shard), ranks that disagree
// on a flag, a missing MPI library, a world that does not match the layout, plain processes that cannot
// form an MPI world, `nccl` on the CPU; SIGTERM to one rank stops all ranks at the same iteration.

import assert from "node:assert/strict";
import { MMapIndexedDatasetBuilder } from "../src/data/indexed_dataset.ts";
import { writeTinySentences, writeTinyVocab } from "./helpers/bert_tiny.ts";
import { errorLine } from "./helpers/run_cli.ts";
import { mpiexecArgs, untagLine, usesMpi } from "../tasks/launch.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const dec = new TextDecoder();

function has(cmd: string): boolean {
  try {
    return new Deno.Command("sh", { args: ["-c", `command -v ${cmd}`], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}
const MPICH = has("mpiexec.mpich") ? "mpiexec.mpich" : null;
const OMPI = has("mpiexec.openmpi") ? "mpiexec.openmpi" : null;
/** The layout runs use MPICH (the first library), else Open MPI. */
const MPIEXEC = MPICH ?? OMPI;
const IS_ROOT = Deno.uid() === 0;

const DIR = Deno.makeTempDirSync({ prefix: "mdeno_mpitrain_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));

/** A small synthetic corpus (deterministic LCG tokens in 0..510), as tests/parallel_layout.test.ts. */
function writeCorpus(): string {
  const prefix = `${DIR}/synthetic_text_document`;
  const b = new MMapIndexedDatasetBuilder(prefix, "uint16");
  let x = 12345;
  for (let d = 0; d < 60; d++) {
    const n = 20 + (d * 7) % 30;
    const t: number[] = [];
    for (let i = 0; i < n; i++) {
      x = (x * 1103515245 + 12345) % 2147483648;
      t.push(x % 511);
    }
    b.addItem(t);
    b.endDocument();
  }
  b.finalize();
  return prefix;
}
const DATA = writeCorpus();

interface Layout {
  tp: number;
  pp: number;
  dp: number;
  lpv?: number;
}
const LAYOUTS: Layout[] = [
  { tp: 2, pp: 2, dp: 1 },
  { tp: 1, pp: 2, dp: 2, lpv: 1 },
  { tp: 1, pp: 1, dp: 4 },
  { tp: 4, pp: 1, dp: 1 },
];
const nameOf = (l: Layout) => `${l.tp},${l.pp},${l.dp}${l.lpv ? "i" : ""}`;

function layoutArgs(l: Layout): string[] {
  return [
    ...["--tensor-model-parallel-size", String(l.tp), "--pipeline-model-parallel-size", String(l.pp)],
    ...["--data-parallel-size", String(l.dp)],
    ...(l.lpv ? ["--num-layers-per-virtual-pipeline-stage", String(l.lpv)] : []),
  ];
}

/** The tiny GPT (4 layers, hidden 32, NullTokenizer 511 + eod = 512 padded for any TP <= 4), dropout on. */
function baseArgs(iters: number): string[] {
  return [
    ...["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4"],
    ...["--seq-length", "16", "--max-position-embeddings", "16"],
    ...["--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", String(iters)],
    ...["--lr", "5e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine", "--lr-warmup-iters", "2"],
    ...["--weight-decay", "0.01", "--clip-grad", "1.0"],
    ...[
      "--tokenizer-type",
      "NullTokenizer",
      "--vocab-size",
      "511",
      "--data-path",
      DATA,
      "--split",
      "80,20,0",
    ],
    ...["--hidden-dropout", "0.1", "--attention-dropout", "0.1", "--seed", "1234"],
    ...["--eval-iters", "1", "--eval-interval", "2", "--log-interval", "1", "--device", "cpu"],
    ...["--distributed-timeout-minutes", "0.5"],
  ];
}

interface Out {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

async function output(cmd: string, args: string[], env: Record<string, string> = {}): Promise<Out> {
  const t0 = Date.now();
  const o = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).output();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr), ms: Date.now() - t0 };
}

/** A TCP port nobody listens on right now (rank 0's store; concurrent test runs must not share one). */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

function mpiexecPrefix(launcher: string, n: number): string[] {
  return launcher.endsWith("openmpi")
    ? [...(IS_ROOT ? ["--allow-run-as-root"] : []), "--oversubscribe", "-n", String(n)]
    : ["-n", String(n)];
}

/** `pretrain-gpt` in one process. */
function inProcess(args: string[], env: Record<string, string> = {}): Promise<Out> {
  return output(Deno.execPath(), ["run", "-A", "--no-check", CLI, "pretrain-gpt", ...args], env);
}

/** `mpiexec -n N deno run cli.ts pretrain-gpt ...`. */
function underMpiexec(
  launcher: string,
  n: number,
  args: string[],
  env: Record<string, string> = {},
): Promise<Out> {
  return output(launcher, [
    ...mpiexecPrefix(launcher, n),
    ...[Deno.execPath(), "run", "-A", "--no-check", CLI, "pretrain-gpt", ...args],
  ], { MASTER_PORT: String(freePort()), ...env });
}

/** `launch --nproc-per-node N -- pretrain:gpt ...` with mpiexec = `launcher`. */
function throughLauncher(launcher: string, n: number, args: string[]): Promise<Out> {
  return output(Deno.execPath(), [
    ...["run", "-A", "--no-check", CLI, "launch", "--nproc-per-node", String(n)],
    ...["--master-port", String(freePort()), "--", "pretrain:gpt", ...args],
  ], { MEGATRON_DENO_MPIEXEC: launcher });
}

interface Metrics {
  train: number[];
  iterations: number[];
  valid: number[];
}

function readMetrics(path: string): Metrics {
  const rows = Deno.readTextFileSync(path).trim().split("\n").map((l) => JSON.parse(l));
  const train = rows.filter((r) => r.kind === "train");
  return {
    train: train.map((r) => r.lm_loss),
    iterations: train.map((r) => r.iteration),
    valid: rows.filter((r) => r.kind === "validation").map((r) => r.lm_loss),
  };
}

/** Every shard file of the tracker's iteration: relative path -> bytes. */
function shards(saveDir: string): Map<string, Uint8Array> {
  const it = Deno.readTextFileSync(`${saveDir}/latest_checkpointed_iteration.txt`).trim();
  const iterDir = `${saveDir}/iter_${it.padStart(7, "0")}`;
  const out = new Map<string, Uint8Array>();
  for (const r of Deno.readDirSync(iterDir)) {
    for (const f of ["model.safetensors", "optim.safetensors"]) {
      out.set(`${r.name}/${f}`, Deno.readFileSync(`${iterDir}/${r.name}/${f}`));
    }
  }
  return out;
}

function assertSameShards(a: Map<string, Uint8Array>, b: Map<string, Uint8Array>, what: string): void {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${what}: shard files`);
  for (const [k, v] of a) assert.ok(equalBytes(v, b.get(k)!), `${what}: ${k} differs`);
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function assertClose(a: number[], b: number[], rel: number, what: string): void {
  assert.equal(a.length, b.length, `${what}: lengths`);
  a.forEach((x, i) => {
    const tol = rel * Math.max(Math.abs(x), Math.abs(b[i]));
    assert.ok(Math.abs(x - b[i]) <= tol, `${what}[${i}]: ${x} vs ${b[i]}`);
  });
}

function assertOk(o: Out, what: string): void {
  assert.equal(o.code, 0, `${what} exited ${o.code}\nstdout:\n${o.stdout}\nstderr:\n${o.stderr}`);
}

const ITERS = 4;

/** A run's logged numbers and shards (scratch folders under DIR). */
async function trained(
  how: (args: string[]) => Promise<Out>,
  args: string[],
  tag: string,
): Promise<{ m: Metrics; ck: Map<string, Uint8Array>; out: Out }> {
  const save = `${DIR}/${tag}_ckpt`;
  const metrics = `${DIR}/${tag}_metrics.jsonl`;
  const out = await how([...args, "--save", save, "--metrics-file", metrics]);
  assertOk(out, tag);
  return { m: readMetrics(metrics), ck: shards(save), out };
}

/** The in-process reference of a layout (computed once per layout and shared by the tests). */
const references = new Map<string, ReturnType<typeof trained>>();
function reference(l: Layout | null): ReturnType<typeof trained> {
  const key = l ? nameOf(l) : "one";
  if (!references.has(key)) {
    references.set(key, trained(inProcess, [...baseArgs(ITERS), ...(l ? layoutArgs(l) : [])], `ref_${key}`));
  }
  return references.get(key)!;
}

/** One `iteration N/M` line per iteration, all from one rank (the last). */
function assertOneLogLinePerIteration(stdout: string, prefix = ""): void {
  const its = stdout.split("\n").filter((l) => l.startsWith(`${prefix} iteration `));
  assert.equal(its.length, ITERS, `iteration lines:\n${stdout}`);
}

Deno.test({
  name:
    "mpiexec -n 4: four layouts log the in-process losses (bit for bit, one rank's to 1e-5), save its bytes",
  ignore: MPIEXEC === null,
  sanitizeResources: false,
  fn: async () => {
    const one = await reference(null);
    for (const l of LAYOUTS) {
      const ref = await reference(l);
      const got = await trained(
        (a) => underMpiexec(MPIEXEC!, 4, a),
        [...baseArgs(ITERS), ...layoutArgs(l), "--distributed-backend", "mpi"],
        `mpi_${nameOf(l)}`,
      );
      const what = `(${nameOf(l)})`;
      assert.deepEqual(got.m.iterations, [1, 2, 3, 4], what);
      assert.deepEqual(got.m.train, ref.m.train, `${what} train losses vs in-process`);
      assert.deepEqual(got.m.valid, ref.m.valid, `${what} validation losses vs in-process`);
      assertClose(got.m.train, one.m.train, 1e-5, `${what} train losses vs one rank`);
      assertClose(got.m.valid, one.m.valid, 1e-5, `${what} validation losses vs one rank`);
      assertSameShards(got.ck, ref.ck, what);
      assertOneLogLinePerIteration(got.out.stdout);
      // Start-up lines once (rank 0), the closing line once (the last rank).
      assert.equal(got.out.stdout.split("\n").filter((x) => x.startsWith("> model: ")).length, 1);
      assert.equal(got.out.stdout.split("\n").filter((x) => x.startsWith("done: ")).length, 1);
    }
  },
});

Deno.test({
  name: "launch --nproc-per-node 4 hands the mpi job to mpiexec: same losses and bytes, [rankN] prefixes",
  ignore: MPIEXEC === null,
  sanitizeResources: false,
  fn: async () => {
    for (const l of LAYOUTS) {
      const ref = await reference(l);
      // No --distributed-backend: --device cpu in a 4-process world defaults to mpi.
      const tb = `${DIR}/launch_${nameOf(l)}_tb`;
      const got = await trained(
        (a) => throughLauncher(MPIEXEC!, 4, a),
        [...baseArgs(ITERS), ...layoutArgs(l), "--tensorboard-dir", tb],
        `launch_${nameOf(l)}`,
      );
      // TensorBoard from the last rank only: one event file.
      assert.equal([...Deno.readDirSync(tb)].filter((e) => e.name.startsWith("events.")).length, 1);
      assert.deepEqual(got.m.train, ref.m.train, `(${nameOf(l)}) train losses`);
      assert.deepEqual(got.m.valid, ref.m.valid, `(${nameOf(l)}) validation losses`);
      assertSameShards(got.ck, ref.ck, `(${nameOf(l)})`);
      assertOneLogLinePerIteration(got.out.stdout, "[rank3]: ");
      assert.match(got.out.stdout, /^\[rank0\]: > model: .*layout TP=\d PP=\d DP=\d/m);
      assert.match(got.out.stderr, /^launch: the mpi backend: 4 rank\(s\) through /m);
    }
  },
});

Deno.test({
  name:
    "checkpoints cross over: saved by 4 processes, resumed in one, and vice versa, equal the uninterrupted run",
  ignore: MPIEXEC === null,
  sanitizeResources: false,
  fn: async () => {
    const l = LAYOUTS[0];
    const ref = await reference(l);
    const args = [...baseArgs(ITERS), ...layoutArgs(l)];
    const half = ["--exit-interval", "2"];
    // Processes first, then one process.
    const a1 = await underMpiexec(MPIEXEC!, 4, [...args, ...half, "--save", `${DIR}/x1`]);
    assertOk(a1, "mpiexec half");
    assert.equal(Deno.readTextFileSync(`${DIR}/x1/latest_checkpointed_iteration.txt`), "2");
    const a2 = await inProcess([
      ...args,
      "--load",
      `${DIR}/x1`,
      "--save",
      `${DIR}/x1b`,
      "--metrics-file",
      `${DIR}/x1b.jsonl`,
    ]);
    assertOk(a2, "in-process resume");
    assert.deepEqual(readMetrics(`${DIR}/x1b.jsonl`).train, ref.m.train.slice(2));
    assertSameShards(shards(`${DIR}/x1b`), ref.ck, "mpiexec -> in-process");
    // One process first, then processes.
    const b1 = await inProcess([...args, ...half, "--save", `${DIR}/x2`]);
    assertOk(b1, "in-process half");
    const b2 = await underMpiexec(MPIEXEC!, 4, [
      ...args,
      ...["--load", `${DIR}/x2`, "--save", `${DIR}/x2b`, "--metrics-file", `${DIR}/x2b.jsonl`],
    ]);
    assertOk(b2, "mpiexec resume");
    assert.match(b2.stdout, /^loaded checkpoint .*x2 at iteration 2$/m);
    assert.deepEqual(readMetrics(`${DIR}/x2b.jsonl`).train, ref.m.train.slice(2));
    assertSameShards(shards(`${DIR}/x2b`), ref.ck, "in-process -> mpiexec");
  },
});

/** Pids of this job's rank `rank` (found by its MASTER_PORT and the MPI rank variable). */
function rankPids(port: number, rank: number): number[] {
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    let env: string;
    try {
      env = Deno.readTextFileSync(`/proc/${e.name}/environ`);
    } catch {
      continue;
    }
    const vars = env.split("\0");
    const r = vars.find((v) => v.startsWith("PMI_RANK=") || v.startsWith("OMPI_COMM_WORLD_RANK="));
    if (vars.includes(`MASTER_PORT=${port}`) && r?.endsWith(`=${rank}`)) pids.push(Number(e.name));
  }
  return pids;
}

/** Starts `cmd`, SIGKILLs rank 2 once the last rank has logged two iterations, returns the outcome. */
async function killRankMidTraining(cmd: string, args: string[], port: number, env: Record<string, string>) {
  const metrics = `${DIR}/kill_${port}.jsonl`;
  const child = new Deno.Command(cmd, {
    args: [...args, "--metrics-file", metrics],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).spawn();
  const out = child.output();
  const deadline = Date.now() + 120_000;
  let killed: number[] = [];
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    let n = 0;
    try {
      n = Deno.readTextFileSync(metrics).trim().split("\n").length;
    } catch {
      // not yet written
    }
    if (n >= 2) {
      killed = rankPids(port, 2);
      for (const p of killed) Deno.kill(p, "SIGKILL");
      break;
    }
  }
  const t0 = Date.now();
  const o = await out;
  return {
    killed,
    code: o.code,
    stdout: dec.decode(o.stdout),
    stderr: dec.decode(o.stderr),
    ms: Date.now() - t0,
  };
}

Deno.test({
  name: "a rank SIGKILLed mid-training: mpiexec / the launcher exit non-zero at once, the line names rank 2",
  ignore: OMPI === null,
  sanitizeResources: false,
  fn: async () => {
    const args = [...baseArgs(100000), ...layoutArgs(LAYOUTS[2]), "--distributed-timeout-minutes", "0.2"];
    const cli = [Deno.execPath(), "run", "-A", "--no-check", CLI, "pretrain-gpt", ...args];
    let port = freePort();
    const direct = await killRankMidTraining(OMPI!, [...mpiexecPrefix(OMPI!, 4), ...cli], port, {
      MASTER_PORT: String(port),
    });
    assert.equal(direct.killed.length, 1, "rank 2's process was found and killed");
    assert.notEqual(direct.code, 0);
    assert.ok(direct.ms < 30_000, `took ${direct.ms} ms after the kill`);
    assert.match(direct.stderr + direct.stdout, /process rank 2 with PID \d+ on node \S+ exited on signal 9/);
    port = freePort();
    const launched = await killRankMidTraining(
      Deno.execPath(),
      [
        ...["run", "-A", "--no-check", CLI, "launch", "--nproc-per-node", "4", "--master-port", String(port)],
        ...["--", "pretrain:gpt", ...args],
      ],
      port,
      { MEGATRON_DENO_MPIEXEC: OMPI! },
    );
    assert.equal(launched.killed.length, 1);
    assert.notEqual(launched.code, 0);
    assert.ok(launched.ms < 30_000, `took ${launched.ms} ms after the kill`);
    assert.match(
      launched.stderr + launched.stdout,
      /process rank 2 with PID \d+ on node \S+ exited on signal 9/,
    );
    assert.match(
      launched.stderr,
      /^launch: mpiexec (exited with code \d+|was killed by \w+) \(rank 2 \(pid \d+\) ended first: it failed or was killed\)$/m,
    );
  },
});

Deno.test({
  name:
    "a rank SIGKILLed under MPICH: every process stops, non-zero exit; the launcher names the rank that ended first",
  ignore: MPICH === null,
  sanitizeResources: false,
  fn: async () => {
    const args = [...baseArgs(100000), ...layoutArgs(LAYOUTS[2]), "--distributed-timeout-minutes", "0.2"];
    const port = freePort();
    const o = await killRankMidTraining(
      MPICH!,
      ["-n", "4", Deno.execPath(), "run", "-A", "--no-check", CLI, "pretrain-gpt", ...args],
      port,
      { MASTER_PORT: String(port) },
    );
    const tail = `\n--- stderr ---\n${o.stderr.slice(-3000)}`;
    assert.equal(o.killed.length, 1, tail);
    assert.notEqual(o.code, 0, tail);
    assert.ok(o.ms < 30_000, `took ${o.ms} ms after the kill${tail}`);
    // Hydra may return while the ranks it SIGKILLed are still being reaped: allow them a moment.
    const until = Date.now() + 10_000;
    let left = [0, 1, 2, 3].flatMap((r) => rankPids(port, r));
    while (left.length && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
      left = [0, 1, 2, 3].flatMap((r) => rankPids(port, r));
    }
    assert.deepEqual(left, [], `ranks still running 10 s after mpiexec ended${tail}`);
    // MPICH's own message names a pid, not the rank: the launcher watches the ranks and names it.
    const lport = freePort();
    const launched = await killRankMidTraining(
      Deno.execPath(),
      [
        ...[
          "run",
          "-A",
          "--no-check",
          CLI,
          "launch",
          "--nproc-per-node",
          "4",
          "--master-port",
          String(lport),
        ],
        ...["--", "pretrain:gpt", ...args],
      ],
      lport,
      { MEGATRON_DENO_MPIEXEC: MPICH! },
    );
    const ltail = `\n--- stderr ---\n${launched.stderr.slice(-3000)}`;
    assert.equal(launched.killed.length, 1, ltail);
    assert.notEqual(launched.code, 0, ltail);
    // Under MPICH + UCX a peer reading the killed rank's memory (CMA) aborts within the same
    // millisecond, so the launcher may see that peer end first, or both within one 10 ms poll; it
    // must name the rank(s) it saw.
    assert.match(
      launched.stderr,
      /^launch: mpiexec (exited with code \d+|was killed by \w+) \((rank [0-3] \(pid \d+\) ended first: it failed or was killed|ranks [0-3](, [0-3])+ ended together)\)$/m,
      ltail,
    );
  },
});

Deno.test({
  name: "an exception in one rank (its shard is corrupt): one line naming the rank, the job stops",
  ignore: MPIEXEC === null,
  sanitizeResources: false,
  fn: async () => {
    const l = LAYOUTS[3]; // (4,1,1): every rank loads its own mp_rank_0X
    const ref = await reference(l);
    assert.ok(ref.ck.size > 0);
    const save = `${DIR}/corrupt`;
    await Deno.mkdir(save);
    await new Deno.Command("cp", { args: ["-r", `${DIR}/ref_${nameOf(l)}_ckpt/.`, save] }).output();
    const it = Deno.readTextFileSync(`${save}/latest_checkpointed_iteration.txt`).trim();
    const bad = `${save}/iter_${it.padStart(7, "0")}/mp_rank_02/model.safetensors`;
    Deno.writeFileSync(bad, new Uint8Array(100).fill(7));
    const o = await underMpiexec(MPIEXEC!, 4, [
      ...baseArgs(ITERS + 2),
      ...layoutArgs(l),
      ...["--load", save, "--distributed-timeout-minutes", "0.2"],
    ]);
    assert.notEqual(o.code, 0);
    const lines = o.stderr.split("\n").filter((x) => x.startsWith("pretrain_gpt: "));
    assert.ok(lines.length >= 1, o.stderr);
    assert.ok(
      lines.some((x) => x.startsWith(`pretrain_gpt: rank 2: ${bad}: `)),
      `no line naming rank 2 and its file:\n${o.stderr}`,
    );
    assert.ok(o.ms < 60_000, `took ${o.ms} ms`);
  },
});

Deno.test({
  name: "ranks that disagree on a flag: one line naming the rank and the flag (MPMD mpiexec)",
  ignore: MPICH === null,
  sanitizeResources: false,
  fn: async () => {
    const base = [Deno.execPath(), "run", "-A", "--no-check", CLI, "pretrain-gpt", ...baseArgs(ITERS)];
    const o = await output(
      MPICH!,
      [
        "-n",
        "3",
        ...base,
        "--data-parallel-size",
        "4",
        ":",
        "-n",
        "1",
        ...base,
        "--data-parallel-size",
        "4",
        "--seed",
        "99",
      ],
      { MASTER_PORT: String(freePort()) },
    );
    assert.notEqual(o.code, 0);
    const lines = o.stderr.split("\n").filter((x) => x.startsWith("pretrain_gpt: "));
    assert.ok(lines.length >= 1, o.stderr);
    for (const x of lines) {
      assert.equal(
        x.replace(/^pretrain_gpt: rank \d: /, ""),
        "start-up check: rank 3 has --seed 99 but rank 0 has 1234",
      );
    }
  },
});

Deno.test({
  name:
    "bad set-ups are one line: mpi with one process for 4 ranks, a missing MPI library, nccl, local in a world",
  sanitizeResources: false,
  fn: async () => {
    const args = [...baseArgs(2), "--data-parallel-size", "4"];
    const one = await inProcess([...args, "--distributed-backend", "mpi"]);
    assert.equal(one.code, 1);
    assert.equal(
      errorLine(one),
      "--distributed-backend mpi: the world size must equal TP * PP * DP = 1 * 1 * 4 = 4, but 1 process(es) " +
        "were started (rank source single); start 4 (mpiexec -n 4, or launch --nproc-per-node 4), or run " +
        "every rank in this process with --distributed-backend local",
    );
    const lib = await inProcess([...baseArgs(2), "--distributed-backend", "mpi"], {
      MEGATRON_DENO_MPI: `${DIR}/no/libmpich.so.12`,
    });
    assert.equal(lib.code, 1);
    assert.equal(
      errorLine(lib),
      "mpi: no MPI library found (set MEGATRON_DENO_MPI to libmpich.so.12 or libmpi.so.40, or install one: " +
        `apt-get install mpich); tried: ${DIR}/no/libmpich.so.12`,
    );
    const nccl = await inProcess([...baseArgs(2), "--distributed-backend", "nccl"]);
    assert.equal(nccl.code, 1);
    assert.equal(
      errorLine(nccl),
      "nccl: --distributed-backend nccl needs --device cuda (the backend is cpu)",
    );
    // Plain processes (torchrun's variables, no mpiexec) cannot form one MPI world: each is a world of one.
    const port = String(freePort());
    const plain = await Promise.all(
      [0, 1].map((r) =>
        inProcess([...baseArgs(2), "--distributed-backend", "mpi"], {
          RANK: String(r),
          WORLD_SIZE: "2",
          MASTER_ADDR: "127.0.0.1",
          MASTER_PORT: port,
        })
      ),
    );
    plain.forEach((o, r) => {
      assert.equal(o.code, 1);
      assert.equal(
        errorLine(o),
        `rank ${r}: --distributed-backend mpi: MPI_COMM_WORLD has 1 process(es) but this is rank ${r} of 2; MPI ` +
          "processes form one world only when started by mpiexec (mpiexec -n 2 ...), or through the launcher, " +
          "which hands mpi jobs to mpiexec",
      );
    });
    // A torchrun-style world of 2 whose processes ask for the in-process backend.
    const local = await inProcess([...baseArgs(2), "--distributed-backend", "local"], {
      RANK: "1",
      WORLD_SIZE: "2",
      MASTER_ADDR: "127.0.0.1",
    });
    assert.equal(local.code, 1);
    assert.equal(
      errorLine(local),
      "rank 1: --distributed-backend local: this process is rank 1 of 2 (rank source torchrun), but the local " +
        "backend runs every rank in one process; start one process, or use --distributed-backend mpi",
    );
  },
});

Deno.test({
  name: "SIGTERM to one rank with --exit-signal-handler: every rank stops at the same iteration and saves",
  ignore: MPICH === null,
  sanitizeResources: false,
  fn: async () => {
    const port = freePort();
    const save = `${DIR}/signal_ckpt`;
    const metrics = `${DIR}/signal.jsonl`;
    const child = new Deno.Command(MPICH!, {
      args: [
        ...["-n", "4", Deno.execPath(), "run", "-A", "--no-check", CLI, "pretrain-gpt"],
        ...baseArgs(100000),
        ...layoutArgs(LAYOUTS[0]),
        ...["--exit-signal-handler", "--save", save, "--metrics-file", metrics, "--eval-interval", "100000"],
      ],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", MASTER_PORT: String(port) },
    }).spawn();
    const out = child.output();
    let signalled: number[] = [];
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline && signalled.length === 0) {
      await new Promise((r) => setTimeout(r, 200));
      let n = 0;
      try {
        n = Deno.readTextFileSync(metrics).trim().split("\n").length;
      } catch {
        // not yet written
      }
      if (n >= 2) {
        signalled = rankPids(port, 1); // a first-stage rank: not the one that logs
        for (const p of signalled) Deno.kill(p, "SIGTERM");
      }
    }
    const o = await out;
    const stdout = dec.decode(o.stdout), stderr = dec.decode(o.stderr);
    assert.equal(signalled.length, 1);
    assert.equal(o.code, 0, stderr);
    const last = readMetrics(metrics).iterations.at(-1)!;
    // Rank 0 did not get the signal; the vote carries its name.
    assert.match(stdout, new RegExp(`^exiting at iteration ${last} \\(signal SIGTERM\\)$`, "m"), stdout);
    assert.equal(Deno.readTextFileSync(`${save}/latest_checkpointed_iteration.txt`), String(last));
    assert.equal(shards(save).size, 8); // 4 shards, model + optimizer each
  },
});

Deno.test({
  name: "BERT (2,1,2) under mpiexec: lm and sop losses of the in-process run, the same shard bytes",
  ignore: MPIEXEC === null,
  sanitizeResources: false,
  fn: async () => {
    const dir = `${DIR}/bert`;
    Deno.mkdirSync(dir);
    const args = [
      ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2"],
      ...["--seq-length", "16", "--max-position-embeddings", "16", "--micro-batch-size", "2"],
      ...["--global-batch-size", "8", "--lr", "1e-3", "--train-iters", "3", "--device", "cpu"],
      ...["--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", writeTinyVocab(dir)],
      ...[
        "--data-path",
        writeTinySentences(dir),
        "--split",
        "80,20,0",
        "--make-vocab-size-divisible-by",
        "8",
      ],
      ...["--eval-interval", "2", "--eval-iters", "1", "--log-interval", "1"],
      ...layoutArgs({ tp: 2, pp: 1, dp: 2 }),
    ];
    const run = async (tag: string, how: "local" | "mpi") => {
      const a = [...args, "--save", `${dir}/${tag}`, "--metrics-file", `${dir}/${tag}.jsonl`];
      const o = how === "local"
        ? await output(Deno.execPath(), ["run", "-A", "--no-check", CLI, "pretrain-bert", ...a])
        : await output(MPIEXEC!, [
          ...mpiexecPrefix(MPIEXEC!, 4),
          ...[Deno.execPath(), "run", "-A", "--no-check", CLI, "pretrain-bert", ...a],
        ], { MASTER_PORT: String(freePort()) });
      assertOk(o, `bert ${how}`);
      const rows = Deno.readTextFileSync(`${dir}/${tag}.jsonl`).trim().split("\n").map((l) => JSON.parse(l));
      return {
        rows: rows.map(({ lm_loss, sop_loss, kind }) => ({ kind, lm_loss, sop_loss })),
        ck: shards(`${dir}/${tag}`),
      };
    };
    const ref = await run("ref", "local");
    const got = await run("mpi", "mpi");
    assert.ok(ref.rows.every((r) => Number.isFinite(r.lm_loss) && Number.isFinite(r.sop_loss)));
    assert.deepEqual(got.rows, ref.rows);
    assertSameShards(got.ck, ref.ck, "BERT (2,1,2)");
  },
});

for (const launcher of [MPICH, OMPI]) {
  Deno.test({
    name: `launch + ${launcher}: SIGINT reaches the ranks (not mpiexec): all save at one iteration, exit 0`,
    ignore: launcher === null,
    sanitizeResources: false,
    fn: async () => {
      const tag = launcher!.replace(/\W/g, "_");
      const save = `${DIR}/launch_sig_${tag}`;
      const metrics = `${DIR}/launch_sig_${tag}.jsonl`;
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          ...["run", "-A", "--no-check", CLI, "launch", "--nproc-per-node", "4"],
          ...["--master-port", String(freePort()), "--", "pretrain:gpt", ...baseArgs(100000)],
          ...layoutArgs(LAYOUTS[1]),
          ...[
            "--exit-signal-handler",
            "--save",
            save,
            "--metrics-file",
            metrics,
            "--eval-interval",
            "100000",
          ],
        ],
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1", MEGATRON_DENO_MPIEXEC: launcher! },
      }).spawn();
      const out = child.output();
      const deadline = Date.now() + 120_000;
      let sent = false;
      while (Date.now() < deadline && !sent) {
        await new Promise((r) => setTimeout(r, 200));
        try {
          sent = Deno.readTextFileSync(metrics).trim().split("\n").length >= 2;
        } catch {
          // not yet written
        }
        if (sent) child.kill("SIGINT");
      }
      const o = await out;
      const stdout = dec.decode(o.stdout), stderr = dec.decode(o.stderr);
      assert.ok(sent);
      assert.equal(o.code, 0, stderr);
      assert.match(stderr, /^launch: got SIGINT; forwarding it to 4 rank\(s\)$/m);
      const last = readMetrics(metrics).iterations.at(-1)!;
      assert.match(
        stdout,
        new RegExp(`^\\[rank0\\]: exiting at iteration ${last} \\(signal SIGINT\\)$`, "m"),
        `${stdout.slice(-3000)}\n--- stderr ---\n${stderr.slice(-2000)}`,
      );
      assert.equal(Deno.readTextFileSync(`${save}/latest_checkpointed_iteration.txt`), String(last));
    },
  });
}

Deno.test("launcher: which commands go to mpiexec, its arguments, and its output tags", () => {
  const noCuda = () => false, cuda = () => true;
  assert.equal(usesMpi(["pretrain:gpt", "--device", "cpu"], cuda), true);
  assert.equal(usesMpi(["pretrain-bert", "--device=cpu"], cuda), true);
  assert.equal(usesMpi(["pretrain:gpt"], noCuda), true); // --device auto without CUDA
  assert.equal(usesMpi(["pretrain:gpt"], cuda), false); // auto with CUDA: nccl
  assert.equal(usesMpi(["pretrain:gpt", "--device", "cuda", "--distributed-backend", "mpi"], cuda), true);
  assert.equal(usesMpi(["pretrain:gpt", "--device", "cpu", "--distributed-backend", "local"], cuda), false);
  assert.equal(usesMpi(["my_script.ts", "--device", "cpu"], noCuda), false);
  assert.deepEqual(mpiexecArgs("mpich", 4, ["deno", "run"], false), [
    "-prepend-rank",
    "-n",
    "4",
    "deno",
    "run",
  ]);
  assert.deepEqual(mpiexecArgs("openmpi", 2, ["x"], true), [
    ...["--tag-output", "--oversubscribe", "--allow-run-as-root", "-x", "MASTER_ADDR", "-x", "MASTER_PORT"],
    ...["-n", "2", "x"],
  ]);
  assert.deepEqual(untagLine("openmpi", "[1,3]<stdout>: iteration 1"), { rank: 3, text: " iteration 1" });
  assert.deepEqual(untagLine("openmpi", "[1,0]<stderr>:pretrain_gpt: x"), {
    rank: 0,
    text: "pretrain_gpt: x",
  });
  assert.equal(untagLine("openmpi", "mpiexec noticed that process rank 2 ..."), null);
  assert.deepEqual(untagLine("mpich", "[2] > model: 4 layers"), { rank: 2, text: "> model: 4 layers" });
  assert.equal(untagLine("mpich", "=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES"), null);
});
