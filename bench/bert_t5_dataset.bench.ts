// BERT/T5 data cost: the helpers.cpp samples mapping for 20k documents (about 100k sentences, the
// mapping for 100k samples), and getItem for BERT (seq 512) and T5 (encoder 512, decoder 128), from an
// in-memory sentence corpus with a 30k vocabulary where 30% of the tokens are "##" pieces.
// Run: deno bench -A bench/bert_t5_dataset.bench.ts

import { BertDataset } from "../src/data/bert_dataset.ts";
import type { MaskedLmVocab } from "../src/data/masked_lm.ts";
import { RandomState } from "../src/data/numpy_random.ts";
import { buildSamplesMapping } from "../src/data/samples_mapping.ts";
import { T5Dataset } from "../src/data/t5_dataset.ts";

const NUM_DOCS = 20_000;
const VOCAB = 30_524;
const rng = new RandomState(5);
const docs = [0];
const sentences: Uint16Array[] = [];
for (let d = 0; d < NUM_DOCS; d++) {
  const n = 1 + rng.randint(9);
  for (let s = 0; s < n; s++) {
    const len = 5 + rng.randint(40);
    const t = new Uint16Array(len);
    for (let i = 0; i < len; i++) t[i] = 1000 + rng.randint(VOCAB - 1000 - 102);
    sentences.push(t);
  }
  docs.push(sentences.length);
}
const sizes = Int32Array.from(sentences, (s) => s.length);
const indexed = { sizes, get: (i: number) => sentences[i] };
const startsWord = new Uint8Array(VOCAB + 100).fill(1);
for (let id = 1000; id < VOCAB; id++) if (id % 10 < 3) startsWord[id] = 0;
const vocab: MaskedLmVocab = {
  vocabIdList: Int32Array.from({ length: VOCAB + 100 }, (_, i) => i),
  startsWord,
  cls: 101,
  sep: 102,
  mask: 103,
  pad: 0,
  bos: VOCAB - 2,
  eos: VOCAB - 1,
  sentinels: Int32Array.from({ length: 100 }, (_, i) => VOCAB + i),
};
const common = {
  name: "train",
  dataPrefix: "bench",
  indexed,
  docs,
  numSamples: 4096,
  maskedLmProb: 0.15,
  shortSeqProb: 0.1,
  seed: 1234,
  vocab,
  cache: false,
};
const bert = new BertDataset({ ...common, maxSeqLength: 512, binaryHead: true });
const t5 = new T5Dataset({ ...common, maxSeqLength: 512, maxSeqLengthDec: 128 });
console.log(`${sentences.length} sentences; BERT rows ${bert.length}, T5 rows ${t5.length}`);

Deno.bench("samples mapping: 20k docs, 100k samples (msl 509, binary head)", () => {
  buildSamplesMapping({
    docs,
    sizes,
    numEpochs: null,
    maxNumSamples: 100_000,
    maxSeqLength: 509,
    shortSeqProb: 0.1,
    seed: 1234,
    minNumSent: 2,
  });
});

Deno.bench("BertDataset.getItem x64 (seq 512)", { group: "getItem" }, () => {
  for (let i = 0; i < 64; i++) bert.getItem(i);
});

Deno.bench("T5Dataset.getItem x64 (enc 512, dec 128)", { group: "getItem" }, () => {
  for (let i = 0; i < 64; i++) t5.getItem(i);
});
