// A GEMM worker thread: waits on the shared control block's sequence number, computes its part of each
// job it was claimed for with the same driver as the calling thread, and counts itself done. Exits after
// IDLE_EXIT_MS without a job (or on QUIT). Started by GemmPool.
import { workerData } from "node:worker_threads";
import { ctrlSlots, GemmThread, IDLE_EXIT_MS, instantiateGemm } from "./gemm_wasm.ts";

const { mem, relaxed, slot } = workerData as { mem: WebAssembly.Memory; relaxed: boolean; slot: number };
const th = new GemmThread(mem, instantiateGemm(mem, relaxed), slot);
const c = th.ctrl;
const { SEQ, DONE, ERR, QUIT, STATE, PART_OF, STARTING, IDLE, CLAIMED, ABSENT } = ctrlSlots;
const me = STATE + slot - 1;
// Read the sequence number before announcing readiness: a job posted in between cannot have claimed us.
let seq = Atomics.load(c, SEQ);
Atomics.compareExchange(c, me, STARTING, IDLE);
Atomics.notify(c, me);
for (;;) {
  const r = Atomics.wait(c, SEQ, seq, IDLE_EXIT_MS);
  if (Atomics.load(c, QUIT) !== 0) break;
  // Idle: leave unless the caller has just claimed us (then SEQ moves on at once).
  if (r === "timed-out" && Atomics.compareExchange(c, me, IDLE, ABSENT) === IDLE) break;
  seq = Atomics.load(c, SEQ);
  if (Atomics.load(c, me) !== CLAIMED) continue;
  try {
    th.runPart(Atomics.load(c, PART_OF + slot - 1));
  } catch {
    Atomics.store(c, ERR, 1);
  }
  Atomics.store(c, me, IDLE);
  Atomics.add(c, DONE, 1);
  Atomics.notify(c, DONE);
}
