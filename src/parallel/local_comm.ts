// The `local` communicator: N ranks as concurrent coroutines in one process, each with its own
// modules and optimizer, sharing one backend (the CPU, or one GPU). Collectives meet at a rendezvous
// per (group, call number); the last member to arrive performs the reduction in group order, so
// results are deterministic. A collective that waits longer than the timeout fails every waiting
// member with a message naming the group and the ranks that did not arrive.

import type { Backend } from "../backend/backend.ts";
import { isFloat } from "../tensor/dtype.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { shapeStr } from "../tensor/tensor.ts";
import {
  type Communicator,
  type GroupName,
  makeParallelState,
  p2pChannel,
  type ParallelState,
  type ReduceOp,
} from "./types.ts";

export interface LocalWorldOptions {
  /** Milliseconds a collective or recv may wait for its peers (default 10 minutes, as Megatron-Core's
   *  --distributed-timeout-minutes). */
  timeoutMs?: number;
}

interface Arrival {
  rank: number;
  kind: string;
  src: Tensor;
  dst: Tensor;
  extra: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

interface Meeting {
  arrivals: Arrival[];
  timer: ReturnType<typeof setTimeout> | undefined;
}

interface Message {
  /** A backend-side copy owned by the mailbox until received. */
  data: Tensor;
  shape: string;
  tag: string | undefined;
}

type Waiter = {
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
  settled: boolean;
};

/** Shared state of one in-process world. Created per run (never module-level). */
export class LocalWorld {
  readonly size: number;
  readonly states: ParallelState[];
  private readonly timeoutMs: number;
  private readonly meetings = new Map<string, Meeting>();
  /** Next call number per (rank, group key). */
  private readonly callNo = new Map<string, number>();
  private readonly mailbox = new Map<string, Message[]>();
  private readonly waiters = new Map<string, Waiter[]>();
  /** Set by abort(): every later collective or receive fails at once with this error. */
  private aborted: Error | null = null;

  constructor(
    readonly backend: Backend,
    sizes: { tp: number; pp: number; dp: number; vp?: number },
    opts: LocalWorldOptions = {},
  ) {
    this.size = sizes.tp * sizes.pp * sizes.dp;
    this.states = Array.from({ length: this.size }, (_, r) => makeParallelState(sizes, r));
    this.timeoutMs = opts.timeoutMs ?? 600_000;
  }

  communicator(rank: number): Communicator {
    return new LocalCommunicator(this, this.states[rank]);
  }

  /** Fail every pending and later collective and receive with `reason`, clearing their timers (one
   *  rank failed: the others must not wait for the timeout). The world is unusable afterwards. */
  abort(reason: Error): void {
    if (this.aborted) return;
    this.aborted = reason;
    for (const m of this.meetings.values()) {
      clearTimeout(m.timer);
      for (const a of m.arrivals) a.reject(reason);
    }
    this.meetings.clear();
    for (const ws of this.waiters.values()) {
      for (const w of ws) {
        w.settled = true;
        clearTimeout(w.timer);
        w.reject(reason);
      }
    }
    this.waiters.clear();
    for (const q of this.mailbox.values()) for (const m of q) this.backend.free(m.data);
    this.mailbox.clear();
  }

  /** Run fn for every rank concurrently. If one fails, the world is aborted (so no rank waits for a
   *  peer that will never come), every rank is let finish, and the first failure is rethrown. */
  async run<T>(fn: (rank: number) => Promise<T>): Promise<T[]> {
    const all = this.states.map((_, r) => fn(r));
    try {
      return await Promise.all(all);
    } catch (e) {
      this.abort(new Error(`aborted because another rank failed: ${(e as Error).message}`));
      await Promise.allSettled(all);
      throw e;
    }
  }

  /** Join collective `kind` of `group` as `ps.globalRank`. */
  collective(
    ps: ParallelState,
    group: GroupName,
    kind: string,
    src: Tensor,
    dst: Tensor,
    extra = 0,
  ): Promise<void> {
    if (this.aborted) return Promise.reject(this.aborted);
    const g = ps.group(group);
    if (g.rank < 0) throw new Error(`${kind}: rank ${ps.globalRank} is not a member of the ${group} group`);
    if (g.size === 1) {
      if (src !== dst && kind !== "broadcast") this.backend.copy(src, dst);
      return Promise.resolve();
    }
    const gkey = `${group}:${g.ranks.join(",")}`;
    const ckey = `${ps.globalRank}|${gkey}`;
    const n = this.callNo.get(ckey) ?? 0;
    this.callNo.set(ckey, n + 1);
    const mkey = `${gkey}#${n}`;
    let m = this.meetings.get(mkey);
    if (!m) {
      m = { arrivals: [], timer: undefined };
      this.meetings.set(mkey, m);
      const meeting = m;
      meeting.timer = setTimeout(() => {
        this.meetings.delete(mkey);
        const here = new Set(meeting.arrivals.map((a) => a.rank));
        const missing = g.ranks.filter((r) => !here.has(r));
        const err = new Error(
          `${kind} on the ${group} group (ranks ${
            g.ranks.join(",")
          }) timed out after ${this.timeoutMs} ms: ` +
            `rank(s) ${missing.join(",")} did not arrive`,
        );
        for (const a of meeting.arrivals) a.reject(err);
      }, this.timeoutMs);
    }
    const meeting = m;
    return new Promise<void>((resolve, reject) => {
      meeting.arrivals.push({ rank: ps.globalRank, kind, src, dst, extra, resolve, reject });
      if (meeting.arrivals.length < g.size) return;
      clearTimeout(meeting.timer);
      this.meetings.delete(mkey);
      try {
        const ordered = g.ranks.map((r) => meeting.arrivals.find((a) => a.rank === r)!);
        const kinds = new Set(ordered.map((a) => a.kind));
        if (kinds.size !== 1) {
          throw new Error(
            `collective mismatch on the ${group} group: members called ${[...kinds].join(" and ")}`,
          );
        }
        this.perform(kind, ordered);
        for (const a of ordered) a.resolve();
      } catch (e) {
        for (const a of meeting.arrivals) a.reject(e as Error);
      }
    });
  }

