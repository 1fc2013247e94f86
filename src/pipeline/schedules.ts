// Pipeline schedules as explicit per-rank op lists (pure functions, so a test can simulate every
// rank), and an executor that runs one rank's list against a stage model and a communicator.
//
// Schedules follow Megatron's forward_backward_no_pipelining, forward_backward_pipelining_without_
// interleaving (1F1B) and forward_backward_pipelining_with_interleaving, communication included: a
// list holds compute steps and exchange steps, and each exchange is one of Megatron's p2p_communication
// calls (recv_forward, send_forward, send_forward_recv_backward, send_backward_recv_forward,
// recv_backward, send_backward; for interleaving send_forward_recv_forward, send_backward_recv_backward,
// send_forward_backward_recv_forward_backward) with Megatron's recv_prev / recv_next decisions, issued
// as ONE batchIsendIrecv. Neighbouring stages post matching exchanges at the same step, so the schedules
// complete on a communicator whose sends block until received (MPI_Issend, NCCL) — separate blocking
// send and recv calls deadlock 1F1B (p = 2, m = 4: stage 0 sends micro-batch 1 forward while stage 1
// sends micro-batch 0's gradient back). One deliberate difference: interleaving is allowed with 2
// pipeline stages (Megatron 2021 rejects it because its batch paired the same peer twice in one
// ordered stream); our activations and gradients travel in separate channels (`p2pChannel`), matched
// and checked by tag.

import type { Communicator } from "../parallel/types.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { batchIsendIrecv, type P2POp } from "../distributed/p2p.ts";

/** Megatron's p2p_communication functions, as the schedules call them. */
export type ExchangeName =
  | "recv_forward"
  | "send_forward"
  | "recv_backward"
  | "send_backward"
  | "send_forward_recv_backward"
  | "send_backward_recv_forward"
  | "send_forward_recv_forward"
  | "send_backward_recv_backward"
  | "send_forward_backward_recv_forward_backward";

/** One transfer of an exchange, named as in Megatron's _communicate: sendPrev = the input gradient of
 *  local chunk `chunk` (to the previous stage), recvPrev = the input activation of `chunk`, sendNext =
 *  the output of `chunk` (to the next stage), recvNext = the gradient of `chunk`'s output. */
export interface Transfer {
  kind: "sendPrev" | "recvPrev" | "sendNext" | "recvNext";
  chunk: number;
  mb: number;
}

export type PipeOp =
  | { op: "forward"; chunk: number; mb: number }
  | { op: "backward"; chunk: number; mb: number }
  /** One batched exchange; transfers in _communicate's order [sendPrev, recvPrev, sendNext, recvNext].
   *  Exchanges a stage has no peer for (the first stage's recv_forward, ...) are left out. */
  | { op: "exchange"; name: ExchangeName; transfers: Transfer[] };

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

/** Megatron's warm-up micro-batch count for this stage. */
export function warmupCount(s: ScheduleShape): number {
  if (s.v === 1) return Math.min(s.p - s.r - 1, s.m);
  const total = s.m * s.v;
  if (s.m === s.p) return total;
  return Math.min((s.p - s.r - 1) * 2 + (s.v - 1) * s.p, total);
}

/** Chunk run by the k-th forward (or, reversed, backward) of an interleaved schedule. k may be negative
 *  (Megatron's look-ahead of the last stage asks for k - (p - 1)): Python's modulo, as Megatron's. */
export function chunkOf(k: number, s: ScheduleShape, forward: boolean): number {
  const n = s.p * s.v;
  const c = Math.floor((((k % n) + n) % n) / s.p);
  return forward ? c : s.v - 1 - c;
}

/** Micro-batch index of the k-th forward/backward within its chunk (groups of p per chunk). */
export function microBatchOf(k: number, s: ScheduleShape): number {
  return Math.floor(k / (s.p * s.v)) * s.p + (k % s.p);
}

/** Builds one rank's list. Receives are labelled in order: the j-th activation received is the input of
 *  the j-th forward that needs one (senders send in that same order, one channel per direction), and
 *  likewise for gradients; a compute step whose input has not been received is a schedule bug. */
