// One rank of the all-reduce benchmark (started by bench/mpi_allreduce.ts under mpiexec). Arguments:
// pairs of <bytes> <iterations>. For each size rank 0 prints "<bytes> <communicator s> <ffi s>": the
// MpiCommunicator's group-order all-reduce of an f32 tensor, and MPI's own MPI_Iallreduce called through
// FFI (to separate the FFI cost from the deterministic algorithm); seconds per call, max over ranks.

import { createCpuBackend } from "../../src/backend/cpu/cpu_backend.ts";
import { MpiCommunicator, MpiWorld } from "../../src/distributed/mpi_comm.ts";
import { makeParallelState } from "../../src/parallel/types.ts";

const be = createCpuBackend({ log: () => {} });
const world = MpiWorld.init();
const lib = world.lib;
const ps = makeParallelState({ tp: 1, pp: 1, dp: world.size }, world.rank);
const comm = new MpiCommunicator(world, be, ps, { timeoutMs: 600_000 });

async function maxOverRanks(x: number): Promise<number> {
  const t = be.fromHost("f64", [1], [x]);
  await comm.allReduce(t, "max", "world");
  const v = be.toF64(t)[0];
  be.free(t);
  return v;
}

async function ffiAllreduce(src: Float32Array, dst: Float32Array): Promise<void> {
  const req = lib.handles(1);
  const rc = lib.fn.MPI_Iallreduce(
    Deno.UnsafePointer.of(src),
    Deno.UnsafePointer.of(dst),
    src.length,
    lib.FLOAT,
    lib.SUM,
    lib.COMM_WORLD,
    req,
  );
  if (rc !== 0) throw new Error(lib.errorString(rc));
  const flag = new Int32Array(1);
  for (;;) {
    lib.fn.MPI_Testall(1, req, flag, lib.STATUS_IGNORE);
    if (flag[0]) return;
    await Promise.resolve();
  }
}

const args = Deno.args.map(Number);
for (let a = 0; a + 1 < args.length; a += 2) {
  const bytes = args[a];
  const iters = args[a + 1];
  const n = bytes / 4;
  const t = be.fromHost("f32", [n], Float32Array.from({ length: n }, (_, i) => world.rank + (i % 7)));
  await comm.allReduce(t, "sum", "world"); // warm-up
  await comm.barrier("world");
  let t0 = performance.now();
  for (let i = 0; i < iters; i++) await comm.allReduce(t, "sum", "world");
  const tc = await maxOverRanks((performance.now() - t0) / 1000 / iters);
  // MPI's own reduction (MPI_FLOAT, MPI_SUM) called through FFI, for the same bytes.
  const src = new Float32Array(new ArrayBuffer(bytes));
  const dst = new Float32Array(new ArrayBuffer(bytes));
  let tf = NaN;
  try {
    await ffiAllreduce(src, dst);
    await comm.barrier("world");
    t0 = performance.now();
    for (let i = 0; i < iters; i++) await ffiAllreduce(src, dst);
    tf = await maxOverRanks((performance.now() - t0) / 1000 / iters);
  } catch {
    tf = NaN;
  }
  if (world.rank === 0) console.log(`${bytes} ${tc.toFixed(9)} ${Number.isNaN(tf) ? "nan" : tf.toFixed(9)}`);
  be.free(t);
}
await comm.close();
world.finalize();