  private perform(kind: string, ordered: Arrival[]): void {
    if (kind === "barrier") return;
    const be = this.backend;
    const n = ordered.length;
    const srcs = ordered.map((a) => a.src);
    const size = srcs[0].size;
    if (kind !== "allGather" && srcs.some((t) => t.size !== size)) {
      throw new Error(
        `${kind}: members passed tensors of different sizes (${srcs.map((t) => t.size).join(", ")})`,
      );
    }
    // Float sums, gathers and broadcasts stay on the backend (no host round trip on a GPU); every
    // result is computed before any member's destination is written (allReduce is in place).
    const deviceOk = srcs.every((t) => isFloat(t.dtype) && t.dtype === srcs[0].dtype);
    switch (kind) {
      case "allReduce:sum":
      case "reduceScatter": {
        if (deviceOk) {
          const acc = this.sumInGroupOrder(srcs);
          const part = kind === "reduceScatter" ? size / n : size;
          ordered.forEach((a, r) =>
            be.copy(kind === "reduceScatter" ? acc.flat(r * part, part) : acc, a.dst)
          );
          be.free(acc);
          return;
        }
        const hosts = srcs.map((t) => be.toF64(t));
        const acc = new Float64Array(hosts[0]);
        for (let r = 1; r < n; r++) for (let i = 0; i < size; i++) acc[i] += hosts[r][i];
        const part = kind === "reduceScatter" ? size / n : size;
        ordered.forEach((a, r) => {
          const start = kind === "reduceScatter" ? r * part : 0;
          this.writeInto(a.dst, acc.subarray(start, start + part));
        });
        return;
      }
      case "allReduce:max": {
        const hosts = srcs.map((t) => be.toF64(t));
        const acc = new Float64Array(hosts[0]);
        for (let r = 1; r < n; r++) {
          const h = hosts[r];
          for (let i = 0; i < size; i++) if (h[i] > acc[i] || Number.isNaN(h[i])) acc[i] = h[i];
        }
        for (const a of ordered) this.writeInto(a.dst, acc);
        return;
      }
      case "allGather": {
        // Stage the concatenation once, then copy it to every member (same-dtype copies only, which
        // every backend does for any dtype; mixed dtypes go through the host).
        const total = srcs.reduce((t, x) => t + x.size, 0);
        if (srcs.every((t) => t.dtype === srcs[0].dtype)) {
          const out = be.empty(srcs[0].dtype, [total]);
          let off = 0;
          for (const t of srcs) {
            be.copy(t, out.flat(off, t.size));
            off += t.size;
          }
          for (const a of ordered) be.copy(out, a.dst);
          be.free(out);
          return;
        }
        const out = new Float64Array(total);
        let off = 0;
        for (const t of srcs) {
          out.set(be.toF64(t), off);
          off += t.size;
        }
        for (const a of ordered) this.writeInto(a.dst, out);
        return;
      }
      case "broadcast": {
        const root = ordered[0].extra;
        ordered.forEach((a, r) => {
          if (r !== root) be.copy(srcs[root], a.dst);
        });
        return;
      }
    }
    throw new Error(`local communicator: unknown collective ${kind}`);
  }

  /** Sum of same-dtype float tensors, added in group order (deterministic) into a new f32 tensor (f64
   *  for f64 inputs; half inputs are widened first). */
  private sumInGroupOrder(srcs: Tensor[]): Tensor {
    const be = this.backend;
    const dt = srcs[0].dtype === "f64" ? "f64" : "f32";
    const acc = be.empty(dt, [srcs[0].size]);
    be.copy(srcs[0], acc);
    const wide = srcs[0].dtype === dt ? null : be.empty(dt, [srcs[0].size]);
    for (let r = 1; r < srcs.length; r++) {
      let t = srcs[r].view([srcs[r].size]);
      if (wide) {
        be.copy(t, wide);
        t = wide;
      }
      be.add(acc, t, acc);
    }
    if (wide) be.free(wide);
    return acc;
  }

