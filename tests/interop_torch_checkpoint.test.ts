// PyTorch checkpoints without Python: files torch.save wrote (scripts/interop_fixtures.py) read back to
// the values torch recorded; the restricted unpickler refuses foreign globals without running them; the
// writer's bytes are the ones torch.load(weights_only=True) accepted.

import assert from "node:assert/strict";
import {
  PyDict,
  PyNamespace,
  type PyNdarray,
  type PySet,
  PyTorchDtype,
  type PyTuple,
  unpickle,
} from "../src/interop/pickle.ts";
import {
  crc32,
  decodeTorchCheckpoint,
  encodeStoredZip,
  encodeTorchCheckpoint,
  flattenTensors,
  readTorchCheckpoint,
  toPlain,
  TorchTensor,
} from "../src/interop/torch_checkpoint.ts";
import { bf16BitsToF32, f16BitsToF32 } from "../src/tensor/dtype.ts";
import { sampleCheckpoint, sampleWeightsOnly } from "../scripts/interop_write_sample.ts";

/** fn throws an Error whose message contains `text`. */
function throwsWith(fn: () => unknown, text: string) {
  assert.throws(fn, (e: Error) => {
    assert.ok(e.message.includes(text), `expected "${text}" in: ${e.message}`);
    return true;
  });
}

const DATA = new URL("./data/interop/", import.meta.url).pathname;

interface TJson {
  dtype: string;
  shape: number[];
  values: number[];
}

function asNumbers(t: TorchTensor): number[] {
  const out: number[] = [];
  for (let i = 0; i < t.data.length; i++) {
    const x = t.data[i];
    if (t.dtype === "float16") out.push(f16BitsToF32(x as number));
    else if (t.dtype === "bfloat16") out.push(bf16BitsToF32(x as number));
    else out.push(Number(x));
  }
  return out;
}

function assertTensor(t: unknown, e: TJson, name: string) {
  assert.ok(t instanceof TorchTensor, `${name} is a tensor`);
  assert.deepEqual(t.dtype, e.dtype, name);
  assert.deepEqual(t.shape, e.shape, name);
  assert.deepEqual(asNumbers(t), e.values, name);
}

const expected = JSON.parse(Deno.readTextFileSync(`${DATA}megatron_gpt_expected.json`));

for (const fmt of ["zip", "legacy"]) {
  Deno.test(`torch ${fmt} checkpoint: Megatron 2021 structure, every value as torch saved it`, () => {
    const root = readTorchCheckpoint(`${DATA}megatron_gpt_${fmt}.pt`);
    assert.ok(root instanceof PyDict);
    assert.deepEqual(root.get("checkpoint_version"), 3);
    assert.deepEqual(root.get("iteration"), 5000);
    // model -> language_model -> embedding / encoder, flattened to Megatron's dotted names.
    const flat = flattenTensors(root.get("model")!, "model");
    assert.deepEqual([...flat.keys()].sort(), Object.keys(expected.tensors).sort());
    for (const [k, e] of Object.entries(expected.tensors)) assertTensor(flat.get(k), e as TJson, k);
    assert.ok(flat.has("model.language_model.encoder.layers.1.self_attention.query_key_value.weight"));
    // args: an argparse.Namespace, params_dtype a torch dtype.
    const args = root.get("args");
    assert.ok(args instanceof PyNamespace);
    assert.ok(args.attrs.get("params_dtype") instanceof PyTorchDtype);
    const plainArgs = toPlain(args) as Record<string, unknown>;
    assert.deepEqual(plainArgs, expected.args);
    // Odd tensors: strided views copied contiguous, halves, int64 beyond 2^32, bools.
    const extra = root.get("extra") as PyDict;
    for (const [k, e] of Object.entries(expected.extra)) assertTensor(extra.get(k), e as TJson, `extra.${k}`);
    const strided = extra.get("strided") as TorchTensor;
    assert.deepEqual(strided.stride, [1, 6]);
    const sliced = extra.get("sliced") as TorchTensor;
    assert.deepEqual([sliced.storageOffset, ...sliced.stride], [6, 6, 2]);
    assert.deepEqual((extra.get("size") as PyTuple).items, [2, 3]);
    const tags = extra.get("tags") as PySet;
    assert.deepEqual([...tags.items].sort(), ["a", "b"]);
    assert.deepEqual(extra.get("big"), 2n ** 70n);
    assert.deepEqual(extra.get("neg"), -3);
    assert.deepEqual(extra.get("text"), "héllo");
    // RNG states: numpy's MT19937 state array, torch's byte tensor, Python's random tuple.
    const np = (root.get("np_rng_state") as PyTuple).items;
    assert.deepEqual(np[0], "MT19937");
    const arr = np[1] as PyNdarray;
    assert.deepEqual([arr.dtype, arr.shape], ["<u4", [624]]);
    assert.deepEqual(
      new DataView(arr.bytes.buffer, arr.bytes.byteOffset).getUint32(0, true),
      expected.np_rng_state_first,
    );
    assert.deepEqual(np[2], expected.np_rng_state_pos);
    assert.deepEqual((root.get("torch_rng_state") as TorchTensor).data.length, expected.torch_rng_state_len);
    assert.deepEqual((root.get("random_rng_state") as PyTuple).items[0], expected.random_rng_state_version);
  });
}

