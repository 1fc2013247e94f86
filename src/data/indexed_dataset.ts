// Megatron's memory-mapped indexed dataset: <prefix>.idx (MMIDIDX v1 header + sizes/pointers/doc_idx)
// and <prefix>.bin (concatenated token arrays). Reader and builder are byte-compatible with
// megatron/data/indexed_dataset.py (2021). See shared/reference/megatron-2021-facts.md §1.
//
// Dtype code 7: in 2021 it meant np.double (float64); Megatron-Core later made it float32. We read 7 as
// float64 (the 2021 meaning) unless the caller passes {code7: "float32"}. Writers never emit code 7.
//
// The legacy "TNTIDX" (lazy/cached) index is recognised and rejected with a message asking to
// re-preprocess with --dataset-impl mmap: nothing in GPT training can use it (it has no get()).

import { MAP_PRIVATE, O_RDONLY, openLibc, PROT_READ } from "../../ffi/libc.ts";
import type { Libc } from "../../ffi/libc.ts";

export type IndexedDtype = "uint8" | "int8" | "int16" | "int32" | "int64" | "float64" | "float32" | "uint16";

/** Tokens as numbers. int64 data (never written by preprocess) is returned as a Float64Array copy. */
export type TokenArray =
  | Uint8Array
  | Int8Array
  | Int16Array
  | Int32Array
  | Float64Array
  | Float32Array
  | Uint16Array;

type TokenArrayCtor = {
  new (buffer: ArrayBufferLike, byteOffset: number, length: number): TokenArray | BigInt64Array;
  new (length: number): TokenArray | BigInt64Array;
  readonly BYTES_PER_ELEMENT: number;
};

const CTORS: Readonly<Record<IndexedDtype, TokenArrayCtor>> = {
  uint8: Uint8Array,
  int8: Int8Array,
  int16: Int16Array,
  int32: Int32Array,
  int64: BigInt64Array,
  float64: Float64Array,
  float32: Float32Array,
  uint16: Uint16Array,
};

/** Bytes per element of each dtype. */
export const DTYPE_ITEMSIZE: Readonly<Record<IndexedDtype, number>> = {
  uint8: 1,
  int8: 1,
  int16: 2,
  int32: 4,
  int64: 8,
  float64: 8,
  float32: 4,
  uint16: 2,
};

/** Code written for each dtype by the 2021 builder (float64 is 6, the first match in its table). */
export const DTYPE_TO_CODE: Readonly<Partial<Record<IndexedDtype, number>>> = {
  uint8: 1,
  int8: 2,
  int16: 3,
  int32: 4,
  int64: 5,
  float64: 6,
  uint16: 8,
};

/** Maps a dtype code to a dtype, using the 2021 table (7 = float64 unless code7 says otherwise). */
export function dtypeFromCode(code: number, code7: "float64" | "float32" = "float64"): IndexedDtype | null {
  switch (code) {
    case 1:
      return "uint8";
    case 2:
      return "int8";
    case 3:
      return "int16";
    case 4:
      return "int32";
    case 5:
      return "int64";
    case 6:
      return "float64";
    case 7:
      return code7;
    case 8:
      return "uint16";
    default:
      return null;
  }
}

/** Megatron's rule: uint16 when the vocabulary has fewer than 65500 entries, else int32. */
export function bestDtypeForVocab(vocabSize: number): "uint16" | "int32" {
  return vocabSize !== undefined && vocabSize < 65500 ? "uint16" : "int32";
}

