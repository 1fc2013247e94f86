// The `mpi` communicator: one process per rank, traffic carried by MPI (MPICH or Open MPI through
// ffi/mpi.ts), with one MPI sub-communicator per group (MPI_Comm_split of the world, keyed by the
// rank's index in the group so MPI's order is the group order).
//
// Reductions are NOT MPI's own: MPI does not fix the order in which contributions are summed, and the
// losses must equal those of the in-process world bit for bit. A sum or max is done as a reduce-scatter
// by exchange (MPI_Ialltoallv: member j receives every member's j-th chunk) followed by a sum of the
// chunks in group order on this rank's backend, with the same ops LocalWorld uses (f32 accumulation via
// Backend.add for float types, f64 on the host for integers and max), and an MPI_Iallgatherv of the
// reduced chunks. Element i is therefore summed exactly as LocalWorld sums it; the traffic is that of a
// ring all-reduce (2 (n-1)/n of the buffer per rank). All-reduces of up to 64 KB use one all-gather of
// the whole buffer instead, each rank summing all of it in group order (one collective: lower latency).
//
// Every request is polled with MPI_Test(all) until done or until the timeout
// (--distributed-timeout-minutes): a peer that died makes the others fail with one line naming the
// operation and the group instead of hanging. Errors are returned, not fatal (MPI_ERRORS_RETURN).

import type { Backend } from "../backend/backend.ts";
import { CpuStorage } from "../backend/cpu/cpu_backend.ts";
import { type DType, DTYPE_BYTES, type HostArray, isFloat } from "../tensor/dtype.ts";
import { shapeStr, Tensor } from "../tensor/tensor.ts";
import {
  type Communicator,
  type GroupName,
  p2pChannel,
  type ParallelState,
  type ReduceOp,
} from "../parallel/types.ts";
import { MPI_UNDEFINED, type MpiHandle, type MpiLib, openMpi } from "../../ffi/mpi.ts";
import type { P2POp } from "./p2p.ts";

export interface MpiCommunicatorOptions {
  /** Bound on every wait in milliseconds (default 10 minutes). */
  timeoutMs?: number;
  /** Every send (plain or in a batch) is MPI_Issend: send() waits until the receiver has matched it,
   *  a batch until all its receivers have, i.e. blocking, unbuffered semantics; used to show that paired
   *  exchanges (the pipeline schedules) do not deadlock where separate calls do. */
  synchronousSends?: boolean;
  /** An already opened library (default: discovered with openMpi()). */
  lib?: MpiLib;
}

const GROUPS: readonly GroupName[] = ["tensor", "pipeline", "data", "model", "embedding", "world"];
/** Bytes of the header in front of every p2p message: tag and shape, JSON, NUL padded. */
const HEADER = 256;
const MAX_COUNT = 0x7fffffff;
/** All-reduces up to this size use one all-gather (latency) instead of exchange + gather (bandwidth). */
const SMALL_ALLREDUCE_BYTES = 64 * 1024;

export class MpiError extends Error {}

/** Wraps MPI_Init/Finalize and the world communicator of this process. */
export class MpiWorld {
  readonly rank: number;
  readonly size: number;
  private finalized = false;

  private constructor(readonly lib: MpiLib) {
    const flag = new Int32Array(1);
    lib.fn.MPI_Initialized(flag);
    if (!flag[0]) {
      const provided = new Int32Array(1);
      const rc = lib.fn.MPI_Init_thread(null, null, 0, provided);
      if (rc !== 0) throw new MpiError(`mpi: MPI_Init_thread failed: ${lib.errorString(rc)}`);
    }
    // Errors come back as codes and become one-line exceptions instead of aborting the job.
    lib.fn.MPI_Comm_set_errhandler(lib.COMM_WORLD, lib.ERRORS_RETURN);
    const r = new Int32Array(1);
    const s = new Int32Array(1);
    lib.fn.MPI_Comm_rank(lib.COMM_WORLD, r);
    lib.fn.MPI_Comm_size(lib.COMM_WORLD, s);
    this.rank = r[0];
    this.size = s[0];
  }

