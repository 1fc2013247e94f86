// Paired pipeline exchanges (Megatron's p2p_communication): send_forward_recv_backward and friends as
// one batch of sends and receives. A communicator with a native batch (MpiCommunicator: all isend and
// irecv posted, then one waitall) runs it as one grouped operation, so two neighbouring stages that
// each send and receive at the same time cannot deadlock even when sends do not buffer. Other
// communicators (LocalWorld buffers every send) run the sends first, then the receives; a communicator
// whose sends block must therefore implement batchIsendIrecv itself. The pipeline executor
// (src/pipeline/schedules.ts) issues every exchange step of a schedule as one call.

import type { Tensor } from "../tensor/tensor.ts";
import type { Communicator } from "../parallel/types.ts";

/** One point-to-point operation of a batch (torch.distributed.P2POp). */
export interface P2POp {
  op: "send" | "recv";
  tensor: Tensor;
  /** Global rank of the peer. */
  peer: number;
  /** Checked on receipt when both sides give one. */
  tag?: string;
}

interface Batching {
  batchIsendIrecv(ops: readonly P2POp[]): Promise<void>;
}

function hasBatch(c: Communicator): c is Communicator & Batching {
  return typeof (c as Partial<Batching>).batchIsendIrecv === "function";
}

/** Runs the operations as one grouped exchange. */
export async function batchIsendIrecv(comm: Communicator, ops: readonly P2POp[]): Promise<void> {
  if (hasBatch(comm)) return await comm.batchIsendIrecv(ops);
  for (const o of ops) if (o.op === "send") await comm.send(o.tensor, o.peer, o.tag);
  for (const o of ops) if (o.op === "recv") await comm.recv(o.tensor, o.peer, o.tag);
}

/** Sends this stage's output forward and receives the gradient of it back (1F1B steady state). Either
 *  side may be absent (first/last stage): pass undefined for the peer. */
export function sendForwardRecvBackward(
  comm: Communicator,
  output: Tensor,
  gradOfOutput: Tensor,
  nextRank: number,
  tags: { fwd?: string; bwd?: string } = {},
): Promise<void> {
  return batchIsendIrecv(comm, [
    { op: "send", tensor: output, peer: nextRank, tag: tags.fwd },
    { op: "recv", tensor: gradOfOutput, peer: nextRank, tag: tags.bwd },
  ]);
}

/** Sends the input gradient backward and receives the next micro-batch's input (1F1B steady state). */
export function sendBackwardRecvForward(
  comm: Communicator,
  gradOfInput: Tensor,
  input: Tensor,
  prevRank: number,
  tags: { bwd?: string; fwd?: string } = {},
): Promise<void> {
  return batchIsendIrecv(comm, [
    { op: "send", tensor: gradOfInput, peer: prevRank, tag: tags.bwd },
    { op: "recv", tensor: input, peer: prevRank, tag: tags.fwd },
  ]);
}

/** Megatron's p2p_communication._communicate: whichever of the four transfers are given, batched in
 *  its order [isend prev, irecv prev, isend next, irecv next]. Ranks are global; tags optional. */
export function communicate(
  comm: Communicator,
  x: {
    sendPrev?: Tensor;
    recvPrev?: Tensor;
    sendNext?: Tensor;
    recvNext?: Tensor;
    prevRank?: number;
    nextRank?: number;
    tags?: { sendPrev?: string; recvPrev?: string; sendNext?: string; recvNext?: string };
  },
): Promise<void> {
  const ops: P2POp[] = [];
  const need = (r: number | undefined, what: string) => {
    if (r === undefined) throw new Error(`p2p: ${what} given without a peer rank`);
    return r;
  };
  const t = x.tags ?? {};
  if (x.sendPrev) {
    ops.push({ op: "send", tensor: x.sendPrev, peer: need(x.prevRank, "sendPrev"), tag: t.sendPrev });
  }
  if (x.recvPrev) {
    ops.push({ op: "recv", tensor: x.recvPrev, peer: need(x.prevRank, "recvPrev"), tag: t.recvPrev });
  }
  if (x.sendNext) {
    ops.push({ op: "send", tensor: x.sendNext, peer: need(x.nextRank, "sendNext"), tag: t.sendNext });
  }
  if (x.recvNext) {
    ops.push({ op: "recv", tensor: x.recvNext, peer: need(x.nextRank, "recvNext"), tag: t.recvNext });
  }
  return batchIsendIrecv(comm, ops);
}
