// A fixed sequence of collectives and point-to-point messages on fixed data, run by every rank of a
// world of 4, returning the raw bytes (hex) of every result. The same script runs in-process on
// LocalWorld and in 4 MPI processes; the results must be identical byte for byte. Values span many
// magnitudes so that a different summation order would change the low bits.

import type { Backend } from "../../src/backend/backend.ts";
import type { Communicator, GroupName, ParallelState } from "../../src/parallel/types.ts";
import type { DType } from "../../src/tensor/dtype.ts";
import type { Tensor } from "../../src/tensor/tensor.ts";
import { batchIsendIrecv, communicate } from "../../src/distributed/p2p.ts";

export const LAYOUTS = [
  { tp: 2, pp: 2, dp: 1 },
  { tp: 1, pp: 2, dp: 2 },
  { tp: 1, pp: 1, dp: 4 },
  { tp: 4, pp: 1, dp: 1 },
  { tp: 2, pp: 1, dp: 2 },
] as const;

/** Deterministic values of mixed magnitude for (rank, salt). */
export function values(rank: number, salt: number, n: number): number[] {
  let s = (rank * 7919 + salt * 104729 + 12345) >>> 0;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const u = s / 2 ** 32 - 0.5;
    out.push(u * 10 ** ((i + rank) % 9 - 4));
  }
  return out;
}

function hex(be: Backend, t: Tensor): string {
  const h = be.toHost(t);
  return [...new Uint8Array(h.buffer, h.byteOffset, h.byteLength)].map((b) => b.toString(16).padStart(2, "0"))
    .join("");
}

export async function commScript(
  comm: Communicator,
  ps: ParallelState,
  be: Backend,
  opts: {
    /** Ring: both sends before both receives (default). False receives each message before the next
     *  send, for communicators whose buffered send goes out with the next receive (NCCL). */
    sendsFirst?: boolean;
  } = {},
): Promise<Record<string, string>> {
  const r = ps.globalRank;
  const out: Record<string, string> = {};
  const groups: GroupName[] = ["tensor", "data", "pipeline", "model", "embedding", "world"];
  let salt = 0;
  for (const g of groups) {
    const info = ps.group(g);
    if (info.rank < 0) continue;
    const n = info.size;
    for (
      const [dt, len] of [
        // Up to 64 KB the MPI communicator all-gathers; above, it exchanges chunks: test both.
        ["f32", 1003],
        ["f32", 20011],
        ["bf16", 37],
        ["bf16", 40009],
        ["f16", 41],
        ["f64", 50],
        ["f64", 9001],
        ["i32", 9],
      ] as [
        DType,
        number,
      ][]
    ) {
      const v = values(r, ++salt, len).map((x) => (dt === "i32" ? Math.round(x * 1000) : x));
      const t = be.fromHost(dt, [len], v);
      await comm.allReduce(t, "sum", g);
      out[`${g}:allReduce:sum:${dt}:${len}`] = hex(be, t);
    }
    const mx = values(r, ++salt, 64);
    if (r === 3) mx[5] = NaN;
    const m = be.fromHost("f32", [64], mx);
    await comm.allReduce(m, "max", g);
    out[`${g}:allReduce:max`] = hex(be, m);
    const src = be.fromHost("f32", [5, 2], values(r, ++salt, 10));
    const dst = be.zeros("f32", [5 * n, 2]);
    await comm.allGather(src, dst, g);
    out[`${g}:allGather`] = hex(be, dst);
    const bsrc = be.fromHost("bf16", [3], values(r, ++salt, 3));
    const bdst = be.zeros("bf16", [3 * n]);
    await comm.allGather(bsrc, bdst, g);
    out[`${g}:allGather:bf16`] = hex(be, bdst);
    const rs = be.fromHost("f32", [7 * n], values(r, ++salt, 7 * n));
    const rd = be.zeros("f32", [7]);
    await comm.reduceScatter(rs, rd, g);
    out[`${g}:reduceScatter`] = hex(be, rd);
    const bc = be.fromHost("f32", [11], values(r, ++salt, 11));
    await comm.broadcast(bc, n - 1, g);
    out[`${g}:broadcast`] = hex(be, bc);
    await comm.barrier(g);
  }
  // Ring of tagged messages (a big one too), then a paired exchange with both neighbours.
  const next = (r + 1) % ps.worldSize;
  const prev = (r + ps.worldSize - 1) % ps.worldSize;
  const a = be.zeros("f32", [3, 4]);
  const big = be.zeros("f16", [100_000]);
  const sendRing = () => comm.send(be.fromHost("f32", [3, 4], values(r, 900, 12)), next, `ring:${r}`);
  const sendBig = () => comm.send(be.fromHost("f16", [100_000], values(r, 901, 100_000)), next, `big:${r}`);
  if (opts.sendsFirst ?? true) {
    await sendRing();
    await sendBig();
    await comm.recv(a, prev, `ring:${prev}`);
    await comm.recv(big, prev, `big:${prev}`);
  } else {
    await sendRing();
    await comm.recv(a, prev, `ring:${prev}`);
    await sendBig();
    await comm.recv(big, prev, `big:${prev}`);
  }
  out["p2p:ring"] = hex(be, a);
  out["p2p:big"] = hex(be, big);
  const fromNext = be.zeros("f32", [6]);
  const fromPrev = be.zeros("f32", [6]);
  await batchIsendIrecv(comm, [
    { op: "send", tensor: be.fromHost("f32", [6], values(r, 902, 6)), peer: next, tag: "fwd" },
    { op: "send", tensor: be.fromHost("f32", [6], values(r, 903, 6)), peer: prev, tag: "bwd" },
    { op: "recv", tensor: fromPrev, peer: prev, tag: "fwd" },
    { op: "recv", tensor: fromNext, peer: next, tag: "bwd" },
  ]);
  out["p2p:batch:prev"] = hex(be, fromPrev);
  out["p2p:batch:next"] = hex(be, fromNext);
  // Megatron's four-way exchange, as a middle pipeline stage does it.
  const rp = be.zeros("bf16", [2, 3]);
  const rn = be.zeros("bf16", [2, 3]);
  await communicate(comm, {
    sendPrev: be.fromHost("bf16", [2, 3], values(r, 904, 6)),
    recvPrev: rp,
    sendNext: be.fromHost("bf16", [2, 3], values(r, 905, 6)),
    recvNext: rn,
    prevRank: prev,
    nextRank: next,
    tags: { sendPrev: `g${r}`, recvPrev: `a${prev}`, sendNext: `a${r}`, recvNext: `g${next}` },
  });
  out["p2p:communicate:prev"] = hex(be, rp);
  out["p2p:communicate:next"] = hex(be, rn);
  return out;
}
