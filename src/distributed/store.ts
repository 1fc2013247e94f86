// A TCP key/value rendezvous store hosted by rank 0 (torch.distributed's TCPStore in spirit): set, get,
// wait, add and barrier, used for start-up agreement checks, barriers and NCCL unique ids. Every wait is
// bounded by the timeout (--distributed-timeout-minutes). The server fails every pending and later
// request of all ranks with one line when a rank drops its connection without saying goodbye, when two
// processes claim one rank, or when ranks disagree on the world size, so no rank waits for a peer that is
// gone. Protocol: one JSON object per line, requests carry an id echoed in the reply.

export interface StoreOptions {
  /** Host and port of rank 0's store (MASTER_ADDR, MASTER_PORT). */
  host: string;
  port: number;
  rank: number;
  worldSize: number;
  /** Bound on connecting and on every wait, in milliseconds (minutes * 60000 of the flag). */
  timeoutMs: number;
  /** Address rank 0 listens on; default: the host itself when it is a loopback name, else 0.0.0.0. */
  listenHost?: string;
}

export class StoreError extends Error {}

interface Request {
  id: number;
  op: "hello" | "set" | "get" | "wait" | "add" | "barrier" | "bye";
  key?: string;
  keys?: string[];
  value?: string;
  delta?: number;
  rank?: number;
  worldSize?: number;
  pid?: number;
  host?: string;
  timeoutMs?: number;
}

interface Reply {
  id: number;
  ok: boolean;
  value?: string;
  error?: string;
}

const enc = new TextEncoder();

/** Splits a byte stream into lines. */
async function* lines(conn: Deno.Conn): AsyncGenerator<string> {
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of conn.readable) {
    buf += dec.decode(chunk, { stream: true });
    let i: number;
    while ((i = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, i);
      buf = buf.slice(i + 1);
    }
  }
}

