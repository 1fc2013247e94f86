// The MPI communicator in real processes (`mpiexec -n 4 deno run ...`): every collective and p2p
// message of a fixed script over 5 layouts must equal LocalWorld's result byte for byte (MPICH, and
// Open MPI when installed); paired exchanges complete with unbuffered sends where separate calls
// deadlock (which the timeout turns into one line); the pipeline schedules (runSchedule, runForwardOnly)
// complete with unbuffered sends on 2 and 4 processes, bit-equal to LocalWorld; a hung rank makes the
// others exit within the timeout with one line; a killed rank makes mpiexec stop all and exit non-zero; a
// missing library is one line.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import { mpiCandidatePaths, openMpi } from "../ffi/mpi.ts";
import { commScript, LAYOUTS } from "./distributed/comm_script.ts";
import { runToyRank, SCHEDULE_LAYOUTS, toyBits } from "./helpers/toy_stage.ts";

const CHILD = new URL("./distributed/mpi_child.ts", import.meta.url).pathname;

function has(cmd: string): boolean {
  try {
    return new Deno.Command("sh", { args: ["-c", `command -v ${cmd}`], stdout: "null", stderr: "null" })
      .outputSync()
      .success;
  } catch {
    return false;
  }
}

const MPICH = has("mpiexec.mpich") ? "mpiexec.mpich" : null;
const OMPI = has("mpiexec.openmpi") ? "mpiexec.openmpi" : null;
const IS_ROOT = Deno.uid() === 0;

