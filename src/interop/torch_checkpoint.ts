// PyTorch checkpoint files (torch.save) read and written without Python.
//
// Formats read:
// - zip (torch >= 1.6): <root>/data.pkl (the object pickle; storages are persistent ids
//   ('storage', StorageType, key, location, numel)), <root>/data/<key> (raw storage bytes),
//   <root>/byteorder ("little"/"big"; absent means little), <root>/version. Entries are stored
//   (uncompressed); ZIP64 records are followed.
// - legacy stream (torch < 1.6, what Megatron's 2019-2020 checkpoints use): pickles of the magic
//   number, protocol version and sys_info, then the object pickle, then the pickled list of storage
//   keys, then per key an int64 element count followed by the storage bytes.
// The tar format of torch < 0.4 is refused with one line.
//
// Written: the zip format with protocol-2 pickle, 64-byte aligned storages and CRC-32s, which
// torch.load(weights_only=True) accepts (argparse.Namespace needs torch.serialization.safe_globals).

import {
  Pickler,
  PyDict,
  PyNamespace,
  PyNdarray,
  PyObject,
  PySet,
  PyStorageRef,
  PyStorageType,
  PyTensorRef,
  PyTorchDtype,
  PyTuple,
  type PyValue,
  STORAGE_TYPES,
  type TorchDtypeName,
  unpickle,
} from "./pickle.ts";

export type TorchArray =
  | Float32Array
  | Float64Array
  | Uint16Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array;

/** A tensor with its data copied out contiguous (row-major); f16/bf16 as raw Uint16 bit patterns. */
export class TorchTensor {
  readonly kind = "tensor" as const;
  constructor(
    readonly dtype: TorchDtypeName,
    readonly shape: number[],
    readonly data: TorchArray,
    /** The stride and storage offset the file described (elements), before the contiguous copy. */
    readonly stride: number[] = contiguousStride(shape),
    readonly storageOffset = 0,
  ) {
    if (data.length !== numel(shape)) {
      throw new Error(`TorchTensor: ${data.length} elements for shape [${shape.join(", ")}]`);
    }
  }
}

export const ELEMENT_BYTES: Readonly<Record<TorchDtypeName, number>> = {
  float32: 4,
  float64: 8,
  float16: 2,
  bfloat16: 2,
  int64: 8,
  int32: 4,
  int16: 2,
  int8: 1,
  uint8: 1,
  bool: 1,
};

