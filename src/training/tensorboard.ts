// TensorBoard event files without TensorFlow: TFRecord framing with masked CRC32C, and the few Event /
// Summary protobuf fields scalars need, encoded by hand. readEvents is the inverse (for tests and
// tools) and verifies both checksums of every record.

const CRC32C_TABLE: Uint32Array = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** CRC-32C (Castagnoli), as TFRecord uses. */
export function crc32c(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC32C_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** TFRecord's masked CRC: rotate right by 15 and add a constant, so CRCs of CRCs stay well mixed. */
export function maskedCrc32c(data: Uint8Array): number {
  const c = crc32c(data);
  return ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** One TFRecord: u64 length, masked CRC of the length bytes, data, masked CRC of the data. */
export function tfRecord(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(16 + data.length);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, BigInt(data.length), true);
  dv.setUint32(8, maskedCrc32c(out.subarray(0, 8)), true);
  out.set(data, 12);
  dv.setUint32(12 + data.length, maskedCrc32c(data), true);
  return out;
}

// --- minimal protobuf encoding ---

class ProtoWriter {
  private parts: number[] = [];
  varint(v: bigint | number): this {
    let x = BigInt.asUintN(64, BigInt(v));
    while (x >= 0x80n) {
      this.parts.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    this.parts.push(Number(x));
    return this;
  }
  tag(field: number, wire: number): this {
    return this.varint((field << 3) | wire);
  }
  double(field: number, v: number): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, true);
    return this.tag(field, 1).raw(b);
  }
  float(field: number, v: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    return this.tag(field, 5).raw(b);
  }
  int64(field: number, v: number | bigint): this {
    return this.tag(field, 0).varint(v);
  }
  bytes(field: number, b: Uint8Array): this {
    return this.tag(field, 2).varint(b.length).raw(b);
  }
  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }
  raw(b: Uint8Array): this {
    for (const x of b) this.parts.push(x);
    return this;
  }
  finish(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

export interface ScalarValue {
  tag: string;
  value: number;
}

/** Encode an Event: wall_time (1, double), step (2, int64), file_version (3) or summary (5). */
export function encodeEvent(
  ev: { wallTime: number; step?: number; fileVersion?: string; scalars?: ScalarValue[] },
): Uint8Array {
  const w = new ProtoWriter().double(1, ev.wallTime);
  if (ev.step !== undefined && ev.step !== 0) w.int64(2, ev.step);
  if (ev.fileVersion !== undefined) w.string(3, ev.fileVersion);
  if (ev.scalars !== undefined) {
    const summary = new ProtoWriter();
    for (const s of ev.scalars) {
      summary.bytes(1, new ProtoWriter().string(1, s.tag).float(2, s.value).finish());
    }
    w.bytes(5, summary.finish());
  }
  return w.finish();
}

export interface SummaryWriterOptions {
  /** Seconds since the epoch; injectable so tests are deterministic. */
  now?: () => number;
  /** Host name in the file name (default: Deno.hostname(), or "localhost" without permission). */
  hostname?: string;
  /** Flush automatically once this many bytes are buffered (default 64 KiB). */
  flushBytes?: number;
  /** ...or once this many events are pending (Megatron's --tensorboard-queue-size; default 1000). */
  queueSize?: number;
}

function hostName(): string {
  try {
    return Deno.hostname();
  } catch {
    return "localhost";
  }
}

/** Writes scalars to `<logdir>/events.out.tfevents.<unix secs>.<hostname>`. */
export class SummaryWriter {
  readonly path: string;
  private file: Deno.FsFile | null;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private readonly now: () => number;
  private readonly flushBytes: number;
  private readonly queueSize: number;

  constructor(readonly logdir: string, opts: SummaryWriterOptions = {}) {
    this.now = opts.now ?? (() => Date.now() / 1000);
    this.flushBytes = opts.flushBytes ?? 65536;
    this.queueSize = opts.queueSize ?? 1000;
    Deno.mkdirSync(logdir, { recursive: true });
    const base = `${logdir}/events.out.tfevents.${Math.floor(this.now())}.${opts.hostname ?? hostName()}`;
    // Two writers started in the same second must not share a file.
    let path = base;
    for (let n = 1;; n++) {
      try {
        this.file = Deno.openSync(path, { write: true, createNew: true });
        break;
      } catch (e) {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
        path = `${base}.${Deno.pid}.${n}`;
      }
    }
    this.path = path;
    this.push(encodeEvent({ wallTime: this.now(), fileVersion: "brain.Event:2" }));
    this.flush();
  }

  addScalar(tag: string, value: number, step: number): void {
    this.addScalars([{ tag, value }], step);
  }

  /** Several scalars in one Event (one record) at the same step. */
  addScalars(values: ScalarValue[], step: number): void {
    if (!Number.isInteger(step) || step < 0) {
      throw new Error(`tensorboard: step must be a non-negative integer, found ${step}`);
    }
    this.push(encodeEvent({ wallTime: this.now(), step, scalars: values }));
    if (this.pendingBytes >= this.flushBytes || this.pending.length >= this.queueSize) this.flush();
  }

  private push(ev: Uint8Array): void {
    if (this.file === null) throw new Error(`tensorboard: ${this.path} is closed`);
    const rec = tfRecord(ev);
    this.pending.push(rec);
    this.pendingBytes += rec.length;
  }

  flush(): void {
    if (this.file === null || this.pending.length === 0) return;
    const buf = new Uint8Array(this.pendingBytes);
    let o = 0;
    for (const p of this.pending) {
      buf.set(p, o);
      o += p.length;
    }
    let w = 0;
    while (w < buf.length) w += this.file.writeSync(buf.subarray(w));
    this.pending = [];
    this.pendingBytes = 0;
  }

  close(): void {
    if (this.file === null) return;
    this.flush();
    this.file.close();
    this.file = null;
  }
}

// --- reading ---

export interface DecodedEvent {
  wallTime: number;
  step: number;
  fileVersion?: string;
  scalars: ScalarValue[];
}

class ProtoReader {
  pos = 0;
  constructor(private readonly b: Uint8Array, private readonly what: string) {}
  get done(): boolean {
    return this.pos >= this.b.length;
  }
  varint(): bigint {
    let x = 0n;
    for (let shift = 0n;; shift += 7n) {
      if (this.pos >= this.b.length) throw new Error(`${this.what}: truncated varint`);
      const byte = this.b[this.pos++];
      x |= BigInt(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return x;
    }
  }
  take(n: number): Uint8Array {
    if (this.pos + n > this.b.length) throw new Error(`${this.what}: field runs past the end`);
    const s = this.b.subarray(this.pos, this.pos + n);
    this.pos += n;
    return s;
  }
  /** Returns [field, wire, payload] where payload is a number/bigint for varints or bytes. */
  next(): [number, number, Uint8Array | bigint] {
    const key = Number(this.varint());
    const field = key >>> 3;
    const wire = key & 7;
    switch (wire) {
      case 0:
        return [field, wire, this.varint()];
      case 1:
        return [field, wire, this.take(8)];
      case 2:
        return [field, wire, this.take(Number(this.varint()))];
      case 5:
        return [field, wire, this.take(4)];
      default:
        throw new Error(`${this.what}: unsupported wire type ${wire} for field ${field}`);
    }
  }
}

function decodeEvent(b: Uint8Array, what: string): DecodedEvent {
  const ev: DecodedEvent = { wallTime: 0, step: 0, scalars: [] };
  const r = new ProtoReader(b, what);
  while (!r.done) {
    const [field, wire, p] = r.next();
    if (field === 1 && wire === 1) {
      ev.wallTime = new DataView((p as Uint8Array).slice().buffer).getFloat64(0, true);
    } else if (field === 2 && wire === 0) ev.step = Number(BigInt.asIntN(64, p as bigint));
    else if (field === 3 && wire === 2) ev.fileVersion = new TextDecoder().decode(p as Uint8Array);
    else if (field === 5 && wire === 2) {
      const s = new ProtoReader(p as Uint8Array, what);
      while (!s.done) {
        const [vf, vw, vp] = s.next();
        if (vf !== 1 || vw !== 2) continue;
        const v = new ProtoReader(vp as Uint8Array, what);
        const sv: ScalarValue = { tag: "", value: NaN };
        let simple = false;
        while (!v.done) {
          const [f, w, q] = v.next();
          if (f === 1 && w === 2) sv.tag = new TextDecoder().decode(q as Uint8Array);
          else if (f === 2 && w === 5) {
            sv.value = new DataView((q as Uint8Array).slice().buffer).getFloat32(0, true);
            simple = true;
          }
        }
        if (simple) ev.scalars.push(sv);
      }
    }
  }
  return ev;
}

/** Parse a TFRecord buffer of Events, verifying the length and data CRCs of every record. */
export function decodeEvents(buf: Uint8Array, name = "events"): DecodedEvent[] {
  const out: DecodedEvent[] = [];
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let o = 0;
  while (o < buf.length) {
    if (o + 12 > buf.length) throw new Error(`${name}: truncated record header at byte ${o}`);
    const lenCrc = dv.getUint32(o + 8, true);
    if (maskedCrc32c(buf.subarray(o, o + 8)) !== lenCrc) {
      throw new Error(`${name}: length CRC mismatch in record at byte ${o}`);
    }
    const len = Number(dv.getBigUint64(o, true));
    if (o + 16 + len > buf.length) throw new Error(`${name}: truncated record at byte ${o}`);
    const data = buf.subarray(o + 12, o + 12 + len);
    if (maskedCrc32c(data) !== dv.getUint32(o + 12 + len, true)) {
      throw new Error(`${name}: data CRC mismatch in record at byte ${o}`);
    }
    out.push(decodeEvent(data, `${name}: record at byte ${o}`));
    o += 16 + len;
  }
  return out;
}

/** Read an event file written by SummaryWriter (or TensorFlow/PyTorch). */
export function readEvents(path: string): DecodedEvent[] {
  return decodeEvents(Deno.readFileSync(path), path);
}
