// f32 GEMM without a BLAS library: a hand-assembled WebAssembly SIMD micro-kernel over packed panels,
// run on the calling thread plus worker threads that share one WebAssembly.Memory.
//
// Operands are copied into the shared memory (memcpy is cheap next to the O(mnk) arithmetic), C with
// its rows and columns padded to whole register tiles, so every tile the kernel touches is full and
// padding lanes multiply packed zeros. Loops follow the usual blocked order: for each KC x NC block of
// op(B) (packed into NR-wide panels) and each MC x KC block of op(A) (packed into MR-tall panels), the
// kernel sweeps MR x NR tiles of C with the whole tile in registers.
//
// Determinism: every C element is one chain of multiply-adds over p in increasing order within fixed
// KC-long blocks, added to C block after block; how C is split between threads (rows, columns or
// batch items, in whole tiles) never changes that chain, so results are the same bits for any number
// of threads and any scheduling. f32x4.relaxed_madd is used when the runtime validates it (fused on
// CPUs with FMA, the same on every call of one machine), else f32x4 mul + add.

import { Worker as NodeWorker } from "node:worker_threads";
import { get, i32c, section, set, simd, uleb } from "./wasm_encode.ts";

/** Register tile: MR rows x NR columns of C (2 f32x4 per row). */
export const MR = 4;
export const NR = 8;
/** Depth of one packed block; fixed, because it fixes each element's summation order. */
export const KC = 256;
const MC = 32 * MR;
const NC = 2048;

const I32 = 0x7f, F32 = 0x7d, V128 = 0x7b;
const ADD = 0x6a, SUB = 0x6b, MUL = 0x6c, GE_U = 0x4f;
const BLOCK = [0x02, 0x40], LOOP = [0x03, 0x40], END = 0x0b, IF = [0x04, 0x40], ELSE = 0x05;
const br = (d: number) => [0x0c, d], brIf = (d: number) => [0x0d, d];
const vload = (off: number) => simd(0x00, 4, ...uleb(off));
const vstore = (off: number) => simd(0x0b, 4, ...uleb(off));
const splat32 = (off: number) => simd(0x09, 2, ...uleb(off)); // v128.load32_splat
const F32X4_SPLAT = simd(0x13), F32X4_ADD = simd(0xe4), F32X4_MUL = simd(0xe6);
const RELAXED_MADD_F32X4 = simd(0x105);
const ZERO = simd(0x0c, ...new Array(16).fill(0));

/** The module: imports the shared memory as "e"."m" and exports macro(mc, nc, kc, pa, pb, pc, ldcBytes,
 *  alpha, accumulate), which computes the mc x nc block of C at byte pc (row stride ldcBytes) from the
 *  packed A block at pa and packed B block at pb: C = alpha acc, or C + alpha acc when accumulate != 0.
 *  mc, nc must be multiples of MR, NR and kc >= 1. */