const STORAGE_OF: Readonly<Record<TorchDtypeName, string>> = {
  float32: "FloatStorage",
  float64: "DoubleStorage",
  float16: "HalfStorage",
  bfloat16: "BFloat16Storage",
  int64: "LongStorage",
  int32: "IntStorage",
  int16: "ShortStorage",
  int8: "CharStorage",
  uint8: "ByteStorage",
  bool: "BoolStorage",
};

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function contiguousStride(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

function view(dtype: TorchDtypeName, buf: ArrayBuffer, byteOffset: number, n: number): TorchArray {
  switch (dtype) {
    case "float32":
      return new Float32Array(buf, byteOffset, n);
    case "float64":
      return new Float64Array(buf, byteOffset, n);
    case "float16":
    case "bfloat16":
      return new Uint16Array(buf, byteOffset, n);
    case "int64":
      return new BigInt64Array(buf, byteOffset, n);
    case "int32":
      return new Int32Array(buf, byteOffset, n);
    case "int16":
      return new Int16Array(buf, byteOffset, n);
    case "int8":
      return new Int8Array(buf, byteOffset, n);
    case "uint8":
    case "bool":
      return new Uint8Array(buf, byteOffset, n);
  }
}

/** Copy the (possibly strided) view out of `storage` (aligned, native order) into a new contiguous array. */
function materialize(
  ref: PyTensorRef,
  dtype: TorchDtypeName,
  storage: TorchArray,
  name: string,
): TorchTensor {
  const { shape, stride, storageOffset } = ref;
  if (shape.length !== stride.length) {
    throw new Error(`${name}: tensor has ${shape.length} sizes but ${stride.length} strides`);
  }
  const n = numel(shape);
  const bad = shape.some((d) => d < 0) || stride.some((d) => d < 0) || storageOffset < 0;
  let maxIndex = storageOffset;
  for (let i = 0; i < shape.length; i++) if (shape[i] > 0) maxIndex += (shape[i] - 1) * stride[i];
  if (bad || (n > 0 && maxIndex >= storage.length)) {
    throw new Error(
      `${name}: tensor view (offset ${storageOffset}, size [${shape.join(", ")}], stride [${
        stride.join(", ")
      }]) ` +
        `reaches past its storage of ${storage.length} elements`,
    );
  }
  const cs = contiguousStride(shape);
  const contiguous = stride.every((s, i) => shape[i] === 1 || s === cs[i]);
  // The storage array is already a private copy: a tensor covering all of it (the usual case) keeps it.
  if (contiguous && storageOffset === 0 && n === storage.length) {
    return new TorchTensor(dtype, [...shape], storage, [...stride], storageOffset);
  }
  const out = view(dtype, new ArrayBuffer(n * ELEMENT_BYTES[dtype]), 0, n);
  if (contiguous) {
    // deno-lint-ignore no-explicit-any
    (out as any).set((storage as any).subarray(storageOffset, storageOffset + n));
  } else if (n > 0) {
    const idx = new Array<number>(shape.length).fill(0);
    let src = storageOffset;
    for (let o = 0; o < n; o++) {
      out[o] = storage[src];
      for (let d = shape.length - 1; d >= 0; d--) {
        idx[d]++;
        src += stride[d];
        if (idx[d] < shape[d]) break;
        src -= stride[d] * shape[d];
        idx[d] = 0;
      }
    }
  }
  return new TorchTensor(dtype, [...shape], out, [...stride], storageOffset);
}

/** Replace every PyTensorRef in `v` by a TorchTensor, using `storageOf` for the bytes. */
function attach(v: PyValue, storageOf: (ref: PyStorageRef) => TorchArray, name: string): PyValue {
  if (v instanceof PyTensorRef) {
    const dtype = STORAGE_TYPES[v.storage.storageType];
    return materialize(v, dtype, storageOf(v.storage), name);
  }
  if (Array.isArray(v)) return v.map((x) => attach(x, storageOf, name));
  if (v instanceof PyTuple) return new PyTuple(v.items.map((x) => attach(x, storageOf, name)));
  if (v instanceof PyDict) {
    const d = new PyDict(v.ordered);
    for (const [k, x] of v.map) d.set(k, attach(x, storageOf, name));
    d.attrs = v.attrs;
    return d;
  }
  if (v instanceof PyNamespace) {
    return new PyNamespace(new Map([...v.attrs].map(([k, x]) => [k, attach(x, storageOf, name)])));
  }
  if (v instanceof PySet) return new PySet(v.items.map((x) => attach(x, storageOf, name)), v.frozen);
  return v;
}

function parseStoragePid(pid: PyValue, name: string): PyStorageRef {
  const t = pid instanceof PyTuple ? pid.items : null;
  if (t === null || t[0] !== "storage" || t.length < 5) {
    throw new Error(`${name}: unsupported persistent id (expected ('storage', type, key, location, numel))`);
  }
  const type = t[1];
  const typeName = type instanceof PyStorageType ? type.name : null;
  if (typeName === null || !(typeName in STORAGE_TYPES)) {
    throw new Error(`${name}: persistent id names an unknown storage type`);
  }
  const key = String(t[2]);
  const location = String(t[3]);
  const n = t[4];
  if (typeof n !== "number" || !Number.isInteger(n) || n < 0) throw new Error(`${name}: bad storage size`);
  return new PyStorageRef(typeName, key, location, n);
}

// ------------------------------------------------------------------------------------------------
// zip container

interface ZipEntry {
  name: string;
  method: number;
  crc: number;
  size: number;
  compressedSize: number;
  localOffset: number;
}

function readZipDirectory(buf: Uint8Array, name: string): ZipEntry[] {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const bad = (m: string): never => {
    throw new Error(`${name}: ${m}`);
  };
  // End of central directory: search the last 64 KiB + 22 bytes backwards for its signature.
  let eocd = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 65535); i--) {
    if (dv.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) bad("not a zip file (no end-of-central-directory record)");
  let count = dv.getUint16(eocd + 10, true);
  let cdSize = dv.getUint32(eocd + 12, true);
  let cdOffset = dv.getUint32(eocd + 16, true);
  if (count === 0xffff || cdOffset === 0xffffffff || cdSize === 0xffffffff) {
    const loc = eocd - 20;
    if (loc < 0 || dv.getUint32(loc, true) !== 0x07064b50) bad("ZIP64 locator missing");
    const z64 = Number(dv.getBigUint64(loc + 8, true));
    if (z64 + 56 > buf.length || dv.getUint32(z64, true) !== 0x06064b50) bad("ZIP64 end record missing");
    count = Number(dv.getBigUint64(z64 + 32, true));
    cdSize = Number(dv.getBigUint64(z64 + 40, true));
    cdOffset = Number(dv.getBigUint64(z64 + 48, true));
  }
  if (cdOffset + cdSize > buf.length) bad("central directory lies past the end of the file (truncated?)");
  const entries: ZipEntry[] = [];
  let p = cdOffset;
  for (let i = 0; i < count; i++) {
    if (p + 46 > buf.length || dv.getUint32(p, true) !== 0x02014b50) {
      bad(`central directory entry ${i} is corrupt`);
    }
    const method = dv.getUint16(p + 10, true);
    const crc = dv.getUint32(p + 16, true);
    let compressedSize = dv.getUint32(p + 20, true);
    let size = dv.getUint32(p + 24, true);
    const nameLen = dv.getUint16(p + 28, true);
    const extraLen = dv.getUint16(p + 30, true);
    const commentLen = dv.getUint16(p + 32, true);
    let localOffset = dv.getUint32(p + 42, true);
    const ename = new TextDecoder().decode(buf.subarray(p + 46, p + 46 + nameLen));
    // ZIP64 extended information: the 64-bit values present are those whose 32-bit field is all ones.
    let e = p + 46 + nameLen;
    const eEnd = e + extraLen;
    while (e + 4 <= eEnd) {
      const id = dv.getUint16(e, true), len = dv.getUint16(e + 2, true);
      if (id === 0x0001) {
        let q = e + 4;
        if (size === 0xffffffff) (size = Number(dv.getBigUint64(q, true)), q += 8);
        if (compressedSize === 0xffffffff) (compressedSize = Number(dv.getBigUint64(q, true)), q += 8);
        if (localOffset === 0xffffffff) localOffset = Number(dv.getBigUint64(q, true));
      }
      e += 4 + len;
    }
    entries.push({ name: ename, method, crc, size, compressedSize, localOffset });
    p = eEnd + commentLen;
  }
  return entries;
}

