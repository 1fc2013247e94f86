// One process per rank: which communicator the trainer uses (--distributed-backend and its default),
// the checks that a multi-process world matches the layout, and the start-up rendezvous in which every
// rank agrees on the flags (model shape, layout, seed, ...) before anything is built.

import { type DistributedBackend, resolveDistributedBackend } from "../distributed/open_comm.ts";
import { detectRank, type EnvLookup, joinWorld, type RankInfo, type TcpStore } from "../distributed/mod.ts";
import { type Config, flagName } from "./config.ts";

/** This process as one rank of a multi-process world. */
export interface ProcessWorld {
  kind: Exclude<DistributedBackend, "local">;
  info: RankInfo;
  /** Rank 0's rendezvous store (barriers, NCCL ids); null in a world of one process. */
  store: TcpStore | null;
}

/** Flags that may differ between the ranks of one job (each process's own launcher rank). */
const PER_RANK_FLAGS = new Set(["localRank"]);

/** The values every rank must agree on: every flag but the per-rank ones, by flag name. */
export function agreementValues(cfg: Config): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(cfg).sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (k === "explicit" || PER_RANK_FLAGS.has(k) || v === undefined) continue;
    out[flagName(k)] = JSON.stringify(v);
  }
  return out;
}

export interface JoinTrainingOptions {
  env?: EnvLookup;
  argv?: readonly string[];
  /** Rank 0's start-up line (rank source). */
  log?: (line: string) => void;
}

/** Resolves --distributed-backend for this process. Null for `local` (every rank in this process);
 *  otherwise checks the world against the layout and joins rank 0's store (agreement included). */
export async function joinTrainingWorld(
  cfg: Config,
  device: "cpu" | "cuda",
  opts: JoinTrainingOptions = {},
): Promise<ProcessWorld | null> {
  const env = opts.env ?? ((k: string) => Deno.env.get(k));
  const info = detectRank(env, opts.argv ?? []);
  const kind = resolveDistributedBackend(cfg.distributedBackend, info.worldSize, device);
  if (kind === "local") {
    if (info.worldSize > 1) {
      throw new Error(
        `--distributed-backend local: this process is rank ${info.rank} of ${info.worldSize} (rank source ` +
          `${info.source}), but the local backend runs every rank in one process; start one process, or ` +
          `use --distributed-backend ${device === "cuda" ? "nccl" : "mpi"}`,
      );
    }
    return null;
  }
  const tp = cfg.tensorModelParallelSize, pp = cfg.pipelineModelParallelSize, dp = cfg.dataParallelSize;
  if (tp * pp * dp !== info.worldSize) {
    throw new Error(
      `--distributed-backend ${kind}: the world size must equal TP * PP * DP = ${tp} * ${pp} * ${dp} = ` +
        `${tp * pp * dp}, but ${info.worldSize} process(es) were started (rank source ${info.source}); ` +
        (info.worldSize === 1
          ? `start ${tp * pp * dp} (mpiexec -n ${tp * pp * dp}, or launch --nproc-per-node ${
            tp * pp * dp
          }), ` +
            `or run every rank in this process with --distributed-backend local`
          : `change the layout or the number of processes`),
    );
  }
  const joined = await joinWorld({
    env,
    argv: opts.argv,
    timeoutMinutes: cfg.distributedTimeoutMinutes,
    agree: { "--distributed-backend": kind, ...agreementValues(cfg) },
    log: opts.log,
  });
  return { kind, info: joined.info, store: joined.store };
}