export function gemmModuleBytes(relaxed: boolean): Uint8Array<ArrayBuffer> {
  const [MC_, NC_, KC_, PA, PB, PC, LDC, ALPHA, ACCUM] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const J = 9, I = 10, P = 11, A = 12, B = 13, C = 14, PBJ = 15;
  const AL = 16, B0 = 17, B1 = 18, AV = 19, ACC = 20; // v128 locals; ACC .. ACC + 2 MR - 1
  const acc = (r: number, h: number) => ACC + 2 * r + h;
  const fma = (r: number, h: number): number[] =>
    relaxed
      ? [...get(AV), ...get(h ? B1 : B0), ...get(acc(r, h)), ...RELAXED_MADD_F32X4, ...set(acc(r, h))]
      : [...get(AV), ...get(h ? B1 : B0), ...F32X4_MUL, ...get(acc(r, h)), ...F32X4_ADD, ...set(acc(r, h))];
  // One k step u places past the pointers (the loop runs two per trip; the order over k is unchanged).
  const stepAt = (u: number): number[] => {
    const out = [...get(B), ...vload(32 * u), ...set(B0), ...get(B), ...vload(32 * u + 16), ...set(B1)];
    for (let r = 0; r < MR; r++) {
      out.push(...get(A), ...splat32(4 * (MR * u + r)), ...set(AV), ...fma(r, 0), ...fma(r, 1));
    }
    return out;
  };
  const advance = (u: number): number[] => [
    ...[...get(A), ...i32c(4 * MR * u), ADD, ...set(A)],
    ...[...get(B), ...i32c(4 * NR * u), ADD, ...set(B)],
  ];
  // Writes of one tile row r at C + r ldc: (C +) alpha acc.
  const writeRows = (accumulate: boolean): number[] => {
    const out: number[] = [];
    for (let r = 0; r < MR; r++) {
      for (let h = 0; h < 2; h++) {
        out.push(...get(C));
        if (accumulate) out.push(...get(C), ...vload(16 * h));
        out.push(...get(acc(r, h)), ...get(AL), ...F32X4_MUL);
        if (accumulate) out.push(...F32X4_ADD);
        out.push(...vstore(16 * h));
      }
      if (r < MR - 1) out.push(...get(C), ...get(LDC), ADD, ...set(C));
    }
    return out;
  };
  const body: number[] = [
    ...get(ALPHA),
    ...F32X4_SPLAT,
    ...set(AL),
    ...i32c(0),
    ...set(J),
    ...BLOCK,
    ...LOOP,
    ...get(J),
    ...get(NC_),
    GE_U,
    ...brIf(1),
    // B panel of columns j: pb + j kc 4.
    ...get(PB),
    ...get(J),
    ...get(KC_),
    MUL,
    ...i32c(2),
    0x74, // i32.shl
    ADD,
    ...set(PBJ),
    ...i32c(0),
    ...set(I),
    ...BLOCK,
    ...LOOP,
    ...get(I),
    ...get(MC_),
    GE_U,
    ...brIf(1),
    ...get(PA),
    ...get(I),
    ...get(KC_),
    MUL,
    ...i32c(2),
    0x74,
    ADD,
    ...set(A),
    ...get(PBJ),
    ...set(B),
  ];
  for (let r = 0; r < MR; r++) body.push(...ZERO, ...set(acc(r, 0)), ...ZERO, ...set(acc(r, 1)));
  // An odd first step, then kc / 2 pairs.
  body.push(...get(KC_), ...i32c(1), 0x71, ...IF, ...stepAt(0), ...advance(1), END); // i32.and
  body.push(...get(KC_), ...i32c(1), 0x76, ...set(P)); // i32.shr_u
  body.push(...BLOCK, ...LOOP, ...get(P), 0x45, ...brIf(1), ...stepAt(0), ...stepAt(1), ...advance(2));
  body.push(...get(P), ...i32c(1), SUB, ...set(P), ...br(0), END, END);
  // C tile address: pc + i ldc + 4 j.
  body.push(...get(PC), ...get(I), ...get(LDC), MUL, ADD, ...get(J), ...i32c(2), 0x74, ADD, ...set(C));
  body.push(...get(ACCUM), ...IF, ...writeRows(true), ELSE, ...writeRows(false), END);
  body.push(...get(I), ...i32c(MR), ADD, ...set(I), ...br(0), END, END);
  body.push(...get(J), ...i32c(NR), ADD, ...set(J), ...br(0), END, END, END);
  const macro = [
    ...uleb([2, 7, I32, 4 + 2 * MR, V128].length + body.length),
    2,
    7,
    I32,
    4 + 2 * MR,
    V128,
    ...body,
  ];
  const fns = [macro, ...packFunctions()];
  const name = (s: string) => [s.length, ...new TextEncoder().encode(s)];
  const macroType = [0x60, 9, I32, I32, I32, I32, I32, I32, I32, F32, I32, 0];
  const packType = [0x60, 6, I32, I32, I32, I32, I32, I32, 0];
  const exported = ["macro", "packAN", "packAT", "packBN", "packBT"];
  return new Uint8Array([
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00,
    ...section(1, [2, ...macroType, ...packType]),
    // import "e"."m": memory, shared, min 1 page, max 65536 pages (4 GiB)
    ...section(2, [1, ...name("e"), ...name("m"), 0x02, 0x03, 1, ...uleb(65536)]),
    ...section(3, [5, 0, 1, 1, 1, 1]),
    ...section(7, [exported.length, ...exported.flatMap((e, i) => [...name(e), 0, i])]),
    ...section(10, [fns.length, ...fns.flat()]),
  ]);
}

const f32load = (off: number) => [0x2a, 2, ...uleb(off)];
const f32store = (off: number) => [0x38, 2, ...uleb(off)];
/** Shuffle of 32-bit lanes (0-3 from the first operand, 4-7 from the second). */
const shuffle32 = (l: number[]) => simd(0x0d, ...l.flatMap((x) => [4 * x, 4 * x + 1, 4 * x + 2, 4 * x + 3]));