function entryData(buf: Uint8Array, e: ZipEntry, name: string): Uint8Array {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (e.localOffset + 30 > buf.length || dv.getUint32(e.localOffset, true) !== 0x04034b50) {
    throw new Error(`${name}: ${e.name}: local header is corrupt`);
  }
  if (e.method !== 0) {
    throw new Error(
      `${name}: ${e.name}: compression method ${e.method}; torch writes stored (method 0) entries`,
    );
  }
  const start = e.localOffset + 30 + dv.getUint16(e.localOffset + 26, true) +
    dv.getUint16(e.localOffset + 28, true);
  if (start + e.size > buf.length) throw new Error(`${name}: ${e.name}: data runs past the end of the file`);
  const data = buf.subarray(start, start + e.size);
  if (crc32(data) !== e.crc) throw new Error(`${name}: ${e.name}: CRC-32 mismatch (corrupt file)`);
  return data;
}

/** Slicing-by-8 tables of zip's CRC-32 (polynomial 0xEDB88320): 8 x 256 entries. */
function crcTable(): Uint32Array {
  const t = new Uint32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  for (let k = 1; k < 8; k++) {
    for (let n = 0; n < 256; n++) {
      const p = t[(k - 1) * 256 + n];
      t[k * 256 + n] = (p >>> 8) ^ t[p & 0xff];
    }
  }
  return t;
}

