// A blocking, unbuffered in-process world for tests: N ranks as coroutines, where a send completes
// only when the matching receive is posted (MPI_Issend, NCCL), a receive only when the matching send
// is, and a batch (batchIsendIrecv) only when every one of its operations is matched. Messages between
// a pair are matched in order per channel (p2pChannel of the tag) and their tag and shape checked. When
// every unfinished rank is blocked, each blocked call fails with one line saying who waits for whom.
// Collectives go through an inner LocalWorld (they are rendezvous already).

import type { Backend } from "../../src/backend/backend.ts";
import type { P2POp } from "../../src/distributed/p2p.ts";
import { LocalWorld } from "../../src/parallel/local_comm.ts";
import {
  type Communicator,
  type GroupName,
  p2pChannel,
  type ParallelState,
  type ReduceOp,
} from "../../src/parallel/types.ts";
import { shapeStr, type Tensor } from "../../src/tensor/tensor.ts";

interface Posted {
  op: "send" | "recv";
  rank: number;
  peer: number;
  tag: string | undefined;
  tensor: Tensor;
  matched: boolean;
  batch: Batch;
}

interface Batch {
  rank: number;
  ops: Posted[];
  left: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class BlockingWorld {
  readonly size: number;
  readonly states: ParallelState[];
  private readonly inner: LocalWorld;
  /** Posted, unmatched sends and receives per "from->to#channel". */
  private readonly sends = new Map<string, Posted[]>();
  private readonly recvs = new Map<string, Posted[]>();
  /** What each blocked rank waits in: a batch, or a collective's description. */
  private readonly blocked = new Map<number, Batch | string>();
  private readonly finished = new Set<number>();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private failed: Error | null = null;
  /** Batches posted per rank (every send, recv and batchIsendIrecv call is one). */
  readonly batches: number[];

  constructor(readonly backend: Backend, sizes: { tp: number; pp: number; dp: number; vp?: number }) {
    this.inner = new LocalWorld(backend, sizes, { timeoutMs: 60_000 });
    this.size = this.inner.size;
    this.states = this.inner.states;
    this.batches = new Array(this.size).fill(0);
  }

  communicator(rank: number): Communicator & { batchIsendIrecv(ops: readonly P2POp[]): Promise<void> } {
    return new BlockingCommunicator(this, rank, this.inner.communicator(rank));
  }

  /** Runs fn for every rank; a rank that finishes (or fails) counts as never posting again. */
  async run<T>(fn: (rank: number) => Promise<T>): Promise<T[]> {
    const all = this.states.map((_, r) =>
      fn(r).finally(() => {
        this.finished.add(r);
        this.scheduleCheck();
      })
    );
    try {
      return await Promise.all(all);
    } catch (e) {
      this.fail(e as Error);
      await Promise.allSettled(all);
      throw e;
    } finally {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }

  /** Posts a batch of sends and receives from `rank` and resolves once all are matched. */
  post(rank: number, ops: readonly P2POp[]): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    this.batches[rank]++;
    return new Promise<void>((resolve, reject) => {
      const b: Batch = { rank, ops: [], left: ops.length, resolve, reject };
      for (const o of ops) {
        b.ops.push({ op: o.op, rank, peer: o.peer, tag: o.tag, tensor: o.tensor, matched: false, batch: b });
      }
      if (b.left === 0) return resolve();
      this.blocked.set(rank, b);
      try {
        for (const p of b.ops) this.offer(p);
      } catch (e) {
        this.fail(e as Error);
        return;
      }
      this.scheduleCheck();
    });
  }

  /** Matches a new operation with the oldest opposite one of its pair and channel, or queues it. */
  private offer(p: Posted): void {
    const key = p.op === "send"
      ? `${p.rank}->${p.peer}#${p2pChannel(p.tag)}`
      : `${p.peer}->${p.rank}#${p2pChannel(p.tag)}`;
    const other = (p.op === "send" ? this.recvs : this.sends).get(key);
    if (!other || other.length === 0) {
      const mine = p.op === "send" ? this.sends : this.recvs;
      mine.set(key, [...(mine.get(key) ?? []), p]);
      return;
    }
    const q = other.shift()!;
    const [s, r] = p.op === "send" ? [p, q] : [q, p];
    if (r.tag !== undefined && s.tag !== undefined && r.tag !== s.tag) {
      throw new Error(`recv on rank ${r.rank} from rank ${s.rank}: expected message ${r.tag}, got ${s.tag}`);
    }
    if (shapeStr(s.tensor.shape) !== shapeStr(r.tensor.shape)) {
      throw new Error(
        `recv on rank ${r.rank} from rank ${s.rank}: sent ${shapeStr(s.tensor.shape)}, receiving into ` +
          shapeStr(r.tensor.shape),
      );
    }
    this.backend.copy(s.tensor, r.tensor);
    for (const x of [s, r]) {
      x.matched = true;
      if (--x.batch.left === 0) {
        // Unblocked now (synchronously), so a deadlock check never sees a rank that can go on.
        this.blocked.delete(x.batch.rank);
        x.batch.resolve();
      }
    }
  }

  /** Collectives: blocked while the inner world's rendezvous is open. */
  async collective(rank: number, what: string, f: () => Promise<void>): Promise<void> {
    if (this.failed) throw this.failed;
    this.blocked.set(rank, what);
    this.scheduleCheck();
    try {
      await f();
    } finally {
      this.blocked.delete(rank);
    }
  }

  /** After pending promise callbacks have run: if every unfinished rank is still blocked, nothing can
   *  ever be matched again. */
  private scheduleCheck(): void {
    if (this.timer !== undefined || this.failed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const live = this.states.map((_, r) => r).filter((r) => !this.finished.has(r));
      if (live.length === 0 || !live.every((r) => this.blocked.has(r))) return;
      const parts = live.map((r) => {
        const w = this.blocked.get(r)!;
        if (typeof w === "string") return `rank ${r} waits in ${w}`;
        const open = w.ops.filter((p) => !p.matched);
        const peers = [...new Set(open.map((p) => p.peer))].join(",");
        const what = open.map((p) => `${p.op} ${p.tag ?? "(untagged)"}`).join(", ");
        return `rank ${r} waits for rank ${peers} (${what})`;
      });
      const done = [...this.finished].sort((a, b) => a - b);
      const tail = done.length > 0 ? `; finished: rank ${done.join(",")}` : "";
      this.fail(new Error(`deadlock: ${parts.join("; ")}${tail}`));
    }, 0);
  }