interface Out {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

async function mpiexec(
  launcher: string,
  n: number,
  args: string[],
  env: Record<string, string> = {},
): Promise<Out> {
  const pre = launcher.endsWith("openmpi")
    ? [...(IS_ROOT ? ["--allow-run-as-root"] : []), "--oversubscribe"]
    : [];
  const t0 = Date.now();
  const o = await new Deno.Command(launcher, {
    args: [...pre, "-n", `${n}`, Deno.execPath(), "run", "-A", "--no-check", CHILD, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr), ms: Date.now() - t0 };
}

async function localResults(): Promise<Record<string, Record<string, string>>[]> {
  const be = createCpuBackend({ log: () => {} });
  const perRank: Record<string, Record<string, string>>[] = [{}, {}, {}, {}];
  for (const sizes of LAYOUTS) {
    const world = new LocalWorld(be, sizes, { timeoutMs: 30_000 });
    const res = await world.run((r) => commScript(world.communicator(r), world.states[r], be));
    res.forEach((x, r) => (perRank[r][`${sizes.tp},${sizes.pp},${sizes.dp}`] = x));
  }
  return perRank;
}

async function checkScript(launcher: string, env: Record<string, string> = {}): Promise<void> {
  const dir = await Deno.makeTempDir();
  const o = await mpiexec(launcher, 4, ["script", "1", dir], env);
  assert.equal(o.code, 0, o.stderr);
  const lines = await Promise.all(
    [0, 1, 2, 3].map(async (r) => JSON.parse(await Deno.readTextFile(`${dir}/rank${r}.json`))),
  );
  await Deno.remove(dir, { recursive: true });
  const want = await localResults();
  for (const l of lines) {
    const w = want[l.rank];
    assert.deepEqual(Object.keys(l.results), Object.keys(w));
    for (const layout of Object.keys(w)) {
      for (const k of Object.keys(w[layout])) {
        assert.equal(l.results[layout][k], w[layout][k], `rank ${l.rank} layout ${layout} ${k}`);
      }
      assert.deepEqual(Object.keys(l.results[layout]).sort(), Object.keys(w[layout]).sort());
    }
  }
}

Deno.test({
  name: "MPICH: every collective and p2p result equals LocalWorld's bytes (5 layouts, 4 processes)",
  ignore: !MPICH,
  fn: () => checkScript(MPICH!),
});

Deno.test({
  name: "Open MPI: the same script, the same bytes",
  ignore: !OMPI,
  fn: () => checkScript(OMPI!, { MEGATRON_DENO_MPI: "/usr/lib/x86_64-linux-gnu/libmpi.so.40" }),
});

Deno.test({
  name: "unbuffered sends: separate send/recv deadlock (timeout line), a paired exchange completes",
  ignore: !MPICH,
  fn: async () => {
    const naive = await mpiexec(MPICH!, 2, ["naive-sync", "0.05"]);
    assert.notEqual(naive.code, 0);
    const lines = naive.stderr.trim().split("\n").filter((l) => l.startsWith("mpi:"));
    assert.ok(lines.length >= 1, naive.stderr);
    for (const l of lines) {
      assert.match(
        l,
        /^mpi: send from rank [01] to rank [01] timed out after 0\.05 min: a peer failed or did not arrive$/,
      );
    }
    const paired = await mpiexec(MPICH!, 2, ["paired", "0.5"]);
    assert.equal(paired.code, 0, paired.stderr);
    const got = paired.stdout.trim().split("\n").map((l) => JSON.parse(l)).sort((a, b) => a.rank - b.rank);
    assert.deepEqual(got, [{ rank: 0, got: [2, 2, 3, 4] }, { rank: 1, got: [1, 2, 3, 4] }]);
  },
});

Deno.test({
  name: "pipeline schedules with unbuffered sends (MPI_Issend) on 2 and 4 processes equal LocalWorld's bits",
  ignore: !MPICH,
  fn: async () => {
    const be = createCpuBackend({ log: () => {} });
    for (const n of [2, 4]) {
      const dir = await Deno.makeTempDir();
      try {
        const o = await mpiexec(MPICH!, n, ["schedule", "0.5", dir]);
        assert.equal(o.code, 0, o.stderr);
        for (const l of SCHEDULE_LAYOUTS[n]) {
          const world = new LocalWorld(be, l, { timeoutMs: 10_000 });
          const want = await world.run((g) => runToyRank(be, world.states[g], world.communicator(g), l.m));
          for (let g = 0; g < n; g++) {
            const got = JSON.parse(await Deno.readTextFile(`${dir}/rank${g}.json`));
            assert.equal(got.results[JSON.stringify(l)], toyBits(want[g]), `${JSON.stringify(l)} rank ${g}`);
          }
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    }
  },
});

Deno.test({
  name: "p2p: a wrong tag or shape on receipt is one line naming both ranks",
  ignore: !MPICH,
  fn: async () => {
    const tag = await mpiexec(MPICH!, 2, ["badtag", "0.5"]);
    assert.notEqual(tag.code, 0);
    assert.match(tag.stderr, /^recv on rank 1 from rank 0: expected message fwd:c0:m0, got fwd:c0:m1$/m);
    const shape = await mpiexec(MPICH!, 2, ["badshape", "0.5"]);
    assert.notEqual(shape.code, 0);
    assert.match(shape.stderr, /^recv on rank 1 from rank 0: sent \[2, ?3\], receiving into \[3, ?2\]$/m);
  },
});

for (const [name, launcher] of [["MPICH", MPICH], ["Open MPI", OMPI]] as const) {
  Deno.test({
    name: `${name}: a hung rank makes the others exit within the timeout with one line each`,
    ignore: !launcher,
    fn: async () => {
      const o = await mpiexec(launcher!, 4, ["stall", "0.05"]);
      assert.notEqual(o.code, 0);
      const lines = o.stderr.split("\n").filter((l) => l.startsWith("mpi:"));
      assert.ok(lines.length >= 1, o.stderr);
      for (const l of lines) {
        assert.match(
          l,
          /^mpi: allReduce:sum on the world group \(ranks 0,1,2,3\) at rank [013] timed out after 0\.05 min: a peer failed or did not arrive$/,
        );
      }
      assert.ok(o.ms < 60_000, `took ${o.ms} ms`);
    },
  });

  Deno.test({
    name: `${name}: a killed rank makes mpiexec stop the others and exit non-zero at once`,
    ignore: !launcher,
    fn: async () => {
      const o = await mpiexec(launcher!, 4, ["kill", "0.5"]);
      assert.notEqual(o.code, 0);
      assert.ok(!o.stdout.includes("unexpected"), o.stdout);
      assert.match(o.stdout + o.stderr, /Killed \(signal 9\)|rank 2 .*exited on signal 9/);
      assert.ok(o.ms < 30_000, `took ${o.ms} ms`);
    },
  });
}

Deno.test("library discovery: env var first, MPICH before Open MPI, one line when missing", () => {
  const paths = mpiCandidatePaths(
    (k) => ({ MEGATRON_DENO_MPI: "/x/libmpi.so", LD_LIBRARY_PATH: "/a" } as Record<string, string>)[k],
    ["/sys"],
  );
  assert.deepEqual(paths, [
    "/x/libmpi.so",
    "/a/libmpich.so.12",
    "/a/libmpich.so",
    "/sys/libmpich.so.12",
    "/sys/libmpich.so",
    "/a/libmpi.so.40",
    "/a/libmpi.so",
    "/sys/libmpi.so.40",
    "/sys/libmpi.so",
  ]);
  const ompi = mpiCandidatePaths((k) => (k === "OMPI_COMM_WORLD_RANK" ? "0" : undefined), ["/sys"]);
  assert.equal(ompi[0], "/sys/libmpi.so.40");
  assert.throws(
    () => openMpi((k) => (k === "MEGATRON_DENO_MPI" ? "/nonexistent/libmpich.so.12" : undefined), []),
    {
      message:
        "mpi: no MPI library found (set MEGATRON_DENO_MPI to libmpich.so.12 or libmpi.so.40, or install one: " +
        "apt-get install mpich); tried: /nonexistent/libmpich.so.12",
    },
  );
});
