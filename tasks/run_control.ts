// What the training commands (pretrain_*, finetune) do around a run: hold the --save folder's lock for
// the process's life, and turn SIGINT / SIGTERM into a stop request the loop checks each iteration
// (--exit-signal-handler: save, then exit, as Megatron).

import type { TrainEnv } from "../src/training/train.ts";
import { SaveDirLock } from "../src/training/lock.ts";

/** Takes the lock of `save` (one trainer per folder) and releases it on every exit that runs
 *  JavaScript; after a kill the lock names a dead pid and the next run takes it over. */
export function holdSaveLock(save: string, command: string[], log: (line: string) => void): void {
  const lock = SaveDirLock.acquire(save, { command: command.join(" "), log });
  globalThis.addEventListener("unload", () => lock.release());
}

/** With --exit-signal-handler: a stop request set by SIGINT or SIGTERM (naming it); else undefined,
 *  and the signals keep their default action. */
export function signalStopRequest(enabled: boolean): TrainEnv["stopRequest"] {
  if (!enabled) return undefined;
  const request: NonNullable<TrainEnv["stopRequest"]> = { stop: false };
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => {
      request.stop = true;
      request.signal = sig;
    });
  }
  return request;
}