class Plan {
  readonly ops: PipeOp[] = [];
  private readonly inputs: { chunk: number; mb: number }[];
  private readonly outGrads: { chunk: number; mb: number }[];
  private readonly have = new Set<string>();

  constructor(readonly s: ScheduleShape, fwd: { chunk: number; mb: number }[], bwd: typeof fwd) {
    this.inputs = fwd.filter((f) => !isFirst(s, f.chunk));
    this.outGrads = bwd.filter((b) => !isLast(s, b.chunk));
  }

  forward(chunk: number, mb: number): void {
    if (!isFirst(this.s, chunk)) this.take(`in:${chunk}:${mb}`);
    this.ops.push({ op: "forward", chunk, mb });
  }

  backward(chunk: number, mb: number): void {
    if (!isLast(this.s, chunk)) this.take(`grad:${chunk}:${mb}`);
    this.ops.push({ op: "backward", chunk, mb });
  }

  private take(key: string): void {
    if (!this.have.delete(key)) {
      const s = this.s;
      throw new Error(`schedule p=${s.p} r=${s.r} m=${s.m} v=${s.v}: ${key} used before it was received`);
    }
  }

  /** One exchange: the output of forward `sendNext` (dropped on the last model chunk), the input gradient
   *  of backward `sendPrev` (dropped on the first), and the next expected receives when asked for. */
  exchange(
    name: ExchangeName,
    x: {
      sendPrev?: { chunk: number; mb: number };
      recvPrev?: boolean;
      sendNext?: { chunk: number; mb: number };
      recvNext?: boolean;
    },
  ): void {
    const t: Transfer[] = [];
    const s = this.s;
    if (x.sendPrev && !isFirst(s, x.sendPrev.chunk)) t.push({ kind: "sendPrev", ...x.sendPrev });
    if (x.recvPrev) {
      const i = this.inputs.shift();
      if (!i) {
        throw new Error(`schedule p=${s.p} r=${s.r} m=${s.m} v=${s.v}: ${name} receives one input too many`);
      }
      this.have.add(`in:${i.chunk}:${i.mb}`);
      t.push({ kind: "recvPrev", ...i });
    }
    if (x.sendNext && !isLast(s, x.sendNext.chunk)) t.push({ kind: "sendNext", ...x.sendNext });
    if (x.recvNext) {
      const g = this.outGrads.shift();
      if (!g) {
        throw new Error(
          `schedule p=${s.p} r=${s.r} m=${s.m} v=${s.v}: ${name} receives one gradient too many`,
        );
      }
      this.have.add(`grad:${g.chunk}:${g.mb}`);
      t.push({ kind: "recvNext", ...g });
    }
    if (t.length > 0) this.ops.push({ op: "exchange", name, transfers: t });
  }

  done(): PipeOp[] {
    const s = this.s;
    if (this.inputs.length + this.outGrads.length + this.have.size > 0) {
      throw new Error(`schedule p=${s.p} r=${s.r} m=${s.m} v=${s.v}: receives and compute steps disagree`);
    }
    return this.ops;
  }
}

function checkShape(s: ScheduleShape): void {
  if (s.p < 1 || s.r < 0 || s.r >= s.p || s.m < 1 || s.v < 1) {
    throw new Error(`schedule: invalid shape p=${s.p} r=${s.r} m=${s.m} v=${s.v}`);
  }
  if (s.v > 1 && s.m % s.p !== 0) {
    throw new Error(
      `schedule: interleaved pipelining needs the number of micro-batches (${s.m}) to be a multiple of the ` +
        `pipeline size (${s.p})`,
    );
  }
}

/** The op sequence of stage r (training: forward and backward of every micro-batch). */
export function buildSchedule(s: ScheduleShape): PipeOp[] {
  checkShape(s);
  if (s.p === 1 && s.v === 1) {
    // No pipelining: forward and backward of each micro-batch in turn (gradient accumulation).
    const ops: PipeOp[] = [];
    for (let i = 0; i < s.m; i++) {
      ops.push({ op: "forward", chunk: 0, mb: i }, { op: "backward", chunk: 0, mb: i });
    }
    return ops;
  }
  return s.v === 1 ? oneFOneB(s, false) : interleaved(s, false);
}

/** Forward-only op list (evaluation): the training schedule's forwards, in the same order, with Megatron's
 *  forward_only exchanges. */
