// GPT index mappings vs the Megatron test vector, sample contents vs an independent token-stream
// reference, the separate-last-epoch rule, .npy caching, and dataset building with blending.
import assert from "node:assert/strict";
import {
  buildIndexMappings,
  buildTrainValidTestDatasets,
  computeIndexMappings,
  GPTDataset,
  indexMapFilenames,
  planIndexMappings,
  type TokenDataset,
} from "../src/data/gpt_dataset.ts";
import { readNpySync, writeNpySync } from "../src/data/npy.ts";
import { RandomState } from "../src/data/numpy_random.ts";

// In-memory indexed dataset: item i holds tokens i*1000 + 0..size-1, so every token names its origin.
function fakeDataset(sizes: number[]): TokenDataset & { calls: number } {
  const s = Int32Array.from(sizes);
  return {
    sizes: s,
    calls: 0,
    get(i: number, offset = 0, length?: number) {
      this.calls++;
      const len = length ?? s[i] - offset;
      assert.ok(offset >= 0 && len >= 0 && offset + len <= s[i], `get(${i}, ${offset}, ${length})`);
      return Array.from({ length: len }, (_, t) => i * 1000 + offset + t);
    },
  };
}

const range = (a: number, b: number) => Int32Array.from({ length: b - a }, (_, i) => a + i);
const nums = (a: ArrayLike<number | bigint>) => Array.from(a, Number);
const rows = (si: Int32Array) => Array.from({ length: si.length / 2 }, (_, k) => [si[2 * k], si[2 * k + 1]]);

Deno.test("index mappings match the Megatron test vector", () => {
  const sizes = Int32Array.from([5, 3, 7, 2, 9]);
  const m = computeIndexMappings(range(0, 5), sizes, 10, 4, 1234);
  assert.equal(m.plan.tokensPerEpoch, 26);
  assert.equal(m.plan.numEpochs, 2);
  assert.equal(m.plan.separateLastEpoch, false);
  assert.deepEqual(Array.from(m.docIdx), [2, 2, 4, 1, 0, 3, 4, 0, 1, 3]);
  assert.deepEqual(rows(m.sampleIdx), [
    [0, 0],
    [0, 4],
    [1, 1],
    [1, 5],
    [2, 2],
    [2, 6],
    [3, 1],
    [4, 2],
    [5, 1],
    [6, 3],
    [6, 7],
    [7, 2],
    [8, 1],
  ]);
  assert.ok(m.shuffleIdx instanceof Uint32Array);
  assert.deepEqual(nums(m.shuffleIdx), [3, 11, 2, 1, 7, 5, 4, 0, 8, 6, 10, 9]);
});

// Reference: sample k is tokens [k*seq, k*seq + seq] of the documents concatenated in doc_idx order.
function streamSample(ds: TokenDataset, docIdx: Int32Array, k: number, seq: number): number[] {
  const stream: number[] = [];
  for (const d of docIdx) stream.push(...Array.from(ds.get(d)));
  return stream.slice(k * seq, k * seq + seq + 1);
}

Deno.test("getItem equals the shuffled token stream, seq_length+1 tokens each", () => {
  const sizes = [5, 3, 7, 2, 9, 1, 0, 12, 4, 6];
  const ds = fakeDataset(sizes);
  for (const seq of [2, 4, 7, 16]) {
    const g = new GPTDataset({
      name: "train",
      dataPrefix: "unused",
      documents: range(2, 9),
      indexed: ds,
      numSamples: 23,
      seqLength: seq,
      seed: 77,
      cache: false,
    });
    assert.ok(g.length >= 23);
    for (let i = 0; i < g.length; i++) {
      const got = g.getItem(i);
      assert.equal(got.length, seq + 1);
      const k = Number(g.shuffleIdx[i]);
      assert.deepEqual(Array.from(got), streamSample(ds, g.docIdx, k, seq), `seq ${seq} sample ${i}`);
      // Only documents 2..8 of the split appear.
      for (const t of got) assert.ok(t >= 2000 && t < 9000);
    }
    assert.throws(() => g.getItem(g.length), /expected a sample index in 0\.\./);
  }
});