export const MMAP_MAGIC: Uint8Array = new Uint8Array([0x4d, 0x4d, 0x49, 0x44, 0x49, 0x44, 0x58, 0x00, 0x00]);
const LEGACY_MAGIC = new Uint8Array([0x54, 0x4e, 0x54, 0x49, 0x44, 0x58, 0x00, 0x00]);
const HEADER_BYTES = 34;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function idxPath(prefix: string): string {
  return prefix + ".idx";
}
export function binPath(prefix: string): string {
  return prefix + ".bin";
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function startsWith(bytes: Uint8Array, magic: Uint8Array): boolean {
  if (bytes.length < magic.length) return false;
  for (let i = 0; i < magic.length; i++) if (bytes[i] !== magic[i]) return false;
  return true;
}

/** Which implementation wrote <prefix>.idx ("infer" in Megatron): "mmap", "lazy" (TNTIDX) or null. */
export function inferDatasetImpl(prefix: string): "mmap" | "lazy" | null {
  let head: Uint8Array;
  try {
    const f = Deno.openSync(idxPath(prefix), { read: true });
    try {
      head = new Uint8Array(9);
      const n = f.readSync(head) ?? 0;
      head = head.subarray(0, n);
    } finally {
      f.close();
    }
  } catch {
    return null;
  }
  if (startsWith(head, MMAP_MAGIC)) return "mmap";
  if (startsWith(head, LEGACY_MAGIC)) return "lazy";
  return null;
}

/** True when both <prefix>.idx and <prefix>.bin exist. */
export function datasetExists(prefix: string): boolean {
  try {
    return Deno.statSync(idxPath(prefix)).isFile && Deno.statSync(binPath(prefix)).isFile;
  } catch {
    return false;
  }
}

/** Parsed contents of a .idx file. Arrays are aligned copies (the on-disk arrays are misaligned). */
export interface MMapIndex {
  dtype: IndexedDtype;
  dtypeCode: number;
  sizes: Int32Array;
  /** Byte offset of each sequence in .bin (exact as numbers up to 2^53). */
  pointers: Float64Array;
  docIdx: Int32Array;
}

/**
 * Parses and validates an MMIDIDX v1 index. `file` names the file in error messages.
 * `binBytes`, when given, must equal the bytes the pointers and sizes describe (`binFile` names the .bin).
 */
export function parseIndex(
  bytes: Uint8Array,
  file: string,
  opts: { code7?: "float64" | "float32"; binBytes?: number; binFile?: string } = {},
): MMapIndex {
  if (!LITTLE_ENDIAN) throw new Error(`${file}: indexed datasets need a little-endian host`);
  if (startsWith(bytes, LEGACY_MAGIC)) {
    throw new Error(
      `${file}: expected an mmap index (magic MMIDIDX), found a legacy lazy/cached index (magic TNTIDX); ` +
        `re-preprocess the data with --dataset-impl mmap`,
    );
  }
  // A file cut inside the header (even inside the magic) is truncated, not foreign.
  if (bytes.length < HEADER_BYTES && startsWith(MMAP_MAGIC, bytes.subarray(0, MMAP_MAGIC.length))) {
    throw new Error(
      `${file}: truncated .idx: expected at least ${HEADER_BYTES} header bytes, found ${bytes.length}`,
    );
  }
  if (!startsWith(bytes, MMAP_MAGIC)) {
    throw new Error(
      `${file}: not a Megatron MMIDIDX index (magic ${hex(bytes.subarray(0, 9))}, expected ${
        hex(MMAP_MAGIC)
      } "MMIDIDX\\0\\0")`,
    );
  }
  if (bytes.length < HEADER_BYTES) {
    throw new Error(
      `${file}: truncated .idx: expected at least ${HEADER_BYTES} header bytes, found ${bytes.length}`,
    );
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = dv.getBigUint64(9, true);
  if (version !== 1n) throw new Error(`${file}: expected index version 1, found ${version}`);
  const dtypeCode = dv.getUint8(17);
  const dtype = dtypeFromCode(dtypeCode, opts.code7);
  if (dtype === null) throw new Error(`${file}: expected a dtype code in 1..8, found ${dtypeCode}`);
  const nBig = dv.getBigUint64(18, true);
  const dBig = dv.getBigUint64(26, true);
  if (nBig > 0x7fffffffn || dBig > 0x7fffffffn) {
    throw new Error(`${file}: expected sequence/document counts below 2^31, found N=${nBig} D=${dBig}`);
  }
  const n = Number(nBig);
  const d = Number(dBig);
  const need = HEADER_BYTES + 12 * n + 8 * d;
  if (bytes.length < need) {
    throw new Error(
      `${file}: truncated .idx: N=${n} sequences and ${d} doc_idx entries need ${need} bytes, found ${bytes.length}`,
    );
  }
  // Megatron-Core multimodal indexes append int8 sequence_modes[N]; anything else is unexpected.
  if (bytes.length !== need && bytes.length !== need + n) {
    throw new Error(
      `${file}: expected ${need} bytes for N=${n} and D=${d}, found ${bytes.length} (unexpected trailing data)`,
    );
  }
  // Aligned copies: sizes start at byte 34 and pointers at 34+4N, never aligned.
  const sizes = new Int32Array(n);
  new Uint8Array(sizes.buffer).set(bytes.subarray(HEADER_BYTES, HEADER_BYTES + 4 * n));
  const ptrWords = new Uint32Array(2 * n);
  new Uint8Array(ptrWords.buffer).set(bytes.subarray(HEADER_BYTES + 4 * n, HEADER_BYTES + 12 * n));
  const docWords = new Uint32Array(2 * d);
  new Uint8Array(docWords.buffer).set(bytes.subarray(HEADER_BYTES + 12 * n, need));

  const itemsize = DTYPE_ITEMSIZE[dtype];
  const pointers = new Float64Array(n);
  let expected = 0;
  for (let i = 0; i < n; i++) {
    const size = sizes[i];
    if (size < 0) throw new Error(`${file}: expected sizes >= 0, found sizes[${i}]=${size}`);
    const lo = ptrWords[2 * i];
    const hi = ptrWords[2 * i + 1] | 0;
    const p = hi * 4294967296 + lo;
    if (p !== expected) {
      const what = i > 0 && p < pointers[i - 1]
        ? "pointers out of order"
        : "pointers inconsistent with sizes";
      throw new Error(
        `${file}: ${what}: expected pointers[${i}]=${expected} (running sum of size*${itemsize}), found ${p}`,
      );
    }
    pointers[i] = p;
    expected = p + size * itemsize;
  }
  // Megatron writes exactly the tokens the index describes; any other size means the pair does not
  // belong together (a re-run that replaced one file, a copy cut short), so training would misread it.
  if (opts.binBytes !== undefined && opts.binBytes !== expected) {
    const bin = opts.binFile ?? file.replace(/\.idx$/, ".bin");
    throw new Error(
      `${bin}: size ${opts.binBytes} bytes does not match ${file}, which needs exactly ${expected} bytes ` +
        `(last pointer + last size * ${itemsize}); the two files do not belong together`,
    );
  }

  const docIdx = new Int32Array(d);
  for (let i = 0; i < d; i++) {
    const lo = docWords[2 * i];
    const hi = docWords[2 * i + 1] | 0;
    const v = hi * 4294967296 + lo;
    if (v < 0 || v > n || (i > 0 && v < docIdx[i - 1])) {
      throw new Error(`${file}: expected doc_idx non-decreasing within 0..${n}, found doc_idx[${i}]=${v}`);
    }
    docIdx[i] = v;
  }
  if (d === 0) throw new Error(`${file}: expected doc_idx to hold at least [0], found it empty`);
  if (docIdx[0] !== 0) throw new Error(`${file}: expected doc_idx[0]=0, found ${docIdx[0]}`);
  if (docIdx[d - 1] !== n) {
    throw new Error(`${file}: expected doc_idx to end at N=${n}, found doc_idx[${d - 1}]=${docIdx[d - 1]}`);
  }
  return { dtype, dtypeCode, sizes, pointers, docIdx };
}

export interface OpenOptions {
  /** Memory-map the .bin through libc (default true); falls back to reading it when unavailable. */
  mmap?: boolean;
  /** How to read dtype code 7: "float64" (2021, default) or "float32" (Megatron-Core). */
  code7?: "float64" | "float32";
}

/** Read-only view of a <prefix>.idx/.bin pair. get() returns zero-copy views into the .bin data. */
export class MMapIndexedDataset {
  readonly prefix: string;
  readonly dtype: IndexedDtype;
  readonly dtypeCode: number;
  readonly sizes: Int32Array;
  readonly pointers: Float64Array;
  readonly docIdx: Int32Array;
  /** Whether the .bin is memory-mapped (false: it was read into memory). */
  readonly mmapped: boolean;
  #data: ArrayBuffer | null;
  #ctor: TokenArrayCtor;
  #unmap: (() => void) | null;

  private constructor(
    prefix: string,
    index: MMapIndex,
    data: ArrayBuffer,
    mmapped: boolean,
    unmap: (() => void) | null,
  ) {
    this.prefix = prefix;
    this.dtype = index.dtype;
    this.dtypeCode = index.dtypeCode;
    this.sizes = index.sizes;
    this.pointers = index.pointers;
    this.docIdx = index.docIdx;
    this.mmapped = mmapped;
    this.#data = data;
    this.#ctor = CTORS[index.dtype];
    this.#unmap = unmap;
  }

  /** Opens <prefix>.idx and <prefix>.bin; throws one line naming the file on any inconsistency. */
  static open(prefix: string, opts: OpenOptions = {}): MMapIndexedDataset {
    const ip = idxPath(prefix);
    const bp = binPath(prefix);
    let idxBytes: Uint8Array;
    try {
      idxBytes = Deno.readFileSync(ip);
    } catch (e) {
      throw new Error(`${ip}: cannot read index file: ${(e as Error).message}`);
    }
    let binSize: number;
    try {
      binSize = Deno.statSync(bp).size;
    } catch (e) {
      throw new Error(`${bp}: cannot stat data file: ${(e as Error).message}`);
    }
    const index = parseIndex(idxBytes, ip, { code7: opts.code7, binBytes: binSize, binFile: bp });
    const libc = opts.mmap === false || binSize === 0 ? null : tryOpenLibc();
    if (libc !== null) {
      const mapped = mmapFile(libc, bp, binSize);
      return new MMapIndexedDataset(prefix, index, mapped.buffer, true, mapped.unmap);
    }
    let bin = Deno.readFileSync(bp);
    if (bin.byteLength < binSize) {
      throw new Error(`${bp}: expected ${binSize} bytes, read ${bin.byteLength}`);
    }
    // Typed views need an aligned base; readFile normally gives offset 0, copy otherwise.
    if (bin.byteOffset % 8 !== 0) bin = bin.slice();
    const buf = bin.byteOffset === 0 && bin.byteLength === bin.buffer.byteLength
      ? bin.buffer as ArrayBuffer
      : bin.slice().buffer;
    return new MMapIndexedDataset(prefix, index, buf, false, null);
  }

  /** Number of sequences (items). */
  get length(): number {
    return this.sizes.length;
  }

  /** Number of documents (doc_idx.length - 1). */
  get numDocuments(): number {
    return this.docIdx.length - 1;
  }

  /**
   * Tokens of sequence i from token `offset`, `length` tokens (default: to the end), as a view of the
   * token dtype. No copy: the view is only valid until close().
   */
  get(i: number, offset = 0, length?: number): TokenArray {
    const data = this.#data;
    if (data === null) throw new Error(`${this.prefix}: dataset is closed`);
    const n = this.sizes.length;
    if (!Number.isInteger(i) || i < 0 || i >= n) {
      throw new Error(`${this.prefix}: expected an item index in 0..${n - 1}, found ${i}`);
    }
    const size = this.sizes[i];
    if (!Number.isInteger(offset) || offset < 0 || offset > size) {
      throw new Error(`${this.prefix}: item ${i}: expected offset in 0..${size}, found ${offset}`);
    }
    const len = length ?? size - offset;
    if (!Number.isInteger(len) || len < 0 || offset + len > size) {
      throw new Error(
        `${this.prefix}: item ${i}: expected offset+length <= ${size}, found offset=${offset} length=${len}`,
      );
    }
    const itemsize = this.#ctor.BYTES_PER_ELEMENT;
    const view = new this.#ctor(data, this.pointers[i] + offset * itemsize, len);
    if (view instanceof BigInt64Array) return Float64Array.from(view, Number);
    return view;
  }

  /** Unmaps the .bin; every view returned by get() becomes invalid (reading one would crash). */
  close(): void {
    this.#data = null;
    const unmap = this.#unmap;
    this.#unmap = null;
    if (unmap !== null) unmap();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function tryOpenLibc(): Libc | null {
  try {
    return openLibc();
  } catch {
    return null;
  }
}

function mmapFile(libc: Libc, path: string, size: number): { buffer: ArrayBuffer; unmap: () => void } {
  const fd = libc.open(path, O_RDONLY);
  if (fd < 0) throw new Error(`${path}: open() failed with errno ${libc.errno()}`);
  const ptr = libc.mmap(size, PROT_READ, MAP_PRIVATE, fd, 0);
  const err = ptr === null ? libc.errno() : 0;
  libc.close(fd); // the mapping outlives the descriptor
  if (ptr === null) {
    libc.closeLibrary();
    throw new Error(`${path}: mmap of ${size} bytes failed with errno ${err}`);
  }
  const buffer = Deno.UnsafePointerView.getArrayBuffer(ptr, size);
  return {
    buffer,
    unmap: () => {
      libc.munmap(ptr, size);
      libc.closeLibrary();
    },
  };
}

/** Serialises an MMIDIDX v1 index exactly as Megatron's builder writes it. */
export function encodeIndex(
  dtype: IndexedDtype,
  sizes: ArrayLike<number>,
  docIdx: ArrayLike<number>,
): Uint8Array {
  const code = DTYPE_TO_CODE[dtype];
  if (code === undefined) throw new Error(`indexed dataset: dtype ${dtype} has no 2021 dtype code to write`);
  const n = sizes.length;
  const d = docIdx.length;
  const itemsize = DTYPE_ITEMSIZE[dtype];
  const out = new Uint8Array(HEADER_BYTES + 12 * n + 8 * d);
  const dv = new DataView(out.buffer);
  out.set(MMAP_MAGIC, 0);
  dv.setBigUint64(9, 1n, true);
  dv.setUint8(17, code);
  dv.setBigUint64(18, BigInt(n), true);
  dv.setBigUint64(26, BigInt(d), true);
  let off = HEADER_BYTES;
  for (let i = 0; i < n; i++, off += 4) dv.setInt32(off, sizes[i], true);
  let ptr = 0;
  for (let i = 0; i < n; i++, off += 8) {
    dv.setUint32(off, ptr % 4294967296, true);
    dv.setUint32(off + 4, Math.floor(ptr / 4294967296), true);
    ptr += sizes[i] * itemsize;
  }
  for (let i = 0; i < d; i++, off += 8) {
    dv.setUint32(off, docIdx[i] % 4294967296, true);
    dv.setUint32(off + 4, Math.floor(docIdx[i] / 4294967296), true);
  }
  return out;
}

const INT_RANGE: Readonly<Partial<Record<IndexedDtype, [number, number]>>> = {
  uint8: [0, 255],
  int8: [-128, 127],
  int16: [-32768, 32767],
  int32: [-2147483648, 2147483647],
  uint16: [0, 65535],
};

const FLUSH_BYTES = 1 << 20;

/**
 * Writes <outPrefix>.bin/.idx. Data goes to temporary files that finalize() renames into place;
 * abort() removes them. Output is byte-identical to Megatron's MMapIndexedDatasetBuilder.
 */
export class MMapIndexedDatasetBuilder {
  readonly prefix: string;
  readonly dtype: IndexedDtype;
  readonly sizes: number[] = [];
  readonly docIdx: number[] = [0];
  readonly #binTmp: string;
  readonly #idxTmp: string;
  #bin: Deno.FsFile | null;
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  #state: "open" | "prepared" | "done" = "open";

  constructor(outPrefix: string, dtype: IndexedDtype = "uint16") {
    if (DTYPE_TO_CODE[dtype] === undefined) {
      throw new Error(
        `${outPrefix}: expected a writable dtype (uint8..int64, float64, uint16), found ${dtype}`,
      );
    }
    this.prefix = outPrefix;
    this.dtype = dtype;
    const tag = `.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
    this.#binTmp = binPath(outPrefix) + tag;
    this.#idxTmp = idxPath(outPrefix) + tag;
    try {
      this.#bin = Deno.openSync(this.#binTmp, { write: true, create: true, truncate: true });
    } catch (e) {
      // Name the output the user asked for, not the temporary name.
      const why = (e as Error).message.replace(/: open '.*$/, "");
      throw new Error(`${binPath(outPrefix)}: cannot create the output file: ${why}`);
    }
  }

  /** Appends one sequence (sentence or whole document). Values must fit the dtype. */
  addItem(tokens: ArrayLike<number>): void {
    this.#checkOpen();
    const n = tokens.length;
    const ctor = CTORS[this.dtype];
    let arr: TokenArray | BigInt64Array;
    if (this.dtype === "int64") {
      const a = new BigInt64Array(n);
      for (let i = 0; i < n; i++) {
        const v = tokens[i];
        if (!Number.isSafeInteger(v)) this.#badToken(i, v);
        a[i] = BigInt(v);
      }
      arr = a;
    } else {
      arr = new ctor(n);
      const range = INT_RANGE[this.dtype];
      for (let i = 0; i < n; i++) {
        const v = tokens[i];
        if (range !== undefined && !(Number.isInteger(v) && v >= range[0] && v <= range[1])) {
          this.#badToken(i, v);
        }
        (arr as Float64Array)[i] = v;
      }
    }
    this.#write(new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength));
    this.sizes.push(n);
  }

  /** Marks the end of a document: the next item starts a new one. */
  endDocument(): void {
    this.#checkOpen();
    this.docIdx.push(this.sizes.length);
  }

  /**
   * Appends all items of another dataset with the same dtype. Unlike Megatron 2021 (whose
   * merge_file_ dropped the other file's doc_idx, merging all its documents into one), the other
   * file's document boundaries are kept, as Megatron-Core does.
   */
  mergeFile(otherPrefix: string): void {
    this.#checkOpen();
    const ip = idxPath(otherPrefix);
    const bp = binPath(otherPrefix);
    const bin = Deno.readFileSync(bp);
    const index = parseIndex(Deno.readFileSync(ip), ip, { binBytes: bin.byteLength, binFile: bp });
    if (index.dtype !== this.dtype) {
      throw new Error(
        `${ip}: expected dtype ${this.dtype} to merge into ${this.prefix}, found ${index.dtype}`,
      );
    }
    const n = index.sizes.length;
    const used = n === 0 ? 0 : index.pointers[n - 1] + index.sizes[n - 1] * DTYPE_ITEMSIZE[this.dtype];
    this.#write(bin.subarray(0, used));
    const base = this.sizes.length;
    for (let i = 0; i < n; i++) this.sizes.push(index.sizes[i]);
    for (let i = 1; i < index.docIdx.length; i++) this.docIdx.push(base + index.docIdx[i]);
  }

  /** Writes the index and closes the data file, both still under temporary names. */
  prepare(): void {
    this.#checkOpen();
    this.#flush();
    this.#bin!.close();
    this.#bin = null;
    Deno.writeFileSync(this.#idxTmp, encodeIndex(this.dtype, this.sizes, this.docIdx));
    this.#state = "prepared";
  }

  /** Renames the prepared temporary files to <prefix>.bin/.idx. */
  commit(): void {
    if (this.#state !== "prepared") throw new Error(`${this.prefix}: commit() needs prepare() first`);
    Deno.renameSync(this.#binTmp, binPath(this.prefix));
    Deno.renameSync(this.#idxTmp, idxPath(this.prefix));
    this.#state = "done";
  }

  /** prepare() then commit(). */
  finalize(): void {
    this.prepare();
    this.commit();
  }

  /** Discards everything written so far; safe to call in any state. */
  abort(): void {
    if (this.#bin !== null) {
      try {
        this.#bin.close();
      } catch { /* already closed */ }
      this.#bin = null;
    }
    this.#pending = [];
    this.#pendingBytes = 0;
    if (this.#state !== "done") {
      for (const p of [this.#binTmp, this.#idxTmp]) {
        try {
          Deno.removeSync(p);
        } catch { /* never created */ }
      }
    }
    this.#state = "done";
  }

  #badToken(i: number, v: number): never {
    throw new Error(
      `${this.prefix}: item ${this.sizes.length} token ${i}: expected an integer that fits ${this.dtype}, found ${v}`,
    );
  }

  #checkOpen(): void {
    if (this.#state !== "open") throw new Error(`${this.prefix}: builder is already finalized or aborted`);
  }

  #write(bytes: Uint8Array): void {
    // Copy: callers may reuse their buffers.
    this.#pending.push(bytes.slice());
    this.#pendingBytes += bytes.byteLength;
    if (this.#pendingBytes >= FLUSH_BYTES) this.#flush();
  }

  #flush(): void {
    if (this.#pendingBytes === 0) return;
    const all = new Uint8Array(this.#pendingBytes);
    let off = 0;
    for (const p of this.#pending) {
      all.set(p, off);
      off += p.byteLength;
    }
    this.#pending = [];
    this.#pendingBytes = 0;
    let done = 0;
    while (done < all.byteLength) done += this.#bin!.writeSync(all.subarray(done));
  }
}