async function writeLine(conn: Deno.Conn, obj: unknown): Promise<void> {
  const bytes = enc.encode(JSON.stringify(obj) + "\n");
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

function fmtMinutes(ms: number): string {
  return `${+(ms / 60000).toFixed(3)} min`;
}

interface Pending {
  conn: Deno.Conn;
  id: number;
  timer: ReturnType<typeof setTimeout>;
}

interface KeyWait extends Pending {
  keys: string[];
  reply: () => Reply;
}

interface Member {
  rank: number;
  pid: number;
  host: string;
  bye: boolean;
}

/** The server side, run inside rank 0's process. */
class StoreServer {
  private readonly data = new Map<string, string>();
  private readonly keyWaits: KeyWait[] = [];
  private readonly barriers = new Map<string, { ranks: number[]; pending: Pending[] }>();
  private readonly members = new Map<Deno.Conn, Member>();
  private readonly byRank = new Map<number, Member>();
  private failure: string | null = null;
  private closed = false;

  constructor(private readonly listener: Deno.Listener, private readonly worldSize: number) {
    this.acceptLoop();
  }

  private async acceptLoop(): Promise<void> {
    try {
      for await (const conn of this.listener) this.serve(conn);
    } catch {
      // listener closed
    }
  }

  private async serve(conn: Deno.Conn): Promise<void> {
    try {
      for await (const line of lines(conn)) this.handle(conn, JSON.parse(line) as Request);
    } catch {
      // connection reset: treated like a close below
    }
    const m = this.members.get(conn);
    this.members.delete(conn);
    if (m && !m.bye && !this.closed) {
      this.fail(
        `rank ${m.rank} (pid ${m.pid} on ${m.host}) lost its connection to the store: it exited or was killed`,
      );
    }
    try {
      conn.close();
    } catch {
      // already closed
    }
  }

  private send(conn: Deno.Conn, r: Reply): void {
    writeLine(conn, r).catch(() => {});
  }

  /** Fail everything now and later with one line. */
  private fail(msg: string): void {
    if (this.failure) return;
    this.failure = msg;
    for (const w of this.keyWaits.splice(0)) {
      clearTimeout(w.timer);
      this.send(w.conn, { id: w.id, ok: false, error: msg });
    }
    for (const b of this.barriers.values()) {
      for (const p of b.pending) {
        clearTimeout(p.timer);
        this.send(p.conn, { id: p.id, ok: false, error: msg });
      }
    }
    this.barriers.clear();
  }

  private handle(conn: Deno.Conn, q: Request): void {
    const ok = (value?: string) => this.send(conn, { id: q.id, ok: true, value });
    const err = (error: string) => this.send(conn, { id: q.id, ok: false, error });
    if (q.op === "bye") {
      const m = this.members.get(conn);
      if (m) m.bye = true;
      return ok();
    }
    if (this.failure) return err(this.failure);
    switch (q.op) {
      case "hello": {
        const me: Member = { rank: q.rank!, pid: q.pid ?? 0, host: q.host ?? "?", bye: false };
        if (q.worldSize !== this.worldSize) {
          this.fail(
            `world size mismatch: rank ${me.rank} (pid ${me.pid} on ${me.host}) has world size ${q.worldSize}, ` +
              `rank 0 has ${this.worldSize}`,
          );
          return err(this.failure!);
        }
        if (!Number.isInteger(me.rank) || me.rank < 0 || me.rank >= this.worldSize) {
          this.fail(
            `rank ${me.rank} (pid ${me.pid} on ${me.host}) is outside the world of ${this.worldSize}`,
          );
          return err(this.failure!);
        }
        const other = this.byRank.get(me.rank);
        if (other) {
          this.fail(
            `two processes claim rank ${me.rank}: pid ${other.pid} on ${other.host} and pid ${me.pid} on ${me.host}`,
          );
          return err(this.failure!);
        }
        this.byRank.set(me.rank, me);
        this.members.set(conn, me);
        return ok();
      }
      case "set":
        this.data.set(q.key!, q.value!);
        this.wake();
        return ok();
      case "add": {
        const n = Number(this.data.get(q.key!) ?? "0") + (q.delta ?? 0);
        this.data.set(q.key!, String(n));
        this.wake();
        return ok(String(n));
      }
      case "get":
      case "wait": {
        const keys = q.op === "get" ? [q.key!] : q.keys!;
        const reply = (): Reply => ({
          id: q.id,
          ok: true,
          value: q.op === "get" ? this.data.get(q.key!) : undefined,
        });
        if (keys.every((k) => this.data.has(k))) return this.send(conn, reply());
        const w: KeyWait = {
          conn,
          id: q.id,
          keys,
          reply,
          timer: setTimeout(() => {
            const i = this.keyWaits.indexOf(w);
            if (i >= 0) this.keyWaits.splice(i, 1);
            const missing = keys.filter((k) => !this.data.has(k));
            err(
              `store: waiting for key(s) ${missing.join(", ")} timed out after ${fmtMinutes(q.timeoutMs!)}`,
            );
          }, q.timeoutMs!),
        };
        this.keyWaits.push(w);
        return;
      }
      case "barrier": {
        const name = q.key!;
        const b = this.barriers.get(name) ?? { ranks: [], pending: [] };
        this.barriers.set(name, b);
        const rank = this.members.get(conn)?.rank ?? -1;
        const p: Pending = {
          conn,
          id: q.id,
          timer: setTimeout(() => {
            const missing = [...Array(this.worldSize).keys()].filter((r) => !b.ranks.includes(r));
            // One late rank fails the barrier for everyone who came.
            this.barriers.delete(name);
            for (const x of b.pending) {
              clearTimeout(x.timer);
              this.send(x.conn, {
                id: x.id,
                ok: false,
                error: `store: barrier ${name} timed out after ${fmtMinutes(q.timeoutMs!)}: rank(s) ${
                  missing.join(",")
                } did not arrive`,
              });
            }
          }, q.timeoutMs!),
        };
        b.ranks.push(rank);
        b.pending.push(p);
        if (b.ranks.length === this.worldSize) {
          this.barriers.delete(name);
          for (const x of b.pending) {
            clearTimeout(x.timer);
            this.send(x.conn, { id: x.id, ok: true });
          }
        }
        return;
      }
    }
  }

  private wake(): void {
    for (let i = 0; i < this.keyWaits.length;) {
      const w = this.keyWaits[i];
      if (w.keys.every((k) => this.data.has(k))) {
        this.keyWaits.splice(i, 1);
        clearTimeout(w.timer);
        this.send(w.conn, w.reply());
      } else i++;
    }
  }

  /** After a failure: waits (bounded) until the other ranks have read their error line and gone, so
   *  rank 0's exit does not cut them off with a vaguer "connection closed". */
  async settle(ms: number): Promise<void> {
    const end = Date.now() + ms;
    while (this.failure && this.members.size > 1 && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  close(): void {
    this.closed = true;
    for (const w of this.keyWaits.splice(0)) clearTimeout(w.timer);
    for (const b of this.barriers.values()) for (const p of b.pending) clearTimeout(p.timer);
    this.barriers.clear();
    try {
      this.listener.close();
    } catch {
      // already closed
    }
    for (const c of this.members.keys()) {
      try {
        c.close();
      } catch {
        // already closed
      }
    }
  }
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host.startsWith("127.") || host === "::1";
}

/** A rank's connection to the store (rank 0 also hosts the server). */
export class TcpStore {
  private nextId = 1;
  private readonly waiting = new Map<
    number,
    { resolve: (r: Reply) => void; timer: ReturnType<typeof setTimeout> }
  >();
  private lost: string | null = null;
  private barrierNo = new Map<string, number>();

  private constructor(
    private readonly conn: Deno.Conn,
    private readonly opts: StoreOptions,
    private readonly server: StoreServer | null,
  ) {
    this.readLoop();
  }

  /** Rank 0 starts the server, then every rank connects (retrying until the timeout) and registers
   *  its rank; a second process with the same rank or a different world size fails everyone. */
  static async connect(opts: StoreOptions): Promise<TcpStore> {
    const where = `${opts.host}:${opts.port}`;
    let server: StoreServer | null = null;
    if (opts.rank === 0) {
      const hostname = opts.listenHost ?? (isLoopback(opts.host) ? opts.host : "0.0.0.0");
      let listener: Deno.Listener;
      try {
        listener = Deno.listen({ hostname, port: opts.port, transport: "tcp" });
      } catch (e) {
        if (e instanceof Deno.errors.AddrInUse) {
          throw new StoreError(
            `store: cannot listen on ${hostname}:${opts.port}: the port is in use (another job? choose another --master-port / MASTER_PORT)`,
          );
        }
        throw new StoreError(`store: cannot listen on ${hostname}:${opts.port}: ${(e as Error).message}`);
      }
      server = new StoreServer(listener, opts.worldSize);
    }
    const deadline = Date.now() + opts.timeoutMs;
    let last = "";
    let conn: Deno.Conn | null = null;
    while (conn === null) {
      try {
        conn = await Deno.connect({ hostname: opts.host, port: opts.port });
      } catch (e) {
        last = (e as Error).message.split("\n")[0];
        if (Date.now() >= deadline) {
          server?.close();
          throw new StoreError(
            `store: cannot reach the master at ${where} within ${
              fmtMinutes(opts.timeoutMs)
            } (last error: ${last})`,
          );
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const store = new TcpStore(conn, opts, server);
    try {
      await store.request({
        op: "hello",
        rank: opts.rank,
        worldSize: opts.worldSize,
        pid: Deno.pid,
        host: Deno.hostname(),
      }, opts.timeoutMs);
    } catch (e) {
      store.abandon();
      throw e;
    }
    return store;
  }

  private async readLoop(): Promise<void> {
    try {
      for await (const line of lines(this.conn)) {
        const r = JSON.parse(line) as Reply;
        const w = this.waiting.get(r.id);
        if (w) {
          this.waiting.delete(r.id);
          clearTimeout(w.timer);
          w.resolve(r);
        }
      }
    } catch {
      // reset: handled below
    }
    this.lost ??=
      `store: the connection to the master at ${this.opts.host}:${this.opts.port} closed (rank 0 exited or was killed)`;
    for (const [id, w] of this.waiting) {
      clearTimeout(w.timer);
      w.resolve({ id, ok: false, error: this.lost });
    }
    this.waiting.clear();
  }

  private async request(q: Omit<Request, "id">, waitMs: number): Promise<string | undefined> {
    if (this.lost) throw new StoreError(this.lost);
    const id = this.nextId++;
    const reply = new Promise<Reply>((resolve) => {
      // The server enforces the wait; this backstop covers a master that stopped answering.
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        resolve({
          id,
          ok: false,
          error: `store: no answer from the master at ${this.opts.host}:${this.opts.port} within ${
            fmtMinutes(waitMs + 5000)
          } (${q.op})`,
        });
      }, waitMs + 5000);
      this.waiting.set(id, { resolve, timer });
    });
    await writeLine(this.conn, { ...q, id, timeoutMs: this.opts.timeoutMs }).catch((e) => {
      this.lost ??= `store: cannot write to the master at ${this.opts.host}:${this.opts.port}: ${
        (e as Error).message
      }`;
    });
    const r = await reply;
    if (!r.ok) {
      await this.server?.settle(2000);
      throw new StoreError(r.error!);
    }
    return r.value;
  }

  get rank(): number {
    return this.opts.rank;
  }
  get worldSize(): number {
    return this.opts.worldSize;
  }

  async set(key: string, value: string): Promise<void> {
    await this.request({ op: "set", key, value }, 0);
  }
  /** The value of key, waiting (bounded by the timeout) until some rank sets it. */
  async get(key: string): Promise<string> {
    return (await this.request({ op: "get", key }, this.opts.timeoutMs))!;
  }
  /** Waits until every key is set. */
  async wait(keys: string[]): Promise<void> {
    await this.request({ op: "wait", keys }, this.opts.timeoutMs);
  }
  /** Adds delta to the integer at key (missing = 0) and returns the new value. */
  async add(key: string, delta: number): Promise<number> {
    return Number(await this.request({ op: "add", key, delta }, 0));
  }
  /** Returns once every rank of the world has entered the barrier of this name (reusable). */
  async barrier(name = "default"): Promise<void> {
    const n = this.barrierNo.get(name) ?? 0;
    this.barrierNo.set(name, n + 1);
    await this.request({ op: "barrier", key: `${name}#${n}` }, this.opts.timeoutMs);
  }

  /** Says goodbye (a clean exit is not a failure), then closes; rank 0 waits for the others' goodbyes
   *  (bounded) so its server outlives their last requests. */
  async close(): Promise<void> {
    if (!this.lost) {
      await this.barrier("__close__").catch(() => {});
      await this.request({ op: "bye" }, 0).catch(() => {});
    }
    this.abandon();
  }

  /** Drops the connection (and the server) without ceremony. */
  abandon(): void {
    this.lost ??= "store: closed";
    try {
      this.conn.close();
    } catch {
      // already closed
    }
    this.server?.close();
  }
}

/** Start-up agreement: every rank publishes its values (e.g. {"--world-size": "4", "--seed": "1234"});
 *  rank 0 compares everyone's with its own and publishes a verdict, so every rank fails with the same
 *  one line naming the first disagreeing rank and flag. */
export async function checkAgreement(
  store: TcpStore,
  values: Readonly<Record<string, string>>,
): Promise<void> {
  await store.set(`agree/${store.rank}`, JSON.stringify(values));
  if (store.rank === 0) {
    let verdict = "ok";
    for (let r = 1; r < store.worldSize && verdict === "ok"; r++) {
      const other = JSON.parse(await store.get(`agree/${r}`)) as Record<string, string>;
      for (const k of new Set([...Object.keys(values), ...Object.keys(other)])) {
        if (values[k] !== other[k]) {
          verdict = `start-up check: rank ${r} has ${k} ${other[k] ?? "(unset)"} but rank 0 has ${
            values[k] ?? "(unset)"
          }`;
          break;
        }
      }
    }
    await store.set("agree/verdict", verdict);
  }
  const verdict = await store.get("agree/verdict");
  // Everyone has read the verdict before anyone exits on it (rank 0's exit closes the store).
  await store.barrier("agree");
  if (verdict !== "ok") throw new StoreError(verdict);
}
