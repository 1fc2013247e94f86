// The --save folder at start-up: created if missing and probed with a temp file, so an unwritable
// folder fails now instead of at the first save hours later; and a lock file naming the trainer that
// owns the folder, so a second trainer (an orphaned one, or a resume started too early) cannot race
// it. The lock is made complete under a temp name and hard-linked into place: link(2) fails when the
// name exists, so exactly one process wins and no reader ever sees a half-written lock.

import { hostName, isLocalPidAlive, processStartMs, processToken } from "./process.ts";

export const LOCK_FILE = ".megatron-deno.lock";

export interface LockOwner {
  pid: number;
  host: string;
  /** ISO time the owner started. */
  started: string;
  command: string;
}

/** "Read-only file system" from Deno's "Read-only file system (os error 30): mkdir '/x'". */
function reason(e: unknown): string {
  return (e as Error).message.split("\n")[0].replace(/ \(os error \d+\).*$/, "");
}

/** Create `dir` if needed and check that a file can be created in it (then removed). */
export function prepareSaveDir(dir: string): void {
  try {
    Deno.mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new Error(`--save ${dir}: cannot create the folder (${reason(e)})`);
  }
  const probe = `${dir}/.write-probe.tmp-${processToken()}`;
  try {
    Deno.writeFileSync(probe, new Uint8Array(1));
  } catch (e) {
    throw new Error(`--save ${dir}: cannot write in the folder (${reason(e)})`);
  }
  Deno.removeSync(probe);
}

export function describeOwner(o: LockOwner): string {
  return `pid ${o.pid} on host ${o.host}, started ${o.started}, command: ${o.command}`;
}

function parseOwner(text: string): LockOwner | null {
  try {
    const j = JSON.parse(text);
    if (
      typeof j.pid === "number" && typeof j.host === "string" && typeof j.started === "string" &&
      typeof j.command === "string"
    ) return j as LockOwner;
  } catch {
    // fall through
  }
  return null;
}

function readText(path: string): string | null {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** Is the lock's owner (a process of this host) still running? Its pid may have been reused since
 *  (after a reboot or container restart, even by this process): a process that started after the
 *  lock was taken is not its owner. */
function ownerAlive(o: LockOwner): boolean {
  if (o.pid === Deno.pid || !isLocalPidAlive(o.pid)) return false;
  const started = processStartMs(o.pid);
  const locked = Date.parse(o.started);
  // 2 s of slack for the tick resolution and clock adjustments.
  return started === null || Number.isNaN(locked) || started <= locked + 2000;
}

export class SaveDirLock {
  #released = false;
  private constructor(readonly path: string, readonly owner: LockOwner, private readonly text: string) {}

  /**
   * Take `<dir>/.megatron-deno.lock` (after prepareSaveDir). A lock held by a live process, or by a
   * process of another host (whose liveness cannot be checked), fails with one line naming the owner.
   * A lock of a process of this host that is no longer running is taken over, with a note to `log`.
   */
  static acquire(dir: string, opts: { command: string; log?: (line: string) => void }): SaveDirLock {
    prepareSaveDir(dir);
    const path = `${dir}/${LOCK_FILE}`;
    const owner: LockOwner = {
      pid: Deno.pid,
      host: hostName(),
      started: new Date().toISOString(),
      command: opts.command,
    };
    const text = JSON.stringify(owner) + "\n";
    const tmp = `${path}.tmp-${processToken()}`;
    Deno.writeTextFileSync(tmp, text);
    try {
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          Deno.linkSync(tmp, path);
          return new SaveDirLock(path, owner, text);
        } catch (e) {
          if (!(e instanceof Deno.errors.AlreadyExists)) {
            throw new Error(`${path}: cannot create the lock file (${reason(e)})`);
          }
        }
        const held = readText(path);
        if (held === null) continue; // released meanwhile: try again
        const other = parseOwner(held);
        if (other === null) {
          throw new Error(
            `${path}: unreadable lock file; remove it if no trainer is using --save ${dir}`,
          );
        }
        if (other.host !== owner.host) {
          throw new Error(
            `--save ${dir} is locked by a trainer on another host (${describeOwner(other)}); ` +
              `remove ${path} if that run has ended`,
          );
        }
        if (ownerAlive(other)) {
          throw new Error(
            `--save ${dir} is in use by another trainer (${describeOwner(other)}); lock ${path}`,
          );
        }
        // Stale: move it aside under our own name, and only delete it if it is still the lock we
        // judged (another starter may have replaced it in between; then put that one back).
        const aside = `${path}.stale.tmp-${processToken()}`;
        try {
          Deno.renameSync(path, aside);
        } catch (e) {
          if (e instanceof Deno.errors.NotFound) continue;
          throw e;
        }
        if (readText(aside) !== held) {
          try {
            Deno.linkSync(aside, path);
          } catch {
            // a third process took the name: its lock stands, ours is not taken
          }
          Deno.removeSync(aside);
          continue;
        }
        Deno.removeSync(aside);
        opts.log?.(
          `note: took over the stale lock ${path} of a trainer that is no longer running (${
            describeOwner(other)
          })`,
        );
      }
      throw new Error(`${path}: the lock changed hands repeatedly while starting; try again`);
    } finally {
      Deno.removeSync(tmp);
    }
  }

  /** Remove the lock if it is still ours (idempotent; safe in exit handlers). */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    try {
      if (readText(this.path) === this.text) Deno.removeSync(this.path);
    } catch {
      // exiting anyway; a lock left behind names a dead pid and is taken over by the next run
    }
  }
}
