// Where this process's rank comes from. One process per rank can be started by the launcher or
// torchrun (RANK, WORLD_SIZE, ...), by SLURM's srun (SLURM_PROCID, ...), by MPICH's mpiexec (PMI_RANK,
// PMI_SIZE) or Open MPI's (OMPI_COMM_WORLD_*), or by the old torch.distributed.launch, which passes
// `--local_rank` and sets the rest in the environment. Pure functions over an env lookup so they can be
// tested with fixtures; malformed values are one error line naming the variable.

export type RankSourceName = "torchrun" | "openmpi" | "mpich" | "slurm" | "local_rank" | "single";

export interface RankInfo {
  /** Which launcher the values came from. */
  readonly source: RankSourceName;
  readonly rank: number;
  readonly worldSize: number;
  /** Rank within this node (picks the GPU). */
  readonly localRank: number;
  /** Ranks on this node, when the source says so. */
  readonly localWorldSize: number | undefined;
  /** Host and port of rank 0's rendezvous store. */
  readonly masterAddr: string;
  readonly masterPort: number;
}

/** torchrun's default port; also used when a source does not give one. */
export const DEFAULT_MASTER_PORT = 29500;

export type EnvLookup = (name: string) => string | undefined;

export class RankSourceError extends Error {}

function int(source: string, name: string, v: string, min = 0): number {
  if (!/^\s*[0-9]+\s*$/.test(v)) {
    throw new RankSourceError(
      `rank source ${source}: ${name}=${JSON.stringify(v)} is not a non-negative integer`,
    );
  }
  const n = Number(v.trim());
  if (!Number.isSafeInteger(n) || n < min) {
    throw new RankSourceError(`rank source ${source}: ${name}=${JSON.stringify(v)} must be at least ${min}`);
  }
  return n;
}

function port(source: string, name: string, v: string | undefined): number {
  if (v === undefined || v === "") return DEFAULT_MASTER_PORT;
  const p = int(source, name, v, 1);
  if (p > 65535) {
    throw new RankSourceError(`rank source ${source}: ${name}=${v} is not a TCP port (1..65535)`);
  }
  return p;
}

function need(source: string, env: EnvLookup, name: string, why: string): string {
  const v = env(name);
  if (v === undefined || v === "") {
    throw new RankSourceError(`rank source ${source}: ${name} is not set (${why})`);
  }
  return v;
}

/** The first host of a SLURM node list such as `node[01-04,07],gpu5` or `rack[1-2]-n[3,5]`: every
 *  bracket group is replaced by its first entry (zero padding kept). */
export function firstSlurmHost(nodelist: string): string {
  const bad = (why: string) =>
    new RankSourceError(`rank source slurm: SLURM_JOB_NODELIST=${JSON.stringify(nodelist)}: ${why}`);
  if (nodelist.trim() === "") throw bad("empty node list");
  // The first comma outside brackets ends the first entry.
  let depth = 0;
  let end = nodelist.length;
  for (let i = 0; i < nodelist.length; i++) {
    const c = nodelist[i];
    if (c === "[") {
      if (depth++ > 0) throw bad("nested brackets");
    } else if (c === "]") {
      if (--depth < 0) throw bad("unbalanced ']'");
    } else if (c === "," && depth === 0) {
      end = i;
      break;
    }
  }
  if (depth !== 0 && end === nodelist.length) throw bad("unbalanced '['");
  const first = nodelist.slice(0, end).trim();
  const host = first.replace(/\[([^\]]*)\]/g, (_, body: string) => {
    const item = body.split(",")[0].trim();
    const m = /^([0-9]+)(?:-([0-9]+))?$/.exec(item);
    if (!m) throw bad(`bracket range [${body}] is not like [01-04,07]`);
    if (m[2] !== undefined && Number(m[2]) < Number(m[1])) throw bad(`range ${item} runs backwards`);
    return m[1];
  });
  if (host === "" || /[\[\]\s]/.test(host)) throw bad("no host name in the first entry");
  return host;
}

/** The value of `--local_rank N` / `--local_rank=N` (or `--local-rank`), or undefined. */
export function localRankFlag(argv: readonly string[]): number | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const m = /^--local[_-]rank(?:=(.*))?$/.exec(a);
    if (!m) continue;
    const v = m[1] ?? argv[i + 1];
    if (v === undefined) throw new RankSourceError("rank source local_rank: --local_rank expects an integer");
    return int("local_rank", "--local_rank", v);
  }
  return undefined;
}

function checkRank(source: string, rankName: string, rank: number, sizeName: string, size: number): void {
  if (size < 1) throw new RankSourceError(`rank source ${source}: ${sizeName}=${size} must be at least 1`);
  if (rank >= size) {
    throw new RankSourceError(`rank source ${source}: ${rankName}=${rank} is not below ${sizeName}=${size}`);
  }
}

/** Picks the rank source, most specific first: torchrun's variables (also set by our launcher), Open
 *  MPI, MPICH, SLURM, then a bare `--local_rank`; with none of them, a single process (rank 0 of 1).
 *  MPI comes before SLURM because `mpiexec` inside an allocation sees both, and MPI's are the ones
 *  describing this process. */
