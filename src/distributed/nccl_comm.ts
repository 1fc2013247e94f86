// The `nccl` communicator: one process per GPU, traffic carried by NCCL (ffi/nccl.ts) on the CUDA
// backend's stream, with one NCCL communicator per group (tensor, pipeline, data, model, embedding,
// world) and three over the world for point-to-point (one per p2pChannel). Each group's unique id is made by its first member and handed to the others through the
// rendezvous store under a key naming the group and its members (plus a generation number, so a
// second communicator in the same job gets fresh ids).
//
// Reductions are ordered by default, not NCCL's own: NCCL's ring/tree sums contributions in an order
// that depends on the topology, so its results differ from the in-process world in the last bits and
// the multi-GPU losses would only be close to the one-process ones. The MPI communicator is bit-exact
// and the project's promise is "the same losses as in one process", so the NCCL one is too, at the
// same traffic as a ring all-reduce: chunk j of every member goes to member j (grouped ncclSend/Recv),
// member j sums the n chunks in group order with the backend's own ops (exactly LocalWorld's
// sumInGroupOrder: f32 accumulation via Backend.add), and ncclAllGather returns the reduced chunks.
// All-reduces up to 64 KB (latency-bound) all-gather the whole buffer and every member sums it all;
// integer sums and max go through the host in f64 as LocalWorld does. `reductions: "nccl"` uses
// ncclAllReduce / ncclReduceScatter instead (faster on large groups, results within rounding).
//
// Every operation is enqueued on the stream and waited for by polling an event (async, yielding to
// the event loop) while also polling ncclCommGetAsyncError: an error or the deadline aborts every
// communicator of this rank (so nothing stays stuck on the stream) and throws one line naming the
// operation and the group. Plain send() is buffered (staged on the device and issued together with
// the next receive, batch or collective), as the Communicator contract says sends do not wait;
// batchIsendIrecv issues all its sends and receives inside one ncclGroupStart/End. Every p2p message
// carries a 256-byte header (tag, shape) checked on receipt, as the MPI communicator does.

import type { Backend } from "../backend/backend.ts";
import { CudaBackend } from "../backend/cuda/cuda_backend.ts";
import { type DType, DTYPE_BYTES } from "../tensor/dtype.ts";
import { shapeStr, type Tensor } from "../tensor/tensor.ts";
import {
  type Communicator,
  type GroupName,
  p2pChannel,
  type ParallelState,
  type ReduceOp,
} from "../parallel/types.ts";
import type { DiscoverEnv } from "../../ffi/discover.ts";
import {
  Nccl,
  NCCL_UNIQUE_ID_BYTES,
  type NcclComm,
  ncclDataType,
  ncclInProgress,
  ncclRedOp,
  ncclSuccess,
  ncclVersionString,
} from "../../ffi/nccl.ts";
import type { P2POp } from "./p2p.ts";

/** What the communicator needs of the rendezvous store (TcpStore has it). */
export interface NcclStore {
  set(key: string, value: string): Promise<void>;
  /** Waits (bounded) until some rank sets the key. */
  get(key: string): Promise<string>;
  add(key: string, delta: number): Promise<number>;
  /** Every rank of the world. */
  barrier(name?: string): Promise<void>;
}

export interface NcclCommunicatorOptions {
  /** The CUDA backend whose stream and memory the collectives use (its device is this rank's GPU). */
  backend: Backend;
  ps: ParallelState;
  /** Rank 0's store; may be null only in a world of one process. */
  store: NcclStore | null;
  /** Bound on every wait in milliseconds (default 10 minutes). */
  timeoutMs?: number;
  /** "ordered" (default): bit-identical to the in-process world; "nccl": NCCL's own reductions. */
  reductions?: "ordered" | "nccl";
  /** An already opened library (default: discovered with Nccl.open(env)). */
  lib?: Nccl;
  env?: DiscoverEnv;
}

export class NcclError extends Error {}

