// safetensors files (the Hugging Face format) from and to host arrays: u64 little-endian header size,
// a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {string: string}} padded with
// spaces so the data starts 8-byte aligned, then the tensors' bytes back to back in header order.
// Half types travel as their raw 16-bit patterns, so bytes round-trip exactly.

import { allocHost, type DType, DTYPE_BYTES, type HostArray } from "../tensor/dtype.ts";

export interface NamedTensor {
  name: string;
  dtype: DType;
  shape: number[];
  /** Row-major elements; f16/bf16 as raw Uint16 bit patterns. */
  data: HostArray;
}

export interface SafetensorsFile {
  tensors: NamedTensor[];
  metadata: Record<string, string>;
}

const TO_ST: Readonly<Record<DType, string>> = {
  f32: "F32",
  f16: "F16",
  bf16: "BF16",
  f64: "F64",
  i32: "I32",
  i64: "I64",
  u8: "U8",
};
const FROM_ST: ReadonlyMap<string, DType> = new Map(Object.entries(TO_ST).map(([d, s]) => [s, d as DType]));
/** A header larger than this is a corrupt file, not a real checkpoint. */
const MAX_HEADER = 100 * 1024 * 1024;

function count(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function bytesOf(a: HostArray): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function expectedArray(dtype: DType): string {
  return allocHost(dtype, 0).constructor.name;
}

/** Build the padded header for `tensors` (validating them) and return it with the total data size. */
function buildHeader(
  tensors: readonly NamedTensor[],
  metadata: Record<string, string> | undefined,
): { header: Uint8Array; dataBytes: number } {
  const obj: Record<string, unknown> = {};
  if (metadata !== undefined && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") {
        throw new Error(`safetensors: metadata ${k}: expected a string, found ${typeof v}`);
      }
    }
    obj.__metadata__ = metadata;
  }
  let off = 0;
  for (const t of tensors) {
    if (t.name === "__metadata__" || t.name in obj) {
      throw new Error(`safetensors: duplicate or reserved tensor name ${JSON.stringify(t.name)}`);
    }
    if (!(t.dtype in TO_ST)) throw new Error(`safetensors: ${t.name}: unsupported dtype ${t.dtype}`);
    if (!t.shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new Error(`safetensors: ${t.name}: invalid shape [${t.shape.join(", ")}]`);
    }
    const n = count(t.shape);
    if (t.data.length !== n || t.data.constructor.name !== expectedArray(t.dtype)) {
      throw new Error(
        `safetensors: ${t.name}: expected ${expectedArray(t.dtype)} of ${n} elements for ${t.dtype} ` +
          `[${t.shape.join(", ")}], found ${t.data.constructor.name} of ${t.data.length}`,
      );
    }
    const size = n * DTYPE_BYTES[t.dtype];
    obj[t.name] = { dtype: TO_ST[t.dtype], shape: t.shape, data_offsets: [off, off + size] };
    off += size;
  }
  const json = new TextEncoder().encode(JSON.stringify(obj));
  const padded = Math.ceil(json.length / 8) * 8;
  const header = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  return { header, dataBytes: off };
}

/** The whole file as one buffer (for small files and tests). */
export function encodeSafetensors(
  tensors: readonly NamedTensor[],
  metadata?: Record<string, string>,
): Uint8Array {
  const { header, dataBytes } = buildHeader(tensors, metadata);
  const out = new Uint8Array(header.length + dataBytes);
  out.set(header);
  let o = header.length;
  for (const t of tensors) {
    const b = bytesOf(t.data);
    out.set(b, o);
    o += b.length;
  }
  return out;
}

function writeAll(f: Deno.FsFile, b: Uint8Array): void {
  let w = 0;
  while (w < b.length) w += f.writeSync(b.subarray(w));
}

/** Stream `tensors` to `path` via a temp file in the same directory, fsync it, then rename it into
 *  place, so readers see either the old file or the complete new one. */
export function writeSafetensors(
  path: string,
  tensors: readonly NamedTensor[],
  metadata?: Record<string, string>,
): void {
  const { header } = buildHeader(tensors, metadata);
  const tmp = `${path}.tmp-${Deno.pid}`;
  const f = Deno.openSync(tmp, { write: true, create: true, truncate: true });
  try {
    writeAll(f, header);
    for (const t of tensors) writeAll(f, bytesOf(t.data));
    f.syncSync();
  } catch (e) {
    f.close();
    Deno.removeSync(tmp);
    throw e;
  }
  f.close();
  Deno.renameSync(tmp, path);
}

interface Layout {
  metadata: Record<string, string>;
  /** Tensors in data order, with byte ranges relative to the data section. */
  entries: { name: string; dtype: DType; shape: number[]; start: number; end: number }[];
  dataStart: number;
}

