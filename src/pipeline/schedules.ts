// Pipeline schedules as explicit per-rank op lists (pure functions, so a test can simulate every
// rank), and an executor that runs one rank's list against a stage model and a communicator.
//
// Schedules follow Megatron's forward_backward_no_pipelining, forward_backward_pipelining_without_
// interleaving (1F1B) and forward_backward_pipelining_with_interleaving. One deliberate difference:
// interleaving is allowed with 2 pipeline stages (Megatron 2021 rejects it because its batched
// isend/irecv paired the same peer twice; our sends never block, so the case is safe).

import type { Communicator } from "../parallel/types.ts";
import type { Tensor } from "../tensor/tensor.ts";

export type PipeOp =
  | { op: "recvForward"; chunk: number; mb: number }
  | { op: "forward"; chunk: number; mb: number }
  | { op: "sendForward"; chunk: number; mb: number }
  | { op: "recvBackward"; chunk: number; mb: number }
  | { op: "backward"; chunk: number; mb: number }
  | { op: "sendBackward"; chunk: number; mb: number };

export interface ScheduleShape {
  /** Pipeline stages. */
  p: number;
  /** This stage. */
  r: number;
  /** Micro-batches per step. */
  m: number;
  /** Virtual chunks per stage (1 = not interleaved). */
  v: number;
}

/** Does (stage r, chunk c) run the first / last model chunk of the whole pipeline? */
function isFirst(s: ScheduleShape, chunk: number) {
  return s.r === 0 && chunk === 0;
}
function isLast(s: ScheduleShape, chunk: number) {
  return s.r === s.p - 1 && chunk === s.v - 1;
}

function fwdOps(s: ScheduleShape, chunk: number, mb: number, recv = true, send = true): PipeOp[] {
  const ops: PipeOp[] = [];
  if (recv && !isFirst(s, chunk)) ops.push({ op: "recvForward", chunk, mb });
  ops.push({ op: "forward", chunk, mb });
  if (send && !isLast(s, chunk)) ops.push({ op: "sendForward", chunk, mb });
  return ops;
}

function bwdOps(s: ScheduleShape, chunk: number, mb: number): PipeOp[] {
  const ops: PipeOp[] = [];
  if (!isLast(s, chunk)) ops.push({ op: "recvBackward", chunk, mb });
  ops.push({ op: "backward", chunk, mb });
  if (!isFirst(s, chunk)) ops.push({ op: "sendBackward", chunk, mb });
  return ops;
}

/** Megatron's warm-up micro-batch count for this stage. */
export function warmupCount(s: ScheduleShape): number {
  if (s.v === 1) return Math.min(s.p - s.r - 1, s.m);
  const total = s.m * s.v;
  if (s.m === s.p) return total;
  return Math.min((s.p - s.r - 1) * 2 + (s.v - 1) * s.p, total);
}

/** Chunk run by the k-th forward (or, reversed, backward) of an interleaved schedule. */
export function chunkOf(k: number, s: ScheduleShape, forward: boolean): number {
  const c = Math.floor((k % (s.p * s.v)) / s.p);
  return forward ? c : s.v - 1 - c;
}

/** Micro-batch index of the k-th forward/backward within its chunk (groups of p per chunk). */
export function microBatchOf(k: number, s: ScheduleShape): number {
  return Math.floor(k / (s.p * s.v)) * s.p + (k % s.p);
}

/** The op sequence of stage r. */
export function buildSchedule(s: ScheduleShape): PipeOp[] {
  if (s.p < 1 || s.r < 0 || s.r >= s.p || s.m < 1 || s.v < 1) {
    throw new Error(`schedule: invalid shape p=${s.p} r=${s.r} m=${s.m} v=${s.v}`);
  }
  if (s.p === 1 && s.v === 1) {
    // No pipelining: forward and backward of each micro-batch in turn (gradient accumulation).
    const ops: PipeOp[] = [];
    for (let i = 0; i < s.m; i++) ops.push(...fwdOps(s, 0, i), ...bwdOps(s, 0, i));
    return ops;
  }
  if (s.v === 1) return oneFOneB(s);
  if (s.m % s.p !== 0) {
    throw new Error(
      `schedule: interleaved pipelining needs the number of micro-batches (${s.m}) to be a multiple of the ` +
        `pipeline size (${s.p})`,
    );
  }
  return interleaved(s);
}

function oneFOneB(s: ScheduleShape): PipeOp[] {
  const ops: PipeOp[] = [];
  const warmup = warmupCount(s);
  const remaining = s.m - warmup;
  for (let i = 0; i < warmup; i++) ops.push(...fwdOps(s, 0, i));
  // Steady state: one forward, then the backward of the oldest micro-batch in flight (FIFO).
  for (let i = 0; i < remaining; i++) {
    ops.push(...fwdOps(s, 0, warmup + i));
    ops.push(...bwdOps(s, 0, i));
  }
  for (let i = remaining; i < s.m; i++) ops.push(...bwdOps(s, 0, i));
  return ops;
}

