import assert from "node:assert/strict";
import {
  decodeSafetensors,
  encodeSafetensors,
  type NamedTensor,
  readSafetensors,
  writeSafetensors,
} from "../src/training/safetensors.ts";

const enc = (s: string) => new TextEncoder().encode(s);

function tiny(): NamedTensor[] {
  return [
    { name: "a", dtype: "f32", shape: [2], data: new Float32Array([1, -2]) },
    { name: "b", dtype: "bf16", shape: [1, 1], data: new Uint16Array([0x3f80]) },
    { name: "c", dtype: "u8", shape: [3], data: new Uint8Array([1, 2, 3]) },
  ];
}

Deno.test("safetensors: exact bytes of a tiny file", () => {
  const json = '{"__metadata__":{"format":"pt"},' +
    '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
    '"b":{"dtype":"BF16","shape":[1,1],"data_offsets":[8,10]},' +
    '"c":{"dtype":"U8","shape":[3],"data_offsets":[10,13]}}';
  const padded = Math.ceil(json.length / 8) * 8;
  const want = [
    ...[padded & 0xff, padded >> 8, 0, 0, 0, 0, 0, 0], // u64 LE header size
    ...enc(json),
    ...new Array(padded - json.length).fill(0x20), // space padding to 8 bytes
    ...[0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0], // f32 1, -2
    ...[0x80, 0x3f], // bf16 1.0
    ...[1, 2, 3],
  ];
  const got = encodeSafetensors(tiny(), { format: "pt" });
  assert.deepEqual([...got], want);
  assert.equal((8 + padded) % 8, 0);
});

