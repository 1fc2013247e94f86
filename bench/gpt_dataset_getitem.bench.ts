// GPTDataset.getItem with and without the per-sample vocabulary check (a min/max while copying):
// 256 samples of seq 1024 from an in-memory uint16 corpus of 20k documents.
// Run: deno bench -A bench/gpt_dataset_getitem.bench.ts
import { GPTDataset, type TokenDataset } from "../src/data/gpt_dataset.ts";
import { RandomState } from "../src/data/numpy_random.ts";

const NUM_DOCS = 20_000;
const SEQ = 1024;
const rng = new RandomState(3);
const sizes = new Int32Array(NUM_DOCS);
for (let i = 0; i < NUM_DOCS; i++) sizes[i] = 1 + rng.randint(999);
const pointers = new Float64Array(NUM_DOCS);
let total = 0;
for (let i = 0; i < NUM_DOCS; i++) {
  pointers[i] = total;
  total += sizes[i];
}
const tokens = new Uint16Array(total);
for (let i = 0; i < total; i++) tokens[i] = (i * 2654435761) % 50257;
const indexed: TokenDataset = {
  sizes,
  get: (i, offset = 0, length) => {
    const start = pointers[i] + offset;
    return tokens.subarray(start, start + (length ?? sizes[i] - offset));
  },
};
const documents = Int32Array.from({ length: NUM_DOCS }, (_, i) => i);
const make = (vocabSize?: number) =>
  new GPTDataset({
    name: "train",
    dataPrefix: "bench",
    documents,
    indexed,
    numSamples: 4096,
    seqLength: SEQ,
    seed: 1234,
    cache: false,
    ...(vocabSize !== undefined ? { vocabSize } : {}),
  });
const checked = make(50304);
const unchecked = make();

Deno.bench("getItem x256, vocabSize unset (negative ids only)", { group: "getItem", baseline: true }, () => {
  for (let i = 0; i < 256; i++) unchecked.getItem(i);
});
Deno.bench("getItem x256, vocabSize 50304", { group: "getItem" }, () => {
  for (let i = 0; i < 256; i++) checked.getItem(i);
});
