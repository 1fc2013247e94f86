// The one place where --distributed-backend becomes a communicator: the default for a process that is
// one rank of several (nccl on a GPU, mpi on the CPU), the in-process `local` world otherwise, and the
// communicator of this process's rank for `mpi` and `nccl`.

import type { Backend } from "../backend/backend.ts";
import type { Communicator, ParallelState } from "../parallel/types.ts";
import { MpiCommunicator, MpiWorld } from "./mpi_comm.ts";
import { createNcclCommunicator } from "./nccl_comm.ts";
import type { TcpStore } from "./store.ts";

export type DistributedBackend = "nccl" | "mpi" | "local";

/** A communicator this process owns: close() releases its library resources (MPI_Finalize). */
export type ProcessCommunicator = Communicator & {
  close(): Promise<void>;
  /** One line for the start-up log (library, version), when the communicator has one. */
  readonly description?: string;
};

/** --distributed-backend as given, or its default: a process that is one rank of a multi-process
 *  world (the rank source says world size > 1) talks through nccl on cuda and mpi on the cpu; a lone
 *  process runs every rank of the layout itself (local). */
export function resolveDistributedBackend(
  flag: DistributedBackend | undefined,
  processWorldSize: number,
  device: "cpu" | "cuda",
): DistributedBackend {
  if (flag !== undefined) return flag;
  if (processWorldSize > 1) return device === "cuda" ? "nccl" : "mpi";
  return "local";
}

export interface OpenCommunicatorOptions {
  backend: Backend;
  /** This process's rank and groups. */
  ps: ParallelState;
  /** The rendezvous store (NCCL's unique ids); null in a world of one process. */
  store: TcpStore | null;
  /** --distributed-timeout-minutes in milliseconds. */
  timeoutMs: number;
}

/** The communicator of one rank of a multi-process world (a promise: NCCL's set-up goes through the
 *  store). */
export function openCommunicator(
  kind: "nccl" | "mpi",
  opts: OpenCommunicatorOptions,
): Promise<ProcessCommunicator> {
  if (kind === "nccl") {
    return createNcclCommunicator({
      backend: opts.backend,
      ps: opts.ps,
      store: opts.store,
      timeoutMs: opts.timeoutMs,
    });
  }
  try {
    return Promise.resolve(openMpiCommunicator(opts));
  } catch (e) {
    return Promise.reject(e);
  }
}

function openMpiCommunicator(opts: OpenCommunicatorOptions): ProcessCommunicator {
  const world = MpiWorld.init();
  const { ps } = opts;
  if (world.size !== ps.worldSize || world.rank !== ps.globalRank) {
    const size = world.size;
    world.finalize();
    throw new Error(
      `--distributed-backend mpi: MPI_COMM_WORLD has ${size} process(es) but this is rank ` +
        `${ps.globalRank} of ${ps.worldSize}` +
        (size === 1
          ? `; MPI processes form one world only when started by mpiexec (mpiexec -n ${ps.worldSize} ...), ` +
            `or through the launcher, which hands mpi jobs to mpiexec`
          : ""),
    );
  }
  const comm = new MpiCommunicator(world, opts.backend, ps, { timeoutMs: opts.timeoutMs });
  let closed = false;
  return Object.assign(comm, {
    description: world.describe(),
    async close() {
      if (closed) return;
      closed = true;
      await MpiCommunicator.prototype.close.call(comm);
      world.finalize();
    },
  });
}
