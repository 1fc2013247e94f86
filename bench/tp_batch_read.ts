// How the TP ranks of one model replica get their micro-batch, one process per rank (issue 9): (a) every
// TP rank reads the same samples itself (what the trainer does), or (b) TP rank 0 reads them and
// broadcasts the raw token ids over the tensor group (Megatron's broadcast_data), every rank then building
// tokens / labels / loss mask. GPT samples of seq 1024 from an in-memory corpus of 20k documents (as
// bench/gpt_dataset_getitem.bench.ts), micro-batch 4, TP = the number of processes, MPI communicator.
//
//   deno run -A bench/tp_batch_read.ts [--np 4] [--micro 4] [--iters 300] [--mpiexec mpiexec.mpich]
//
// Prints per variant the mean microseconds per micro-batch (slowest rank; ranks in step by a barrier).

import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { GPTDataset, type TokenDataset } from "../src/data/gpt_dataset.ts";
import { RandomState } from "../src/data/numpy_random.ts";
import { MpiCommunicator, MpiWorld } from "../src/distributed/mpi_comm.ts";
import { makeParallelState } from "../src/parallel/types.ts";
import { gptTask } from "../src/training/gpt_task.ts";
import type { TaskContext } from "../src/training/task.ts";

const args = Deno.args;
const flag = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : dflt;
};
const SEQ = 1024;
const micro = Number(flag("--micro", "4"));
const iters = Number(flag("--iters", "300"));
const inMpi = Deno.env.get("PMI_RANK") !== undefined || Deno.env.get("OMPI_COMM_WORLD_RANK") !== undefined;

if (!inMpi) {
  // Driver: start the ranks under mpiexec.
  const np = flag("--np", "4");
  const mpiexec = flag("--mpiexec", "mpiexec.mpich");
  const extra = mpiexec.includes("openmpi")
    ? ["--oversubscribe", ...(Deno.uid() === 0 ? ["--allow-run-as-root"] : [])]
    : [];
  const o = await new Deno.Command(mpiexec, {
    args: [...extra, "-n", np, Deno.execPath(), "run", "-A", new URL(import.meta.url).pathname, ...args],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  Deno.exit(o.code);
}

const NUM_DOCS = 20_000;
const rng = new RandomState(3);
const sizes = new Int32Array(NUM_DOCS);
for (let i = 0; i < NUM_DOCS; i++) sizes[i] = 1 + rng.randint(999);
const pointers = new Float64Array(NUM_DOCS);
let total = 0;
for (let i = 0; i < NUM_DOCS; i++) {
  pointers[i] = total;
  total += sizes[i];
}
const tokens = new Uint16Array(total);
for (let i = 0; i < total; i++) tokens[i] = (i * 2654435761) % 50257;
const indexed: TokenDataset = {
  sizes,
  get: (i, offset = 0, length) => {
    const start = pointers[i] + offset;
    return tokens.subarray(start, start + (length ?? sizes[i] - offset));
  },
};
const ds = new GPTDataset({
  name: "train",
  dataPrefix: "bench",
  documents: Int32Array.from({ length: NUM_DOCS }, (_, i) => i),
  indexed,
  numSamples: micro * iters,
  seqLength: SEQ,
  seed: 1234,
  cache: false,
  vocabSize: 50304,
});
const ctx = {
  cfg: { seqLength: SEQ, eodMaskLoss: false },
  tokenizer: { eod: 50256 },
} as unknown as TaskContext;

const be = createCpuBackend({ log: () => {} });
const world = MpiWorld.init();
const ps = makeParallelState({ tp: world.size, pp: 1, dp: 1 }, world.rank);
const comm = new MpiCommunicator(world, be, ps, { timeoutMs: 60_000 });

async function timed(fn: (mb: number) => Promise<void> | void): Promise<number> {
  let t = 0;
  for (let mb = 0; mb < iters; mb++) {
    await comm.barrier("tensor");
    const t0 = performance.now();
    await fn(mb);
    t += performance.now() - t0;
  }
  const x = be.fromHost("f64", [1], [t / iters * 1000]);
  await comm.allReduce(x, "max", "tensor");
  const us = be.toF64(x)[0];
  be.free(x);
  return us;
}

const read = (mb: number) =>
  Array.from({ length: micro }, (_, i) => ds.getItem(mb * micro + i) as Int32Array);
const every = await timed((mb) => {
  gptTask.makeBatch(ctx, read(mb));
});
const ids = be.zeros("i32", [micro, SEQ + 1]);
const host = ids.storage as unknown as { data: Int32Array };
const bcast = await timed(async (mb) => {
  if (ps.tpRank === 0) read(mb).forEach((s, i) => host.data.set(s, i * (SEQ + 1)));
  await comm.broadcast(ids, 0, "tensor");
  const d = host.data;
  gptTask.makeBatch(
    ctx,
    Array.from({ length: micro }, (_, i) => d.subarray(i * (SEQ + 1), (i + 1) * (SEQ + 1))),
  );
});
if (world.rank === 0) {
  console.log(
    `${world.describe()}; TP ${world.size}, micro-batch ${micro} x seq ${SEQ}, ${iters} micro-batches`,
  );
  console.log(`every TP rank reads:            ${every.toFixed(1)} us per micro-batch`);
  console.log(`TP rank 0 reads + broadcasts:   ${bcast.toFixed(1)} us per micro-batch`);
  console.log(
    `faster: ${every <= bcast ? "every rank reads" : "broadcast"} (${
      (Math.max(every, bcast) / Math.min(every, bcast)).toFixed(2)
    }x)`,
  );
}
be.free(ids);
await comm.close();
world.finalize();
