// `megatron launch` / `deno task launch`: torchrun's job for one node. Starts --nproc-per-node children
// with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT, GROUP_RANK), prefixes their output with the rank (or shows only rank 0's), forwards
// SIGINT/SIGTERM, and when one child fails stops the others and exits with that child's code.
//
//   deno task launch [--nproc-per-node N] [--nnodes K --node-rank R --master-addr HOST --master-port P]
//                    [--log-rank 0|all] -- <task> <flags>
//
// <task> is a megatron command (pretrain-gpt, or its deno task name pretrain:gpt), a .ts/.js file run
// with `deno run -A`, or any other program. Exit codes: the failing child's code (128 + signal number
// when it was killed by a signal), 2 for bad usage.
//
// A pretraining command that will use the mpi backend (--distributed-backend mpi, or no such flag and
// the CPU: --device cpu, or --device auto without CUDA) is handed to mpiexec: MPI processes form one
// world only when started by it (MPI_Init in a plain child makes a world of one). The launcher then
// runs `mpiexec -n N <child>` with MASTER_ADDR/MASTER_PORT for the rendezvous store, turns mpiexec's
// per-rank output tags into the same `[rankN]: ` prefixes (or shows only rank 0's), forwards signals to
// mpiexec (which stops its ranks) and exits with mpiexec's code, which is non-zero when a rank fails.

export const LAUNCH_USAGE =
  "usage: launch [--nproc-per-node N] [--nnodes K --node-rank R --master-addr HOST --master-port P] " +
  "[--log-rank 0|all] -- <task> <flags>";

export interface LaunchConfig {
  nprocPerNode: number;
  nnodes: number;
  nodeRank: number;
  masterAddr: string;
  masterPort: number;
  logRank: "0" | "all";
  /** Seconds between SIGTERM and SIGKILL when stopping the other children. */
  killGraceSeconds: number;
  command: string[];
}

export class UsageError extends Error {}

const CLI_COMMANDS = new Set(["pretrain-gpt", "pretrain-bert", "preprocess"]);
const PRETRAIN_COMMANDS = new Set(["pretrain-gpt", "pretrain-bert", "pretrain-t5"]);

function posInt(flag: string, v: string | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (v === undefined || !/^[0-9]+$/.test(v) || Number(v) < min || Number(v) > max) {
    throw new UsageError(
      `launch: ${flag} expects an integer ${
        max < Number.MAX_SAFE_INTEGER ? `in ${min}..${max}` : `>= ${min}`
      }, got ${v === undefined ? "nothing" : JSON.stringify(v)}`,
    );
  }
  return Number(v);
}

/** Parses the launcher's flags (torchrun's spellings with - or _), everything after `--` is the task. */
export function parseLaunchArgs(argv: readonly string[]): LaunchConfig {
  const sep = argv.indexOf("--");
  const own = sep < 0 ? argv : argv.slice(0, sep);
  const command = sep < 0 ? [] : argv.slice(sep + 1);
  const vals: Record<string, string> = {};
  for (let i = 0; i < own.length; i++) {
    const m = /^--([a-z_-]+)(?:=(.*))?$/.exec(own[i]);
    if (!m) throw new UsageError(`launch: unexpected argument ${JSON.stringify(own[i])}; ${LAUNCH_USAGE}`);
    const name = m[1].replaceAll("_", "-");
    const known = [
      "nproc-per-node",
      "nnodes",
      "node-rank",
      "master-addr",
      "master-port",
      "log-rank",
      "kill-grace",
    ];
    if (!known.includes(name)) throw new UsageError(`launch: unknown flag --${m[1]}; ${LAUNCH_USAGE}`);
    const v = m[2] ?? own[++i];
    if (v === undefined) throw new UsageError(`launch: --${m[1]} expects a value`);
    vals[name] = v;
  }
  if (command.length === 0) throw new UsageError(`launch: no task given after --; ${LAUNCH_USAGE}`);
  const nnodes = posInt("--nnodes", vals["nnodes"] ?? "1", 1);
  const cfg: LaunchConfig = {
    nprocPerNode: posInt("--nproc-per-node", vals["nproc-per-node"] ?? "1", 1),
    nnodes,
    nodeRank: posInt("--node-rank", vals["node-rank"] ?? "0", 0, nnodes - 1),
    masterAddr: vals["master-addr"] ?? "127.0.0.1",
    masterPort: posInt("--master-port", vals["master-port"] ?? "29500", 1, 65535),
    logRank: "all",
    killGraceSeconds: posInt("--kill-grace", vals["kill-grace"] ?? "5", 0),
    command,
  };
  const lr = vals["log-rank"] ?? "all";
  if (lr !== "0" && lr !== "all") {
    throw new UsageError(`launch: --log-rank expects 0 or all, got ${JSON.stringify(lr)}`);
  }
  cfg.logRank = lr;
  if (nnodes > 1 && vals["master-addr"] === undefined) {
    throw new UsageError("launch: --nnodes > 1 needs --master-addr (the host of node rank 0)");
  }
  return cfg;
}