Deno.test("token ids outside the padded vocabulary fail exactly for the samples that hold them", () => {
  // Megatron's test vector layout (sizes 5,3,7,2,9; seq 4; seed 1234): tokens are i*10 + t, all below
  // the vocabulary of 100, except document 4 token 6 (value 123) and document 1 token 0 (value -1).
  const sizes = [5, 3, 7, 2, 9];
  const bad = new Map<string, number>([["4:6", 123], ["1:0", -1]]);
  const ds: TokenDataset = {
    sizes: Int32Array.from(sizes),
    get(i: number, offset = 0, length?: number) {
      const len = length ?? sizes[i] - offset;
      return Array.from({ length: len }, (_, t) => bad.get(`${i}:${offset + t}`) ?? i * 10 + offset + t);
    },
  };
  const g = new GPTDataset({
    name: "train",
    dataPrefix: "/data/c_text_document",
    documents: range(0, 5),
    indexed: ds,
    numSamples: 10,
    seqLength: 4,
    seed: 1234,
    vocabSize: 100,
    cache: false,
  });
  assert.deepEqual(Array.from(g.docIdx), [2, 2, 4, 1, 0, 3, 4, 0, 1, 3]);
  // Independent reference: stream positions of each bad token; sample k covers [4k, 4k+4].
  const starts: number[] = [];
  let pos = 0;
  for (const d of g.docIdx) {
    starts.push(pos);
    pos += sizes[d];
  }
  let failures = 0;
  for (let i = 0; i < g.length; i++) {
    const k = Number(g.shuffleIdx[i]);
    // The first bad token in the sample's order is the one reported.
    let first: [number, number, number] | null = null;
    for (let p = 4 * k; p <= 4 * k + 4 && first === null; p++) {
      const j = starts.findLastIndex((s) => s <= p);
      const [doc, off] = [g.docIdx[j], p - starts[j]];
      const v = bad.get(`${doc}:${off}`);
      if (v !== undefined) first = [doc, v, off];
    }
    if (first === null) {
      assert.equal(g.getItem(i).length, 5);
      continue;
    }
    failures++;
    const [doc, v, off] = first;
    assert.throws(
      () => g.getItem(i),
      (e: Error) =>
        e.message ===
          `/data/c_text_document: document ${doc} has token id ${v} at position ${off}, expected ids in ` +
            `0..99 (padded vocabulary size 100); was the data preprocessed with another tokenizer?`,
      `sample ${i}`,
    );
  }
  // Doc 4 appears twice and doc 1 twice in doc_idx: some samples fail, most do not.
  assert.ok(failures >= 4 && failures < g.length, `failures ${failures}`);
  // Without a vocabulary only negative ids are refused (no embedding row has a negative index).
  const open = new GPTDataset({
    name: "train",
    dataPrefix: "p",
    documents: range(0, 5),
    indexed: ds,
    numSamples: 10,
    seqLength: 4,
    seed: 1234,
    cache: false,
  });
  let negatives = 0;
  for (let i = 0; i < open.length; i++) {
    try {
      open.getItem(i);
    } catch (e) {
      assert.match(
        (e as Error).message,
        /^p: document 1 has token id -1 at position 0, expected ids in 0 or more;/,
      );
      negatives++;
    }
  }
  assert.ok(negatives >= 1 && negatives < failures);
});