  /** Initializes MPI (once per process; the world is not reusable after finalize()). */
  static init(lib: MpiLib = openMpi()): MpiWorld {
    return new MpiWorld(lib);
  }

  /** One line for the start-up log. */
  describe(): string {
    return `mpi: ${this.lib.version()} (${this.lib.path}), world size ${this.size}`;
  }

  /** MPI_Abort on the world: the launcher (mpiexec) stops every rank. */
  abort(code: number): never {
    this.lib.fn.MPI_Abort(this.lib.COMM_WORLD, code);
    Deno.exit(code);
  }

  finalize(): void {
    if (this.finalized) return;
    this.finalized = true;
    this.lib.fn.MPI_Finalize();
  }
}

/** Host view of a CPU tensor's elements (raw bits for half types); null on other backends. */
function hostView(t: Tensor): HostArray | null {
  if (!(t.storage instanceof CpuStorage) || t.storage.data === null) return null;
  return t.storage.data.subarray(t.offset, t.offset + t.size) as HostArray;
}

/** Bytes of a typed array. Reading `.buffer` also moves a small V8 on-heap array off the heap, so the
 *  address handed to MPI stays valid while a request is pending. */
function bytesOf(a: HostArray): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function typed(dtype: DType, b: Uint8Array): HostArray {
  const n = b.byteLength / DTYPE_BYTES[dtype];
  switch (dtype) {
    case "f32":
      return new Float32Array(b.buffer, b.byteOffset, n);
    case "f64":
      return new Float64Array(b.buffer, b.byteOffset, n);
    case "f16":
    case "bf16":
      return new Uint16Array(b.buffer, b.byteOffset, n);
    case "i32":
      return new Int32Array(b.buffer, b.byteOffset, n);
    case "i64":
      return new BigInt64Array(b.buffer, b.byteOffset, n);
    case "u8":
      return new Uint8Array(b.buffer, b.byteOffset, n);
  }
}

/** Fresh off-heap bytes (MPI keeps the address while a request is pending, so never a V8 on-heap
 *  array that the GC could move). */
function staging(n: number): Uint8Array {
  return new Uint8Array(new ArrayBuffer(Math.max(n, 64)), 0, n);
}

function ptr(b: Uint8Array): Deno.PointerValue {
  return Deno.UnsafePointer.of(b as Uint8Array<ArrayBuffer>);
}

export class MpiCommunicator implements Communicator {
  private readonly lib: MpiLib;
  private readonly comms = new Map<GroupName, MpiHandle>();
  /** Separate context for point-to-point traffic (never matched against collectives). */
  private readonly p2p: MpiHandle;
  private readonly timeoutMs: number;
  private readonly syncSends: boolean;
  /** CPU backend: MPI reads and writes tensor memory directly. */
  private readonly zeroCopy: boolean;
  /** Sends whose buffers must stay alive until MPI is done with them. */
  private pendingSends: { req: Int32Array | BigUint64Array; buf: Uint8Array; to: number }[] = [];
  private broken: Error | null = null;
  /** Buffers of requests in progress (see waitAll). */
  private readonly inflight: (readonly unknown[])[] = [];

  /** Collective over the world: every rank must construct it with the same layout. */
  constructor(
    readonly world: MpiWorld,
    readonly backend: Backend,
    readonly ps: ParallelState,
    opts: MpiCommunicatorOptions = {},
  ) {
    this.lib = world.lib;
    this.timeoutMs = opts.timeoutMs ?? 600_000;
    this.syncSends = opts.synchronousSends ?? false;
    const probe = backend.empty("f32", [1]);
    this.zeroCopy = probe.storage instanceof CpuStorage;
    backend.free(probe);
    if (world.size !== ps.worldSize || world.rank !== ps.globalRank) {
      throw new MpiError(
        `mpi: the layout needs world size ${ps.worldSize} but mpiexec started ${world.size} process(es)` +
          (world.size === ps.worldSize ? ` (rank ${world.rank} vs layout rank ${ps.globalRank})` : ""),
      );
    }
    for (const g of GROUPS) {
      const info = ps.group(g);
      // Disjoint groups of one kind have distinct smallest members: a valid color.
      const color = info.rank < 0 ? MPI_UNDEFINED : info.ranks[0];
      this.comms.set(g, this.split(color, Math.max(info.rank, 0), `the ${g} group`));
    }
    this.p2p = this.split(0, ps.globalRank, "point-to-point");
  }