export function buildForwardOnlySchedule(s: ScheduleShape): PipeOp[] {
  checkShape(s);
  if (s.p === 1 && s.v === 1) {
    return Array.from({ length: s.m }, (_, i): PipeOp => ({ op: "forward", chunk: 0, mb: i }));
  }
  return s.v === 1 ? oneFOneB(s, true) : interleaved(s, true);
}

/** forward_backward_pipelining_without_interleaving. */
function oneFOneB(s: ScheduleShape, forwardOnly: boolean): PipeOp[] {
  const seq = Array.from({ length: s.m }, (_, i) => ({ chunk: 0, mb: i }));
  const plan = new Plan(s, seq, forwardOnly ? [] : seq);
  const first = s.r === 0, last = s.r === s.p - 1;
  const mb = (i: number) => ({ chunk: 0, mb: i });
  const warmup = warmupCount(s);
  const remaining = s.m - warmup;
  for (let i = 0; i < warmup; i++) {
    plan.exchange("recv_forward", { recvPrev: !first });
    plan.forward(0, i);
    plan.exchange("send_forward", { sendNext: mb(i) });
  }
  if (remaining > 0) plan.exchange("recv_forward", { recvPrev: !first });
  for (let i = 0; i < remaining; i++) {
    const lastIteration = i === remaining - 1;
    plan.forward(0, warmup + i);
    if (forwardOnly) {
      plan.exchange("send_forward", { sendNext: mb(warmup + i) });
      if (!lastIteration) plan.exchange("recv_forward", { recvPrev: !first });
      continue;
    }
    plan.exchange("send_forward_recv_backward", { sendNext: mb(warmup + i), recvNext: !last });
    // Backward of the oldest micro-batch in flight (FIFO).
    plan.backward(0, i);
    if (lastIteration) plan.exchange("send_backward", { sendPrev: mb(i) });
    else plan.exchange("send_backward_recv_forward", { sendPrev: mb(i), recvPrev: !first });
  }
  if (!forwardOnly) {
    for (let i = remaining; i < s.m; i++) {
      plan.exchange("recv_backward", { recvNext: !last });
      plan.backward(0, i);
      plan.exchange("send_backward", { sendPrev: mb(i) });
    }
  }
  return plan.done();
}