/** The program and arguments a child runs. */
export function childCommand(
  command: readonly string[],
  cliUrl: URL = new URL("../cli.ts", import.meta.url),
): string[] {
  const [task, ...flags] = command;
  const cli = cliUrl.protocol === "file:" ? cliUrl.pathname : cliUrl.href;
  const asCli = task.replaceAll(":", "-");
  if (CLI_COMMANDS.has(asCli)) return [Deno.execPath(), "run", "-A", cli, asCli, ...flags];
  if (/\.(ts|tsx|js|mjs)$/.test(task)) return [Deno.execPath(), "run", "-A", task, ...flags];
  return [task, ...flags];
}

/** torchrun's environment for local rank `local`. */
export function childEnv(cfg: LaunchConfig, local: number): Record<string, string> {
  return {
    RANK: String(cfg.nodeRank * cfg.nprocPerNode + local),
    LOCAL_RANK: String(local),
    WORLD_SIZE: String(cfg.nnodes * cfg.nprocPerNode),
    LOCAL_WORLD_SIZE: String(cfg.nprocPerNode),
    GROUP_RANK: String(cfg.nodeRank),
    MASTER_ADDR: cfg.masterAddr,
    MASTER_PORT: String(cfg.masterPort),
  };
}

/** The value of `--flag v` / `--flag=v` in a command's flags (the last one wins), or undefined. */
function flagValue(flags: readonly string[], flag: string): string | undefined {
  let v: string | undefined;
  for (let i = 0; i < flags.length; i++) {
    if (flags[i] === flag) v = flags[i + 1];
    else if (flags[i].startsWith(`${flag}=`)) v = flags[i].slice(flag.length + 1);
  }
  return v;
}

/** Will this command train with the mpi backend? `cudaUsable` is asked only for --device auto. */
export function usesMpi(command: readonly string[], cudaUsable: () => boolean): boolean {
  const [task, ...flags] = command;
  if (!PRETRAIN_COMMANDS.has(task.replaceAll(":", "-"))) return false;
  const backend = flagValue(flags, "--distributed-backend");
  if (backend !== undefined) return backend === "mpi";
  const device = flagValue(flags, "--device") ?? "auto";
  return device === "cpu" || (device === "auto" && !cudaUsable());
}

export type MpiexecFlavor = "openmpi" | "mpich";

/** mpiexec's arguments for N ranks of `child` on this node, each rank's output tagged with its rank. */
export function mpiexecArgs(
  flavor: MpiexecFlavor,
  n: number,
  child: readonly string[],
  isRoot = Deno.uid() === 0,
): string[] {
  return flavor === "openmpi"
    ? [
      "--tag-output",
      "--oversubscribe", // more ranks than cores is fine for a CPU job (the tests' 4 on 2 cores)
      ...(isRoot ? ["--allow-run-as-root"] : []),
      ...["-x", "MASTER_ADDR", "-x", "MASTER_PORT"],
      ...["-n", String(n)],
      ...child,
    ]
    : ["-prepend-rank", "-n", String(n), ...child];
}

/** Splits a line of tagged mpiexec output into its rank and text (null: mpiexec's own line). Open MPI
 *  --tag-output: `[1,2]<stdout>:text`; MPICH -prepend-rank: `[2] text`. */
export function untagLine(flavor: MpiexecFlavor, line: string): { rank: number; text: string } | null {
  const m = flavor === "openmpi"
    ? /^\[\d+,(\d+)\]<std(?:out|err)>:(.*)$/.exec(line)
    : /^\[(\d+)\] ?(.*)$/.exec(line);
  return m ? { rank: Number(m[1]), text: m[2] } : null;
}