  private split(color: number, key: number, what: string): MpiHandle {
    const out = this.lib.handles(1);
    this.check(
      this.lib.fn.MPI_Comm_split(this.lib.COMM_WORLD, color, key, out),
      `MPI_Comm_split for ${what}`,
    );
    return out[0];
  }

  private check(rc: number, what: string): void {
    if (rc !== 0) throw this.fail(new MpiError(`mpi: ${what} failed: ${this.lib.errorString(rc)}`));
  }

  private fail(e: Error): Error {
    this.broken ??= e;
    return e;
  }

  private comm(group: GroupName, kind: string): MpiHandle {
    if (this.broken) throw this.broken;
    const c = this.comms.get(group)!;
    if (this.ps.group(group).rank < 0) {
      throw new MpiError(`${kind}: rank ${this.ps.globalRank} is not a member of the ${group} group`);
    }
    return c;
  }

  /** Polls requests until all complete. Throws one line on an MPI error or at the deadline. */
  private async waitAll(
    reqs: Int32Array | BigUint64Array,
    what: () => string,
    keep: readonly unknown[] = [],
  ): Promise<void> {
    // MPI reads and writes the buffers (and the count arrays of the v-collectives) until completion,
    // possibly from another process (CMA): they must stay reachable, or the GC may free them.
    this.inflight.push(keep);
    try {
      await this.poll(reqs, what);
    } finally {
      this.inflight.splice(this.inflight.indexOf(keep), 1);
    }
  }

  private async poll(reqs: Int32Array | BigUint64Array, what: () => string): Promise<void> {
    const flag = new Int32Array(1);
    const deadline = performance.now() + this.timeoutMs;
    // MPI advances non-blocking operations only inside MPI calls, so keep testing (as MPI's own blocking
    // calls spin); a macrotask yield every 20 ms lets timers and signal handlers run.
    let nextYield = performance.now() + 20;
    let spins = 0;
    for (;;) {
      const rc = this.lib.fn.MPI_Testall(reqs.length, reqs, flag, this.lib.STATUS_IGNORE);
      if (rc !== 0) throw this.fail(new MpiError(`mpi: ${what()} failed: ${this.lib.errorString(rc)}`));
      if (flag[0]) return;
      const now = performance.now();
      if (now > deadline) {
        throw this.fail(
          new MpiError(
            `mpi: ${what()} timed out after ${+(this.timeoutMs / 60000).toFixed(
              3,
            )} min: a peer failed or did not arrive`,
          ),
        );
      }
      if (now > nextYield) {
        await new Promise((r) => setTimeout(r, 0));
        nextYield = performance.now() + 20;
      } else if ((++spins & 63) === 0) await Promise.resolve();
    }
  }

  private groupWhat(kind: string, group: GroupName): string {
    return `${kind} on the ${group} group (ranks ${
      this.ps.group(group).ranks.join(",")
    }) at rank ${this.ps.globalRank}`;
  }

  /** Raw bytes of a tensor (a copy in off-heap memory). */
  private exportBytes(t: Tensor): Uint8Array {
    const view = hostView(t) ?? this.backend.toHost(t);
    const b = staging(view.byteLength);
    b.set(bytesOf(view));
    return b;
  }

  /** Writes raw bytes (of t's dtype) into t. */
  private importBytes(t: Tensor, b: Uint8Array): void {
    const view = hostView(t);
    if (view) {
      bytesOf(view).set(b);
      return;
    }
    const tmp = this.backend.fromHost(t.dtype, t.shape, typed(t.dtype, b.slice()));
    this.backend.copy(tmp, t);
    this.backend.free(tmp);
  }

