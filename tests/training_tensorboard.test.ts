import assert from "node:assert/strict";
import {
  crc32c,
  decodeEvents,
  encodeEvent,
  maskedCrc32c,
  readEvents,
  SummaryWriter,
  tfRecord,
} from "../src/training/tensorboard.ts";
import { MetricsWriter, readMetrics } from "../src/training/metrics.ts";

const enc = (s: string) => new TextEncoder().encode(s);

Deno.test("tensorboard: CRC32C known answers", () => {
  assert.equal(crc32c(enc("123456789")), 0xe3069283);
  assert.equal(crc32c(new Uint8Array(0)), 0);
  assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa); // RFC 3720 B.4: 32 bytes of zeros
  assert.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43); // RFC 3720 B.4: 32 bytes of 0xff
  const c = 0xe3069283;
  assert.equal(maskedCrc32c(enc("123456789")), ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0);
});

Deno.test("tensorboard: exact bytes of the file_version event and its record", () => {
  const ev = encodeEvent({ wallTime: 1.5, fileVersion: "brain.Event:2" });
  // 09 <double 1.5 LE> 1a 0d "brain.Event:2"
  const want = [0x09, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f, 0x1a, 13, ...enc("brain.Event:2")];
  assert.deepEqual([...ev], want);
  const rec = tfRecord(ev);
  const dv = new DataView(rec.buffer);
  assert.equal(dv.getBigUint64(0, true), BigInt(ev.length));
  assert.equal(dv.getUint32(8, true), maskedCrc32c(rec.subarray(0, 8)));
  assert.equal(dv.getUint32(12 + ev.length, true), maskedCrc32c(ev));
  // a scalar event: 09 <wall> 10 07 2a 0d 0a 0b 0a 04 "loss" 15 <f32 2.5>
  const s = encodeEvent({ wallTime: 0, step: 7, scalars: [{ tag: "loss", value: 2.5 }] });
  assert.deepEqual(
    [...s.subarray(9)],
    [0x10, 7, 0x2a, 13, 0x0a, 11, 0x0a, 4, ...enc("loss"), 0x15, 0, 0, 0x20, 0x40],
  );
});

