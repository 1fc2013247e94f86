// A GEMM worker thread: waits on the shared control block's sequence number, computes its part of each
// job with the same driver as the calling thread, and counts itself done. Started by GemmPool.
import { workerData } from "node:worker_threads";
import { ctrlSlots, GemmThread, instantiateGemm } from "./gemm_wasm.ts";

const { mem, relaxed, slot } = workerData as { mem: WebAssembly.Memory; relaxed: boolean; slot: number };
const th = new GemmThread(mem, instantiateGemm(mem, relaxed), slot);
const c = th.ctrl;
const { SEQ, DONE, ERR, QUIT, READY_COUNT, READY, PART_OF } = ctrlSlots;
// Read the sequence number before announcing readiness: a job posted in between does not count on us.
let seq = Atomics.load(c, SEQ);
Atomics.store(c, READY + slot - 1, 1);
Atomics.add(c, READY_COUNT, 1);
Atomics.notify(c, READY_COUNT);
for (;;) {
  Atomics.wait(c, SEQ, seq);
  seq = Atomics.load(c, SEQ);
  if (Atomics.load(c, QUIT) !== 0) break;
  const part = Atomics.load(c, PART_OF + slot - 1);
  if (part < 0) continue;
  try {
    th.runPart(part);
  } catch {
    Atomics.store(c, ERR, 1);
  }
  Atomics.add(c, DONE, 1);
  Atomics.notify(c, DONE);
}