const GROUPS: readonly GroupName[] = ["tensor", "pipeline", "data", "model", "embedding", "world"];
/** Point-to-point traffic has communicators of its own over the world, one per p2pChannel (other,
 *  activations, gradients): NCCL matches sends and receives between two ranks in issue order per
 *  communicator, and the channels may be consumed in any interleaving (2-stage interleaved pipelines).
 *  Keeping p2p off the collectives' communicators also keeps it from being ordered behind them. */
const P2P = ["p2p0", "p2p1", "p2p2"] as const;
type CommName = GroupName | (typeof P2P)[number];
const HEADER = 256;
/** All-reduces up to this size all-gather the whole buffer (one collective) instead of exchanging. */
const SMALL_ALLREDUCE_BYTES = 64 * 1024;
const BYTES = ncclDataType.u8;

const NCCL_DTYPE: Readonly<Record<DType, number>> = {
  f32: ncclDataType.f32,
  f16: ncclDataType.f16,
  bf16: ncclDataType.bf16,
  f64: ncclDataType.f64,
  i32: ncclDataType.i32,
  i64: ncclDataType.i64,
  u8: ncclDataType.u8,
};

function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function unhex(s: string, what: string): Uint8Array {
  if (!/^[0-9a-f]*$/.test(s) || s.length !== 2 * NCCL_UNIQUE_ID_BYTES) {
    throw new NcclError(`nccl: ${what}: the store holds no valid unique id (${s.length} characters)`);
  }
  const out = new Uint8Array(NCCL_UNIQUE_ID_BYTES);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Float types the CUDA backend adds on the device (f32 accumulation, as LocalWorld). */
function deviceSum(d: DType): boolean {
  return d === "f32" || d === "f16" || d === "bf16";
}

interface PendingSend {
  header: Tensor;
  payload: Tensor;
  to: number;
  tag: string | undefined;
}

/** Creates this rank's communicators (collective over the world: every rank must call it with the
 *  same layout). Unique ids are exchanged first and a store barrier follows, because
 *  ncclCommInitRank blocks this thread until the group's members join, and rank 0's thread also
 *  serves the store. */
export async function createNcclCommunicator(opts: NcclCommunicatorOptions): Promise<NcclCommunicator> {
  const { backend, ps, store } = opts;
  if (!(backend instanceof CudaBackend)) {
    throw new NcclError(
      `nccl: --distributed-backend nccl needs --device cuda (the backend is ${backend.name})`,
    );
  }
  if (store === null && ps.worldSize > 1) {
    throw new NcclError(`nccl: a world of ${ps.worldSize} ranks needs the rendezvous store for unique ids`);
  }
  const lib = opts.lib ?? Nccl.open(opts.env);
  const ids = new Map<CommName, Uint8Array>();
  const members = (g: CommName) => ps.group(g.startsWith("p2p") ? "world" : g as GroupName);
  for (const g of [...GROUPS, ...P2P]) {
    const info = members(g);
    if (info.rank < 0) continue;
    if (store === null) {
      ids.set(g, lib.uniqueId());
      continue;
    }
    const base = `nccl/${g}/${info.ranks.join(",")}`;
    const gen = Math.floor(((await store.add(`${base}/joined`, 1)) - 1) / info.size);
    const key = `${base}/${gen}/id`;
    if (info.rank === 0) {
      const id = lib.uniqueId();
      await store.set(key, hex(id));
      ids.set(g, id);
    } else {
      ids.set(g, unhex(await store.get(key), `the ${g} group's id ${key}`));
    }
  }
  if (store !== null) await store.barrier("nccl-ids");
  const comms = new Map<CommName, NcclComm>();
  try {
    for (const [g, id] of ids) {
      const info = members(g);
      try {
        comms.set(g, lib.commInitRank(info.size, id, info.rank));
      } catch (e) {
        throw new NcclError(
          `nccl: creating the ${g} group's communicator (ranks ${
            info.ranks.join(",")
          }) at rank ${ps.globalRank} failed: ${(e as Error).message}`,
        );
      }
    }
  } catch (e) {
    for (const c of comms.values()) lib.commAbort(c);
    throw e;
  }
  return new NcclCommunicator(
    lib,
    backend,
    ps,
    comms,
    opts.timeoutMs ?? 600_000,
    opts.reductions ?? "ordered",
  );
}

export class NcclCommunicator implements Communicator {
  private broken: Error | null = null;
  private pendingSends: PendingSend[] = [];
  /** Staging buffers of enqueued sends: freed once a wait has seen the stream pass them. */
  private retired: Tensor[] = [];
  private closed = false;

  constructor(
    readonly lib: Nccl,
    readonly backend: CudaBackend,
    readonly ps: ParallelState,
    private readonly comms: Map<CommName, NcclComm>,
    private readonly timeoutMs: number,
    readonly reductions: "ordered" | "nccl",
  ) {}

  /** One line for the start-up log (library, version, world, reductions). */
  get description(): string {
    return `nccl ${
      ncclVersionString(this.lib.version())
    } (${this.lib.path}), world size ${this.ps.worldSize}, ${this.reductions} reductions`;
  }

  private comm(group: GroupName, kind: string): NcclComm {
    if (this.broken) throw this.broken;
    if (this.closed) throw new NcclError(`nccl: ${kind} after close()`);
    const c = this.comms.get(group);
    if (c === undefined) {
      throw new NcclError(`${kind}: rank ${this.ps.globalRank} is not a member of the ${group} group`);
    }
    return c;
  }

  private groupWhat(kind: string, group: GroupName): string {
    return `${kind} on the ${group} group (ranks ${
      this.ps.group(group).ranks.join(",")
    }) at rank ${this.ps.globalRank}`;
  }

  /** Marks the communicator broken and aborts every NCCL communicator of this rank, so kernels stuck
   *  waiting for a dead peer leave the stream. Returns the error to throw. */
  private fail(line: string): NcclError {
    const e = new NcclError(line);
    if (this.broken) return e;
    this.broken = e;
    for (const c of this.comms.values()) {
      try {
        this.lib.commAbort(c);
      } catch {
        // already failing: the first line is the one that matters
      }
    }
    this.comms.clear();
    this.pendingSends = [];
    return e;
  }

  /** Runs `enqueue` (NCCL calls on the stream); a synchronous NCCL error becomes the one line. */
  private enqueue(what: () => string, fn: () => void): void {
    if (this.broken) throw this.broken;
    try {
      fn();
    } catch (e) {
      throw this.fail(`nccl: ${what()} failed: ${(e as Error).message}`);
    }
  }

  /** Waits until the stream has run everything enqueued so far, watching the communicators' error
   *  state and the deadline. */
  private async wait(what: () => string): Promise<void> {
    const be = this.backend;
    const ev = be.recordEvent();
    const retired = this.retired;
    this.retired = [];
    try {
      const deadline = performance.now() + this.timeoutMs;
      let nextYield = performance.now() + 20;
      let nextErrorCheck = 0;
      let spins = 0;
      for (;;) {
        if (be.eventDone(ev)) {
          for (const t of retired) be.free(t);
          return;
        }
        let now = performance.now();
        // The error state at most every millisecond: one FFI call per communicator.
        if (now >= nextErrorCheck) {
          for (const c of this.comms.values()) {
            const rc = this.lib.asyncError(c);
            if (rc !== ncclSuccess && rc !== ncclInProgress) {
              throw this.fail(`nccl: ${what()} failed: ${this.lib.errorString(rc)} (${rc})`);
            }
          }
          now = performance.now();
          nextErrorCheck = now + 1;
        }
        if (now > deadline) {
          throw this.fail(
            `nccl: ${what()} timed out after ${+(this.timeoutMs / 60000).toFixed(
              3,
            )} min: a peer failed or did not arrive`,
          );
        }
        // Microtask yields let other coroutines run; a macrotask yield every 20 ms lets timers, sockets
        // (the store) and signal handlers run.
        if (now > nextYield) {
          await new Promise((r) => setTimeout(r, 0));
          nextYield = performance.now() + 20;
        } else if ((++spins & 15) === 0) await Promise.resolve();
      }
    } finally {
      be.destroyEvent(ev);
    }
  }

  private ptr(t: Tensor): bigint {
    return this.backend.devicePtr(t);
  }

  // ---- point-to-point ------------------------------------------------------------------------

  private header(t: Tensor, tag: string | undefined): Tensor {
    const head = new TextEncoder().encode(JSON.stringify({ tag: tag ?? null, shape: shapeStr(t.shape) }));
    if (head.length > HEADER) throw new NcclError(`send: tag ${tag} is too long`);
    const b = new Uint8Array(HEADER);
    b.set(head);
    return this.backend.fromHost("u8", [HEADER], b);
  }

  /** The p2p communicator of a tag's channel (peers are global ranks). */
  private p2p(tag: string | undefined): NcclComm {
    return this.comms.get(P2P[p2pChannel(tag)])!;
  }

  /** Enqueues one message (header then payload) to a global rank on its channel's communicator. */
  private sendMsg(header: Tensor, payload: Tensor, to: number, tag: string | undefined): void {
    const w = this.p2p(tag), s = this.backend.stream;
    this.lib.send(this.ptr(header), HEADER, BYTES, to, w, s);
    if (payload.bytes > 0) this.lib.send(this.ptr(payload), payload.bytes, BYTES, to, w, s);
  }

  private recvMsg(header: Tensor, into: Tensor, from: number, tag: string | undefined): void {
    const w = this.p2p(tag), s = this.backend.stream;
    this.lib.recv(this.ptr(header), HEADER, BYTES, from, w, s);
    if (into.bytes > 0) this.lib.recv(this.ptr(into), into.bytes, BYTES, from, w, s);
  }

  /** Checks a received header against the receiving tensor. */
  private checkHeader(header: Tensor, t: Tensor, from: number, tag: string | undefined): void {
    const b = this.backend.toHost(header) as Uint8Array;
    const end = b.indexOf(0);
    const head = JSON.parse(new TextDecoder().decode(b.subarray(0, end < 0 ? HEADER : end))) as {
      tag: string | null;
      shape: string;
    };
    const me = this.ps.globalRank;
    if (tag !== undefined && head.tag !== null && tag !== head.tag) {
      throw new NcclError(`recv on rank ${me} from rank ${from}: expected message ${tag}, got ${head.tag}`);
    }
    if (head.shape !== shapeStr(t.shape)) {
      throw new NcclError(
        `recv on rank ${me} from rank ${from}: sent ${head.shape}, receiving into ${shapeStr(t.shape)}`,
      );
    }
  }

  private retire(sent: readonly PendingSend[]): void {
    for (const p of sent) this.retired.push(p.header, p.payload);
  }

  /** Enqueues the buffered sends as one group (before a collective, which must not overtake them). */
  private flushSends(): void {
    if (this.pendingSends.length === 0) return;
    const sends = this.pendingSends;
    this.pendingSends = [];
    const to = sends.map((p) => p.to).join(",");
    this.enqueue(() => `buffered sends of rank ${this.ps.globalRank} to rank(s) ${to}`, () => {
      this.lib.groupStart();
      try {
        for (const p of sends) this.sendMsg(p.header, p.payload, p.to, p.tag);
      } finally {
        this.lib.groupEnd();
      }
    });
    this.retire(sends);
  }

  /** Buffered: the tensor is copied on the device and sent with this rank's next receive, batch or
   *  collective, so two ranks that send to each other before receiving do not deadlock. */
  send(t: Tensor, toGlobalRank: number, tag?: string): Promise<void> {
    try {
      this.comm("world", "send");
      if (toGlobalRank < 0 || toGlobalRank >= this.ps.worldSize) {
        throw new NcclError(`send: rank ${toGlobalRank} outside the world of ${this.ps.worldSize}`);
      }
      const payload = this.backend.empty(t.dtype, [t.size]);
      this.backend.copy(t, payload);
      this.pendingSends.push({ header: this.header(t, tag), payload, to: toGlobalRank, tag });
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  recv(t: Tensor, fromGlobalRank: number, tag?: string): Promise<void> {
    return this.batchIsendIrecv([{ op: "recv", tensor: t, peer: fromGlobalRank, tag }]);
  }

  /** Megatron's batch_isend_irecv: the buffered sends, then every send and receive of `ops`, inside
   *  one ncclGroupStart/End, then one wait. */
  async batchIsendIrecv(ops: readonly P2POp[]): Promise<void> {
    this.comm("world", "batchIsendIrecv");
    const sends = this.pendingSends;
    this.pendingSends = [];
    const headers = ops.map((
      o,
    ) => (o.op === "send" ? this.header(o.tensor, o.tag) : this.backend.empty("u8", [HEADER])));
    const peers = [
      ...sends.map((p) => `send to ${p.to}`),
      ...ops.map((o) => `${o.op} ${o.op === "send" ? "to" : "from"} ${o.peer}`),
    ]
      .join(", ");
    const what = () => `batch on rank ${this.ps.globalRank} (${peers})`;
    try {
      this.enqueue(what, () => {
        this.lib.groupStart();
        try {
          for (const p of sends) this.sendMsg(p.header, p.payload, p.to, p.tag);
          ops.forEach((o, i) => {
            if (o.op === "send") this.sendMsg(headers[i], o.tensor, o.peer, o.tag);
            else this.recvMsg(headers[i], o.tensor, o.peer, o.tag);
          });
        } finally {
          this.lib.groupEnd();
        }
      });
      await this.wait(what);
      ops.forEach((o, i) => {
        if (o.op === "recv") this.checkHeader(headers[i], o.tensor, o.peer, o.tag);
      });
    } finally {
      this.retire(sends);
      if (!this.broken) { for (const h of headers) this.backend.free(h); }
    }
  }

  // ---- collectives ---------------------------------------------------------------------------

  async broadcast(t: Tensor, rootInGroup: number, group: GroupName): Promise<void> {
    const c = this.comm(group, "broadcast");
    this.flushSends();
    const what = () => this.groupWhat(`broadcast from member ${rootInGroup}`, group);
    this.enqueue(
      what,
      () => this.lib.broadcast(this.ptr(t), this.ptr(t), t.bytes, BYTES, rootInGroup, c, this.backend.stream),
    );
    await this.wait(what);
  }

  async allGather(src: Tensor, dst: Tensor, group: GroupName): Promise<void> {
    const c = this.comm(group, "allGather");
    const n = this.ps.group(group).size;
    if (dst.size !== src.size * n) {
      throw new NcclError(`allGather: dst ${shapeStr(dst.shape)} is not ${n} x src ${shapeStr(src.shape)}`);
    }
    this.flushSends();
    // Mixed dtypes: LocalWorld rounds each element into dst's dtype; converting first is the same.
    const conv = src.dtype === dst.dtype
      ? null
      : this.backend.fromHost(dst.dtype, [src.size], this.backend.toF64(src));
    const s = conv ?? src;
    const what = () => this.groupWhat("allGather", group);
    try {
      this.enqueue(
        what,
        () => this.lib.allGather(this.ptr(s), this.ptr(dst), s.bytes, BYTES, c, this.backend.stream),
      );
      await this.wait(what);
    } finally {
      if (conv && !this.broken) this.backend.free(conv);
    }
  }

  async barrier(group: GroupName): Promise<void> {
    const c = this.comm(group, "barrier");
    this.flushSends();
    // NCCL has no barrier: a one-element all-reduce that every member must join (as torch does).
    const one = this.backend.zeros("f32", [1]);
    const what = () => this.groupWhat("barrier", group);
    try {
      this.enqueue(
        what,
        () =>
          this.lib.allReduce(
            this.ptr(one),
            this.ptr(one),
            1,
            ncclDataType.f32,
            ncclRedOp.sum,
            c,
            this.backend.stream,
          ),
      );
      await this.wait(what);
    } finally {
      if (!this.broken) this.backend.free(one);
    }
  }

  async allReduce(t: Tensor, op: ReduceOp, group: GroupName): Promise<void> {
    const c = this.comm(group, "allReduce");
    this.flushSends();
    const what = () => this.groupWhat(`allReduce:${op}`, group);
    if (this.reductions === "nccl") {
      this.enqueue(
        what,
        () =>
          this.lib.allReduce(
            this.ptr(t),
            this.ptr(t),
            t.size,
            NCCL_DTYPE[t.dtype],
            ncclRedOp[op],
            c,
            this.backend.stream,
          ),
      );
      await this.wait(what);
      return;
    }
    if (op === "sum" && deviceSum(t.dtype) && t.bytes > SMALL_ALLREDUCE_BYTES) {
      await this.exchangeReduce(t, t, group, c, what, true);
      return;
    }
    // Latency path: all-gather the whole buffer, every member reduces all of it in group order.
    const n = this.ps.group(group).size;
    const all = this.backend.empty(t.dtype, [n * t.size]);
    try {
      this.enqueue(
        what,
        () => this.lib.allGather(this.ptr(t), this.ptr(all), t.bytes, BYTES, c, this.backend.stream),
      );
      await this.wait(what);
      this.reduceInto(Array.from({ length: n }, (_, r) => all.flat(r * t.size, t.size)), op, t);
    } finally {
      if (!this.broken) this.backend.free(all);
    }
  }

  async reduceScatter(src: Tensor, dst: Tensor, group: GroupName): Promise<void> {
    const c = this.comm(group, "reduceScatter");
    const n = this.ps.group(group).size;
    if (src.size !== dst.size * n || src.dtype !== dst.dtype) {
      throw new NcclError(
        `reduceScatter: src ${src.dtype} ${shapeStr(src.shape)} is not ${n} x dst ${dst.dtype} ${
          shapeStr(dst.shape)
        }`,
      );
    }
    this.flushSends();
    const what = () => this.groupWhat("reduceScatter", group);
    if (this.reductions === "nccl") {
      this.enqueue(
        what,
        () =>
          this.lib.reduceScatter(
            this.ptr(src),
            this.ptr(dst),
            dst.size,
            NCCL_DTYPE[dst.dtype],
            ncclRedOp.sum,
            c,
            this.backend.stream,
          ),
      );
      await this.wait(what);
      return;
    }
    await this.exchangeReduce(src, dst, group, c, what, false);
  }

  /** Reduce-scatter by exchange (chunk j of every member to member j, inside one NCCL group), the
   *  member's chunk summed in group order, then (all-reduce) an all-gather of the reduced chunks.
   *  All-reduce chunks are ceil(size / n) long (the last ones shorter or empty) so that the gather
   *  has equal counts; reduce-scatter chunks are dst.size. */
  private async exchangeReduce(
    src: Tensor,
    dst: Tensor,
    group: GroupName,
    c: NcclComm,
    what: () => string,
    gather: boolean,
  ): Promise<void> {
    const be = this.backend, s = be.stream;
    const g = this.ps.group(group);
    const n = g.size, me = g.rank, size = src.size;
    const chunk = gather ? Math.ceil(size / n) : dst.size;
    const len = (j: number) => Math.max(0, Math.min(chunk, size - j * chunk));
    const mine = len(me);
    const parts = be.empty(src.dtype, [n * chunk]);
    const temps: Tensor[] = [parts];
    try {
      if (mine > 0) be.copy(src.flat(me * chunk, mine), parts.flat(me * chunk, mine));
      const esz = DTYPE_BYTES[src.dtype];
      this.enqueue(what, () => {
        this.lib.groupStart();
        try {
          for (let j = 0; j < n; j++) {
            if (j === me) continue;
            if (len(j) > 0) {
              this.lib.send(this.ptr(src) + BigInt(j * chunk * esz), len(j) * esz, BYTES, j, c, s);
            }
            if (mine > 0) {
              this.lib.recv(this.ptr(parts) + BigInt(j * chunk * esz), mine * esz, BYTES, j, c, s);
            }
          }
        } finally {
          this.lib.groupEnd();
        }
      });
      await this.wait(what);
      if (!gather) {
        this.reduceInto(Array.from({ length: n }, (_, j) => parts.flat(j * chunk, chunk)), "sum", dst);
        return;
      }
      const reduced = be.empty(src.dtype, [chunk]);
      const out = be.empty(src.dtype, [n * chunk]);
      temps.push(reduced, out);
      if (mine > 0) {
        this.reduceInto(
          Array.from({ length: n }, (_, j) => parts.flat(j * chunk, mine)),
          "sum",
          reduced.flat(0, mine),
        );
      }
      this.enqueue(
        what,
        () => this.lib.allGather(this.ptr(reduced), this.ptr(out), chunk * esz, BYTES, c, s),
      );
      await this.wait(what);
      be.copy(out.flat(0, size), dst);
    } finally {
      if (!this.broken) { for (const t of temps) be.free(t); }
    }
  }

  /** dst = the members' contributions reduced in group order, exactly as LocalWorld computes it. */
  private reduceInto(parts: readonly Tensor[], op: ReduceOp, dst: Tensor): void {
    const be = this.backend;
    const dtype = parts[0].dtype, elems = parts[0].size;
    if (op === "sum" && deviceSum(dtype)) {
      // LocalWorld.sumInGroupOrder: acc (f32) = part0; acc += part_r via Backend.add.
      const dt = "f32";
      const acc = be.empty(dt, [elems]);
      be.copy(parts[0], acc);
      const wide = dtype === dt ? null : be.empty(dt, [elems]);
      for (let r = 1; r < parts.length; r++) {
        let t = parts[r];
        if (wide) {
          be.copy(t, wide);
          t = wide;
        }
        be.add(acc, t, acc);
      }
      if (wide) be.free(wide);
      be.copy(acc, dst);
      be.free(acc);
      return;
    }
    // f64 and integer sums, max: f64 on the host (the CPU backend's f64 add in group order, which the
    // CUDA backend lacks), rounded into the dtype as LocalWorld.writeInto does.
    const hosts = parts.map((p) => be.toF64(p));
    const acc = new Float64Array(hosts[0]);
    for (let r = 1; r < hosts.length; r++) {
      const h = hosts[r];
      if (op === "sum") { for (let i = 0; i < elems; i++) acc[i] += h[i]; }
      else for (let i = 0; i < elems; i++) if (h[i] > acc[i] || Number.isNaN(h[i])) acc[i] = h[i];
    }
    const tmp = be.fromHost(dst.dtype, [elems], acc);
    be.copy(tmp, dst);
    be.free(tmp);
  }

  /** Sends still buffered go out (bounded wait), then every NCCL communicator is destroyed. After a
   *  failure the communicators were already aborted and nothing is waited for. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (!this.broken && this.pendingSends.length > 0) {
      const sends = this.pendingSends.map((p) => p.to).join(",");
      this.flushSends();
      await this.wait(() => `flushing sends of rank ${this.ps.globalRank} to rank(s) ${sends}`);
    }
    this.closed = true;
    if (this.broken) return;
    for (const c of this.comms.values()) this.lib.commDestroy(c);
    this.comms.clear();
  }
}