/** `body` repeated while the i32 local `n` counts down to 0 (n may start at 0). */
function countDown(n: number, body: number[]): number[] {
  return [
    ...BLOCK,
    ...LOOP,
    ...get(n),
    0x45, // i32.eqz
    ...brIf(1),
    ...body,
    ...get(n),
    ...i32c(1),
    SUB,
    ...set(n),
    ...br(0),
    END,
    END,
  ];
}

const addTo = (l: number, v: number[]) => [...get(l), ...v, ADD, ...set(l)];

/** 4x4 transpose of the v128 locals v[0..3] (rows) into t[0..3] (columns); uses locals x[0..3]. */
function transpose4(v: number[], x: number[], t: number[]): number[] {
  return [
    ...get(v[0]),
    ...get(v[1]),
    ...shuffle32([0, 4, 1, 5]),
    ...set(x[0]),
    ...get(v[2]),
    ...get(v[3]),
    ...shuffle32([0, 4, 1, 5]),
    ...set(x[1]),
    ...get(v[0]),
    ...get(v[1]),
    ...shuffle32([2, 6, 3, 7]),
    ...set(x[2]),
    ...get(v[2]),
    ...get(v[3]),
    ...shuffle32([2, 6, 3, 7]),
    ...set(x[3]),
    ...get(x[0]),
    ...get(x[1]),
    ...shuffle32([0, 1, 4, 5]),
    ...set(t[0]),
    ...get(x[0]),
    ...get(x[1]),
    ...shuffle32([2, 3, 6, 7]),
    ...set(t[1]),
    ...get(x[2]),
    ...get(x[3]),
    ...shuffle32([0, 1, 4, 5]),
    ...set(t[2]),
    ...get(x[2]),
    ...get(x[3]),
    ...shuffle32([2, 3, 6, 7]),
    ...set(t[3]),
  ];
}

/** Packing of whole panels, all (dst, src, ldBytes, kc, kc4, panels) with kc4 = kc rounded down to a
 *  multiple of 4. Each writes panels one after another from dst (panel = kc rows of MR or NR floats):
 *  packAN: A row-major (rows = panel rows, transposed in 4x4 blocks), packAT: A transposed (MR
 *  contiguous floats per k), packBN: B row-major (NR contiguous floats per k), packBT: B transposed. */
function packFunctions(): number[][] {
  const [DST, SRC, LD, KC_, KC4, PANELS] = [0, 1, 2, 3, 4, 5];
  const fn = (nI32: number, nV: number, body: number[]) => {
    const code = [2, nI32, I32, nV, V128, ...body, END];
    return [...uleb(code.length), ...code];
  };
  // Contiguous copies: per k, `vecs` v128 from s to dst; s += ld, dst += 16 vecs; panel q's source
  // starts at src + 16 vecs q.
  const copyPanels = (vecs: number) => {
    const Q = 6, P = 7, S = 8;
    const perK: number[] = [];
    for (let h = 0; h < vecs; h++) perK.push(...get(DST), ...get(S), ...vload(16 * h), ...vstore(16 * h));
    perK.push(...addTo(DST, i32c(16 * vecs)), ...addTo(S, get(LD)));
    const perPanel = [
      ...get(SRC),
      ...get(PANELS),
      ...get(Q),
      SUB,
      ...i32c(16 * vecs),
      MUL,
      ADD,
      ...set(S),
      ...get(KC_),
      ...set(P),
      ...countDown(P, perK),
    ];
    return fn(3, 0, [...get(PANELS), ...set(Q), ...countDown(Q, perPanel)]);
  };
  // Transposing copies: panel q reads `rows` source rows (q rows .. + rows), 4 k at a time, and writes
  // the 4 x rows block as 4 consecutive k of rows floats; k beyond kc4 one float at a time.
  const transposePanels = (rows: number) => {
    const Q = 6, P = 7, R0 = 8; // R0 .. R0 + rows - 1: row pointers
    const V = R0 + rows, X = V + rows, T = X + 4; // v128 locals: rows loads, 4 temporaries, rows transposed
    const vl = (i: number) => V + i, tl = (i: number) => T + i;
    const blk: number[] = [];
    for (let r = 0; r < rows; r++) blk.push(...get(R0 + r), ...vload(0), ...set(vl(r)));
    for (let g = 0; g < rows / 4; g++) {
      const v = [0, 1, 2, 3].map((i) => vl(4 * g + i)), t = [0, 1, 2, 3].map((i) => tl(4 * g + i));
      blk.push(...transpose4(v, [X, X + 1, X + 2, X + 3], t));
    }
    // Column i (k offset i) of group g goes to dst + i rows 4 + 16 g.
    for (let i = 0; i < 4; i++) {
      for (let g = 0; g < rows / 4; g++) {
        blk.push(...get(DST), ...get(tl(4 * g + i)), ...vstore(16 * (i * rows / 4 + g)));
      }
    }
    blk.push(...addTo(DST, i32c(16 * rows)));
    for (let r = 0; r < rows; r++) blk.push(...addTo(R0 + r, i32c(16)));
    const tail: number[] = [];
    for (let r = 0; r < rows; r++) {
      tail.push(...get(DST), ...get(R0 + r), ...f32load(0), ...f32store(4 * r), ...addTo(R0 + r, i32c(4)));
    }
    tail.push(...addTo(DST, i32c(4 * rows)));
    const perPanel: number[] = [
      // Row pointers: src + (panels - q) rows ld + r ld.
      ...get(SRC),
      ...get(PANELS),
      ...get(Q),
      SUB,
      ...i32c(rows),
      MUL,
      ...get(LD),
      MUL,
      ADD,
      ...set(R0),
    ];
    for (let r = 1; r < rows; r++) perPanel.push(...get(R0 + r - 1), ...get(LD), ADD, ...set(R0 + r));
    perPanel.push(...get(KC4), ...i32c(2), 0x76, ...set(P), ...countDown(P, blk)); // i32.shr_u: kc4 / 4
    perPanel.push(...get(KC_), ...get(KC4), SUB, ...set(P), ...countDown(P, tail));
    return fn(2 + rows, rows + 4 + rows, [...get(PANELS), ...set(Q), ...countDown(Q, perPanel)]);
  };
  return [transposePanels(MR), copyPanels(MR / 4), copyPanels(NR / 4), transposePanels(NR)];
}