Deno.test("safetensors: round trip through a file, all dtypes, byte-exact", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const ts: NamedTensor[] = [
      ...tiny(),
      { name: "d", dtype: "f64", shape: [2, 2], data: new Float64Array([Math.PI, -0, 1e300, NaN]) },
      { name: "e", dtype: "i64", shape: [2], data: new BigInt64Array([-1n, 2n ** 62n]) },
      { name: "f", dtype: "i32", shape: [0], data: new Int32Array(0) },
      { name: "g", dtype: "f16", shape: [3], data: new Uint16Array([0x3c00, 0x7e01, 0x8001]) },
      { name: "h.weight", dtype: "f32", shape: [], data: new Float32Array([7]) },
    ];
    const path = `${dir}/x.safetensors`;
    writeSafetensors(path, ts, { iteration: "3" });
    assert.deepEqual(Deno.readFileSync(path), encodeSafetensors(ts, { iteration: "3" }));
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["x.safetensors"]); // no temp left
    const back = readSafetensors(path);
    assert.deepEqual(back.metadata, { iteration: "3" });
    assert.deepEqual(back.tensors.map((t) => t.name), ts.map((t) => t.name));
    for (let i = 0; i < ts.length; i++) {
      assert.equal(back.tensors[i].dtype, ts[i].dtype);
      assert.deepEqual(back.tensors[i].shape, ts[i].shape);
      const b = back.tensors[i].data;
      const a = ts[i].data;
      assert.deepEqual(
        new Uint8Array(b.buffer, b.byteOffset, b.byteLength),
        new Uint8Array(a.buffer, a.byteOffset, a.byteLength),
      );
    }
    // Unaligned f64 after 13 bytes of other tensors still decodes (copied out).
    assert.ok(Object.is((back.tensors[3].data as Float64Array)[1], -0));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("safetensors: readSafetensors names the file in its one-line errors", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const p = `${dir}/t.safetensors`;
    const good = encodeSafetensors(tiny());
    Deno.writeFileSync(p, good.subarray(0, good.length - 1));
    assert.throws(() => readSafetensors(p), {
      message: `${p}: tensor c: data_offsets end 13 is past the data (12 bytes)`,
    });
    Deno.writeFileSync(p, good.subarray(0, 5));
    assert.throws(() => readSafetensors(p), {
      message: `${p}: expected at least 8 bytes (header size), found 5`,
    });
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("safetensors: bad input is one clear line", () => {
  const good = encodeSafetensors(tiny());
  const hdr = (json: string, data = 0) => {
    const j = enc(json);
    const b = new Uint8Array(8 + j.length + data);
    new DataView(b.buffer).setBigUint64(0, BigInt(j.length), true);
    b.set(j, 8);
    return b;
  };
  const msg = (b: Uint8Array) => {
    try {
      decodeSafetensors(b, "f.st");
    } catch (e) {
      const m = (e as Error).message;
      assert.ok(!m.includes("\n"));
      return m;
    }
    throw new Error("no error");
  };
  assert.equal(msg(new Uint8Array(3)), "f.st: expected at least 8 bytes (header size), found 3");
  assert.match(msg(good.subarray(0, 40)), /^f\.st: header size \d+ exceeds the file \(40 bytes\)/);
  assert.match(msg(hdr("{nope")), /^f\.st: header is not valid JSON/);
  assert.equal(msg(hdr("[]")), "f.st: header is not a JSON object");
  assert.equal(
    msg(hdr('{"x":{"dtype":"F8","shape":[1],"data_offsets":[0,1]}}', 1)),
    'f.st: tensor x: unsupported dtype "F8"',
  );
  assert.equal(
    msg(hdr('{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', 4)),
    "f.st: tensor x: data_offsets [0, 4] hold 4 bytes, expected 8",
  );
  assert.equal(
    msg(hdr('{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 2)),
    "f.st: tensor x: data_offsets end 4 is past the data (2 bytes)",
  );
  assert.equal(
    msg(hdr('{"x":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', 2)),
    "f.st: tensor x: starts at 1, expected 0 (gap or overlap)",
  );
  assert.equal(
    msg(hdr('{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 2)),
    "f.st: tensors cover 1 data bytes, file has 2",
  );
  assert.equal(msg(hdr('{"__metadata__":{"a":1}}')), "f.st: __metadata__.a: expected a string, found 1");
  assert.throws(
    () => encodeSafetensors([{ name: "w", dtype: "f16", shape: [2], data: new Float32Array(2) }]),
    { message: "safetensors: w: expected Uint16Array of 2 elements for f16 [2], found Float32Array of 2" },
  );
  assert.throws(() => encodeSafetensors([...tiny(), tiny()[0]]), /duplicate or reserved tensor name "a"/);
});

// Written by the reference implementation (Python safetensors.numpy.save_file):
// x = arange(5) f32, y = [[1,2],[3,4]] i32, z = [1.5] f16, metadata {"k": "v"}.
const HF_REFERENCE =
  "c0000000000000007b225f5f6d657461646174615f5f223a7b226b223a2276227d2c2278223a7b2264747970" +
  "65223a22463332222c227368617065223a5b355d2c22646174615f6f666673657473223a5b302c32305d7d2c2279223a7b226474797065" +
  "223a22493332222c227368617065223a5b322c325d2c22646174615f6f666673657473223a5b32302c33365d7d2c227a223a7b22647479" +
  "7065223a22463136222c227368617065223a5b315d2c22646174615f6f666673657473223a5b33362c33385d7d7d000000000000803f00" +
  "000040000040400000804001000000020000000300000004000000003e";

Deno.test("safetensors: reads the reference implementation's file and writes it back identically", () => {
  const buf = Uint8Array.from(HF_REFERENCE.match(/../g)!.map((h) => parseInt(h, 16)));
  const f = decodeSafetensors(buf, "hf");
  assert.deepEqual(f.metadata, { k: "v" });
  assert.deepEqual(f.tensors.map((t) => [t.name, t.dtype, t.shape]), [
    ["x", "f32", [5]],
    ["y", "i32", [2, 2]],
    ["z", "f16", [1]],
  ]);
  assert.deepEqual([...f.tensors[0].data as Float32Array], [0, 1, 2, 3, 4]);
  assert.deepEqual([...f.tensors[1].data as Int32Array], [1, 2, 3, 4]);
  assert.deepEqual([...f.tensors[2].data as Uint16Array], [0x3e00]);
  assert.deepEqual(encodeSafetensors(f.tensors, f.metadata), buf);
});
