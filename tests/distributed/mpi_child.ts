// One MPI rank of the communicator tests, started by `mpiexec -n N deno run -A mpi_child.ts <mode>
// <timeout-minutes> [dir]`. Modes: script (tests/distributed/comm_script.ts for every 4-rank layout;
// writes <dir>/rank<r>.json {rank, results}); kill / stall (rank 2 SIGKILLs itself / hangs before a
// world all-reduce); badtag / badshape (a mismatched p2p message); naive-sync / paired (two pipeline
// stages exchanging with unbuffered sends, one call at a time or as one batch); schedule (runSchedule and
// runForwardOnly of the toy stage, tests/helpers/toy_stage.ts, with unbuffered sends, for the
// SCHEDULE_LAYOUTS of this world size; writes <dir>/rank<r>.json {rank, results}). Errors: the one line
// on stderr, exit 1.

import { createCpuBackend } from "../../src/backend/cpu/cpu_backend.ts";
import { MpiCommunicator, MpiWorld } from "../../src/distributed/mpi_comm.ts";
import { sendBackwardRecvForward, sendForwardRecvBackward } from "../../src/distributed/p2p.ts";
import { makeParallelState } from "../../src/parallel/types.ts";
import { commScript, LAYOUTS } from "./comm_script.ts";
import { runToyRank, SCHEDULE_LAYOUTS, toyBits } from "../helpers/toy_stage.ts";

const [mode, minutes, outDir] = Deno.args;
const timeoutMs = Number(minutes ?? "1") * 60_000;
const be = createCpuBackend({ log: () => {} });
let world: MpiWorld;
try {
  world = MpiWorld.init();
} catch (e) {
  console.error((e as Error).message);
  Deno.exit(1);
}
try {
  if (mode === "script") {
    const results: Record<string, Record<string, string>> = {};
    for (const sizes of LAYOUTS) {
      const ps = makeParallelState(sizes, world.rank);
      const comm = new MpiCommunicator(world, be, ps, { timeoutMs });
      results[`${sizes.tp},${sizes.pp},${sizes.dp}`] = await commScript(comm, ps, be);
      await comm.close();
    }
    // A file per rank: mpiexec may interleave long stdout lines of different ranks.
    await Deno.writeTextFile(
      `${outDir}/rank${world.rank}.json`,
      JSON.stringify({ rank: world.rank, results }),
    );
  } else if (mode === "schedule") {
    const results: Record<string, string> = {};
    for (const l of SCHEDULE_LAYOUTS[world.size]) {
      const ps = makeParallelState(l, world.rank);
      const comm = new MpiCommunicator(world, be, ps, { timeoutMs, synchronousSends: true });
      results[JSON.stringify(l)] = toyBits(await runToyRank(be, ps, comm, l.m));
      await comm.close();
    }
    await Deno.writeTextFile(
      `${outDir}/rank${world.rank}.json`,
      JSON.stringify({ rank: world.rank, results }),
    );
  } else if (mode === "kill" || mode === "stall") {
    const ps = makeParallelState({ tp: 1, pp: 1, dp: world.size }, world.rank);
    const comm = new MpiCommunicator(world, be, ps, { timeoutMs });
    await comm.barrier("world");
    if (world.rank === 2 && mode === "kill") Deno.kill(Deno.pid, "SIGKILL");
    // A hung rank: never joins, outlives the others' timeout, then is stopped by mpiexec.
    if (world.rank === 2) await new Promise((r) => setTimeout(r, timeoutMs * 4));
    const t = be.fromHost("f32", [1000], new Float32Array(1000).fill(1));
    await comm.allReduce(t, "sum", "world");
    console.log("unexpected: all-reduce completed");
  } else if (mode === "badtag" || mode === "badshape") {
    // Rank 0 sends micro-batch 1 where rank 1 expects micro-batch 0 (or a differently shaped tensor).
    const ps = makeParallelState({ tp: 1, pp: 2, dp: 1 }, world.rank);
    const comm = new MpiCommunicator(world, be, ps, { timeoutMs });
    if (world.rank === 0) {
      await comm.send(be.zeros("f32", [2, 3]), 1, "fwd:c0:m1");
      await comm.close();
    } else {
      await comm.recv(
        be.zeros("f32", mode === "badshape" ? [3, 2] : [2, 3]),
        0,
        mode === "badshape" ? "fwd:c0:m1" : "fwd:c0:m0",
      );
    }
  } else if (mode === "naive-sync" || mode === "paired") {
    // 1F1B with p=2 at the first steady-state step: stage 0 sends forward micro-batch 1 and needs the
    // gradient of micro-batch 0; stage 1 sends that gradient and needs micro-batch 1.
    const ps = makeParallelState({ tp: 1, pp: 2, dp: 1 }, world.rank);
    const comm = new MpiCommunicator(world, be, ps, { timeoutMs, synchronousSends: true });
    const mine = be.fromHost("f32", [4], [world.rank + 1, 2, 3, 4]);
    const got = be.zeros("f32", [4]);
    if (mode === "naive-sync") {
      await comm.send(mine, 1 - world.rank);
      await comm.recv(got, 1 - world.rank);
    } else if (world.rank === 0) {
      await sendForwardRecvBackward(comm, mine, got, 1, { fwd: "fwd:m1", bwd: "bwd:m0" });
    } else {
      await sendBackwardRecvForward(comm, mine, got, 0, { bwd: "bwd:m0", fwd: "fwd:m1" });
    }
    console.log(JSON.stringify({ rank: world.rank, got: [...be.toF64(got)] }));
    await comm.close();
  }
  world.finalize();
} catch (e) {
  console.error((e as Error).message);
  Deno.exit(1);
}