export type MacroKernel = (
  mc: number,
  nc: number,
  kc: number,
  pa: number,
  pb: number,
  pc: number,
  ldcBytes: number,
  alpha: number,
  accumulate: number,
) => void;

/** Whether the runtime has relaxed SIMD (checked by validating the relaxed module). */
export function hasRelaxedSimd(): boolean {
  return WebAssembly.validate(gemmModuleBytes(true));
}

/** Whole-panel packing: (dst, src, ldBytes, kc, kc4, panels), byte addresses (see packFunctions). */
export type PackKernel = (
  dst: number,
  src: number,
  ld: number,
  kc: number,
  kc4: number,
  panels: number,
) => void;

export interface GemmKernels {
  macro: MacroKernel;
  packAN: PackKernel;
  packAT: PackKernel;
  packBN: PackKernel;
  packBT: PackKernel;
}

export function instantiateGemm(mem: WebAssembly.Memory, relaxed: boolean): GemmKernels {
  const inst = new WebAssembly.Instance(new WebAssembly.Module(gemmModuleBytes(relaxed)), { e: { m: mem } });
  return inst.exports as unknown as GemmKernels;
}

// ---- shared control block and the per-thread driver ------------------------------------------------

/** Most threads one pool runs (the caller plus workers). */
export const MAX_THREADS = 16;
/** Int32 slots of the control block at byte 0 of the shared memory. */
const SEQ = 0, DONE = 1, ERR = 2, QUIT = 3, PARTS = 4;
const P_M = 5, P_N = 6, P_K = 7, P_BATCH = 8, P_TA = 9, P_TB = 10;
const P_AOFF = 11, P_LDA = 12, P_SA = 13, P_BOFF = 14, P_LDB = 15, P_SB = 16;
const P_COFF = 17, P_LDC = 18, P_SC = 19, P_OVERWRITE = 20, P_ALPHA = 21;
/** STATE + w: worker slot w + 1's state (below); PART_OF + w: its part of the current job. */
const STATE = 32, PART_OF = 32 + MAX_THREADS;
/** Worker states. Only the worker moves STARTING -> IDLE and IDLE -> ABSENT (idle exit), only the caller
 *  moves IDLE -> CLAIMED (compare-exchange both ways, so a worker never exits holding a part) and
 *  ABSENT -> STARTING; the worker moves CLAIMED -> IDLE when its part is done. */
const ABSENT = 0, STARTING = 1, IDLE = 2, CLAIMED = 3;
/** A worker that saw no job for this long exits (so a dropped pool's threads and memory go away); the
 *  next large GEMM starts a new one. */