  /** Fails every blocked call (and later ones) with `e`. */
  private fail(e: Error): void {
    if (this.failed) return;
    this.failed = e;
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const w of this.blocked.values()) if (typeof w !== "string") w.reject(e);
    this.blocked.clear();
    this.inner.abort(e);
  }
}

class BlockingCommunicator implements Communicator {
  constructor(
    private readonly world: BlockingWorld,
    private readonly rank: number,
    private readonly c: Communicator,
  ) {}

  send(t: Tensor, toGlobalRank: number, tag?: string): Promise<void> {
    return this.world.post(this.rank, [{ op: "send", tensor: t, peer: toGlobalRank, tag }]);
  }
  recv(t: Tensor, fromGlobalRank: number, tag?: string): Promise<void> {
    return this.world.post(this.rank, [{ op: "recv", tensor: t, peer: fromGlobalRank, tag }]);
  }
  batchIsendIrecv(ops: readonly P2POp[]): Promise<void> {
    return this.world.post(this.rank, ops);
  }
  allReduce(t: Tensor, op: ReduceOp, group: GroupName): Promise<void> {
    return this.world.collective(
      this.rank,
      `allReduce on the ${group} group`,
      () => this.c.allReduce(t, op, group),
    );
  }
  allGather(src: Tensor, dst: Tensor, group: GroupName): Promise<void> {
    return this.world.collective(
      this.rank,
      `allGather on the ${group} group`,
      () => this.c.allGather(src, dst, group),
    );
  }
  reduceScatter(src: Tensor, dst: Tensor, group: GroupName): Promise<void> {
    return this.world.collective(
      this.rank,
      `reduceScatter on the ${group} group`,
      () => this.c.reduceScatter(src, dst, group),
    );
  }
  broadcast(t: Tensor, rootInGroup: number, group: GroupName): Promise<void> {
    return this.world.collective(
      this.rank,
      `broadcast on the ${group} group`,
      () => this.c.broadcast(t, rootInGroup, group),
    );
  }
  barrier(group: GroupName): Promise<void> {
    return this.world.collective(this.rank, `barrier on the ${group} group`, () => this.c.barrier(group));
  }
}
