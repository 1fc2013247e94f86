// WebAssembly binary encoding shared by the hand-assembled CPU kernels (simd_wasm.ts, gemm_wasm.ts,
// philox_wasm.ts): LEB128 integers, sections, and the few instructions every kernel uses.

/** Unsigned LEB128. */
export function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 of a 32-bit integer (i32.const immediates). */
export function sleb(v: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = v & 0x7f;
    v >>= 7;
    const done = (v === 0 && (b & 0x40) === 0) || (v === -1 && (b & 0x40) !== 0);
    out.push(done ? b : b | 0x80);
    if (done) return out;
  }
}

/** Signed LEB128 of a 64-bit integer (i64.const immediates). */
export function sleb64(v: bigint): number[] {
  const out: number[] = [];
  for (;;) {
    const b = Number(v & 0x7fn);
    v >>= 7n;
    const done = (v === 0n && (b & 0x40) === 0) || (v === -1n && (b & 0x40) !== 0);
    out.push(done ? b : b | 0x80);
    if (done) return out;
  }
}

/** A module section: id, byte length, body. */
export const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];
/** local.get / local.set / local.tee. */
export const get = (i: number) => [0x20, ...uleb(i)];
export const set = (i: number) => [0x21, ...uleb(i)];
export const tee = (i: number) => [0x22, ...uleb(i)];
/** i32.const. */
export const i32c = (v: number) => [0x41, ...sleb(v)];
/** A 0xfd-prefixed SIMD instruction with its immediates. */
export const simd = (op: number, ...imm: number[]) => [0xfd, ...uleb(op), ...imm];