function interleaved(s: ScheduleShape): PipeOp[] {
  const ops: PipeOp[] = [];
  const total = s.m * s.v;
  const warmup = warmupCount(s);
  const fwd = (k: number) => fwdOps(s, chunkOf(k, s, true), microBatchOf(k, s));
  const bwd = (k: number) => bwdOps(s, chunkOf(k, s, false), microBatchOf(k, s));
  for (let k = 0; k < warmup; k++) ops.push(...fwd(k));
  for (let i = 0; i < total - warmup; i++) {
    ops.push(...fwd(warmup + i));
    ops.push(...bwd(i));
  }
  for (let k = total - warmup; k < total; k++) ops.push(...bwd(k));
  return ops;
}

/** What a pipeline stage (all its chunks) must provide to the executor. */
export interface StageRunner {
  /** Shape of the activation passed between stages ([micro, seq, hidden]). */
  readonly activationShape: readonly number[];
  readonly activationDType: Tensor["dtype"];
  /** Allocate a receive buffer. */
  allocActivation(): Tensor;
  /** Run chunk `chunk` forward on micro-batch `mb`. `input` is the received hidden state (null on
   *  the first chunk of the pipeline). Returns the output to send (null on the last chunk). */
  forward(chunk: number, mb: number, input: Tensor | null): Promise<Tensor | null>;
  /** Run chunk backward. `outputGrad` is the received gradient (null on the last chunk). Returns
   *  the gradient of the input to send back (null on the first chunk). */
  backward(chunk: number, mb: number, outputGrad: Tensor | null): Promise<Tensor | null>;
  /** Release a tensor the executor no longer needs (sent or consumed). */
  release(t: Tensor): void;
}

export interface PipelinePeers {
  /** Global rank of the previous / next stage (wrapping around for interleaved chunks). */
  prev: number;
  next: number;
}

/** Run stage `s.r`'s op list. Returns the largest number of micro-batches in flight at once. */
export function runSchedule(
  s: ScheduleShape,
  stage: StageRunner,
  comm: Communicator,
  peers: PipelinePeers,
): Promise<{ maxInFlight: number }> {
  return runOps(s, buildSchedule(s), stage, comm, peers);
}

/** Execute one rank's op list: receive buffers, run chunks, send outputs and gradients. */
async function runOps(
  s: ScheduleShape,
  ops: PipeOp[],
  stage: StageRunner,
  comm: Communicator,
  peers: PipelinePeers,
): Promise<{ maxInFlight: number }> {
  const received = new Map<string, Tensor>();
  const outputs = new Map<string, Tensor>();
  const grads = new Map<string, Tensor>();
  let inFlight = 0;
  let maxInFlight = 0;
  const key = (c: number, mb: number) => `${c}:${mb}`;
  for (const o of ops) {
    const k = key(o.chunk, o.mb);
    switch (o.op) {
      case "recvForward": {
        const buf = stage.allocActivation();
        await comm.recv(buf, peers.prev, `fwd:c${o.chunk}:m${o.mb}`);
        received.set(k, buf);
        break;
      }
      case "forward": {
        const input = received.get(k) ?? null;
        received.delete(k);
        const out = await stage.forward(o.chunk, o.mb, input);
        if (out) outputs.set(k, out);
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        break;
      }
      case "sendForward": {
        const out = outputs.get(k)!;
        outputs.delete(k);
        // The receiver's chunk: the same chunk on the next stage, or the next chunk on stage 0.
        const c = s.r === s.p - 1 ? o.chunk + 1 : o.chunk;
        await comm.send(out, peers.next, `fwd:c${c}:m${o.mb}`);
        stage.release(out);
        break;
      }
      case "recvBackward": {
        const buf = stage.allocActivation();
        await comm.recv(buf, peers.next, `bwd:c${o.chunk}:m${o.mb}`);
        grads.set(k, buf);
        break;
      }
      case "backward": {
        const g = grads.get(k) ?? null;
        grads.delete(k);
        const dIn = await stage.backward(o.chunk, o.mb, g);
        if (g) stage.release(g);
        inFlight--;
        if (dIn) grads.set(`in:${k}`, dIn);
        break;
      }
      case "sendBackward": {
        const dIn = grads.get(`in:${k}`)!;
        grads.delete(`in:${k}`);
        const c = s.r === 0 ? o.chunk - 1 : o.chunk;
        await comm.send(dIn, peers.prev, `bwd:c${c}:m${o.mb}`);
        stage.release(dIn);
        break;
      }
    }
  }
  // Outputs of the last chunk are never sent (the loss stays on this stage).
  for (const t of outputs.values()) stage.release(t);
  return { maxInFlight };
}

/** Forward-only op list (evaluation): the training schedule's forwards, in the same order. */
export function buildForwardOnlySchedule(s: ScheduleShape): PipeOp[] {
  const ops: PipeOp[] = [];
  const total = s.m * s.v;
  for (let k = 0; k < total; k++) {
    const chunk = s.v === 1 ? 0 : chunkOf(k, s, true);
    const mb = s.v === 1 ? k : microBatchOf(k, s);
    ops.push(...fwdOps(s, chunk, mb));
  }
  return ops;
}

/** Run stage `s.r`'s forward-only list (the stage runner discards activations itself). */
export async function runForwardOnly(
  s: ScheduleShape,
  stage: StageRunner,
  comm: Communicator,
  peers: PipelinePeers,
): Promise<void> {
  await runOps(s, buildForwardOnlySchedule(s), stage, comm, peers);
}