/** The mpiexec to run (MEGATRON_DENO_MPIEXEC, else `mpiexec` on PATH) and its flavor. */
function findMpiexec(): { path: string; flavor: MpiexecFlavor } {
  const path = Deno.env.get("MEGATRON_DENO_MPIEXEC") || "mpiexec";
  let text: string;
  try {
    const o = new Deno.Command(path, { args: ["--version"], stdout: "piped", stderr: "piped" }).outputSync();
    text = new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr);
  } catch (e) {
    throw new UsageError(
      `launch: the mpi backend needs mpiexec, and ${JSON.stringify(path)} cannot be run ` +
        `(${
          (e as Error).message.split("\n")[0]
        }); install MPICH or Open MPI (apt-get install mpich), or set ` +
        `MEGATRON_DENO_MPIEXEC to its mpiexec`,
    );
  }
  if (/Open MPI|OpenRTE/i.test(text)) return { path, flavor: "openmpi" };
  if (/HYDRA|MPICH/i.test(text)) return { path, flavor: "mpich" };
  throw new UsageError(
    `launch: ${path} --version names neither Open MPI nor MPICH (Hydra); set MEGATRON_DENO_MPIEXEC to ` +
      `one of theirs`,
  );
}

const SIGNO: Record<string, number> = { SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };
const enc = new TextEncoder();