  /** A tensor holding bytes b: on the CPU backend a view of b itself (never to be freed: the backend
   *  would pool memory it does not own), else a copy (owned: free it). */
  private tensorOf(dtype: DType, b: Uint8Array): { t: Tensor; owned: boolean } {
    const n = b.byteLength / DTYPE_BYTES[dtype];
    if (this.zeroCopy) return { t: new Tensor(dtype, [n], new CpuStorage(typed(dtype, b))), owned: false };
    const t = this.backend.empty(dtype, [n]);
    this.importBytes(t, b);
    return { t, owned: true };
  }

  /** The bytes to send from t: the CPU tensor's own memory (MPI only reads it, and callers await the
   *  collective), else a staged copy. */
  private sendBytes(t: Tensor): Uint8Array {
    const view = this.zeroCopy ? hostView(t) : null;
    return view ? bytesOf(view) : this.exportBytes(t);
  }

  private count(n: number, what: string): number {
    if (n > MAX_COUNT) throw new MpiError(`mpi: ${what}: ${n} bytes exceed MPI's int count`);
    return n;
  }

  allReduce(t: Tensor, op: ReduceOp, group: GroupName): Promise<void> {
    return this.reduce(t, t, op, group, "allReduce", true);
  }

  reduceScatter(src: Tensor, dst: Tensor, group: GroupName): Promise<void> {
    const n = this.ps.group(group).size;
    if (src.size !== dst.size * n) {
      throw new MpiError(
        `reduceScatter: src ${shapeStr(src.shape)} is not ${n} x dst ${shapeStr(dst.shape)}`,
      );
    }
    return this.reduce(src, dst, "sum", group, "reduceScatter", false);
  }

  /** Exchange chunks (alltoallv), reduce my chunk in group order, then (all-reduce) allgatherv. */
  private async reduce(
    src: Tensor,
    dst: Tensor,
    op: ReduceOp,
    group: GroupName,
    kind: string,
    gather: boolean,
  ): Promise<void> {
    const comm = this.comm(group, kind);
    const g = this.ps.group(group);
    const n = g.size;
    if (n === 1) {
      if (src !== dst) this.backend.copy(src, dst);
      return;
    }
    const what = () => this.groupWhat(`${kind}:${op}`, group);
    const dtype = src.dtype;
    const esz = DTYPE_BYTES[dtype];
    const size = src.size;
    if (gather && size * esz <= SMALL_ALLREDUCE_BYTES) {
      // Latency path: one all-gather, then every rank reduces the whole buffer in group order.
      const send = this.sendBytes(src);
      const all = staging(send.byteLength * n);
      const req = this.lib.handles(1);
      this.check(
        this.lib.fn.MPI_Iallgather(
          ptr(send),
          send.byteLength,
          this.lib.BYTE,
          ptr(all),
          send.byteLength,
          this.lib.BYTE,
          comm,
          req,
        ),
        what(),
      );
      await this.waitAll(req, what, [send, all]);
      this.importBytes(dst, this.reduceChunks(dtype, op, all, send.byteLength, n));
      return;
    }
    const start = (j: number) => Math.floor((j * size) / n);
    const counts = new Int32Array(new ArrayBuffer(64 + 4 * n), 0, n);
    const displs = new Int32Array(new ArrayBuffer(64 + 4 * n), 0, n);
    for (let j = 0; j < n; j++) {
      counts[j] = this.count((start(j + 1) - start(j)) * esz, what());
      displs[j] = start(j) * esz;
    }
    const me = g.rank;
    const mine = counts[me];
    const sendAll = this.sendBytes(src);
    const recvChunks = staging(mine * n);
    const rcounts = new Int32Array(new ArrayBuffer(64 + 4 * n), 0, n).fill(mine);
    const rdispls = new Int32Array(new ArrayBuffer(64 + 4 * n), 0, n).map((_, j) => j * mine);
    const req = this.lib.handles(1);
    this.check(
      this.lib.fn.MPI_Ialltoallv(
        ptr(sendAll),
        counts,
        displs,
        this.lib.BYTE,
        ptr(recvChunks),
        rcounts,
        rdispls,
        this.lib.BYTE,
        comm,
        req,
      ),
      what(),
    );
    await this.waitAll(req, what, [sendAll, recvChunks, counts, displs, rcounts, rdispls]);
    const reduced = this.reduceChunks(dtype, op, recvChunks, mine, n);
    if (!gather) {
      this.importBytes(dst, reduced);
      return;
    }
    // Gather straight into dst's memory on the CPU (src was fully read by the exchange above).
    const dstView = this.zeroCopy ? hostView(dst) : null;
    const out = dstView ? bytesOf(dstView) : staging(size * esz);
    const req2 = this.lib.handles(1);
    this.check(
      this.lib.fn.MPI_Iallgatherv(
        ptr(reduced),
        mine,
        this.lib.BYTE,
        ptr(out),
        counts,
        displs,
        this.lib.BYTE,
        comm,
        req2,
      ),
      what(),
    );
    await this.waitAll(req2, what, [reduced, out, counts, displs]);
    if (!dstView) this.importBytes(dst, out);
  }