Deno.test("separate last epoch: rule, doc_idx and shuffle_idx parts, RandomState draw order", () => {
  const sizes = Int32Array.from([10, 10, 10, 10]); // 40 tokens/epoch, seq 4 -> 9 samples/epoch
  const docs = range(0, 4);
  // 2 epochs give (80-1)//4 = 19 samples; asking 10 leaves 1 for epoch 2 < int(0.8*9) = 7.
  const p = planIndexMappings(docs, sizes, 10, 4);
  assert.deepEqual(p, {
    tokensPerEpoch: 40,
    numEpochs: 2,
    separateLastEpoch: true,
    totalSamples: 19,
    firstShuffleSamples: 9,
  });
  // Asking 16 leaves 7, which is not < 7: one shuffle over both epochs.
  assert.equal(planIndexMappings(docs, sizes, 16, 4).separateLastEpoch, false);
  assert.equal(planIndexMappings(docs, sizes, 15, 4).separateLastEpoch, true);
  assert.equal(planIndexMappings(docs, sizes, 9, 4).numEpochs, 1);

  const m = computeIndexMappings(docs, sizes, 10, 4, 5);
  // Same draws as numpy: shuffle(epoch 1 tiled), shuffle(epoch 2), shuffle(arange 9), shuffle(arange 9..19).
  const rng = new RandomState(5);
  const a = Int32Array.from([0, 1, 2, 3]);
  const b = Int32Array.from([0, 1, 2, 3]);
  rng.shuffle(a);
  rng.shuffle(b);
  assert.deepEqual(Array.from(m.docIdx), [...a, ...b]);
  const s1 = Uint32Array.from({ length: 9 }, (_, i) => i);
  const s2 = Uint32Array.from({ length: 10 }, (_, i) => 9 + i);
  rng.shuffle(s1);
  rng.shuffle(s2);
  assert.deepEqual(nums(m.shuffleIdx), [...s1, ...s2]);
});

Deno.test("bad inputs give one clear line", () => {
  const sizes = Int32Array.from([1, 0]);
  assert.throws(() => planIndexMappings(range(0, 2), sizes, 5, 4), /at least 2 tokens per epoch, found 1/);
  assert.throws(() => planIndexMappings(range(0, 2), sizes, 5, 1), /--seq-length: expected an integer >= 2/);
  const ds = fakeDataset([3, 4]);
  assert.throws(
    () =>
      new GPTDataset({
        name: "train",
        dataPrefix: "p",
        documents: range(0, 3),
        indexed: ds,
        numSamples: 1,
        seqLength: 2,
        seed: 1,
        cache: false,
      }),
    /p: train documents must be in 0\.\.1, found 2/,
  );
});

