// NCCL bindings (NCCL 2.x nccl.h): unique id, communicator init/split/abort/destroy, the asynchronous
// error query, collectives, point-to-point and grouping. ncclCommInitRank takes the 128-byte
// ncclUniqueId by value (not on the hot path). Device buffers are u64 addresses; communicators and
// streams are opaque pointers. ncclCommSplit exists from NCCL 2.18 on: it is optional, so an older
// library still loads (hasSplit says whether it is there).

import { cString, type DiscoverEnv, openLibrary, statusError } from "./discover.ts";

/** ncclUniqueId: char internal[128], passed by value; 16 x u64 has the same bytes. */
const UNIQUE_ID = { struct: Array(16).fill("u64") as "u64"[] } as const;
export const NCCL_UNIQUE_ID_BYTES = 128;

export const SYMBOLS = {
  ncclGetVersion: { parameters: ["buffer"], result: "i32" },
  ncclGetErrorString: { parameters: ["i32"], result: "pointer" },
  ncclGetUniqueId: { parameters: ["buffer"], result: "i32" },
  ncclCommInitRank: { parameters: ["buffer", "i32", UNIQUE_ID, "i32"], result: "i32" },
  ncclCommSplit: {
    parameters: ["pointer", "i32", "i32", "buffer", "pointer"],
    result: "i32",
    optional: true,
  },
  ncclCommGetAsyncError: { parameters: ["pointer", "buffer"], result: "i32" },
  ncclCommAbort: { parameters: ["pointer"], result: "i32" },
  ncclCommDestroy: { parameters: ["pointer"], result: "i32" },
  ncclAllReduce: { parameters: ["u64", "u64", "usize", "i32", "i32", "pointer", "pointer"], result: "i32" },
  ncclAllGather: { parameters: ["u64", "u64", "usize", "i32", "pointer", "pointer"], result: "i32" },
  ncclReduceScatter: {
    parameters: ["u64", "u64", "usize", "i32", "i32", "pointer", "pointer"],
    result: "i32",
  },
  ncclBroadcast: { parameters: ["u64", "u64", "usize", "i32", "i32", "pointer", "pointer"], result: "i32" },
  ncclSend: { parameters: ["u64", "usize", "i32", "i32", "pointer", "pointer"], result: "i32" },
  ncclRecv: { parameters: ["u64", "usize", "i32", "i32", "pointer", "pointer"], result: "i32" },
  ncclGroupStart: { parameters: [], result: "i32" },
  ncclGroupEnd: { parameters: [], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** ncclDataType_t */
export const ncclDataType = {
  i8: 0,
  u8: 1,
  i32: 2,
  u32: 3,
  i64: 4,
  u64: 5,
  f16: 6,
  f32: 7,
  f64: 8,
  bf16: 9,
} as const;
/** ncclRedOp_t */
export const ncclRedOp = { sum: 0, prod: 1, max: 2, min: 3, avg: 4 } as const;
/** ncclResult_t values the callers test for. */
export const ncclSuccess = 0;
export const ncclInProgress = 7;
/** ncclCommSplit's color for ranks that join no new communicator. */
export const NCCL_SPLIT_NOCOLOR = -1;

/** "2.21.5" from ncclGetVersion's code (major*10000 + minor*100 + patch since 2.9; *1000 before). */
export function ncclVersionString(code: number): string {
  if (code >= 10000) return `${Math.floor(code / 10000)}.${Math.floor(code / 100) % 100}.${code % 100}`;
  return `${Math.floor(code / 1000)}.${Math.floor(code / 100) % 10}.${code % 100}`;
}

export type NcclComm = Deno.PointerValue;

export class Nccl {
  readonly sym: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
  private readonly out = new BigUint64Array(1);
  private readonly result = new Int32Array(1);

  constructor(private readonly lib: Deno.DynamicLibrary<typeof SYMBOLS>, readonly path: string) {
    this.sym = lib.symbols;
  }
  static open(env?: DiscoverEnv): Nccl {
    const { lib, path } = openLibrary("nccl", SYMBOLS, env);
    return new Nccl(lib, path);
  }
  check(call: string, code: number): void {
    if (code !== 0) {
      throw statusError(call, this.errorString(code), code);
    }
  }
  version(): number {
    const v = new Int32Array(1);
    this.check("ncclGetVersion", this.sym.ncclGetVersion(v));
    return v[0];
  }
  /** 128 opaque bytes to share with every rank (e.g. through a TCP store). */
  uniqueId(): Uint8Array {
    const id = new Uint8Array(NCCL_UNIQUE_ID_BYTES);
    this.check("ncclGetUniqueId", this.sym.ncclGetUniqueId(id));
    return id;
  }
  commInitRank(nranks: number, id: Uint8Array, rank: number): NcclComm {
    if (id.length !== NCCL_UNIQUE_ID_BYTES) {
      throw new Error(`ncclCommInitRank: unique id has ${id.length} bytes, expected ${NCCL_UNIQUE_ID_BYTES}`);
    }
    this.check("ncclCommInitRank", this.sym.ncclCommInitRank(this.out, nranks, id.slice(), rank));
    return Deno.UnsafePointer.create(this.out[0]);
  }
  /** Whether the library has ncclCommSplit (NCCL >= 2.18). */
  get hasSplit(): boolean {
    return this.sym.ncclCommSplit !== null;
  }
  /** ncclCommSplit with the default config; null for a rank that passed NCCL_SPLIT_NOCOLOR. */
  commSplit(c: NcclComm, color: number, key: number): NcclComm | null {
    const split = this.sym.ncclCommSplit;
    if (split === null) {
      throw new Error(
        `ncclCommSplit: not in ${this.path} (NCCL ${ncclVersionString(this.version())}; needs 2.18)`,
      );
    }
    this.out[0] = 0n;
    this.check("ncclCommSplit", split(c, color, key, this.out, null));
    return this.out[0] === 0n ? null : Deno.UnsafePointer.create(this.out[0]);
  }
  /** The communicator's asynchronous error state (ncclSuccess, ncclInProgress or an error code). */
  asyncError(c: NcclComm): number {
    this.check("ncclCommGetAsyncError", this.sym.ncclCommGetAsyncError(c, this.result));
    return this.result[0];
  }
  errorString(code: number): string {
    return cString(this.sym.ncclGetErrorString(code), "unknown NCCL result");
  }
  commAbort(c: NcclComm): void {
    this.check("ncclCommAbort", this.sym.ncclCommAbort(c));
  }
  commDestroy(c: NcclComm): void {
    this.check("ncclCommDestroy", this.sym.ncclCommDestroy(c));
  }
  allReduce(
    send: bigint,
    recv: bigint,
    count: number,
    dt: number,
    op: number,
    c: NcclComm,
    s: Deno.PointerValue,
  ) {
    this.check("ncclAllReduce", this.sym.ncclAllReduce(send, recv, BigInt(count), dt, op, c, s));
  }
  allGather(send: bigint, recv: bigint, sendCount: number, dt: number, c: NcclComm, s: Deno.PointerValue) {
    this.check("ncclAllGather", this.sym.ncclAllGather(send, recv, BigInt(sendCount), dt, c, s));
  }
  reduceScatter(
    send: bigint,
    recv: bigint,
    recvCount: number,
    dt: number,
    op: number,
    c: NcclComm,
    s: Deno.PointerValue,
  ) {
    this.check("ncclReduceScatter", this.sym.ncclReduceScatter(send, recv, BigInt(recvCount), dt, op, c, s));
  }
  broadcast(
    send: bigint,
    recv: bigint,
    count: number,
    dt: number,
    root: number,
    c: NcclComm,
    s: Deno.PointerValue,
  ) {
    this.check("ncclBroadcast", this.sym.ncclBroadcast(send, recv, BigInt(count), dt, root, c, s));
  }
  send(buf: bigint, count: number, dt: number, peer: number, c: NcclComm, s: Deno.PointerValue) {
    this.check("ncclSend", this.sym.ncclSend(buf, BigInt(count), dt, peer, c, s));
  }
  recv(buf: bigint, count: number, dt: number, peer: number, c: NcclComm, s: Deno.PointerValue) {
    this.check("ncclRecv", this.sym.ncclRecv(buf, BigInt(count), dt, peer, c, s));
  }
  groupStart(): void {
    this.check("ncclGroupStart", this.sym.ncclGroupStart());
  }
  groupEnd(): void {
    this.check("ncclGroupEnd", this.sym.ncclGroupEnd());
  }
  close(): void {
    this.lib.close();
  }
}