export function detectRank(env: EnvLookup, argv: readonly string[] = []): RankInfo {
  const masterPort = (src: string) => port(src, "MASTER_PORT", env("MASTER_PORT"));
  const masterAddr = () => env("MASTER_ADDR") || "127.0.0.1";
  if (env("RANK") !== undefined || env("WORLD_SIZE") !== undefined) {
    const s = "torchrun";
    const rank = int(s, "RANK", need(s, env, "RANK", "WORLD_SIZE is"));
    const worldSize = int(s, "WORLD_SIZE", need(s, env, "WORLD_SIZE", "RANK is"));
    checkRank(s, "RANK", rank, "WORLD_SIZE", worldSize);
    const flag = localRankFlag(argv);
    const lr = env("LOCAL_RANK");
    const localRank = lr !== undefined ? int(s, "LOCAL_RANK", lr) : flag ?? 0;
    const lws = env("LOCAL_WORLD_SIZE");
    const localWorldSize = lws !== undefined ? int(s, "LOCAL_WORLD_SIZE", lws, 1) : undefined;
    if (localWorldSize !== undefined) {
      checkRank(s, "LOCAL_RANK", localRank, "LOCAL_WORLD_SIZE", localWorldSize);
    }
    // torchrun always sets both; a missing master with world size > 1 would hang later, so say it now.
    if (worldSize > 1) need(s, env, "MASTER_ADDR", "needed with WORLD_SIZE > 1");
    return {
      source: s,
      rank,
      worldSize,
      localRank,
      localWorldSize,
      masterAddr: masterAddr(),
      masterPort: masterPort(s),
    };
  }
  if (env("OMPI_COMM_WORLD_RANK") !== undefined) {
    const s = "openmpi";
    const rank = int(s, "OMPI_COMM_WORLD_RANK", env("OMPI_COMM_WORLD_RANK")!);
    const worldSize = int(s, "OMPI_COMM_WORLD_SIZE", need(s, env, "OMPI_COMM_WORLD_SIZE", "RANK is set"));
    checkRank(s, "OMPI_COMM_WORLD_RANK", rank, "OMPI_COMM_WORLD_SIZE", worldSize);
    const lr = env("OMPI_COMM_WORLD_LOCAL_RANK");
    const lws = env("OMPI_COMM_WORLD_LOCAL_SIZE");
    return {
      source: s,
      rank,
      worldSize,
      localRank: lr !== undefined ? int(s, "OMPI_COMM_WORLD_LOCAL_RANK", lr) : 0,
      localWorldSize: lws !== undefined ? int(s, "OMPI_COMM_WORLD_LOCAL_SIZE", lws, 1) : undefined,
      masterAddr: masterAddr(),
      masterPort: masterPort(s),
    };
  }
  if (env("PMI_RANK") !== undefined) {
    const s = "mpich";
    const rank = int(s, "PMI_RANK", env("PMI_RANK")!);
    const worldSize = int(s, "PMI_SIZE", need(s, env, "PMI_SIZE", "PMI_RANK is set"));
    checkRank(s, "PMI_RANK", rank, "PMI_SIZE", worldSize);
    // Hydra exports MPI_LOCALRANKID / MPI_LOCALNRANKS for the node-local position.
    const lr = env("MPI_LOCALRANKID");
    const lws = env("MPI_LOCALNRANKS");
    return {
      source: s,
      rank,
      worldSize,
      localRank: lr !== undefined ? int(s, "MPI_LOCALRANKID", lr) : 0,
      localWorldSize: lws !== undefined ? int(s, "MPI_LOCALNRANKS", lws, 1) : undefined,
      masterAddr: masterAddr(),
      masterPort: masterPort(s),
    };
  }
  if (env("SLURM_PROCID") !== undefined) {
    const s = "slurm";
    const rank = int(s, "SLURM_PROCID", env("SLURM_PROCID")!);
    const worldSize = int(s, "SLURM_NTASKS", need(s, env, "SLURM_NTASKS", "SLURM_PROCID is set"));
    checkRank(s, "SLURM_PROCID", rank, "SLURM_NTASKS", worldSize);
    const lr = env("SLURM_LOCALID");
    const nodelist = env("SLURM_JOB_NODELIST") ?? env("SLURM_NODELIST");
    const addr = env("MASTER_ADDR") ||
      (nodelist !== undefined
        ? firstSlurmHost(nodelist)
        : need(s, env, "SLURM_JOB_NODELIST", "names the master"));
    const tpn = env("SLURM_NTASKS_PER_NODE");
    return {
      source: s,
      rank,
      worldSize,
      localRank: lr !== undefined ? int(s, "SLURM_LOCALID", lr) : 0,
      localWorldSize: tpn !== undefined && /^[0-9]+$/.test(tpn) ? Number(tpn) : undefined,
      masterAddr: addr,
      masterPort: masterPort(s),
    };
  }
  const flag = localRankFlag(argv);
  if (flag !== undefined) {
    // torch.distributed.launch without torchrun's variables: a one-process world on this GPU.
    return {
      source: "local_rank",
      rank: 0,
      worldSize: 1,
      localRank: flag,
      localWorldSize: undefined,
      masterAddr: masterAddr(),
      masterPort: masterPort("local_rank"),
    };
  }
  return {
    source: "single",
    rank: 0,
    worldSize: 1,
    localRank: 0,
    localWorldSize: 1,
    masterAddr: masterAddr(),
    masterPort: masterPort("single"),
  };
}

/** The line rank 0 prints once at start-up. */
export function describeRank(info: RankInfo): string {
  return `distributed: rank source ${info.source}: world size ${info.worldSize}, master ${info.masterAddr}:${info.masterPort}`;
}
