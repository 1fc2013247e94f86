// This host's name and whether a process id on it is still running: what stale-temp cleanup and the
// --save lock need to tell a crashed writer's leftovers from a live one's.

/** This host's name as used in temp and lock names (characters outside [A-Za-z0-9.-] become "_"). */
export function hostName(): string {
  let h = "unknown-host";
  try {
    h = Deno.hostname();
  } catch {
    // without --allow-sys the name is unknown; every process of this host reads the same value
  }
  return h.replace(/[^A-Za-z0-9.-]/g, "_") || "unknown-host";
}

/** The temp-name token of this process: "<host>-<pid>" (the pid is the last dash-separated field). */
export function processToken(): string {
  return `${hostName()}-${Deno.pid}`;
}

/** Parse a token written by processToken() (or a bare pid, from older versions: this host).
 *  Null when it is not such a token (a test's name, say): the caller then leaves the entry alone. */
export function parseToken(token: string): { host: string | null; pid: number } | null {
  const m = /^(?:(.+)-)?(\d+)$/.exec(token);
  if (!m) return null;
  const pid = Number(m[2]);
  return Number.isSafeInteger(pid) && pid > 0 ? { host: m[1] ?? null, pid } : null;
}

/** Is `pid` a running process on this host? Unknown (no /proc) counts as running, so nothing of
 *  a live process is ever removed. */
export function isLocalPidAlive(pid: number): boolean {
  if (pid === Deno.pid) return true;
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) return true;
  }
  try {
    Deno.statSync("/proc/self");
  } catch {
    return true; // no procfs: cannot tell
  }
  return false;
}

/** Start time (ms since the epoch) of a local process from /proc, or null when unknown. Field 22
 *  of /proc/<pid>/stat counts clock ticks (USER_HZ, 100 on Linux) since boot (btime of /proc/stat). */
export function processStartMs(pid: number): number | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // The command name (field 2) may contain spaces and parentheses: fields resume after the last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[19]);
    const btime = /^btime (\d+)$/m.exec(Deno.readTextFileSync("/proc/stat"));
    if (!btime || !Number.isFinite(ticks)) return null;
    return (Number(btime[1]) + ticks / 100) * 1000;
  } catch {
    return null;
  }
}

/** Is the process named by `token` known to be dead? Only a process of this host can be judged. */
export function isTokenDead(token: string): boolean {
  const t = parseToken(token);
  if (t === null) return false;
  if (t.host !== null && t.host !== hostName()) return false;
  return !isLocalPidAlive(t.pid);
}
