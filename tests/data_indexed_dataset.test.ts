import assert from "node:assert/strict";
import {
  bestDtypeForVocab,
  binPath,
  encodeIndex,
  idxPath,
  inferDatasetImpl,
  MMapIndexedDataset,
  MMapIndexedDatasetBuilder,
} from "../src/data/indexed_dataset.ts";
import type { IndexedDtype } from "../src/data/indexed_dataset.ts";

const DOCS = [[10, 11, 12], [13, 14], [50256, 0, 7, 65535]];

function tmpPrefix(dir: string, name = "ds"): string {
  return `${dir}/${name}`;
}

function write(prefix: string, docs: number[][][], dtype: IndexedDtype = "uint16"): void {
  const b = new MMapIndexedDatasetBuilder(prefix, dtype);
  for (const doc of docs) {
    for (const item of doc) b.addItem(item);
    b.endDocument();
  }
  b.finalize();
}

/** The expected 102-byte .idx for DOCS (one item per document), built by hand byte by byte. */
function expected102(): Uint8Array {
  const bytes: number[] = [];
  const u64 = (v: number) => {
    for (let i = 0; i < 8; i++) bytes.push(i < 4 ? (v >>> (8 * i)) & 0xff : 0);
  };
  const i32 = (v: number) => {
    for (let i = 0; i < 4; i++) bytes.push((v >>> (8 * i)) & 0xff);
  };
  bytes.push(0x4d, 0x4d, 0x49, 0x44, 0x49, 0x44, 0x58, 0x00, 0x00); // MMIDIDX\0\0
  u64(1); // version
  bytes.push(8); // uint16
  u64(3); // N
  u64(4); // D
  i32(3), i32(2), i32(4); // sizes
  u64(0), u64(6), u64(10); // byte pointers: running sum of size*2
  u64(0), u64(1), u64(2), u64(3); // doc_idx
  return new Uint8Array(bytes);
}