export const IDLE_EXIT_MS = 3000;
const CTRL_BYTES = 4096;
/** Floats of one thread's packing scratch: an MC x KC block of A and a KC x NC block of B. */
const SCRATCH_FLOATS = MC * KC + KC * NC;

/** Byte where thread slot t's scratch starts; operands start at scratchEnd(threads). */
const scratchAt = (t: number): number => CTRL_BYTES + t * SCRATCH_FLOATS * 4;
export const scratchEnd = (threads: number): number => scratchAt(threads);

export const ctrlSlots = { SEQ, DONE, ERR, QUIT, STATE, PART_OF, STARTING, IDLE, CLAIMED, ABSENT } as const;

/** One thread's view of the shared memory (views are rebuilt when the memory grows). */
export class GemmThread {
  private f32: Float32Array;
  private i32: Int32Array;
  constructor(readonly mem: WebAssembly.Memory, readonly k: GemmKernels, readonly slot: number) {
    this.f32 = new Float32Array(mem.buffer);
    this.i32 = new Int32Array(mem.buffer, 0, CTRL_BYTES / 4);
  }

  /** The f32 view of all of memory, current after any grow. */
  floats(): Float32Array {
    if (this.f32.buffer.byteLength !== this.mem.buffer.byteLength) {
      this.f32 = new Float32Array(this.mem.buffer);
    }
    return this.f32;
  }

  get ctrl(): Int32Array {
    return this.i32;
  }

  /** Computes this thread's share (part of PARTS) of the job described in the control block. */
  runPart(part: number): void {
    const c = this.i32, f = this.floats();
    const parts = c[PARTS], batch = c[P_BATCH];
    const m = c[P_M], n = c[P_N];
    const mp = Math.ceil(m / MR) * MR, np = Math.ceil(n / NR) * NR;
    const cut = (units: number, q: number) => Math.floor((units * q) / parts);
    if (batch >= parts) {
      for (let b = cut(batch, part); b < cut(batch, part + 1); b++) this.region(f, b, 0, mp, 0, np);
      return;
    }
    for (let b = 0; b < batch; b++) {
      if (np >= mp) {
        const t = np / NR;
        this.region(f, b, 0, mp, cut(t, part) * NR, cut(t, part + 1) * NR);
      } else {
        const t = mp / MR;
        this.region(f, b, cut(t, part) * MR, cut(t, part + 1) * MR, 0, np);
      }
    }
  }

  /** C[i0:i1, j0:j1] of batch item b (bounds in whole tiles of the padded C). */
  private region(f: Float32Array, b: number, i0: number, i1: number, j0: number, j1: number): void {
    if (i0 >= i1 || j0 >= j1) return;
    const c = this.i32;
    const m = c[P_M], n = c[P_N], k = c[P_K], ta = c[P_TA] !== 0, tb = c[P_TB] !== 0;
    const aOff = c[P_AOFF] + b * c[P_SA], lda = c[P_LDA];
    const bOff = c[P_BOFF] + b * c[P_SB], ldb = c[P_LDB];
    const ldc = c[P_LDC], cOff = c[P_COFF] + b * c[P_SC];
    const overwrite = c[P_OVERWRITE] !== 0;
    const alpha = new Float32Array(c.buffer, c.byteOffset, CTRL_BYTES / 4)[P_ALPHA];
    const pa = scratchAt(this.slot), pb = pa + MC * KC * 4;
    for (let jc = j0; jc < j1; jc += NC) {
      const nc = Math.min(NC, j1 - jc);
      for (let pc = 0; pc < k; pc += KC) {
        const kc = Math.min(KC, k - pc);
        this.packB(f, pb, bOff, ldb, tb, pc, kc, jc, nc, n);
        for (let ic = i0; ic < i1; ic += MC) {
          const mc = Math.min(MC, i1 - ic);
          this.packA(f, pa, aOff, lda, ta, ic, mc, pc, kc, m);
          const accumulate = pc > 0 || !overwrite ? 1 : 0;
          this.k.macro(mc, nc, kc, pa, pb, (cOff + ic * ldc + jc) * 4, ldc * 4, alpha, accumulate);
        }
      }
    }
  }