Deno.test("crc32: the standard check value, and every length mod 8", () => {
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  // Against a bytewise reference.
  const bytewise = (d: Uint8Array) => {
    let c = 0xffffffff;
    for (const b of d) {
      c ^= b;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    }
    return (c ^ 0xffffffff) >>> 0;
  };
  const d = Uint8Array.from({ length: 40 }, (_, i) => (i * 73 + 11) & 0xff);
  for (let n = 0; n <= d.length; n++) {
    assert.equal(crc32(d.subarray(0, n)), bytewise(d.subarray(0, n)), `length ${n}`);
  }
});

Deno.test("zip checkpoint: a flipped storage byte fails the CRC with one line naming the record", () => {
  const buf = Deno.readFileSync(`${DATA}megatron_gpt_zip.pt`);
  // Find the first storage record's data by its name and flip a byte after its header.
  const name = new TextEncoder().encode("megatron_gpt_zip/data/0");
  let at = -1;
  for (let i = 0; i < buf.length - name.length && at < 0; i++) {
    if (buf[i] === 0x50 && buf[i + 1] === 0x4b && buf[i + 2] === 3 && buf[i + 3] === 4) {
      if (name.every((b, j) => buf[i + 30 + j] === b)) at = i;
    }
  }
  assert.ok(at >= 0);
  const dv = new DataView(buf.buffer);
  const dataStart = at + 30 + dv.getUint16(at + 26, true) + dv.getUint16(at + 28, true);
  buf[dataStart] ^= 1;
  throwsWith(() => decodeTorchCheckpoint(buf, "x.pt"), "x.pt: megatron_gpt_zip/data/0: CRC-32 mismatch");
  throwsWith(() => decodeTorchCheckpoint(buf.subarray(0, 1000), "t.pt"), "t.pt: not a zip file");
  throwsWith(() => decodeTorchCheckpoint(new TextEncoder().encode("hello"), "h.pt"), "h.pt: not a PyTorch");
});

// A pickle that would run os.system("touch <file>") when loaded by Python's pickle.
function evilPickle(cmdFile: string, proto = 2): Uint8Array {
  const te = new TextEncoder();
  const s = te.encode(`touch ${cmdFile}`);
  const parts = [
    Uint8Array.from([0x80, proto]),
    te.encode("cos\nsystem\n"),
    Uint8Array.from([0x58, s.length & 0xff, s.length >> 8, 0, 0]),
    s,
    Uint8Array.from([0x85, 0x52, 0x2e]),
  ];
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) (out.set(p, o), o += p.length);
  return out;
}

Deno.test("restricted unpickler: os.system is refused by name and nothing runs", () => {
  const dir = Deno.makeTempDirSync();
  const marker = `${dir}/pwned`;
  throwsWith(
    () => unpickle(evilPickle(marker), { source: "evil.pkl" }),
    "evil.pkl: byte 2: refusing global os.system (not a name a checkpoint needs; nothing was run)",
  );
  // STACK_GLOBAL spelling (protocol 4) of another callable.
  const te = new TextEncoder();
  const sg = Uint8Array.from([
    0x80,
    4,
    0x8c,
    8,
    ...te.encode("builtins"),
    0x8c,
    4,
    ...te.encode("eval"),
    0x93,
    0x2e,
  ]);
  throwsWith(() => unpickle(sg, { source: "sg.pkl" }), "sg.pkl: byte 18: refusing global builtins.eval");
  // Inside a torch zip, as data.pkl.
  const zip = encodeStoredZip([["archive/data.pkl", evilPickle(marker)], [
    "archive/version",
    te.encode("3\n"),
  ]]);
  throwsWith(
    () => decodeTorchCheckpoint(zip, "evil.pt"),
    "evil.pt: archive/data.pkl: byte 2: refusing global os.system",
  );
  // INST / OBJ build arbitrary classes: refused.
  throwsWith(
    () => unpickle(te.encode("(ios\nsystem\n."), { source: "inst" }),
    "inst: byte 1: refusing opcode INST",
  );
  let exists = true;
  try {
    Deno.statSync(marker);
  } catch {
    exists = false;
  }
  assert.deepEqual(exists, false);
  Deno.removeSync(dir, { recursive: true });
});