/** CRC-32 as zip computes it; eight bytes per step (the tables are rebuilt per call: 2048 entries). */
export function crc32(data: Uint8Array, table = crcTable()): number {
  let c = 0xffffffff;
  let i = 0;
  const n8 = data.length - (data.length % 8);
  for (; i < n8; i += 8) {
    const lo = c ^ (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24));
    c = table[7 * 256 + (lo & 0xff)] ^ table[6 * 256 + ((lo >>> 8) & 0xff)] ^
      table[5 * 256 + ((lo >>> 16) & 0xff)] ^ table[4 * 256 + (lo >>> 24)] ^
      table[3 * 256 + data[i + 4]] ^ table[2 * 256 + data[i + 5]] ^ table[256 + data[i + 6]] ^
      table[data[i + 7]];
  }
  for (; i < data.length; i++) c = table[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Storage bytes as an aligned native-order array of `dtype` (copied; byte-swapped for "big"). */
function storageArray(
  bytes: Uint8Array,
  dtype: TorchDtypeName,
  numelWanted: number,
  bigEndian: boolean,
  what: string,
) {
  const es = ELEMENT_BYTES[dtype];
  if (bytes.length < numelWanted * es) {
    throw new Error(`${what}: storage holds ${bytes.length} bytes, expected ${numelWanted * es}`);
  }
  const copy = bytes.slice(0, numelWanted * es);
  if (bigEndian && es > 1) {
    for (let i = 0; i < copy.length; i += es) copy.subarray(i, i + es).reverse();
  }
  return view(dtype, copy.buffer, 0, numelWanted);
}

/** The top-level object of a torch zip checkpoint, with tensors as TorchTensor. */
function loadZip(buf: Uint8Array, name: string): PyValue {
  const entries = readZipDirectory(buf, name);
  const pkl = entries.find((e) => /^[^/]+\/data\.pkl$/.test(e.name));
  if (!pkl) throw new Error(`${name}: zip has no <archive>/data.pkl (not a torch checkpoint)`);
  const root = pkl.name.slice(0, pkl.name.length - "data.pkl".length);
  const byName = new Map(entries.map((e) => [e.name, e]));
  const order = byName.get(`${root}byteorder`);
  const orderText = order ? new TextDecoder().decode(entryData(buf, order, name)).trim() : "little";
  if (orderText !== "little" && orderText !== "big") {
    throw new Error(`${name}: ${root}byteorder says ${JSON.stringify(orderText)}, expected little or big`);
  }
  const refs = new Map<string, PyStorageRef>();
  const { value } = unpickle(entryData(buf, pkl, name), {
    source: `${name}: ${pkl.name}`,
    persistentLoad: (pid) => {
      const ref = parseStoragePid(pid, `${name}: ${pkl.name}`);
      refs.set(ref.key, ref);
      return ref;
    },
  });
  const cache = new Map<string, TorchArray>();
  return attach(value, (ref) => {
    const dtype = STORAGE_TYPES[ref.storageType];
    const k = `${ref.key}/${dtype}`;
    let arr = cache.get(k);
    if (!arr) {
      const e = byName.get(`${root}data/${ref.key}`);
      if (!e) throw new Error(`${name}: storage ${ref.key} missing (${root}data/${ref.key})`);
      const bytes = entryData(buf, e, name);
      arr = storageArray(
        bytes,
        dtype,
        Math.floor(bytes.length / ELEMENT_BYTES[dtype]),
        orderText === "big",
        `${name}: ${e.name}`,
      );
      cache.set(k, arr);
    }
    return arr;
  }, name);
}

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

function loadLegacy(buf: Uint8Array, name: string): PyValue {
  let pos = 0;
  const next = (what: string, persistentLoad?: (pid: PyValue) => PyValue) => {
    const r = unpickle(buf.subarray(pos), { source: `${name}: ${what}`, persistentLoad });
    pos += r.end;
    return r.value;
  };
  const magic = next("magic number");
  if (BigInt(magic as number | bigint) !== LEGACY_MAGIC) throw new Error(`${name}: bad legacy magic number`);
  const proto = next("protocol version");
  if (proto !== 1001) throw new Error(`${name}: legacy protocol version ${String(proto)}, expected 1001`);
  const sys = next("sys_info");
  const little = sys instanceof PyDict ? sys.get("little_endian") !== false : true;
  const refs = new Map<string, PyStorageRef>();
  const value = next("object pickle", (pid) => {
    const t = pid instanceof PyTuple ? pid.items : null;
    if (t && t.length >= 6 && t[5] !== null) {
      throw new Error(`${name}: storage views (view_metadata) of the legacy format are not supported`);
    }
    const ref = parseStoragePid(pid, `${name}: object pickle`);
    refs.set(ref.key, ref);
    return ref;
  });
  const keys = next("storage keys");
  if (!Array.isArray(keys)) throw new Error(`${name}: legacy storage key list is not a list`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const arrays = new Map<string, TorchArray>();
  for (const k of keys) {
    const ref = refs.get(String(k));
    if (!ref) throw new Error(`${name}: storage ${String(k)} is listed but never used`);
    const dtype = STORAGE_TYPES[ref.storageType];
    if (pos + 8 > buf.length) throw new Error(`${name}: file ends before storage ${String(k)}`);
    const n = Number(little ? dv.getBigInt64(pos, true) : dv.getBigInt64(pos, false));
    pos += 8;
    const nbytes = n * ELEMENT_BYTES[dtype];
    if (n < 0 || pos + nbytes > buf.length) {
      throw new Error(`${name}: storage ${String(k)} runs past the end of the file`);
    }
    arrays.set(
      ref.key,
      storageArray(buf.subarray(pos, pos + nbytes), dtype, n, !little, `${name}: storage ${ref.key}`),
    );
    pos += nbytes;
  }
  return attach(value, (ref) => {
    const a = arrays.get(ref.key);
    if (!a) throw new Error(`${name}: storage ${ref.key} has no data`);
    return a;
  }, name);
}

/** Decode a torch.save file already in memory. `name` is used in error lines. */
export function decodeTorchCheckpoint(buf: Uint8Array, name = "checkpoint"): PyValue {
  if (buf.length >= 4 && buf[0] === 0x50 && buf[1] === 0x4b && buf[2] === 0x03 && buf[3] === 0x04) {
    return loadZip(buf, name);
  }
  if (buf.length >= 2 && buf[0] === 0x80 && buf[1] >= 2) return loadLegacy(buf, name);
  if (buf.length >= 262 && new TextDecoder().decode(buf.subarray(257, 262)) === "ustar") {
    throw new Error(`${name}: tar checkpoint (torch < 0.4) is not supported; re-save it with a newer torch`);
  }
  throw new Error(`${name}: not a PyTorch checkpoint (expected a zip or a legacy pickle stream)`);
}

/** Read a torch.save file (.pt) from disk. */
export function readTorchCheckpoint(path: string): PyValue {
  return decodeTorchCheckpoint(Deno.readFileSync(path), path);
}

// ------------------------------------------------------------------------------------------------
// writer

function align64Extra(offsetOfData: number): Uint8Array {
  // torch pads with an extra field ("FB") so each record's data starts 64-byte aligned.
  const pad = (64 - ((offsetOfData + 4) % 64)) % 64;
  const extra = new Uint8Array(4 + pad);
  const dv = new DataView(extra.buffer);
  dv.setUint16(0, 0x4246, true);
  dv.setUint16(2, pad, true);
  extra.fill(0x5a, 4);
  return extra;
}

/** Encode `root` (PyValue with TorchTensor leaves) as a torch zip checkpoint. Sizes must fit zip32. */
export function encodeTorchCheckpoint(root: PyValue, archiveName = "archive"): Uint8Array {
  const storages: TorchTensor[] = [];
  const pickler = new Pickler((v, p) => {
    if (!(v instanceof TorchTensor)) return false;
    const key = String(storages.length);
    storages.push(v);
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.op(0x28); // MARK of the argument tuple
    p.op(0x28); // the persistent id tuple
    p.str("storage");
    p.global("torch", STORAGE_OF[v.dtype]);
    p.str(key);
    p.str("cpu");
    p.int(v.data.length);
    p.op(0x74, 0x51); // TUPLE, BINPERSID
    p.int(0);
    p.tupleOf(v.shape);
    p.tupleOf(contiguousStride(v.shape));
    p.value(false);
    p.global("collections", "OrderedDict");
    p.op(0x29, 0x52); // (), REDUCE
    p.op(0x74, 0x52); // TUPLE, REDUCE
    return true;
  });
  const records: [string, Uint8Array][] = [[`${archiveName}/data.pkl`, pickler.dump(root)]];
  records.push([`${archiveName}/byteorder`, new TextEncoder().encode("little")]);
  storages.forEach((t, i) => {
    records.push([
      `${archiveName}/data/${i}`,
      new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
    ]);
  });
  records.push([`${archiveName}/version`, new TextEncoder().encode("3\n")]);
  return encodeStoredZip(records);
}

/** A zip of stored (uncompressed) records, each data start 64-byte aligned as torch writes them. */
export function encodeStoredZip(records: readonly [string, Uint8Array][]): Uint8Array {
  const table = crcTable();
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let off = 0;
  for (const [n, data] of records) {
    const nameBytes = new TextEncoder().encode(n);
    const extra = align64Extra(off + 30 + nameBytes.length);
    const crc = crc32(data, table);
    if (off + data.length > 0xfffffff0) {
      throw new Error("encodeTorchCheckpoint: over 4 GiB needs ZIP64 (not written)");
    }
    const lh = new Uint8Array(30);
    const l = new DataView(lh.buffer);
    l.setUint32(0, 0x04034b50, true);
    l.setUint16(4, 20, true);
    l.setUint32(14, crc, true);
    l.setUint32(18, data.length, true);
    l.setUint32(22, data.length, true);
    l.setUint16(26, nameBytes.length, true);
    l.setUint16(28, extra.length, true);
    const ch = new Uint8Array(46);
    const c = new DataView(ch.buffer);
    c.setUint32(0, 0x02014b50, true);
    c.setUint16(4, 20, true);
    c.setUint16(6, 20, true);
    c.setUint32(16, crc, true);
    c.setUint32(20, data.length, true);
    c.setUint32(24, data.length, true);
    c.setUint16(28, nameBytes.length, true);
    c.setUint32(42, off, true);
    central.push(ch, nameBytes);
    parts.push(lh, nameBytes, extra, data);
    off += 30 + nameBytes.length + extra.length + data.length;
  }
  const cdSize = central.reduce((a, b) => a + b.length, 0);
  const end = new Uint8Array(22);
  const e = new DataView(end.buffer);
  e.setUint32(0, 0x06054b50, true);
  e.setUint16(8, records.length, true);
  e.setUint16(10, records.length, true);
  e.setUint32(12, cdSize, true);
  e.setUint32(16, off, true);
  const all = [...parts, ...central, end];
  const out = new Uint8Array(all.reduce((a, b) => a + b.length, 0));
  let o = 0;
  for (const p of all) (out.set(p, o), o += p.length);
  return out;
}

/** Write a torch zip checkpoint via a temp name + rename (no half-written file on failure). */
export function writeTorchCheckpoint(path: string, root: PyValue): void {
  const bytes = encodeTorchCheckpoint(root);
  const tmp = `${path}.tmp-${Deno.pid}`;
  try {
    Deno.writeFileSync(tmp, bytes);
    Deno.renameSync(tmp, path);
  } catch (e) {
    try {
      Deno.removeSync(tmp);
    } catch { /* already gone */ }
    throw e;
  }
}

// ------------------------------------------------------------------------------------------------
// Megatron 2021 checkpoint structure helpers

/** Flatten nested dicts into "a.b.c" -> tensor (Megatron's state_dict_for_save_checkpoint nesting). */
export function flattenTensors(v: PyValue, prefix = ""): Map<string, TorchTensor> {
  const out = new Map<string, TorchTensor>();
  const walk = (x: PyValue, p: string) => {
    if (x instanceof TorchTensor) out.set(p, x);
    else if (x instanceof PyDict) {
      for (const [k, y] of x.map) {
        walk(y, p ? `${p}.${String(k)}` : String(k));
      }
    }
  };
  walk(v, prefix);
  return out;
}

/** A Python value as plain JSON-like data (Namespace/dict -> object, tuple -> array; tensors and
 *  arrays are summarized). For args and metadata. */
export function toPlain(v: PyValue): unknown {
  if (v instanceof PyNamespace) return Object.fromEntries([...v.attrs].map(([k, x]) => [k, toPlain(x)]));
  if (v instanceof PyDict) return Object.fromEntries([...v.map].map(([k, x]) => [String(k), toPlain(x)]));
  if (v instanceof PyTuple) return v.items.map(toPlain);
  if (Array.isArray(v)) return v.map(toPlain);
  if (v instanceof PySet) return v.items.map(toPlain);
  if (v instanceof TorchTensor) return { tensor: v.dtype, shape: v.shape };
  if (v instanceof PyNdarray) return { ndarray: v.dtype, shape: v.shape };
  if (v instanceof PyTorchDtype) return `torch.${v.name}`;
  if (v instanceof PyObject) {
    return { __class__: v.className, ...Object.fromEntries([...v.attrs].map(([k, x]) => [k, toPlain(x)])) };
  }
  return v;
}
