// npm's `deno` package installs a Node wrapper (bin.cjs) as `deno` when its postinstall script does not
// run (`--ignore-scripts`, or npm's install-script policy). The wrapper starts the real binary with
// spawnSync and does not pass signals on: `kill <pid>` of the command the user started ends the
// wrapper and leaves `deno task` and the trainer running. When a CLI finds that wrapper among its
// ancestors it says so once and watches it from a worker thread; when the wrapper is gone, the CLI
// sends itself SIGTERM — the signal the wrapper failed to pass on — so `--exit-signal-handler` saves
// and exits, and without it the process ends as it would have. Linux only (reads /proc).

/** A process identified across pid reuse: its pid and its start time in clock ticks since boot. */
export interface ProcessId {
  pid: number;
  startTime: number;
}

/** Fields of /proc/<pid>/stat after the command name (which may contain spaces and parentheses):
 *  [0] state, [1] ppid, ..., [19] start time. Null when the process does not exist. */
function statFields(procRoot: string, pid: number): string[] | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(`${procRoot}/${pid}/stat`);
  } catch {
    return null;
  }
  return text.slice(text.lastIndexOf(")") + 2).trim().split(" ");
}

/** Whether argv is `node <script>` with the script resolving to npm's deno/bin.cjs (a shebang run
 *  through the bin/deno symlink shows the link's path, so the script is resolved from the process's
 *  working directory). */
function isWrapper(procRoot: string, pid: number, argv: string[]): boolean {
  if (argv.length < 2 || !/(^|\/)node(js)?$/.test(argv[0])) return false;
  const script = argv[1].startsWith("/") ? argv[1] : `${procRoot}/${pid}/cwd/${argv[1]}`;
  try {
    return /\/deno\/bin\.cjs$/.test(Deno.realPathSync(script));
  } catch {
    return false;
  }
}

/** The npm wrapper (`node …/deno/bin.cjs`) among the ancestors of this process, or null (none, or
 *  no /proc). */
export function findNpmWrapper(procRoot = "/proc", from: number = Deno.ppid): ProcessId | null {
  let pid = from;
  for (let depth = 0; depth < 64 && pid > 1; depth++) {
    const fields = statFields(procRoot, pid);
    if (fields === null) return null;
    let argv: string[] = [];
    try {
      argv = Deno.readTextFileSync(`${procRoot}/${pid}/cmdline`).split("\0");
    } catch {
      // a process we may not read: keep walking up
    }
    if (isWrapper(procRoot, pid, argv)) return { pid, startTime: Number(fields[19]) };
    pid = Number(fields[1]);
  }
  return null;
}

/** Whether `p` has exited (gone, a zombie, or its pid reused by another process). */
export function hasExited(p: ProcessId, procRoot = "/proc"): boolean {
  const fields = statFields(procRoot, p.pid);
  return fields === null || fields[0] === "Z" || fields[0] === "X" || Number(fields[19]) !== p.startTime;
}

/** The fix, as printed once under the wrapper. */
export const WRAPPER_NOTE = "> note: `deno` here is npm's Node wrapper (deno/bin.cjs), which does not pass " +
  "signals on; a signal to it is passed to this process as SIGTERM. For the real binary: " +
  "npm install -g --allow-scripts=deno deno@2.9.6";

/** Starts the watch when the wrapper is an ancestor. Call `stop()` when the command ends (the worker
 *  would keep the process alive). */
export function watchNpmWrapper(log: (line: string) => void): { stop(): void } {
  const wrapper = findNpmWrapper();
  if (wrapper === null) return { stop() {} };
  log(WRAPPER_NOTE);
  const worker = new Worker(new URL("./launcher_watch_worker.ts", import.meta.url), { type: "module" });
  worker.postMessage(wrapper);
  return { stop: () => worker.terminate() };
}