Deno.test("Megatron's old fp16 loss scalers load as inert records; other classes stay refused", () => {
  // pickle.dumps({'s': fp16.loss_scaler.DynamicLossScaler()}, protocol=2) with cur_scale 4096.0, cur_iter 7.
  // The pickle's bytes, written as char codes (each char one byte).
  const raw = Uint8Array.from(
    [..."\x80\x02}q\x00X\x01\x00\x00\x00sq\x01cfp16.loss_scaler\nDynamicLossScaler\nq\x02)\x81q\x03}q\x04(X\t\x00\x00\x00cur_scaleq\x05G"]
      .map((c) => c.charCodeAt(0))
      .concat([0x40, 0xb0, 0, 0, 0, 0, 0, 0])
      .concat([..."X\x08\x00\x00\x00cur_iterq\x06K\x07ubs."].map((c) => c.charCodeAt(0))),
  );
  const v = unpickle(raw, { source: "old.pt" }).value;
  assert.deepEqual(toPlain(v), {
    s: { __class__: "fp16.loss_scaler.DynamicLossScaler", cur_scale: 4096, cur_iter: 7 },
  });
  const other = Uint8Array.from([..."\x80\x02cfp16.other\nThing\n)\x81."].map((c) => c.charCodeAt(0)));
  throwsWith(() => unpickle(other, { source: "o.pt" }), "o.pt: byte 2: refusing global fp16.other.Thing");
});

Deno.test("torch zip writer: bytes equal the files torch.load(weights_only=True) accepted", () => {
  const check = JSON.parse(Deno.readTextFileSync(`${DATA}deno_written_check.json`));
  for (
    const [file, value] of [
      ["deno_written.pt", sampleCheckpoint()],
      ["deno_written_weights_only.pt", sampleWeightsOnly()],
    ] as const
  ) {
    const bytes = encodeTorchCheckpoint(value);
    assert.deepEqual(
      bytes,
      Deno.readFileSync(`${DATA}${file}`),
      `${file}: writer output changed; rerun the fixture script`,
    );
    // What torch saw equals what we read back ourselves.
    const back = decodeTorchCheckpoint(bytes, file) as PyDict;
    const seen = check[file];
    const flat = flattenTensors(back);
    assert.deepEqual([...flat.keys()].sort(), Object.keys(seen.tensors).sort());
    for (const [k, e] of Object.entries(seen.tensors)) assertTensor(flat.get(k), e as TJson, `${file}: ${k}`);
    assert.deepEqual(seen.scalars.checkpoint_version, ["float", 3]);
    assert.deepEqual(seen.scalars.iteration, ["int", 42]);
    if (seen.args) assert.deepEqual(toPlain(back.get("args")!), seen.args);
  }
});

Deno.test("torch checkpoint round trip: read a torch-written checkpoint, write it, read it again", () => {
  const root = readTorchCheckpoint(`${DATA}megatron_gpt_zip.pt`) as PyDict;
  // The writer covers the model/args/metadata part of a Megatron checkpoint.
  const subset = new PyDict()
    .set("args", root.get("args")!)
    .set("checkpoint_version", root.get("checkpoint_version")!)
    .set("iteration", root.get("iteration")!)
    .set("model", root.get("model")!);
  const again = decodeTorchCheckpoint(encodeTorchCheckpoint(subset), "again.pt") as PyDict;
  const a = flattenTensors(root.get("model")!), b = flattenTensors(again.get("model")!);
  assert.deepEqual([...b.keys()], [...a.keys()]);
  for (const [k, t] of a) {
    assert.deepEqual(b.get(k)!.shape, t.shape);
    assert.deepEqual(b.get(k)!.data, t.data, k);
  }
  assert.deepEqual(toPlain(again.get("args")!), toPlain(root.get("args")!));
  const tmp = Deno.makeTempDirSync();
  Deno.writeFileSync(`${tmp}/model_optim_rng.pt`, encodeTorchCheckpoint(subset));
  assert.deepEqual(
    flattenTensors((readTorchCheckpoint(`${tmp}/model_optim_rng.pt`) as PyDict).get("model")!).size,
    a.size,
  );
  Deno.removeSync(tmp, { recursive: true });
});