  /** Whole panels through the wasm packing kernels; the partial last panel float by float. */
  private packB(
    f: Float32Array,
    dst: number,
    off: number,
    ld: number,
    trans: boolean,
    pc: number,
    kc: number,
    jc: number,
    nc: number,
    n: number,
  ): void {
    const full = Math.max(0, Math.min(nc, n - jc) / NR | 0), kc4 = kc & ~3;
    if (full > 0) {
      if (trans) this.k.packBT(dst, 4 * (off + jc * ld + pc), 4 * ld, kc, kc4, full);
      else this.k.packBN(dst, 4 * (off + pc * ld + jc), 4 * ld, kc, kc4, full);
    }
    if (full * NR < nc) {
      packB(f, dst / 4 + full * NR * kc, off, ld, trans, pc, kc, jc + full * NR, nc - full * NR, n);
    }
  }

  private packA(
    f: Float32Array,
    dst: number,
    off: number,
    ld: number,
    trans: boolean,
    ic: number,
    mc: number,
    pc: number,
    kc: number,
    m: number,
  ): void {
    const full = Math.max(0, Math.min(mc, m - ic) / MR | 0), kc4 = kc & ~3;
    if (full > 0) {
      if (trans) this.k.packAT(dst, 4 * (off + pc * ld + ic), 4 * ld, kc, kc4, full);
      else this.k.packAN(dst, 4 * (off + ic * ld + pc), 4 * ld, kc, kc4, full);
    }
    if (full * MR < mc) {
      packA(f, dst / 4 + full * MR * kc, off, ld, trans, ic + full * MR, mc - full * MR, pc, kc, m);
    }
  }
}

/** op(B)[pc:pc+kc, jc:jc+nc] into NR-wide panels (panel q: kc rows of NR), columns >= n as zeros; a
 *  float at a time (the partial last panel; whole panels go through the wasm packing kernels). */
function packB(
  f: Float32Array,
  dst: number,
  off: number,
  ld: number,
  trans: boolean,
  pc: number,
  kc: number,
  jc: number,
  nc: number,
  n: number,
): void {
  for (let q = 0; q < nc; q += NR) {
    const d = dst + q * kc;
    for (let j = 0; j < NR; j++) {
      const col = jc + q + j;
      if (col >= n) {
        for (let p = 0; p < kc; p++) f[d + p * NR + j] = 0;
      } else if (trans) {
        const s = off + col * ld + pc;
        for (let p = 0; p < kc; p++) f[d + p * NR + j] = f[s + p];
      } else {
        const s = off + pc * ld + col;
        for (let p = 0; p < kc; p++) f[d + p * NR + j] = f[s + p * ld];
      }
    }
  }
}

/** op(A)[ic:ic+mc, pc:pc+kc] into MR-tall panels (panel q: kc columns of MR), rows >= m as zeros; a
 *  float at a time (the partial last panel). */
function packA(
  f: Float32Array,
  dst: number,
  off: number,
  ld: number,
  trans: boolean,
  ic: number,
  mc: number,
  pc: number,
  kc: number,
  m: number,
): void {
  for (let q = 0; q < mc; q += MR) {
    const d = dst + q * kc;
    for (let r = 0; r < MR; r++) {
      const row = ic + q + r;
      if (row >= m) {
        for (let p = 0; p < kc; p++) f[d + p * MR + r] = 0;
      } else if (trans) {
        const s = off + pc * ld + row;
        for (let p = 0; p < kc; p++) f[d + p * MR + r] = f[s + p * ld];
      } else {
        const s = off + row * ld + pc;
        for (let p = 0; p < kc; p++) f[d + p * MR + r] = f[s + p];
      }
    }
  }
}

// ---- the calling thread's side -----------------------------------------------------------------

/** Below this many multiply-adds a GEMM runs on the calling thread alone (a worker round trip costs
 *  ~20 us, about 0.4 M multiply-adds). */
const PARALLEL_MIN = 1 << 20;
const PAGE = 65536;
/** How long the first large GEMM waits for the workers to start (module load and compile: ~0.1-1 s; a
 *  worker that takes longer joins later jobs). */
const START_WAIT_MS = 5_000;
/** Shared memory ceiling: 4 GiB minus a page (byte addresses must fit in a wasm32 i32). */
const MAX_BYTES = 65535 * PAGE;

/** What the pool needs from node:worker_threads' Worker (unref: idle workers never hold the process). */
interface PoolWorker {
  unref(): void;
  terminate(): unknown;
}

/** One GEMM job (row-major, f32); o*: element offsets of the first item. */
export interface PoolJob {
  transA: boolean;
  transB: boolean;
  m: number;
  n: number;
  k: number;
  alpha: number;
  a: Float32Array;
  oA: number;
  lda: number;
  sA: number;
  eA: number;
  b: Float32Array;
  oB: number;
  ldb: number;
  sB: number;
  eB: number;
  beta: number;
  c: Float32Array;
  oC: number;
  ldc: number;
  sC: number;
  batch: number;
}

