// .npy writer/reader: exact header bytes as numpy writes them, round trips, an independent reader.
import assert from "node:assert/strict";
import {
  decodeNpy,
  encodeNpy,
  npyHeader,
  readNpyHeaderSync,
  readNpySync,
  writeNpySync,
} from "../src/data/npy.ts";

const ascii = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));

// A deliberately tiny reader that shares no code with src/data/npy.ts: v1.0 only, little-endian.
function tinyRead(bytes: Uint8Array): { dict: string; data: Uint8Array } {
  assert.deepEqual(Array.from(bytes.subarray(0, 8)), [0x93, 78, 85, 77, 80, 89, 1, 0]);
  const hlen = bytes[8] + 256 * bytes[9];
  const dict = String.fromCharCode(...bytes.subarray(10, 10 + hlen));
  assert.equal(dict[dict.length - 1], "\n");
  assert.equal((10 + hlen) % 64, 0);
  return { dict: dict.trimEnd(), data: bytes.subarray(10 + hlen) };
}

Deno.test("np.save(np.arange(3, dtype=np.int32)) header bytes", () => {
  const dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }";
  assert.equal(dict.length, 57);
  // 10-byte preamble + 118-byte header = 128; header = dict + 60 spaces + "\n".
  const expected = new Uint8Array(128);
  expected.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 0x01, 0x00, 118, 0]);
  expected.set(ascii(dict + " ".repeat(60) + "\n"), 10);
  const bytes = encodeNpy(new Int32Array([0, 1, 2]));
  assert.equal(bytes.length, 128 + 12);
  assert.deepEqual(bytes.subarray(0, 128), expected);
  assert.deepEqual(Array.from(bytes.subarray(128)), [0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]);
});

Deno.test("header for 2-D, uint8 and empty arrays; 64-byte alignment", () => {
  const h2 = new TextDecoder().decode(npyHeader("<i4", [13, 2]));
  assert.ok(h2.includes("{'descr': '<i4', 'fortran_order': False, 'shape': (13, 2), }"));
  assert.equal(h2.length % 64, 0);
  const u8 = tinyRead(encodeNpy(new Uint8Array([1, 2, 255])));
  assert.equal(u8.dict, "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }");
  assert.deepEqual(Array.from(u8.data), [1, 2, 255]);
  const empty = tinyRead(encodeNpy(new Uint32Array(0)));
  assert.equal(empty.dict, "{'descr': '<u4', 'fortran_order': False, 'shape': (0,), }");
  assert.equal(empty.data.length, 0);
  for (const n of [1, 9, 10 ** 9, 10 ** 15]) {
    assert.equal(npyHeader("<u8", [n, 2]).length % 64, 0);
  }
});

Deno.test("write/read round trip through files for every dtype", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const arrays = [
      new Int8Array([-1, 2]),
      new Uint8Array([7]),
      new Int16Array([-300, 5]),
      new Uint16Array([65535]),
      new Int32Array([-5, 2 ** 31 - 1, 0]),
      new Uint32Array([2 ** 32 - 1, 3]),
      new BigInt64Array([-(2n ** 63n), 12345678901234n]),
      new BigUint64Array([2n ** 64n - 1n]),
      new Float32Array([1.5, -0]),
      new Float64Array([Math.PI]),
    ];
    for (const [i, a] of arrays.entries()) {
      const p = `${dir}/a${i}.npy`;
      writeNpySync(p, a);
      const back = readNpySync(p);
      assert.equal(back.data.constructor, a.constructor);
      assert.deepEqual(back.data, a);
      assert.deepEqual(back.shape, [a.length]);
      // Independent reader agrees on the payload bytes.
      const raw = tinyRead(Deno.readFileSync(p)).data;
      assert.deepEqual(raw, new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    }
    const m = new Int32Array([0, 0, 0, 4, 1, 1]);
    writeNpySync(`${dir}/m.npy`, m, [3, 2]);
    assert.deepEqual(readNpySync(`${dir}/m.npy`).shape, [3, 2]);
    assert.deepEqual(readNpyHeaderSync(`${dir}/m.npy`), { descr: "<i4", shape: [3, 2] });
    assert.deepEqual(Array.from(Deno.readDirSync(dir)).filter((e) => e.name.includes(".tmp")), []);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("reads headers written by other tools: unpadded v1, v2, '<u1', key order", () => {
  const body = new Int32Array([9, 8]);
  const mk = (major: number, dict: string) => {
    const pre = major === 1 ? 10 : 12;
    const out = new Uint8Array(pre + dict.length + 8);
    out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
    new DataView(out.buffer).setUint16(8, dict.length, true);
    if (major !== 1) new DataView(out.buffer).setUint32(8, dict.length, true);
    out.set(ascii(dict), pre);
    out.set(new Uint8Array(body.buffer), pre + dict.length);
    return out;
  };
  const a = decodeNpy(mk(1, "{'shape': (2,), 'fortran_order': False, 'descr': '<i4'}\n"));
  assert.deepEqual(a.data, body);
  const b = decodeNpy(mk(2, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }   \n"));
  assert.deepEqual(b.data, body);
  const c = decodeNpy(mk(1, "{'descr': '<u1', 'fortran_order': False, 'shape': (8,), }\n"));
  assert.equal(c.descr, "|u1");
  assert.equal(c.data.length, 8);
});

Deno.test("bad files give one clear line", () => {
  const good = encodeNpy(new Int32Array([1, 2, 3]));
  assert.throws(
    () => decodeNpy(new Uint8Array([1, 2, 3]), "x.npy"),
    /^Error: x.npy: expected the .npy magic/,
  );
  const trunc = good.subarray(0, good.length - 1);
  assert.throws(
    () => decodeNpy(trunc, "t.npy"),
    /t.npy: shape \(3,\) of '<i4' needs 12 data bytes, found 11/,
  );
  const big = good.slice();
  big.set(ascii("'>i4'"), 10 + "{'descr': ".length);
  assert.throws(() => decodeNpy(big, "b.npy"), /b.npy: expected a little-endian dtype .* found '>i4'/);
  const v9 = good.slice();
  v9[6] = 9;
  assert.throws(() => decodeNpy(v9, "v.npy"), /v.npy: expected .npy format version 1, 2 or 3, found 9.0/);
  assert.throws(() => encodeNpy(new Int32Array(5), [2, 2]), /needs 4 elements, found 5/);
});