Deno.test("cache: Megatron file names, reload without rebuilding, rebuild when inconsistent", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const prefix = `${dir}/corpus_text_document`;
    const sizes = Int32Array.from([5, 3, 7, 2, 9]);
    const logs: string[] = [];
    const opts = {
      name: "train",
      dataPrefix: prefix,
      documents: range(0, 5),
      sizes,
      numSamples: 10,
      seqLength: 4,
      seed: 1234,
      log: (l: string) => logs.push(l),
    };
    const f = indexMapFilenames(prefix, "train", 10, 4, 1234);
    assert.equal(f.docIdx, `${prefix}_train_indexmap_10ns_4sl_1234s_doc_idx.npy`);
    assert.equal(f.sampleIdx, `${prefix}_train_indexmap_10ns_4sl_1234s_sample_idx.npy`);
    assert.equal(f.shuffleIdx, `${prefix}_train_indexmap_10ns_4sl_1234s_shuffle_idx.npy`);
    const built = buildIndexMappings(opts);
    assert.ok(logs.some((l) => l.includes("could not find train index map files")));
    const sampleFile = readNpySync(f.sampleIdx);
    assert.equal(sampleFile.descr, "<i4");
    assert.deepEqual(sampleFile.shape, [13, 2]);
    assert.equal(readNpySync(f.shuffleIdx).descr, "<u4");
    assert.deepEqual(readNpySync(f.docIdx).data, built.docIdx);

    // Load: a doctored (but consistent) doc_idx proves the file is used rather than rebuilt.
    const doctored = Int32Array.from([2, 2, 4, 1, 0, 3, 4, 0, 3, 1]);
    writeNpySync(f.docIdx, doctored);
    logs.length = 0;
    const loaded = buildIndexMappings(opts);
    assert.deepEqual(loaded.docIdx, doctored);
    assert.ok(logs.some((l) => l.includes("loaded train index mappings")));

    // Inconsistent shape -> rebuilt and rewritten.
    writeNpySync(f.shuffleIdx, new Uint32Array(5));
    logs.length = 0;
    const again = buildIndexMappings(opts);
    assert.ok(
      logs.some((l) => /inconsistent \(shuffle_idx is <u4 \[5\], expected <u4 \[12\]\)/.test(l)),
      logs[0],
    );
    assert.deepEqual(nums(again.shuffleIdx), [3, 11, 2, 1, 7, 5, 4, 0, 8, 6, 10, 9]);
    assert.deepEqual(readNpySync(f.shuffleIdx).data, again.shuffleIdx);
    // Corrupt file -> rebuilt.
    Deno.writeFileSync(f.docIdx, new Uint8Array([1, 2, 3]));
    logs.length = 0;
    buildIndexMappings(opts);
    assert.ok(logs.some((l) => l.includes("expected the .npy magic")));
    assert.deepEqual(nums(readNpySync(f.docIdx).data), [2, 2, 4, 1, 0, 3, 4, 0, 1, 3]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("buildTrainValidTestDatasets: single prefix and weighted blend", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const a = fakeDataset(Array.from({ length: 20 }, (_, i) => 3 + (i % 5)));
    const b = fakeDataset(Array.from({ length: 10 }, (_, i) => 8 + i));
    const open = (p: string) => (p.endsWith("a") ? a : b);
    const logs: string[] = [];
    const single = buildTrainValidTestDatasets({
      dataPrefix: [`${dir}/a`],
      splitString: "8,1,1",
      trainValidTestNumSamples: [30, 5, 5],
      seqLength: 8,
      seed: 1234,
      open,
      log: (l) => logs.push(l),
    });
    assert.ok(single.train instanceof GPTDataset && single.valid && single.test);
    assert.ok(logs.some((l) => l.includes("train: document indices in [0, 16) total of 16 documents")));
    // The train split only sees items 0..15.
    const tr = single.train as GPTDataset;
    assert.equal(tr.docIdx.length % 16, 0);
    assert.ok(Array.from(tr.docIdx).every((d) => d < 16));
    assert.ok(tr.length >= 30);

    const blendOpts = {
      dataPrefix: ["0.3", `${dir}/a`, "0.7", `${dir}/b`],
      splitString: "8,1,1",
      trainValidTestNumSamples: [100, 10, 0] as [number, number, number],
      seqLength: 8,
      seed: 1234,
      open,
      cache: false,
    };
    const blend = buildTrainValidTestDatasets(blendOpts);
    assert.ok(blend.valid && blend.test);
    // 10 items at 969/30/1 -> [0, 10, 10, 10]: b has no valid split, so valid cannot be weighted.
    assert.throws(
      () => buildTrainValidTestDatasets({ ...blendOpts, splitString: "969, 30, 1" }),
      /^Error: --data-path: the valid split is empty in 1 of 2 datasets; adjust --split$/,
    );
    const train = blend.train!;
    const parts = (train as unknown as { datasets: GPTDataset[] }).datasets;
    // Each part was asked for ceil(100 * w * 1.005) samples.
    assert.equal(parts[0].plan.totalSamples >= 31 && parts[1].plan.totalSamples >= 71, true);
    assert.equal(train.length, parts[0].length + parts[1].length);
    for (let i = 0; i < 50; i++) assert.equal(train.getItem(i).length, 9);
    // Blend order: the 0.7 dataset is picked about 70% of the time over any prefix.
    const idx = (train as unknown as { datasetIndex: Uint8Array }).datasetIndex;
    let ones = 0;
    for (let i = 0; i < 100; i++) ones += idx[i];
    assert.ok(Math.abs(ones - 70) <= 1, `${ones}`);
    assert.throws(
      () =>
        buildTrainValidTestDatasets({
          ...{ open, seqLength: 8, seed: 1, splitString: "1" },
          dataPrefix: ["x", "y", "z"],
          trainValidTestNumSamples: [1, 1, 1],
        }),
      /--data-path: expected "weight prefix" pairs, found an odd count \(3\)/,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