/** forward_backward_pipelining_with_interleaving, with its look-ahead receive decisions. */
function interleaved(s: ScheduleShape, forwardOnly: boolean): PipeOp[] {
  const total = s.m * s.v;
  const F = (k: number) => ({ chunk: chunkOf(k, s, true), mb: microBatchOf(k, s) });
  const B = (k: number) => ({ chunk: chunkOf(k, s, false), mb: microBatchOf(k, s) });
  const ks = Array.from({ length: total }, (_, k) => k);
  const plan = new Plan(s, ks.map(F), forwardOnly ? [] : ks.map(B));
  const firstStage = s.r === 0, lastStage = s.r === s.p - 1;
  const allWarmup = !forwardOnly && s.m === s.p;
  const warmup = forwardOnly ? total : warmupCount(s);
  const remaining = total - warmup;

  plan.exchange("recv_forward", { recvPrev: !firstStage });
  for (let k = 0; k < warmup; k++) {
    plan.forward(F(k).chunk, F(k).mb);
    let recvPrev = !(firstStage && chunkOf(k + 1, s, true) === 0);
    if (k === total - 1) recvPrev = false;
    if (k === warmup - 1 && !forwardOnly && !allWarmup) {
      plan.exchange("send_forward_backward_recv_forward_backward", {
        sendNext: F(k),
        recvPrev,
        recvNext: !lastStage,
      });
    } else {
      plan.exchange("send_forward_recv_forward", { sendNext: F(k), recvPrev });
    }
  }
  for (let k = 0; k < remaining; k++) {
    const fk = k + warmup;
    plan.forward(F(fk).chunk, F(fk).mb);
    plan.backward(B(k).chunk, B(k).mb);
    // The first stage is p - 1 forwards ahead of the last, the last p - 1 backwards ahead of the first:
    // they receive only when the peer's matching step sends.
    let recvPrev = !(firstStage && chunkOf(fk - (s.p - 1), s, true) === s.v - 1);
    const recvNext = !(lastStage && chunkOf(k - (s.p - 1), s, false) === 0);
    if (k === remaining - 1) recvPrev = false;
    plan.exchange("send_forward_backward_recv_forward_backward", {
      sendPrev: B(k),
      recvPrev,
      sendNext: F(fk),
      recvNext,
    });
  }
  if (!forwardOnly) {
    if (allWarmup) plan.exchange("recv_backward", { recvNext: !lastStage });
    for (let k = remaining; k < total; k++) {
      plan.backward(B(k).chunk, B(k).mb);
      let recvNext = !(lastStage && chunkOf(k + 1, s, false) === s.v - 1);
      if (k === total - 1) recvNext = false;
      plan.exchange("send_backward_recv_backward", { sendPrev: B(k), recvNext });
    }
  }
  return plan.done();
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

/** Run stage `s.r`'s forward-only list (the stage runner discards activations itself). */
export async function runForwardOnly(
  s: ScheduleShape,
  stage: StageRunner,
  comm: Communicator,
  peers: PipelinePeers,
): Promise<void> {
  await runOps(s, buildForwardOnlySchedule(s), stage, comm, peers);
}

/** The tag of a transfer as the receiver names it: activations go to the same chunk of the next stage
 *  (the next chunk on stage 0, wrapping around), gradients to the same chunk of the previous stage. */
export function transferTag(s: ScheduleShape, t: Transfer): string {
  switch (t.kind) {
    case "sendNext":
      return `fwd:c${s.r === s.p - 1 ? t.chunk + 1 : t.chunk}:m${t.mb}`;
    case "recvPrev":
      return `fwd:c${t.chunk}:m${t.mb}`;
    case "sendPrev":
      return `bwd:c${s.r === 0 ? t.chunk - 1 : t.chunk}:m${t.mb}`;
    case "recvNext":
      return `bwd:c${t.chunk}:m${t.mb}`;
  }
}

/** Execute one rank's op list: run chunks, and each exchange as one batch of sends and receives. */
export async function runOps(
  s: ScheduleShape,
  ops: readonly PipeOp[],
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
    switch (o.op) {
      case "forward": {
        const k = key(o.chunk, o.mb);
        const input = received.get(k) ?? null;
        received.delete(k);
        const out = await stage.forward(o.chunk, o.mb, input);
        if (out) outputs.set(k, out);
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        break;
      }
      case "backward": {
        const k = key(o.chunk, o.mb);
        const g = grads.get(k) ?? null;
        grads.delete(k);
        const dIn = await stage.backward(o.chunk, o.mb, g);
        if (g) stage.release(g);
        inFlight--;
        if (dIn) grads.set(`in:${k}`, dIn);
        break;
      }
      case "exchange": {
        const batch: P2POp[] = [];
        const sent: Tensor[] = [];
        const got: [Map<string, Tensor>, string, Tensor][] = [];
        for (const t of o.transfers) {
          const k = key(t.chunk, t.mb);
          const tag = transferTag(s, t);
          if (t.kind === "sendNext" || t.kind === "sendPrev") {
            const from = t.kind === "sendNext" ? outputs : grads;
            const mk = t.kind === "sendNext" ? k : `in:${k}`;
            const x = from.get(mk);
            if (!x) throw new Error(`pipeline: ${o.name} on stage ${s.r} has nothing to send for ${tag}`);
            from.delete(mk);
            sent.push(x);
            batch.push({ op: "send", tensor: x, peer: t.kind === "sendNext" ? peers.next : peers.prev, tag });
          } else {
            const buf = stage.allocActivation();
            got.push([t.kind === "recvPrev" ? received : grads, k, buf]);
            batch.push({
              op: "recv",
              tensor: buf,
              peer: t.kind === "recvPrev" ? peers.prev : peers.next,
              tag,
            });
          }
        }
        await batchIsendIrecv(comm, batch);
        // Sent tensors stay alive until the whole batch completed (a peer may read them in place).
        for (const x of sent) stage.release(x);
        for (const [into, k, buf] of got) into.set(k, buf);
        break;
      }
    }
  }
  // Outputs of the last chunk are never sent (the loss stays on this stage).
  for (const t of outputs.values()) stage.release(t);
  return { maxInFlight };
}