/** Copies a child's stream line by line, prefixed, into out (or into a tail buffer when hidden). */
async function pump(
  stream: ReadableStream<Uint8Array>,
  out: { writeSync(b: Uint8Array): number },
  prefix: string,
  show: boolean,
  tail: string[],
): Promise<void> {
  const dec = new TextDecoder();
  let buf = "";
  const emit = (line: string) => {
    if (show) writeAll(out, enc.encode(prefix + line + "\n"));
    else {
      tail.push(line);
      if (tail.length > 20) tail.shift();
    }
  };
  for await (const chunk of stream) {
    buf += dec.decode(chunk, { stream: true });
    let i: number;
    while ((i = buf.indexOf("\n")) >= 0) {
      emit(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  }
  if (buf.length > 0) emit(buf);
}

function writeAll(out: { writeSync(b: Uint8Array): number }, b: Uint8Array): void {
  let off = 0;
  while (off < b.length) off += out.writeSync(b.subarray(off));
}

/** One node's ranks as one mpiexec job (see the header); resolves with mpiexec's exit code. */
async function launchMpiexec(cfg: LaunchConfig, log: (line: string) => void): Promise<number> {
  if (cfg.nnodes > 1) {
    throw new UsageError(
      "launch: --nnodes > 1 with the mpi backend: start the whole job with mpiexec across the nodes " +
        "(a hostfile), without the launcher",
    );
  }
  const { path, flavor } = findMpiexec();
  const cmd = childCommand(cfg.command);
  let proc: Deno.ChildProcess;
  try {
    proc = new Deno.Command(path, {
      args: mpiexecArgs(flavor, cfg.nprocPerNode, cmd),
      env: { MASTER_ADDR: cfg.masterAddr, MASTER_PORT: String(cfg.masterPort) },
      // Its own process group: a terminal's Ctrl-C (sent to the whole foreground group) would make mpiexec
      // kill the job; the launcher forwards it to the ranks instead (see onSignal).
      detached: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    log(`launch: cannot start ${JSON.stringify(path)}: ${(e as Error).message.split("\n")[0]}`);
    return 1;
  }
  log(`launch: the mpi backend: ${cfg.nprocPerNode} rank(s) through ${path} (${flavor})`);
  const tails = new Map<number, string[]>();
  const route = (out: { writeSync(b: Uint8Array): number }, isErr: boolean) => (line: string) => {
    const t = untagLine(flavor, line);
    if (t === null) return writeAll(out, enc.encode(line + "\n")); // mpiexec's own lines
    // Open MPI tags stderr lines too; MPICH's go to mpiexec's stderr.
    if (cfg.logRank === "all") return writeAll(out, enc.encode(`[rank${t.rank}]: ${t.text}\n`));
    if (t.rank === 0) return writeAll(out, enc.encode(t.text + "\n"));
    if (isErr || /<stderr>/.test(line)) {
      const tail = tails.get(t.rank) ?? [];
      tail.push(t.text);
      if (tail.length > 20) tail.shift();
      tails.set(t.rank, tail);
    }
  };
  let signalled: Deno.Signal | null = null;
  const onSignal = (sig: Deno.Signal) => () => {
    if (signalled) return trySignal(proc, "SIGKILL"); // a second signal: mpiexec kills the job
    signalled = sig;
    // To the ranks themselves, as torchrun: mpiexec would turn SIGTERM/SIGINT into killing the job, and
    // --exit-signal-handler needs the signal to save and stop. mpiexec only when no rank is found.
    const ranks = mpiRankPids(proc.pid);
    log(
      `launch: got ${sig}; forwarding it to ${
        ranks.length > 0 ? `${ranks.length} rank(s)` : "mpiexec (no rank process found)"
      }`,
    );
    if (ranks.length === 0) return trySignal(proc, sig);
    for (const { pid } of ranks) {
      try {
        Deno.kill(pid, sig);
      } catch {
        // already exited
      }
    }
  };
  const handlers: [Deno.Signal, () => void][] = [["SIGINT", onSignal("SIGINT")], [
    "SIGTERM",
    onSignal("SIGTERM"),
  ]];
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);
  const watch = new RankWatch(proc.pid, cfg.nprocPerNode);
  let st: Deno.CommandStatus;
  try {
    await Promise.all([
      lines(proc.stdout, route(Deno.stdout, false)),
      lines(proc.stderr, route(Deno.stderr, true)),
    ]);
    st = await proc.status;
  } finally {
    for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
    watch.stop();
  }
  const code = st.signal ? 128 + (SIGNO[st.signal] ?? 0) : st.code;
  if (code !== 0 && !signalled) {
    for (const [r, tail] of [...tails].sort(([a], [b]) => a - b)) {
      for (const l of tail) log(`[rank${r}]: ${l}`);
    }
    const first = watch.firstEnded;
    log(
      `launch: mpiexec ${st.signal ? `was killed by ${st.signal}` : `exited with code ${st.code}`} (` +
        (first && first.length === 1
          ? `rank ${first[0].rank} (pid ${first[0].pid}) ended first: it failed or was killed`
          : first
          ? `ranks ${first.map((f) => f.rank).join(", ")} ended together`
          : "a rank failed") +
        ")",
    );
  }
  return code;
}

/** Which rank of an mpiexec job ended first: mpiexec stops the others tens of milliseconds (MPICH) to a
 *  second (Open MPI) later, and MPICH's message names no rank. Finds the rank processes under mpiexec,
 *  then polls their /proc entries every 10 ms (a zombie counts as ended). Linux only; elsewhere nothing
 *  is found and nothing is named. */
class RankWatch {
  /** The ranks seen gone at the first poll that saw any (one, unless they ended within 10 ms). */
  firstEnded: { rank: number; pid: number }[] | null = null;
  private ranks: { rank: number; pid: number }[] = [];
  private readonly timer: ReturnType<typeof setInterval>;
  private polls = 0;

  constructor(private readonly root: number, private readonly n: number) {
    this.timer = setInterval(() => this.poll(), 10);
  }

  private poll(): void {
    if (this.ranks.length < this.n) {
      // Ranks start within the first seconds; look for them every 200 ms.
      if (this.polls++ % 20 === 0) this.ranks = mpiRankPids(this.root);
      return;
    }
    const gone = this.ranks.filter(({ pid }) => {
      try {
        return /\) Z /.test(Deno.readTextFileSync(`/proc/${pid}/stat`));
      } catch {
        return true;
      }
    });
    if (gone.length > 0) {
      this.firstEnded = gone;
      this.stop();
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

/** The MPI rank processes among `root`'s descendants (those with MPICH's or Open MPI's rank variable),
 *  from Linux /proc; none where it is missing. */
export function mpiRankPids(root: number): { rank: number; pid: number }[] {
  const out: { rank: number; pid: number }[] = [];
  const seen = new Set<number>();
  const stack = [root];
  while (stack.length > 0) {
    const p = stack.pop()!;
    let tasks: string[] = [];
    try {
      tasks = [...Deno.readDirSync(`/proc/${p}/task`)].map((e) => e.name);
    } catch {
      continue; // exited, or no procfs
    }
    for (const t of tasks) {
      let kids: number[] = [];
      try {
        kids = Deno.readTextFileSync(`/proc/${p}/task/${t}/children`).trim().split(/\s+/).filter((x) => x)
          .map(Number);
      } catch {
        // the thread exited
      }
      for (const k of kids) {
        if (seen.has(k)) continue;
        seen.add(k);
        stack.push(k);
        try {
          const m = /(?:^|\0)(?:PMI_RANK|OMPI_COMM_WORLD_RANK)=(\d+)/.exec(
            Deno.readTextFileSync(`/proc/${k}/environ`),
          );
          if (m) out.push({ rank: Number(m[1]), pid: k });
        } catch {
          // exited
        }
      }
    }
  }
  return out;
}

/** Calls `emit` for every line of a stream. */
async function lines(stream: ReadableStream<Uint8Array>, emit: (line: string) => void): Promise<void> {
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of stream) {
    buf += dec.decode(chunk, { stream: true });
    let i: number;
    while ((i = buf.indexOf("\n")) >= 0) {
      emit(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  }
  if (buf.length > 0) emit(buf);
}

/** Is CUDA usable here (what --device auto would pick)? Loaded only when asked. */
async function cudaUsable(): Promise<boolean> {
  const { probeCuda } = await import("../src/backend/cuda/cuda_backend.ts");
  return probeCuda().ok;
}

/** Runs the children (or one mpiexec job for the mpi backend); resolves with the launcher's exit code. */
export async function launch(
  cfg: LaunchConfig,
  log: (line: string) => void = (l) => console.error(l),
): Promise<number> {
  const cuda = PRETRAIN_COMMANDS.has(cfg.command[0].replaceAll(":", "-")) ? await cudaUsable() : false;
  if (usesMpi(cfg.command, () => cuda)) return await launchMpiexec(cfg, log);
  const cmd = childCommand(cfg.command);
  interface Child {
    rank: number;
    proc: Deno.ChildProcess;
    done: boolean;
    code: number;
    tail: string[];
    io: Promise<void>;
  }
  const children: Child[] = [];
  for (let local = 0; local < cfg.nprocPerNode; local++) {
    const env = childEnv(cfg, local);
    const rank = Number(env.RANK);
    let proc: Deno.ChildProcess;
    try {
      proc = new Deno.Command(cmd[0], {
        args: cmd.slice(1),
        env,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      })
        .spawn();
    } catch (e) {
      for (const c of children) c.proc.kill("SIGKILL");
      log(`launch: cannot start ${JSON.stringify(cmd[0])}: ${(e as Error).message.split("\n")[0]}`);
      return 1;
    }
    const show = cfg.logRank === "all" || rank === 0;
    const prefix = cfg.logRank === "all" ? `[rank${rank}]: ` : "";
    const tail: string[] = [];
    const io = Promise.all([
      pump(proc.stdout, Deno.stdout, prefix, show, []),
      pump(proc.stderr, Deno.stderr, prefix, show, tail),
    ]).then(() => {});
    children.push({ rank, proc, done: false, code: 0, tail, io });
  }

  let stopping = false;
  let firstFailure: Child | null = null;
  let signalled: Deno.Signal | null = null;
  const stopOthers = () => {
    if (stopping) return;
    stopping = true;
    for (const c of children) if (!c.done) trySignal(c.proc, "SIGTERM");
    if (cfg.killGraceSeconds >= 0) {
      const t = setTimeout(() => {
        for (const c of children) if (!c.done) trySignal(c.proc, "SIGKILL");
      }, cfg.killGraceSeconds * 1000);
      Deno.unrefTimer(t);
    }
  };
  const onSignal = (sig: Deno.Signal) => () => {
    if (signalled) {
      // A second signal: no more patience.
      for (const c of children) if (!c.done) trySignal(c.proc, "SIGKILL");
      return;
    }
    signalled = sig;
    log(`launch: got ${sig}; forwarding it to ${children.filter((c) => !c.done).length} rank(s)`);
    for (const c of children) if (!c.done) trySignal(c.proc, sig);
  };
  const handlers: [Deno.Signal, () => void][] = [["SIGINT", onSignal("SIGINT")], [
    "SIGTERM",
    onSignal("SIGTERM"),
  ]];
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);

  try {
    await Promise.all(children.map(async (c) => {
      const st = await c.proc.status;
      await c.io;
      c.done = true;
      c.code = st.signal ? 128 + (SIGNO[st.signal] ?? 0) : st.code;
      if (c.code !== 0 && !firstFailure && !stopping && !signalled) {
        firstFailure = c;
        const how = st.signal ? `was killed by ${st.signal}` : `exited with code ${st.code}`;
        if (cfg.logRank !== "all" && c.rank !== 0) { for (const l of c.tail) log(`[rank${c.rank}]: ${l}`); }
        log(`launch: rank ${c.rank} (pid ${c.proc.pid}) ${how}; stopping the other ranks`);
        stopOthers();
      }
    }));
  } finally {
    for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
  }
  if (firstFailure) return (firstFailure as Child).code;
  const bad = children.find((c) => c.code !== 0);
  if (bad) return bad.code;
  return signalled ? 128 + SIGNO[signalled as string] : 0;
}

function trySignal(p: Deno.ChildProcess, s: Deno.Signal): void {
  try {
    p.kill(s);
  } catch {
    // already exited
  }
}

export async function main(argv: string[]): Promise<number> {
  let cfg: LaunchConfig;
  try {
    cfg = parseLaunchArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(e.message);
      return 2;
    }
    throw e;
  }
  try {
    return await launch(cfg);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(e.message);
      return 2;
    }
    throw e;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