  /** The n contributions to one chunk, reduced in group order exactly as LocalWorld does. */
  private reduceChunks(dtype: DType, op: ReduceOp, chunks: Uint8Array, len: number, n: number): Uint8Array {
    const be = this.backend;
    const part = (r: number) => chunks.subarray(r * len, (r + 1) * len);
    const elems = len / DTYPE_BYTES[dtype];
    if (op === "sum" && isFloat(dtype)) {
      // LocalWorld.sumInGroupOrder: acc (f32, or f64 for f64) = src0; acc += src_r via Backend.add.
      const dt = dtype === "f64" ? "f64" : "f32";
      const out = staging(len);
      // Same-width sums accumulate straight in the output bytes.
      const direct = dtype === dt ? this.tensorOf(dt, out) : null;
      const acc = direct ? direct.t : be.empty(dt, [elems]);
      const first = this.tensorOf(dtype, part(0));
      be.copy(first.t, acc);
      if (first.owned) be.free(first.t);
      const wide = dtype === dt ? null : be.empty(dt, [elems]);
      for (let r = 1; r < n; r++) {
        const x = this.tensorOf(dtype, part(r));
        let t = x.t;
        if (wide) {
          be.copy(t, wide);
          t = wide;
        }
        be.add(acc, t, acc);
        if (x.owned) be.free(x.t);
      }
      if (wide) be.free(wide);
      if (direct) {
        if (direct.owned) {
          out.set(bytesOf(be.toHost(acc)));
          be.free(acc);
        }
        return out;
      }
      const res = be.empty(dtype, [elems]);
      be.copy(acc, res);
      be.free(acc);
      const b = this.exportBytes(res);
      be.free(res);
      return b;
    }
    // Integer sums and max: f64 on the host, then rounded into the dtype (LocalWorld.writeInto).
    const hosts: Float64Array[] = [];
    for (let r = 0; r < n; r++) {
      const x = this.tensorOf(dtype, part(r));
      hosts.push(be.toF64(x.t));
      if (x.owned) be.free(x.t);
    }
    const acc = new Float64Array(hosts[0]);
    for (let r = 1; r < n; r++) {
      const h = hosts[r];
      if (op === "sum") { for (let i = 0; i < elems; i++) acc[i] += h[i]; }
      else for (let i = 0; i < elems; i++) if (h[i] > acc[i] || Number.isNaN(h[i])) acc[i] = h[i];
    }
    const res = be.fromHost(dtype, [elems], acc);
    const b = this.exportBytes(res);
    be.free(res);
    return b;
  }

