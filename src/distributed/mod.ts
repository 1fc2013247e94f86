// Joining a multi-process world: pick the rank source (printed once by rank 0), connect to rank 0's
// rendezvous store, and check that every rank agrees on the given flag values. The trainer's entry point
// for one process per rank.

import { describeRank, detectRank, type EnvLookup, type RankInfo } from "./rank_source.ts";
import { checkAgreement, TcpStore } from "./store.ts";

export * from "./rank_source.ts";
export * from "./store.ts";
export * from "./p2p.ts";
export { MpiCommunicator, type MpiCommunicatorOptions, MpiError, MpiWorld } from "./mpi_comm.ts";
export {
  createNcclCommunicator,
  NcclCommunicator,
  type NcclCommunicatorOptions,
  NcclError,
  type NcclStore,
} from "./nccl_comm.ts";

export interface JoinOptions {
  env?: EnvLookup;
  argv?: readonly string[];
  /** --distributed-timeout-minutes (default 10). */
  timeoutMinutes?: number;
  /** Values every rank must agree on, e.g. {"--num-layers": "24", "--seed": "1234"}. */
  agree?: Readonly<Record<string, string>>;
  /** Where rank 0's one start-up line goes (default console.log). */
  log?: (line: string) => void;
}

export interface Joined {
  info: RankInfo;
  /** The store, or null in a world of one process. Close it at exit. */
  store: TcpStore | null;
}

export async function joinWorld(opts: JoinOptions = {}): Promise<Joined> {
  const env = opts.env ?? ((k: string) => Deno.env.get(k));
  const info = detectRank(env, opts.argv ?? []);
  if (info.rank === 0) (opts.log ?? console.log)(describeRank(info));
  if (info.worldSize === 1) return { info, store: null };
  const store = await TcpStore.connect({
    host: info.masterAddr,
    port: info.masterPort,
    rank: info.rank,
    worldSize: info.worldSize,
    timeoutMs: (opts.timeoutMinutes ?? 10) * 60_000,
  });
  try {
    await checkAgreement(store, { "world size": String(info.worldSize), ...(opts.agree ?? {}) });
  } catch (e) {
    store.abandon();
    throw e;
  }
  return { info, store };
}