/** Validate the header against a file of `fileSize` bytes; `readHeader(n)` returns bytes [8, 8+n). */
function parseLayout(
  first8: Uint8Array,
  fileSize: number,
  readHeader: (n: number) => Uint8Array,
  name: string,
): Layout {
  const bad = (msg: string): never => {
    throw new Error(`${name}: ${msg}`);
  };
  if (fileSize < 8) bad(`expected at least 8 bytes (header size), found ${fileSize}`);
  const hlen = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (hlen > BigInt(Math.min(MAX_HEADER, fileSize - 8))) {
    bad(`header size ${hlen} exceeds the file (${fileSize} bytes) or the ${MAX_HEADER}-byte limit`);
  }
  const dataStart = 8 + Number(hlen);
  let hdr: unknown;
  try {
    hdr = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(readHeader(Number(hlen))));
  } catch (e) {
    bad(`header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof hdr !== "object" || hdr === null || Array.isArray(hdr)) bad("header is not a JSON object");
  const metadata: Record<string, string> = {};
  const entries: Layout["entries"] = [];
  const dataLen = fileSize - dataStart;
  for (const [k, v] of Object.entries(hdr as Record<string, unknown>)) {
    if (k === "__metadata__") {
      if (typeof v !== "object" || v === null || Array.isArray(v)) bad("__metadata__ is not an object");
      for (const [mk, mv] of Object.entries(v as Record<string, unknown>)) {
        if (typeof mv !== "string") bad(`__metadata__.${mk}: expected a string, found ${JSON.stringify(mv)}`);
        metadata[mk] = mv as string;
      }
      continue;
    }
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = FROM_ST.get(String(e?.dtype));
    if (dtype === undefined) bad(`tensor ${k}: unsupported dtype ${JSON.stringify(e?.dtype)}`);
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      bad(`tensor ${k}: shape must be a list of non-negative integers, found ${JSON.stringify(shape)}`);
    }
    const offs = e.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isInteger(d) && d >= 0)) {
      bad(`tensor ${k}: data_offsets must be [begin, end], found ${JSON.stringify(offs)}`);
    }
    const [start, end] = offs as number[];
    const want = count(shape as number[]) * DTYPE_BYTES[dtype!];
    if (end - start !== want) {
      bad(`tensor ${k}: data_offsets [${start}, ${end}] hold ${end - start} bytes, expected ${want}`);
    }
    if (end > dataLen) bad(`tensor ${k}: data_offsets end ${end} is past the data (${dataLen} bytes)`);
    entries.push({ name: k, dtype: dtype!, shape: shape as number[], start, end });
  }
  // The data must be covered exactly: no gaps, no overlaps, nothing trailing.
  entries.sort((a, b) => a.start - b.start || a.end - b.end);
  let pos = 0;
  for (const s of entries) {
    if (s.start !== pos) bad(`tensor ${s.name}: starts at ${s.start}, expected ${pos} (gap or overlap)`);
    pos = s.end;
  }
  if (pos !== dataLen) bad(`tensors cover ${pos} data bytes, file has ${dataLen}`);
  return { metadata, entries, dataStart };
}

/** Parse and validate a safetensors buffer; every problem is one line naming `name`. Tensors come
 *  back in data order (the writer's order). */
export function decodeSafetensors(buf: Uint8Array, name = "safetensors"): SafetensorsFile {
  const first8 = new Uint8Array(8);
  first8.set(buf.subarray(0, 8));
  const layout = parseLayout(first8, buf.length, (n) => buf.subarray(8, 8 + n), name);
  const tensors = layout.entries.map((e) => {
    const data = allocHost(e.dtype, count(e.shape));
    // Copy: the tensor's bytes need not be aligned for its element type within the file.
    bytesOf(data).set(buf.subarray(layout.dataStart + e.start, layout.dataStart + e.end));
    return { name: e.name, dtype: e.dtype, shape: e.shape, data };
  });
  return { tensors, metadata: layout.metadata };
}

function readExactly(f: Deno.FsFile, into: Uint8Array, path: string): void {
  let got = 0;
  while (got < into.length) {
    const n = f.readSync(into.subarray(got));
    if (n === null || n === 0) throw new Error(`${path}: file ended early (changed while reading?)`);
    got += n;
  }
}

/** Read a safetensors file straight into per-tensor arrays (no whole-file buffer). */
export function readSafetensors(path: string): SafetensorsFile {
  const f = Deno.openSync(path, { read: true });
  try {
    const size = f.statSync().size;
    const first8 = new Uint8Array(8);
    if (size >= 8) readExactly(f, first8, path);
    const layout = parseLayout(first8, size, (n) => {
      const h = new Uint8Array(n);
      readExactly(f, h, path);
      return h;
    }, path);
    const tensors = layout.entries.map((e) => {
      const data = allocHost(e.dtype, count(e.shape));
      // Entries are contiguous in data order, so the file position is already at e.start.
      readExactly(f, bytesOf(data), path);
      return { name: e.name, dtype: e.dtype, shape: e.shape, data };
    });
    return { tensors, metadata: layout.metadata };
  } finally {
    f.close();
  }
}