/** f32 GEMM on this thread plus up to threads - 1 workers, created on the first large GEMM. */
export class GemmPool {
  readonly relaxed: boolean;
  private readonly mem = new WebAssembly.Memory({ initial: 1, maximum: 65536, shared: true });
  private readonly main: GemmThread;
  /** Worker handles by slot (slot w + 1 at index w). */
  private readonly workers: (PoolWorker | undefined)[] = [];
  /** Slots whose worker could not be created. */
  private readonly failed: boolean[] = [];
  private closed = false;

  /** relaxed: false forces f32x4 mul + add even where relaxed SIMD exists (tests of that path). */
  constructor(readonly threads: number, opts: { relaxed?: boolean } = {}) {
    if (!Number.isInteger(threads) || threads < 1 || threads > MAX_THREADS) {
      throw new Error(`gemm threads must be an integer in [1, ${MAX_THREADS}], found ${threads}`);
    }
    this.relaxed = opts.relaxed !== false && hasRelaxedSimd();
    this.main = new GemmThread(this.mem, instantiateGemm(this.mem, this.relaxed), 0);
  }

  /** "WebAssembly SIMD GEMM (relaxed madd, 2 threads)" for the backend's log line. */
  get label(): string {
    return `WebAssembly SIMD GEMM (${this.relaxed ? "relaxed madd" : "mul+add"}, ${this.threads} thread${
      this.threads > 1 ? "s" : ""
    })`;
  }

  /** Bytes of shared memory a job needs, or Infinity when it does not fit. */
  private layout(eA: number, eB: number, items: number, mp: number, np: number) {
    const aAt = scratchEnd(this.threads) / 4, bAt = aAt + eA, cAt = bAt + eB;
    const end = (cAt + items * mp * np) * 4;
    return { aAt, bAt, cAt, bytes: end };
  }

  /** Whether gemm() can take this job: its operands fit in the 4 GiB shared memory, which is grown here
   *  (false when the system refuses the memory; the caller then uses another GEMM). */
  fits(eA: number, eB: number, batch: number, m: number, n: number): boolean {
    const mp = Math.ceil(m / MR) * MR, np = Math.ceil(n / NR) * NR;
    const bytes = this.layout(eA, eB, batch, mp, np).bytes;
    if (bytes > MAX_BYTES) return false;
    if (bytes > this.mem.buffer.byteLength) {
      try {
        this.mem.grow(Math.ceil((bytes - this.mem.buffer.byteLength) / PAGE));
      } catch {
        return false; // out of memory (RangeError)
      }
    }
    return true;
  }

  /** Row-major C = alpha op(A) op(B) + beta C for `batch` items at element strides sA, sB, sC; eA, eB:
   *  elements of A, B from their offsets that the job reads; m, n, k >= 1. */
  gemm(j: PoolJob): void {
    const { transA, transB, m, n, k, alpha, a: A, lda, sA, eA, b: B, ldb, sB, eB, beta, c: C, ldc, sC } = j;
    const { oA, oB, oC, batch } = j;
    if (this.closed) throw new Error("gemm: the backend was closed");
    const mp = Math.ceil(m / MR) * MR, np = Math.ceil(n / NR) * NR;
    const L = this.layout(eA, eB, batch, mp, np);
    if (!this.fits(eA, eB, batch, m, n)) {
      throw new Error(`gemm: ${batch} x [${m}, ${n}, ${k}] does not fit in the WebAssembly GEMM's memory`);
    }
    const f = this.main.floats(), c = this.main.ctrl;
    f.set(A.subarray(oA, oA + eA), L.aAt);
    f.set(B.subarray(oB, oB + eB), L.bAt);
    const overwrite = beta === 0;
    if (!overwrite) {
      for (let b = 0; b < batch; b++) {
        for (let i = 0; i < m; i++) {
          const s = oC + b * sC + i * ldc, d = L.cAt + b * mp * np + i * np;
          if (beta === 1) f.set(C.subarray(s, s + n), d);
          else for (let j = 0; j < n; j++) f[d + j] = beta * C[s + j];
        }
      }
    }
    c[P_M] = m,
      c[P_N] = n,
      c[P_K] = k,
      c[P_BATCH] = batch,
      c[P_TA] = transA ? 1 : 0,
      c[P_TB] = transB ? 1 : 0;
    c[P_AOFF] = L.aAt, c[P_LDA] = lda, c[P_SA] = sA, c[P_BOFF] = L.bAt, c[P_LDB] = ldb, c[P_SB] = sB;
    c[P_COFF] = L.cAt, c[P_LDC] = np, c[P_SC] = mp * np, c[P_OVERWRITE] = overwrite ? 1 : 0;
    new Float32Array(c.buffer, 0, CTRL_BYTES / 4)[P_ALPHA] = alpha;
    this.run(m * n * k * batch >= PARALLEL_MIN);
    for (let b = 0; b < batch; b++) {
      const src = L.cAt + b * mp * np, dst = oC + b * sC;
      if (np === n && ldc === n) C.set(f.subarray(src, src + m * n), dst);
      else for (let i = 0; i < m; i++) C.set(f.subarray(src + i * np, src + i * np + n), dst + i * ldc);
    }
  }

