// Building GPT index mappings for a ~500M-token corpus (1M documents of 1..999 tokens), seq 1024.
// Run: deno bench -A bench/index_mappings.bench.ts
import {
  buildDocIdx,
  buildSampleIdx,
  buildShuffleIdx,
  computeIndexMappings,
  planIndexMappings,
} from "../src/data/gpt_dataset.ts";
import { encodeNpy } from "../src/data/npy.ts";
import { RandomState } from "../src/data/numpy_random.ts";

const NUM_DOCS = 1_000_000;
const SEQ = 1024;
const rng = new RandomState(7);
const sizes = new Int32Array(NUM_DOCS);
for (let i = 0; i < NUM_DOCS; i++) sizes[i] = 1 + rng.randint(999);
const documents = Int32Array.from({ length: NUM_DOCS }, (_, i) => i);
const plan1 = planIndexMappings(documents, sizes, 400_000, SEQ);
console.log(`corpus: ${plan1.tokensPerEpoch} tokens in ${NUM_DOCS} documents`);

Deno.bench("index mappings, 1 epoch (400k samples)", { group: "full" }, () => {
  computeIndexMappings(documents, sizes, 400_000, SEQ, 1234);
});

Deno.bench("index mappings, 3 epochs with separate last (1.1M samples)", { group: "full" }, () => {
  computeIndexMappings(documents, sizes, 1_100_000, SEQ, 1234);
});

const docIdx = buildDocIdx(documents, 1, new RandomState(1), false);
const sampleIdx = buildSampleIdx(sizes, docIdx, SEQ, 1, plan1.tokensPerEpoch);

Deno.bench("doc_idx: tile + shuffle 1M", { group: "parts" }, () => {
  buildDocIdx(documents, 1, new RandomState(1), false);
});
Deno.bench("sample_idx: 1 epoch", { group: "parts" }, () => {
  buildSampleIdx(sizes, docIdx, SEQ, 1, plan1.tokensPerEpoch);
});
Deno.bench("shuffle_idx: 1 epoch", { group: "parts" }, () => {
  buildShuffleIdx(sampleIdx.length / 2 - 1, sampleIdx.length / 2 - 1, new RandomState(1));
});
Deno.bench("encode doc_idx as .npy", { group: "parts" }, () => {
  encodeNpy(docIdx);
});
