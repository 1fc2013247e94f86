// Philox4x32-10 block generator as a tiny hand-assembled WebAssembly module: the 32x32->64-bit
// products that dominate Philox are one i64.mul in WebAssembly but several double operations in
// JavaScript (~5x faster in dropout). Produces exactly the blocks of philox4x32 in src/rng/philox.ts
// (tests/backend_cpu_ops.test.ts compares them). Each backend instantiates its own module.

import { KEY_HI } from "../../rng/philox.ts";
import { section, sleb64, uleb } from "./wasm_encode.ts";

/** Blocks generated per call (the module's memory holds 4 u32 per block). */
export const PHILOX_CHUNK_BLOCKS = 16384;

/**
 * gen(block: i64, n: i32, c2, c3, k0, k1): for i < n, writes philox4x32_10(
 * [lo(block+i), hi(block+i), c2, c3], [k0, k1]) as 4 u32 at memory offset 16*i. n must be >= 1.
 */
function moduleBytes(): Uint8Array<ArrayBuffer> {
  const M0 = sleb64(0xd2511f53n), M1 = sleb64(0xcd9e8d57n);
  const W0 = sleb64(BigInt(0x9e3779b9 | 0)), W1 = sleb64(BigInt(0xbb67ae85 | 0));
  // params: 0 block(i64) 1 n 2 c2 3 c3 4 k0 5 k1; locals: 6 i 7 r 8-11 x0..x3 12 kk0 13 kk1 14 addr,
  // 15 p0(i64) 16 p1(i64)
  const get = (i: number) => [0x20, i], set = (i: number) => [0x21, i], tee = (i: number) => [0x22, i];
  const hi32 = [0x42, 0x20, 0x88, 0xa7]; // i64.const 32, i64.shr_u, i32.wrap_i64
  // deno-fmt-ignore
  const code = [
    0x02, 0x09, 0x7f, 0x02, 0x7e,                      // locals: 9 x i32, 2 x i64
    0x03, 0x40,                                        // loop $blocks
    ...get(0), 0xa7, ...set(8),                        //   x0 = lo(block)
    ...get(0), ...hi32, ...set(9),                     //   x1 = hi(block)
    ...get(2), ...set(10), ...get(3), ...set(11),      //   x2 = c2, x3 = c3
    ...get(4), ...set(12), ...get(5), ...set(13),      //   kk0 = k0, kk1 = k1
    0x41, 10, ...set(7),                               //   r = 10
    0x03, 0x40,                                        //   loop $rounds
    ...get(8), 0xad, 0x42, ...M0, 0x7e, ...set(15),    //     p0 = u64(x0) * M0
    ...get(10), 0xad, 0x42, ...M1, 0x7e, ...set(16),   //     p1 = u64(x2) * M1
    ...get(16), ...hi32, ...get(9), 0x73, ...get(12), 0x73, ...set(8),  // x0 = hi(p1) ^ x1 ^ kk0
    ...get(15), ...hi32, ...get(11), 0x73, ...get(13), 0x73, ...set(10), // x2 = hi(p0) ^ x3 ^ kk1
    ...get(16), 0xa7, ...set(9),                       //     x1 = lo(p1)
    ...get(15), 0xa7, ...set(11),                      //     x3 = lo(p0)
    ...get(12), 0x41, ...W0, 0x6a, ...set(12),         //     kk0 += W0
    ...get(13), 0x41, ...W1, 0x6a, ...set(13),         //     kk1 += W1
    ...get(7), 0x41, 1, 0x6b, ...tee(7), 0x0d, 0,      //     if (--r) continue
    0x0b,                                              //   end
    ...get(14), ...get(8), 0x36, 2, 0,                 //   mem[addr + 0] = x0
    ...get(14), ...get(9), 0x36, 2, 4,                 //   mem[addr + 4] = x1
    ...get(14), ...get(10), 0x36, 2, 8,                //   mem[addr + 8] = x2
    ...get(14), ...get(11), 0x36, 2, 12,               //   mem[addr + 12] = x3
    ...get(14), 0x41, 16, 0x6a, ...set(14),            //   addr += 16
    ...get(0), 0x42, 1, 0x7c, ...set(0),               //   block += 1
    ...get(6), 0x41, 1, 0x6a, ...tee(6), ...get(1), 0x49, 0x0d, 0, // if (++i < n) continue
    0x0b,                                              // end
    0x0b,                                              // end func
  ];
  const pages = (PHILOX_CHUNK_BLOCKS * 16) / 65536;
  const name = (s: string) => [s.length, ...Array.from(s, (c) => c.charCodeAt(0))];
  // deno-fmt-ignore
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,                        // magic, version 1
    ...section(1, [1, 0x60, 6, 0x7e, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0]),    // type (i64, i32 x 5) -> ()
    ...section(3, [1, 0]),                                                 // one function of type 0
    ...section(5, [1, 0, ...uleb(pages)]),                                 // memory, fixed size
    ...section(7, [2, ...name("gen"), 0, 0, ...name("mem"), 2, 0]),        // exports
    ...section(10, [1, ...uleb(code.length), ...code]),                    // code
  ]);
}

/** A per-backend Philox generator writing blocks into its own WebAssembly memory. */
export class PhiloxWasm {
  private readonly gen: (b: bigint, n: number, c2: number, c3: number, k0: number, k1: number) => void;
  /** Lanes of the last generated chunk: element (4 * block + lane) at index 4*(block-first)+lane. */
  readonly lanes: Uint32Array;

  constructor() {
    const inst = new WebAssembly.Instance(new WebAssembly.Module(moduleBytes()));
    this.gen = inst.exports.gen as PhiloxWasm["gen"];
    this.lanes = new Uint32Array((inst.exports.mem as WebAssembly.Memory).buffer, 0, PHILOX_CHUNK_BLOCKS * 4);
  }

  /** Blocks [first, first + n) (n <= PHILOX_CHUNK_BLOCKS) of counter [., ., iteration, stream], key [seed, KEY_HI]. */
  generate(first: number, n: number, seed: number, stream: number, iteration: number): void {
    if (n < 1 || n > PHILOX_CHUNK_BLOCKS) throw new Error(`philox wasm: block count ${n} out of range`);
    this.gen(BigInt(first), n, iteration | 0, stream | 0, seed | 0, KEY_HI | 0);
  }
}