  async allGather(src: Tensor, dst: Tensor, group: GroupName): Promise<void> {
    const comm = this.comm(group, "allGather");
    const n = this.ps.group(group).size;
    if (dst.size !== src.size * n) {
      throw new MpiError(`allGather: dst ${shapeStr(dst.shape)} is not ${n} x src ${shapeStr(src.shape)}`);
    }
    // Mixed dtypes: LocalWorld rounds each element into dst's dtype; converting first is the same.
    let conv: Tensor | null = null;
    if (src.dtype !== dst.dtype) {
      conv = this.backend.fromHost(dst.dtype, [src.size], this.backend.toF64(src));
    }
    const send = this.exportBytes(conv ?? src);
    if (conv) this.backend.free(conv);
    if (n === 1) {
      this.importBytes(dst, send);
      return;
    }
    const out = staging(send.byteLength * n);
    const what = () => this.groupWhat("allGather", group);
    const req = this.lib.handles(1);
    const c = this.count(send.byteLength, what());
    this.check(
      this.lib.fn.MPI_Iallgather(ptr(send), c, this.lib.BYTE, ptr(out), c, this.lib.BYTE, comm, req),
      what(),
    );
    await this.waitAll(req, what, [send, out]);
    this.importBytes(dst, out);
  }

  async broadcast(t: Tensor, rootInGroup: number, group: GroupName): Promise<void> {
    const comm = this.comm(group, "broadcast");
    const g = this.ps.group(group);
    if (g.size === 1) return;
    const buf = this.exportBytes(t);
    const what = () => this.groupWhat(`broadcast from member ${rootInGroup}`, group);
    const req = this.lib.handles(1);
    this.check(
      this.lib.fn.MPI_Ibcast(
        ptr(buf),
        this.count(buf.byteLength, what()),
        this.lib.BYTE,
        rootInGroup,
        comm,
        req,
      ),
      what(),
    );
    await this.waitAll(req, what, [buf]);
    if (g.rank !== rootInGroup) this.importBytes(t, buf);
  }

  async barrier(group: GroupName): Promise<void> {
    const comm = this.comm(group, "barrier");
    const req = this.lib.handles(1);
    const what = () => this.groupWhat("barrier", group);
    this.check(this.lib.fn.MPI_Ibarrier(comm, req), what());
    await this.waitAll(req, what);
  }

  /** A p2p message: header (tag, shape) + the tensor's bytes. */
  private message(t: Tensor, tag: string | undefined): Uint8Array {
    const view = hostView(t) ?? this.backend.toHost(t);
    const head = new TextEncoder().encode(JSON.stringify({ tag: tag ?? null, shape: shapeStr(t.shape) }));
    if (head.length > HEADER) throw new MpiError(`send: tag ${tag} is too long`);
    const b = staging(HEADER + view.byteLength);
    b.set(head);
    b.set(bytesOf(view), HEADER);
    return b;
  }

  /** The MPI tag is the tag's channel (activations, gradients, other): messages are matched in order
   *  per channel, so both directions between two stages can be in flight at once (2-stage interleaving). */
  private postSend(
    b: Uint8Array,
    to: number,
    sync: boolean,
    tag: string | undefined,
  ): Int32Array | BigUint64Array {
    if (this.broken) throw this.broken;
    const req = this.lib.handles(1);
    const f = sync ? this.lib.fn.MPI_Issend : this.lib.fn.MPI_Isend;
    this.check(
      f(ptr(b), this.count(b.byteLength, "send"), this.lib.BYTE, to, p2pChannel(tag), this.p2p, req),
      `send to rank ${to}`,
    );
    return req;
  }

  private postRecv(b: Uint8Array, from: number, tag: string | undefined): Int32Array | BigUint64Array {
    if (this.broken) throw this.broken;
    const req = this.lib.handles(1);
    const t = p2pChannel(tag);
    this.check(
      this.lib.fn.MPI_Irecv(ptr(b), this.count(b.byteLength, "recv"), this.lib.BYTE, from, t, this.p2p, req),
      `recv from rank ${from}`,
    );
    return req;
  }