  /** Runs the job in the control block: parts for the workers it claims and part 0 here, then waits. */
  private run(parallel: boolean): void {
    const c = this.main.ctrl;
    let parts = 1;
    if (parallel && this.threads > 1) {
      this.startWorkers();
      for (let w = 0; w < this.threads - 1; w++) {
        if (Atomics.compareExchange(c, STATE + w, IDLE, CLAIMED) === IDLE) {
          Atomics.store(c, PART_OF + w, parts++);
        }
      }
    }
    Atomics.store(c, PARTS, parts);
    if (parts > 1) {
      Atomics.store(c, DONE, 0);
      Atomics.store(c, ERR, 0);
      Atomics.add(c, SEQ, 1);
      Atomics.notify(c, SEQ);
    }
    this.main.runPart(0);
    if (parts > 1) {
      for (let d = Atomics.load(c, DONE); d < parts - 1; d = Atomics.load(c, DONE)) Atomics.wait(c, DONE, d);
      if (Atomics.load(c, ERR) !== 0) throw new Error("gemm: a GEMM worker thread failed");
    }
  }

  /** Workers that are running (idle or in a job). */
  readyWorkers(): number {
    let r = 0;
    for (let w = 0; w < this.threads - 1; w++) r += Atomics.load(this.main.ctrl, STATE + w) >= IDLE ? 1 : 0;
    return r;
  }

  /** Starts the workers now instead of on the first large GEMM. */
  start(): void {
    if (this.threads > 1) this.startWorkers();
  }

  /** Starts a worker in every empty slot (first use, or after an idle exit) and waits (at most
   *  START_WAIT_MS) until they run, so the GEMM that needed them uses all threads. A worker that cannot
   *  be created (no node:worker_threads, a denied permission) is not tried again; one that does not
   *  start in time joins the jobs after it has. */
  private startWorkers(): void {
    const c = this.main.ctrl;
    let started = false;
    for (let w = 0; w < this.threads - 1; w++) {
      if (this.failed[w] || Atomics.load(c, STATE + w) !== ABSENT) continue;
      Atomics.store(c, STATE + w, STARTING);
      try {
        this.workers[w]?.terminate(); // an exited worker's handle
        const wk = new NodeWorker(new URL("./gemm_worker.ts", import.meta.url), {
          workerData: { mem: this.mem, relaxed: this.relaxed, slot: w + 1 },
        }) as unknown as PoolWorker;
        wk.unref();
        this.workers[w] = wk;
        started = true;
      } catch {
        Atomics.store(c, STATE + w, ABSENT);
        this.failed[w] = true;
      }
    }
    if (!started) return;
    const deadline = performance.now() + START_WAIT_MS;
    for (let w = 0; w < this.threads - 1; w++) {
      for (let st = Atomics.load(c, STATE + w); st === STARTING; st = Atomics.load(c, STATE + w)) {
        const left = deadline - performance.now();
        if (left <= 0) return;
        Atomics.wait(c, STATE + w, STARTING, left);
      }
    }
  }

  /** Stops the workers; the pool must not be used afterwards. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const c = this.main.ctrl;
    Atomics.store(c, QUIT, 1);
    Atomics.add(c, SEQ, 1);
    Atomics.notify(c, SEQ);
    for (const w of this.workers) w?.terminate();
  }
}

/** Threads for the pool by default: the machine's cores, at most 8; 1 when this module was imported
 *  from a URL (node:worker_threads starts workers from local files only). */
export function defaultGemmThreads(): number {
  if (new URL(import.meta.url).protocol !== "file:") return 1;
  return Math.max(1, Math.min(8, navigator.hardwareConcurrency || 1));
}