Deno.test("indexed: 3-document uint16 index is exactly the 102 expected bytes", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const p = tmpPrefix(dir);
    write(p, DOCS.map((d) => [d]));
    const idx = Deno.readFileSync(idxPath(p));
    assert.equal(idx.length, 102);
    assert.deepEqual(idx, expected102());
    const bin = Deno.readFileSync(binPath(p));
    assert.deepEqual(bin, new Uint8Array(new Uint16Array(DOCS.flat()).buffer));
    assert.deepEqual(encodeIndex("uint16", [3, 2, 4], [0, 1, 2, 3]), expected102());
    assert.equal(inferDatasetImpl(p), "mmap");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("indexed: write -> read -> write again is byte-identical, for every writable dtype", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const docs = [[[1, 2, 3], [4]], [[5, 6]], [[], [7, 8, 9, 10]]];
    for (const dtype of ["uint8", "int8", "int16", "int32", "int64", "float64", "uint16"] as IndexedDtype[]) {
      const a = tmpPrefix(dir, `a_${dtype}`);
      const b = tmpPrefix(dir, `b_${dtype}`);
      write(a, docs, dtype);
      const ds = MMapIndexedDataset.open(a);
      assert.equal(ds.dtype, dtype);
      assert.equal(ds.length, 5);
      assert.deepEqual(Array.from(ds.docIdx), [0, 2, 3, 5]);
      const w = new MMapIndexedDatasetBuilder(b, ds.dtype);
      for (let d = 0; d < ds.numDocuments; d++) {
        for (let i = ds.docIdx[d]; i < ds.docIdx[d + 1]; i++) {
          w.addItem(ds.get(i));
        }
        w.endDocument();
      }
      w.finalize();
      ds.close();
      assert.deepEqual(Deno.readFileSync(idxPath(b)), Deno.readFileSync(idxPath(a)));
      assert.deepEqual(Deno.readFileSync(binPath(b)), Deno.readFileSync(binPath(a)));
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("indexed: get() with offset and length returns zero-copy views of the token dtype", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const p = tmpPrefix(dir);
    write(p, DOCS.map((d) => [d]));
    for (const mmap of [true, false]) {
      const ds = MMapIndexedDataset.open(p, { mmap });
      const all = ds.get(2);
      assert.ok(all instanceof Uint16Array);
      assert.deepEqual(Array.from(all), [50256, 0, 7, 65535]);
      assert.deepEqual(Array.from(ds.get(2, 1)), [0, 7, 65535]);
      assert.deepEqual(Array.from(ds.get(2, 1, 2)), [0, 7]);
      assert.deepEqual(Array.from(ds.get(0, 3)), []);
      assert.equal(ds.get(1).buffer, ds.get(0).buffer); // same backing store: no copy
      assert.throws(() => ds.get(3), /expected an item index in 0\.\.2, found 3/);
      assert.throws(() => ds.get(1, 1, 2), /expected offset\+length <= 2/);
      ds.close();
      assert.throws(() => ds.get(0), /closed/);
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("indexed: mmap and read-file fallback give the same data; int32 for big vocabularies", () => {
  const dir = Deno.makeTempDirSync();
  try {
    assert.equal(bestDtypeForVocab(50257), "uint16");
    assert.equal(bestDtypeForVocab(65499), "uint16");
    assert.equal(bestDtypeForVocab(65500), "int32");
    const p = tmpPrefix(dir);
    const docs: number[][][] = [];
    let s = 1;
    for (let d = 0; d < 20; d++) {
      const items: number[][] = [];
      for (let k = 0; k < 1 + (d % 3); k++) {
        const len = (d * 7 + k * 13) % 50;
        items.push(Array.from({ length: len }, () => (s = (s * 1103515245 + 12345) % 2147483648) % 250000));
      }
      docs.push(items);
    }
    write(p, docs, bestDtypeForVocab(250000));
    const a = MMapIndexedDataset.open(p, { mmap: true });
    const b = MMapIndexedDataset.open(p, { mmap: false });
    assert.equal(a.mmapped, true);
    assert.equal(b.mmapped, false);
    assert.equal(a.dtypeCode, 4);
    assert.deepEqual(a.sizes, b.sizes);
    assert.deepEqual(a.docIdx, b.docIdx);
    const flat = docs.flat();
    for (let i = 0; i < a.length; i++) {
      assert.deepEqual(Array.from(a.get(i)), flat[i]);
      assert.deepEqual(a.get(i), b.get(i));
    }
    a.close();
    b.close();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("indexed: mergeFile keeps the other file's document boundaries", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const a = tmpPrefix(dir, "a");
    const b = tmpPrefix(dir, "b");
    const m = tmpPrefix(dir, "m");
    const direct = tmpPrefix(dir, "direct");
    const docsA = [[[1, 2], [3]], [[4]]];
    const docsB = [[[5, 6, 7]], [[8], [9, 10]], [[11]]];
    write(a, docsA);
    write(b, docsB);
    const w = new MMapIndexedDatasetBuilder(m, "uint16");
    w.mergeFile(a);
    w.mergeFile(b);
    w.finalize();
    write(direct, [...docsA, ...docsB]);
    const ds = MMapIndexedDataset.open(m);
    assert.deepEqual(Array.from(ds.docIdx), [0, 2, 3, 4, 6, 7]);
    ds.close();
    assert.deepEqual(Deno.readFileSync(idxPath(m)), Deno.readFileSync(idxPath(direct)));
    assert.deepEqual(Deno.readFileSync(binPath(m)), Deno.readFileSync(binPath(direct)));
    const bad = new MMapIndexedDatasetBuilder(tmpPrefix(dir, "bad"), "int32");
    assert.throws(() => bad.mergeFile(a), /expected dtype int32 .* found uint16/);
    bad.abort();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("indexed: builder writes temp files, renames on finalize, abort leaves nothing", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const p = tmpPrefix(dir);
    const b = new MMapIndexedDatasetBuilder(p, "uint16");
    b.addItem([1, 2, 3]);
    assert.equal(Array.from(Deno.readDirSync(dir)).filter((e) => e.name === "ds.bin").length, 0);
    assert.throws(() => b.addItem([70000]), /expected an integer that fits uint16, found 70000/);
    b.abort();
    assert.deepEqual(Array.from(Deno.readDirSync(dir)), []);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

/** Writes a good dataset, lets `mutate` damage the .idx/.bin bytes, and returns open()'s error. */
function openError(mutate: (idx: Uint8Array, bin: Uint8Array) => [Uint8Array, Uint8Array]): string {
  const dir = Deno.makeTempDirSync();
  try {
    const p = tmpPrefix(dir);
    write(p, DOCS.map((d) => [d]));
    const [idx, bin] = mutate(Deno.readFileSync(idxPath(p)), Deno.readFileSync(binPath(p)));
    Deno.writeFileSync(idxPath(p), idx);
    Deno.writeFileSync(binPath(p), bin);
    try {
      MMapIndexedDataset.open(p).close();
    } catch (e) {
      const msg = (e as Error).message;
      assert.ok(!msg.includes("\n"), `one line: ${msg}`);
      assert.ok(msg.includes(dir), `names the file: ${msg}`);
      return msg;
    }
    throw new Error("open() accepted a bad file");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

function setU64(b: Uint8Array, off: number, v: number): Uint8Array {
  new DataView(b.buffer, b.byteOffset).setBigUint64(off, BigInt(v), true);
  return b;
}

Deno.test("indexed: every kind of bad file gives one line naming file, expectation and finding", () => {
  // 102-byte layout: sizes @34, pointers @46, doc_idx @70.
  assert.match(
    openError((i, b) => [(i[0] = 0x58, i), b]),
    /ds\.idx: not a Megatron MMIDIDX index \(magic 584d49444944580000, expected 4d4d49444944580000 "MMIDIDX\\0\\0"\)$/,
  );
  assert.match(
    openError((_i, b) => [new TextEncoder().encode('{"text": "not an index"}\n'), b]),
    /ds\.idx: not a Megatron MMIDIDX index \(magic 7b2274657874223a20,/,
  );
  // Cut inside the magic or the header: truncated, not foreign.
  assert.match(openError((_i, b) => [new Uint8Array(0), b]), /ds\.idx: truncated \.idx: .* found 0$/);
  assert.match(openError((i, b) => [i.subarray(0, 5), b]), /ds\.idx: truncated \.idx: .* found 5$/);
  const legacy = new Uint8Array(64);
  legacy.set(new TextEncoder().encode("TNTIDX\0\0"));
  assert.match(
    openError((_i, b) => [legacy, b]),
    /ds\.idx: .*legacy lazy\/cached index .*--dataset-impl mmap/,
  );
  assert.match(openError((i, b) => [setU64(i, 9, 2), b]), /ds\.idx: expected index version 1, found 2/);
  assert.match(openError((i, b) => [(i[17] = 9, i), b]), /ds\.idx: expected a dtype code in 1\.\.8, found 9/);
  assert.match(
    openError((i, b) => [i.subarray(0, 20), b]),
    /truncated \.idx: expected at least 34 header bytes/,
  );
  assert.match(openError((i, b) => [i.subarray(0, 101), b]), /truncated \.idx: .*need 102 bytes, found 101/);
  // The .bin must be exactly last pointer + last size * itemsize (18 = 9 uint16 tokens), both ways.
  const sizeLine = (n: number) =>
    new RegExp(
      `^\\S*ds\\.bin: size ${n} bytes does not match \\S*ds\\.idx, which needs exactly 18 bytes ` +
        `\\(last pointer \\+ last size \\* 2\\); the two files do not belong together$`,
    );
  assert.match(openError((i, b) => [i, b.subarray(0, 17)]), sizeLine(17));
  const longer = new Uint8Array(20);
  assert.match(openError((i, b) => [i, (longer.set(b), longer)]), sizeLine(20));
  assert.match(openError((i) => [i, new Uint8Array(0)]), sizeLine(0));
  assert.match(
    openError((i, b) => [setU64(setU64(i, 54, 10), 62, 6), b]),
    /pointers inconsistent with sizes: expected pointers\[1\]=6 .* found 10/,
  );
  assert.match(
    openError((i, b) => [setU64(i, 62, 2), b]),
    /pointers out of order: expected pointers\[2\]=10 .* found 2/,
  );
  assert.match(
    openError((i, b) => [setU64(i, 94, 2), b]),
    /expected doc_idx to end at N=3, found doc_idx\[3\]=2/,
  );
  assert.match(openError((i, b) => [setU64(i, 78, 5), b]), /expected doc_idx non-decreasing within 0\.\.3/);
  const grown = new Uint8Array(110);
  assert.match(
    openError((i, b) => [(grown.set(i), grown), b]),
    /expected 102 bytes for N=3 and D=4, found 110/,
  );
});

Deno.test("indexed: dtype code 7 reads as float64 (2021) unless float32 is asked for", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const p = tmpPrefix(dir);
    write(p, [[[1.5, -2]], [[3]]], "float64");
    const idx = Deno.readFileSync(idxPath(p));
    assert.equal(idx[17], 6);
    idx[17] = 7;
    Deno.writeFileSync(idxPath(p), idx);
    const ds = MMapIndexedDataset.open(p);
    assert.equal(ds.dtype, "float64");
    assert.deepEqual(Array.from(ds.get(0)), [1.5, -2]);
    ds.close();
    // As float32 the pointers (running sum of size*8) no longer match size*4.
    assert.throws(() => MMapIndexedDataset.open(p, { code7: "float32" }), /pointers inconsistent with sizes/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("indexed: data-impl sniffing; Megatron-Core multimodal sequence_modes tail is accepted", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const p = tmpPrefix(dir);
    assert.equal(inferDatasetImpl(p), null); // missing
    write(p, DOCS.map((d) => [d]));
    const idx = Deno.readFileSync(idxPath(p));
    const withModes = new Uint8Array(idx.length + 3); // int8 sequence_modes[N], N = 3
    withModes.set(idx);
    Deno.writeFileSync(idxPath(p), withModes);
    const ds = MMapIndexedDataset.open(p);
    assert.deepEqual(Array.from(ds.get(1)), DOCS[1]);
    ds.close();
    const legacy = new Uint8Array(64);
    legacy.set(new TextEncoder().encode("TNTIDX\0\0"));
    Deno.writeFileSync(idxPath(p), legacy);
    assert.equal(inferDatasetImpl(p), "lazy");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