  /** Copy f64 host values into a device tensor (rounded to its dtype). */
  writeInto(dst: Tensor, values: Float64Array): void {
    if (values.length !== dst.size) {
      throw new Error(`local communicator: ${values.length} values for a tensor of ${dst.size} elements`);
    }
    const tmp = this.backend.fromHost(dst.dtype, dst.shape, values);
    this.backend.copy(tmp, dst);
    this.backend.free(tmp);
  }

  send(from: number, to: number, t: Tensor, tag?: string): Promise<void> {
    if (this.aborted) return Promise.reject(this.aborted);
    const key = `${from}->${to}#${p2pChannel(tag)}`;
    const data = this.backend.empty(t.dtype, [t.size]);
    this.backend.copy(t, data);
    const msg: Message = { data, shape: shapeStr(t.shape), tag };
    const ws = this.waiters.get(key);
    if (ws && ws.length > 0) {
      const w = ws.shift()!;
      w.settled = true;
      clearTimeout(w.timer);
      w.resolve(msg);
    } else {
      const q = this.mailbox.get(key) ?? [];
      q.push(msg);
      this.mailbox.set(key, q);
    }
    return Promise.resolve();
  }

  async recv(from: number, to: number, t: Tensor, tag?: string): Promise<void> {
    if (this.aborted) throw this.aborted;
    const key = `${from}->${to}#${p2pChannel(tag)}`;
    const q = this.mailbox.get(key);
    let msg: Message;
    if (q && q.length > 0) msg = q.shift()!;
    else {
      msg = await new Promise<Message>((resolve, reject) => {
        // Register before arming the timer: Deno's first setTimeout call in a process can run
        // pending microtasks (other ranks) before it returns, and a send made then must find us.
        const w: Waiter = { resolve, reject, timer: undefined, settled: false };
        const ws = this.waiters.get(key) ?? [];
        ws.push(w);
        this.waiters.set(key, ws);
        const timer = setTimeout(() => {
          w.settled = true;
          this.waiters.set(key, (this.waiters.get(key) ?? []).filter((x) => x !== w));
          reject(new Error(`recv on rank ${to} from rank ${from} timed out after ${this.timeoutMs} ms`));
        }, this.timeoutMs);
        if (w.settled) clearTimeout(timer);
        else w.timer = timer;
      });
    }
    try {
      if (tag !== undefined && msg.tag !== undefined && tag !== msg.tag) {
        throw new Error(`recv on rank ${to} from rank ${from}: expected message ${tag}, got ${msg.tag}`);
      }
      if (msg.shape !== shapeStr(t.shape)) {
        throw new Error(
          `recv on rank ${to} from rank ${from}: sent ${msg.shape}, receiving into ${shapeStr(t.shape)}`,
        );
      }
      this.backend.copy(msg.data, t);
    } finally {
      this.backend.free(msg.data);
    }
  }
}

class LocalCommunicator implements Communicator {
  constructor(private readonly world: LocalWorld, private readonly ps: ParallelState) {}

  allReduce(t: Tensor, op: ReduceOp, group: GroupName): Promise<void> {
    return this.world.collective(this.ps, group, `allReduce:${op}`, t, t);
  }
  allGather(src: Tensor, dst: Tensor, group: GroupName): Promise<void> {
    const n = this.ps.group(group).size;
    if (dst.size !== src.size * n) {
      throw new Error(`allGather: dst ${shapeStr(dst.shape)} is not ${n} x src ${shapeStr(src.shape)}`);
    }
    return this.world.collective(this.ps, group, "allGather", src, dst);
  }
  reduceScatter(src: Tensor, dst: Tensor, group: GroupName): Promise<void> {
    const n = this.ps.group(group).size;
    if (src.size !== dst.size * n) {
      throw new Error(`reduceScatter: src ${shapeStr(src.shape)} is not ${n} x dst ${shapeStr(dst.shape)}`);
    }
    return this.world.collective(this.ps, group, "reduceScatter", src, dst);
  }
  broadcast(t: Tensor, rootInGroup: number, group: GroupName): Promise<void> {
    return this.world.collective(this.ps, group, "broadcast", t, t, rootInGroup);
  }
  send(t: Tensor, toGlobalRank: number, tag?: string): Promise<void> {
    return this.world.send(this.ps.globalRank, toGlobalRank, t, tag);
  }
  recv(t: Tensor, fromGlobalRank: number, tag?: string): Promise<void> {
    return this.world.recv(fromGlobalRank, this.ps.globalRank, t, tag);
  }
  barrier(group: GroupName): Promise<void> {
    return this.world.collective(
      this.ps,
      group,
      "barrier",
      null as unknown as Tensor,
      null as unknown as Tensor,
    );
  }
}
