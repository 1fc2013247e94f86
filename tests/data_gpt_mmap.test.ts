// End to end on a real .bin/.idx pair: MMapIndexedDataset satisfies TokenDataset, samples match the
// token-stream reference, and a second build loads the .npy caches written next to the data.
import assert from "node:assert/strict";
import { MMapIndexedDataset, MMapIndexedDatasetBuilder } from "../src/data/indexed_dataset.ts";
import { buildTrainValidTestDatasets, type GPTDataset } from "../src/data/gpt_dataset.ts";
import { RandomState } from "../src/data/numpy_random.ts";

Deno.test("GPT datasets over an MMapIndexedDataset, cached maps reused", () => {
  const dir = Deno.makeTempDirSync();
  const opened: MMapIndexedDataset[] = [];
  try {
    const prefix = `${dir}/corpus_text_document`;
    const b = new MMapIndexedDatasetBuilder(prefix, "uint16");
    const rng = new RandomState(11);
    const docs: number[][] = [];
    for (let d = 0; d < 60; d++) {
      const doc = Array.from({ length: 1 + rng.randint(40) }, () => rng.randint(50257));
      docs.push(doc);
      b.addItem(doc);
      b.endDocument();
    }
    b.finalize();
    const open = (p: string) => {
      const ds = MMapIndexedDataset.open(p);
      opened.push(ds);
      return ds;
    };
    const logs: string[] = [];
    const opts = {
      dataPrefix: [prefix],
      splitString: "949,50,1",
      trainValidTestNumSamples: [200, 20, 5] as [number, number, number],
      seqLength: 16,
      seed: 1234,
      open,
      log: (l: string) => logs.push(l),
    };
    const first = buildTrainValidTestDatasets(opts);
    const train = first.train as GPTDataset;
    // 60 items at 949/50/1 -> [0, 57, 60, 60] (0.05*60 = 3, 0.001*60 rounds to 0).
    assert.ok(logs.some((l) => l.includes("train: document indices in [0, 57)")));
    assert.equal(first.test, null);
    assert.equal(logs.filter((l) => l.includes("could not find")).length, 2);
    const stream: number[] = [];
    for (const d of train.docIdx) stream.push(...docs[d]);
    for (let i = 0; i < train.length; i++) {
      const k = Number(train.shuffleIdx[i]);
      assert.deepEqual(Array.from(train.getItem(i)), stream.slice(16 * k, 16 * k + 17));
    }
    for (const f of Deno.readDirSync(dir)) assert.ok(!f.name.includes(".tmp"), f.name);
    assert.ok(Deno.statSync(`${prefix}_train_indexmap_200ns_16sl_1234s_sample_idx.npy`).isFile);

    logs.length = 0;
    const second = buildTrainValidTestDatasets(opts);
    assert.equal(logs.filter((l) => l.includes("loaded")).length, 2);
    const t2 = second.train as GPTDataset;
    assert.deepEqual(t2.docIdx, train.docIdx);
    assert.deepEqual(t2.sampleIdx, train.sampleIdx);
    assert.deepEqual(t2.shuffleIdx, train.shuffleIdx);
    assert.deepEqual(t2.getItem(3), train.getItem(3));
  } finally {
    for (const ds of opened) ds.close();
    Deno.removeSync(dir, { recursive: true });
  }
});