  /** Checks a received header against the receiving tensor and copies the payload in. */
  private deliver(b: Uint8Array, t: Tensor, from: number, tag: string | undefined): void {
    const end = b.subarray(0, HEADER).indexOf(0);
    const head = JSON.parse(new TextDecoder().decode(b.subarray(0, end < 0 ? HEADER : end))) as {
      tag: string | null;
      shape: string;
    };
    const me = this.ps.globalRank;
    if (tag !== undefined && head.tag !== null && tag !== head.tag) {
      throw new MpiError(`recv on rank ${me} from rank ${from}: expected message ${tag}, got ${head.tag}`);
    }
    if (head.shape !== shapeStr(t.shape)) {
      throw new MpiError(
        `recv on rank ${me} from rank ${from}: sent ${head.shape}, receiving into ${shapeStr(t.shape)}`,
      );
    }
    this.importBytes(t, b.subarray(HEADER));
  }

  /** Buffered send: returns once MPI holds the message (or, with synchronousSends, once the receiver
   *  matched it). Completed sends are reaped on later calls. */
  async send(t: Tensor, toGlobalRank: number, tag?: string): Promise<void> {
    const b = this.message(t, tag);
    const req = this.postSend(b, toGlobalRank, this.syncSends, tag);
    if (this.syncSends) {
      await this.waitAll(req, () => `send from rank ${this.ps.globalRank} to rank ${toGlobalRank}`, [b]);
      return;
    }
    this.pendingSends.push({ req, buf: b, to: toGlobalRank });
    this.reapSends();
  }

  private reapSends(): void {
    const flag = new Int32Array(1);
    this.pendingSends = this.pendingSends.filter((s) => {
      const rc = this.lib.fn.MPI_Test(s.req, flag, this.lib.STATUS_IGNORE);
      if (rc !== 0) {
        throw this.fail(new MpiError(`mpi: send to rank ${s.to} failed: ${this.lib.errorString(rc)}`));
      }
      return !flag[0];
    });
  }

  async recv(t: Tensor, fromGlobalRank: number, tag?: string): Promise<void> {
    const b = staging(HEADER + t.size * DTYPE_BYTES[t.dtype]);
    const req = this.postRecv(b, fromGlobalRank, tag);
    await this.waitAll(req, () => `recv on rank ${this.ps.globalRank} from rank ${fromGlobalRank}`, [b]);
    this.reapSends();
    this.deliver(b, t, fromGlobalRank, tag);
  }

  /** Posts every send and receive at once, then waits for all (Megatron's batch_isend_irecv): paired
   *  exchanges such as send_forward_recv_backward cannot deadlock even with unbuffered sends. */
  async batchIsendIrecv(ops: readonly P2POp[]): Promise<void> {
    const reqs = this.lib.handles(ops.length);
    const bufs: Uint8Array[] = [];
    ops.forEach((o, i) => {
      const b = o.op === "send"
        ? this.message(o.tensor, o.tag)
        : staging(HEADER + o.tensor.size * DTYPE_BYTES[o.tensor.dtype]);
      bufs.push(b);
      const r = o.op === "send"
        ? this.postSend(b, o.peer, this.syncSends, o.tag)
        : this.postRecv(b, o.peer, o.tag);
      reqs[i] = r[0] as never;
    });
    const peers = ops.map((o) => `${o.op} ${o.op === "send" ? "to" : "from"} ${o.peer}`).join(", ");
    await this.waitAll(reqs, () => `batch on rank ${this.ps.globalRank} (${peers})`, bufs);
    ops.forEach((o, i) => {
      if (o.op === "recv") this.deliver(bufs[i], o.tensor, o.peer, o.tag);
    });
  }

  /** Waits for outstanding sends (bounded), then frees the sub-communicators. Call before finalize. */
  async close(): Promise<void> {
    if (!this.broken && this.pendingSends.length > 0) {
      const reqs = this.lib.handles(this.pendingSends.length);
      this.pendingSends.forEach((s, i) => (reqs[i] = s.req[0] as never));
      await this.waitAll(reqs, () => `flushing sends of rank ${this.ps.globalRank}`);
      this.pendingSends = [];
    }
    if (this.broken) return;
    for (const c of [...this.comms.values(), this.p2p]) {
      if (c === this.lib.COMM_NULL) continue;
      const h = this.lib.handles(1);
      h[0] = c as never;
      this.lib.fn.MPI_Comm_free(h);
    }
    this.comms.clear();
  }
}
export type { P2POp } from "./p2p.ts";