Deno.test("tensorboard: SummaryWriter round trip, CRCs checked on read", () => {
  const dir = Deno.makeTempDirSync();
  try {
    let t = 1700000000;
    const w = new SummaryWriter(dir, { now: () => t++, hostname: "testhost" });
    assert.equal(w.path, `${dir}/events.out.tfevents.1700000000.testhost`);
    w.addScalar("lm loss", 10.25, 1);
    w.addScalar("learning-rate", 3e-4, 2);
    w.addScalars([{ tag: "a", value: -1 }, { tag: "b", value: 1e30 }], 3_000_000_000);
    w.flush();
    w.addScalar("late", 1, 4);
    w.close();
    w.close(); // idempotent
    assert.throws(() => w.addScalar("x", 1, 1), /is closed/);
    const evs = readEvents(w.path);
    assert.equal(evs.length, 5);
    assert.equal(evs[0].fileVersion, "brain.Event:2");
    assert.equal(evs[0].wallTime, 1700000001);
    assert.deepEqual(evs[1].scalars, [{ tag: "lm loss", value: 10.25 }]);
    assert.equal(evs[1].step, 1);
    assert.deepEqual(evs[2].scalars, [{ tag: "learning-rate", value: Math.fround(3e-4) }]);
    assert.equal(evs[3].step, 3_000_000_000);
    assert.deepEqual(evs[3].scalars, [{ tag: "a", value: -1 }, { tag: "b", value: Math.fround(1e30) }]);
    assert.equal(evs[4].scalars[0].tag, "late");
    // queueSize: the second pending event forces a flush, visible to a reader without flush()
    const q = new SummaryWriter(`${dir}/q`, { hostname: "h", queueSize: 2 });
    q.addScalar("x", 1, 1);
    assert.equal(readEvents(q.path).length, 1); // only file_version so far
    q.addScalar("y", 2, 2);
    assert.equal(readEvents(q.path).length, 3);
    q.addScalar("z", 3, 3);
    assert.equal(readEvents(q.path).length, 3);
    q.close();
    assert.equal(readEvents(q.path).length, 4);
    // A second writer in the same second gets its own file.
    const w2 = new SummaryWriter(dir, { now: () => 1700000000, hostname: "testhost" });
    assert.notEqual(w2.path, w.path);
    w2.close();
    // Corruption is detected.
    const bytes = Deno.readFileSync(w.path);
    bytes[bytes.length - 6] ^= 1;
    assert.throws(() => decodeEvents(bytes, "f"), /^Error: f: data CRC mismatch in record at byte \d+$/);
    const bytes2 = Deno.readFileSync(w.path);
    bytes2[0] ^= 1;
    assert.throws(() => decodeEvents(bytes2, "f"), { message: "f: length CRC mismatch in record at byte 0" });
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("metrics: JSON lines, appended, non-finite numbers survive", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const path = `${dir}/sub/metrics.jsonl`;
    new MetricsWriter(path).write({ iteration: 1, loss: 2.5, gradNorm: Infinity });
    new MetricsWriter(path).write({ iteration: 2, loss: NaN, kind: "eval" });
    assert.equal(
      Deno.readTextFileSync(path),
      '{"iteration":1,"loss":2.5,"gradNorm":"Infinity"}\n{"iteration":2,"loss":"NaN","kind":"eval"}\n',
    );
    const recs = readMetrics(path);
    assert.equal(recs.length, 2);
    assert.equal(recs[0].gradNorm, Infinity);
    assert.ok(Number.isNaN(recs[1].loss));
    Deno.writeTextFileSync(path, "{oops\n", { append: true });
    assert.throws(() => readMetrics(path), new RegExp(`^Error: ${path}:3: expected a JSON object`));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

// Written by tensorboard 2.x's own EventFileWriter (Python): file_version event (with source_metadata,
// field 10), then "lm loss" = 10.5 at step 1 and "lr" = 0.25 at step 2, wall time 1700000000.5.
const TENSORBOARD_REFERENCE =
  "4800000000000000fe92489d093c32b85f7ac2da411a0d627261696e2e4576656e743a32522e0a2c74656e73" +
  "6f72626f6172642e73756d6d6172792e7772697465722e6576656e745f66696c655f7772697465727466cd281d00000000000000602fdf23" +
  "0900002040fc54d94110012a100a0e0a076c6d206c6f73731500002841d209e8771800000000000000a37f4b220900002040fc54d9411002" +
  "2a0b0a090a026c72150000803e9c167b57";

Deno.test("tensorboard: reads a file written by TensorBoard's own writer, and encodes its events identically", () => {
  const buf = Uint8Array.from(TENSORBOARD_REFERENCE.match(/../g)!.map((h) => parseInt(h, 16)));
  const evs = decodeEvents(buf, "ref");
  assert.equal(evs.length, 3);
  assert.equal(evs[0].fileVersion, "brain.Event:2");
  assert.deepEqual(evs[1], { wallTime: 1700000000.5, step: 1, scalars: [{ tag: "lm loss", value: 10.5 }] });
  assert.deepEqual(evs[2], { wallTime: 1700000000.5, step: 2, scalars: [{ tag: "lr", value: 0.25 }] });
  // Our records for the two scalar events are byte-identical to TensorBoard's.
  const ours = [
    ...tfRecord(encodeEvent({ wallTime: 1700000000.5, step: 1, scalars: [{ tag: "lm loss", value: 10.5 }] })),
    ...tfRecord(encodeEvent({ wallTime: 1700000000.5, step: 2, scalars: [{ tag: "lr", value: 0.25 }] })),
  ];
  assert.deepEqual(ours, [...buf.subarray(buf.length - ours.length)]);
});
