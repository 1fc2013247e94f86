// NumPy .npy files (format 1.0 written; 1.0/2.0/3.0 read), so index-mapping caches are interchangeable
// with Megatron's np.save/np.load files.
//
// Layout: "\x93NUMPY", major, minor, header length (u16 LE in v1, u32 LE in v2/v3), then an ASCII
// Python dict literal, e.g. {'descr': '<i4', 'fortran_order': False, 'shape': (3,), }, padded with
// spaces and ending in "\n" so that the data starts at a multiple of 64 bytes. NumPy computes
// pad = 64 - (10 + len(dict) + 1) % 64, so an already aligned header still gets 64 spaces; we do the same.
// NumPy >= 1.23 also puts 21 - len(repr(shape[0])) spaces after the "}" (room to grow the array in
// place). Those spaces sit inside the padding, so for the short dicts written here the bytes are the
// same as with older NumPy: np.save(np.arange(3, dtype=np.int32)) gives 10 + 118 = 128 header bytes,
// the dict (57 chars), 60 spaces, "\n".

export type NpyData =
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array
  | Float32Array
  | Float64Array;

export interface NpyArray<T extends NpyData = NpyData> {
  /** NumPy dtype string as written in the header, e.g. "<i4", "|u1". */
  descr: string;
  shape: number[];
  data: T;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
const ALIGN = 64;
const GROWTH_AXIS_MAX_DIGITS = 21;

type Ctor = { new (buffer: ArrayBuffer, byteOffset: number, length: number): NpyData };

// Single-byte types have no byte order, which NumPy spells "|".
const DESCR_CTORS: Record<string, Ctor> = {
  "|i1": Int8Array,
  "|u1": Uint8Array,
  "<i2": Int16Array,
  "<u2": Uint16Array,
  "<i4": Int32Array,
  "<u4": Uint32Array,
  "<i8": BigInt64Array,
  "<u8": BigUint64Array,
  "<f4": Float32Array,
  "<f8": Float64Array,
};
// Accepted on read only (other writers spell single bytes with "<", ">" or "=").
const DESCR_ALIASES: Record<string, string> = {
  "<i1": "|i1",
  "<u1": "|u1",
  "=i1": "|i1",
  "=u1": "|u1",
  ">i1": "|i1",
  ">u1": "|u1",
  "i1": "|i1",
  "u1": "|u1",
};

/** The NumPy descr for a typed array. */
export function descrOf(data: NpyData): string {
  if (data instanceof Int8Array) return "|i1";
  if (data instanceof Uint8Array) return "|u1";
  if (data instanceof Int16Array) return "<i2";
  if (data instanceof Uint16Array) return "<u2";
  if (data instanceof Int32Array) return "<i4";
  if (data instanceof Uint32Array) return "<u4";
  if (data instanceof BigInt64Array) return "<i8";
  if (data instanceof BigUint64Array) return "<u8";
  if (data instanceof Float32Array) return "<f4";
  if (data instanceof Float64Array) return "<f8";
  throw new Error(`npy: expected a supported typed array, found ${Object.prototype.toString.call(data)}`);
}

function shapeRepr(shape: readonly number[]): string {
  if (shape.length === 0) return "()";
  if (shape.length === 1) return `(${shape[0]},)`;
  return `(${shape.join(", ")})`;
}

/** The full header (magic through the final "\n") NumPy writes for this dtype and shape. */
export function npyHeader(descr: string, shape: readonly number[]): Uint8Array {
  let dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeRepr(shape)}, }`;
  if (shape.length > 0) dict += " ".repeat(Math.max(0, GROWTH_AXIS_MAX_DIGITS - String(shape[0]).length));
  const hlen = dict.length + 1;
  const pad = ALIGN - ((MAGIC.length + 2 + 2 + hlen) % ALIGN);
  const total = hlen + pad;
  if (total > 0xffff) throw new Error(`npy: header of ${total} bytes does not fit format 1.0`);
  const out = new Uint8Array(10 + total);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  out[8] = total & 0xff;
  out[9] = total >>> 8;
  const text = dict + " ".repeat(pad) + "\n";
  for (let i = 0; i < text.length; i++) out[10 + i] = text.charCodeAt(i);
  return out;
}

function checkShape(data: NpyData, shape: readonly number[]): void {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new Error(`npy: expected shape dims >= 0, found ${d}`);
    n *= d;
  }
  if (n !== data.length) {
    throw new Error(`npy: shape ${shapeRepr(shape)} needs ${n} elements, found ${data.length}`);
  }
}

/** Serializes a C-order array to .npy bytes (format 1.0). shape defaults to [data.length]. */
export function encodeNpy(data: NpyData, shape: readonly number[] = [data.length]): Uint8Array {
  checkShape(data, shape);
  // Typed arrays use host byte order; every platform Deno runs on is little-endian.
  const header = npyHeader(descrOf(data), shape);
  const out = new Uint8Array(header.length + data.byteLength);
  out.set(header, 0);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), header.length);
  return out;
}

function parseHeaderDict(text: string, where: string): { descr: string; fortran: boolean; shape: number[] } {
  const t = text.trim();
  if (!t.startsWith("{") || !t.endsWith("}")) {
    throw new Error(`${where}: expected a header dict {...}, found ${JSON.stringify(t.slice(0, 60))}`);
  }
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(t);
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(t);
  const shape = /'shape'\s*:\s*\(([^)]*)\)/.exec(t);
  if (!descr || !fortran || !shape) {
    throw new Error(`${where}: expected keys 'descr', 'fortran_order', 'shape' in header, found ${t}`);
  }
  const dims = shape[1].split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  const parsed = dims.map((s) => {
    if (!/^\d+L?$/.test(s)) throw new Error(`${where}: expected integer shape dims, found '${s}'`);
    return Number(s.replace("L", ""));
  });
  return { descr: descr[1], fortran: fortran[1] === "True", shape: parsed };
}

/** Header fields and the data's byte offset, validating magic, version and header. */
export function parseNpyHeader(
  bytes: Uint8Array,
  where = "npy",
): { descr: string; shape: number[]; dataOffset: number; count: number } {
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) {
    throw new Error(`${where}: expected the .npy magic \\x93NUMPY, found a different file start`);
  }
  const major = bytes[6];
  let hlen: number;
  let start: number;
  if (major === 1) {
    hlen = bytes[8] | (bytes[9] << 8);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new Error(`${where}: truncated header (file is ${bytes.length} bytes)`);
    hlen = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(8, true);
    start = 12;
  } else {
    throw new Error(`${where}: expected .npy format version 1, 2 or 3, found ${major}.${bytes[7]}`);
  }
  if (start + hlen > bytes.length) {
    throw new Error(`${where}: header says ${hlen} bytes but the file has ${bytes.length - start} after it`);
  }
  const text = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(bytes.subarray(start, start + hlen));
  const h = parseHeaderDict(text, where);
  const descr = DESCR_ALIASES[h.descr] ?? h.descr;
  if (!(descr in DESCR_CTORS)) {
    throw new Error(
      `${where}: expected a little-endian dtype (${Object.keys(DESCR_CTORS).join(" ")}), found '${h.descr}'`,
    );
  }
  if (h.fortran && h.shape.filter((d) => d !== 1).length > 1) {
    throw new Error(`${where}: expected fortran_order False (C order), found True for shape ${h.shape}`);
  }
  const count = h.shape.reduce((a, b) => a * b, 1);
  return { descr, shape: h.shape, dataOffset: start + hlen, count };
}

/** Parses .npy bytes. The data is copied into a fresh aligned typed array. */
export function decodeNpy(bytes: Uint8Array, where = "npy"): NpyArray {
  const h = parseNpyHeader(bytes, where);
  const ctor = DESCR_CTORS[h.descr];
  const itemsize = (ctor as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT;
  const need = h.count * itemsize;
  const have = bytes.length - h.dataOffset;
  if (have !== need) {
    throw new Error(
      `${where}: shape ${shapeRepr(h.shape)} of '${h.descr}' needs ${need} data bytes, found ${have}`,
    );
  }
  const buf = new ArrayBuffer(need);
  new Uint8Array(buf).set(bytes.subarray(h.dataOffset, h.dataOffset + need));
  return { descr: h.descr, shape: h.shape, data: new ctor(buf, 0, h.count) };
}

/** Reads a .npy file; errors name the file. */
export function readNpySync(path: string): NpyArray {
  return decodeNpy(Deno.readFileSync(path), path);
}

/** Reads a .npy file; errors name the file. */
export async function readNpy(path: string): Promise<NpyArray> {
  return decodeNpy(await Deno.readFile(path), path);
}

/** Reads only the header (first 64 KiB at most) of a .npy file, e.g. to check a cache cheaply. */
export function readNpyHeaderSync(path: string): { descr: string; shape: number[] } {
  const f = Deno.openSync(path, { read: true });
  try {
    const buf = new Uint8Array(65536 + 12);
    let n = 0;
    while (n < buf.length) {
      const r = f.readSync(buf.subarray(n));
      if (r === null) break;
      n += r;
    }
    const h = parseNpyHeader(buf.subarray(0, n), path);
    return { descr: h.descr, shape: h.shape };
  } finally {
    f.close();
  }
}

function tempName(path: string): string {
  return `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
}

/** Writes a .npy file atomically (temp file in the same directory, then rename). */
export function writeNpySync(path: string, data: NpyData, shape: readonly number[] = [data.length]): void {
  const bytes = encodeNpy(data, shape);
  const tmp = tempName(path);
  try {
    Deno.writeFileSync(tmp, bytes);
    Deno.renameSync(tmp, path);
  } catch (e) {
    try {
      Deno.removeSync(tmp);
    } catch { /* temp may not exist */ }
    throw e;
  }
}

/** Writes a .npy file atomically (temp file in the same directory, then rename). */
export async function writeNpy(path: string, data: NpyData, shape: readonly number[] = [data.length]) {
  const bytes = encodeNpy(data, shape);
  const tmp = tempName(path);
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}
