// The `local` communicator: N ranks as concurrent coroutines in one process, each with its own
// modules and optimizer, sharing one backend (the CPU, or one GPU). Collectives meet at a rendezvous
// per (group, call number); the last member to arrive performs the reduction in group order, so
// results are deterministic. A collective that waits longer than the timeout fails every waiting
// member with a message naming the group and the ranks that did not arrive.

import type { Backend } from "../backend/backend.ts";
import type { HostArray } from "../tensor/dtype.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { shapeStr } from "../tensor/tensor.ts";
import {
  type Communicator,
  type GroupName,
  makeParallelState,
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
  data: HostArray;
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

  /** Join collective `kind` of `group` as `ps.globalRank`. */
  collective(
    ps: ParallelState,
    group: GroupName,
    kind: string,
    src: Tensor,
    dst: Tensor,
    extra = 0,
  ): Promise<void> {
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
    const hosts = ordered.map((a) => be.toF64(a.src));
    switch (kind) {
      case "allReduce:sum":
      case "allReduce:max": {
        const len = hosts[0].length;
        for (const h of hosts) {
          if (h.length !== len) throw new Error(`allReduce: members passed tensors of different sizes`);
        }
        const acc = new Float64Array(hosts[0]);
        const isMax = kind.endsWith("max");
        for (let r = 1; r < n; r++) {
          const h = hosts[r];
          if (isMax) { for (let i = 0; i < len; i++) if (h[i] > acc[i] || Number.isNaN(h[i])) acc[i] = h[i]; }
          else for (let i = 0; i < len; i++) acc[i] += h[i];
        }
        for (const a of ordered) this.writeInto(a.dst, acc);
        return;
      }
      case "allGather": {
        const total = hosts.reduce((s, h) => s + h.length, 0);
        const out = new Float64Array(total);
        let off = 0;
        for (const h of hosts) {
          out.set(h, off);
          off += h.length;
        }
        for (const a of ordered) this.writeInto(a.dst, out);
        return;
      }
      case "reduceScatter": {
        const len = hosts[0].length;
        const acc = new Float64Array(hosts[0]);
        for (let r = 1; r < n; r++) for (let i = 0; i < len; i++) acc[i] += hosts[r][i];
        const part = len / n;
        ordered.forEach((a, r) => this.writeInto(a.dst, acc.subarray(r * part, (r + 1) * part)));
        return;
      }
      case "broadcast": {
        const root = ordered[0].extra;
        const src = hosts[root];
        ordered.forEach((a, r) => {
          if (r !== root) this.writeInto(a.dst, src);
        });
        return;
      }
    }
    throw new Error(`local communicator: unknown collective ${kind}`);
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
    const key = `${from}->${to}`;
    const msg: Message = { data: this.backend.toHost(t).slice(), shape: shapeStr(t.shape), tag };
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
    const key = `${from}->${to}`;
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
    if (tag !== undefined && msg.tag !== undefined && tag !== msg.tag) {
      throw new Error(`recv on rank ${to} from rank ${from}: expected message ${tag}, got ${msg.tag}`);
    }
    if (msg.shape !== shapeStr(t.shape)) {
      throw new Error(
        `recv on rank ${to} from rank ${from}: sent ${msg.shape}, receiving into ${shapeStr(t.shape)}`,
      );
    }
    const tmp = this.backend.fromHost(t.dtype, t.shape, msg.data);
    this.backend.copy(tmp, t);
    this.backend.free(tmp);
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
