// BERT and T5 datasets against Megatron 2021's algorithm:
// - samples mappings worked by hand from std::mt19937(1234) / std::mt19937_64(1235) outputs printed by
//   a C++ program (libstdc++), quoted below;
// - every sample of three configurations against tests/data/bert_t5_reference.jsonl, written by
//   scripts/bert_t5_reference.py (an independent Python version using numpy's own RandomState);
// - the cache file (Megatron's name, .npy contents), its reuse, and the binary-head name trap.

import assert from "node:assert/strict";
import { BertDataset, type BertSample, bertSampleToJson } from "../src/data/bert_dataset.ts";
import { MMapIndexedDataset, MMapIndexedDatasetBuilder } from "../src/data/indexed_dataset.ts";
import { maskedLmVocab } from "../src/data/masked_lm.ts";
import { buildBertDatasets, buildT5Datasets, type MaskedLmSplits } from "../src/data/masked_lm_builder.ts";
import { readNpySync } from "../src/data/npy.ts";
import { RandomState } from "../src/data/numpy_random.ts";
import {
  buildSamplesMapping,
  formatFixed2,
  getSamplesMapping,
  samplesMappingFilename,
} from "../src/data/samples_mapping.ts";
import {
  makeAttentionMask,
  makeHistoryMask,
  padT5Sample,
  type T5Sample,
  t5SampleToJson,
} from "../src/data/t5_dataset.ts";
import { BertWordPieceTokenizer } from "../src/tokenizer/bert.ts";

// Sentence sizes of 5 documents (sentence ids in brackets):
// doc0 [0-3] 3,4,2,5 | doc1 [4-8] 2,2,2,2,2 | doc2 [9-11] 600,1,1 (a sentence > 512: skipped)
// doc3 [12] 6 (one sentence) | doc4 [13-17] 1,1,1,1,1
const SIZES = Int32Array.from([3, 4, 2, 5, 2, 2, 2, 2, 2, 600, 1, 1, 6, 1, 1, 1, 1, 1]);
const DOCS = [0, 4, 9, 12, 13, 18];
/** The first hand-worked mapping's options; the other cases change a few of them. */
const HAND = {
  docs: DOCS,
  sizes: SIZES,
  numEpochs: null,
  maxNumSamples: 5,
  maxSeqLength: 6,
  shortSeqProb: 0.5,
  seed: 1234,
  minNumSent: 2 as const,
};
const rows = (m: Uint32Array) =>
  Array.from({ length: m.length / 3 }, (_, r) => Array.from(m.subarray(3 * r, 3 * r + 3)));

Deno.test("samples mapping, hand-worked: short targets from std::mt19937(1234), shuffle by std::mt19937_64(1235)", () => {
  // std::mt19937(1234) outputs: 822569775 2137449171 2671936806 3512589365 1880026316 2629000564 3373089432 ...
  // short_seq_prob 0.5 -> ratio 2: odd -> 6 (max), even -> 2 + r % 5: draws are 6, 6, 3, 6, 3, 6, 4.
  // doc0 target 6: 3+4=7 >= 6 with 2 left -> (0,2,6); target 6; 2+5 at the end -> (2,4,6); draw 3 wasted.
  // doc1 target 6: 2+2+2 = 6 with 2 left -> (4,7,6); target 3: 2, then 4 at the end -> (7,9,3); draw wasted.
  // doc2 has a 600-token sentence, doc3 one sentence (< 2): skipped without a draw.
  // doc4 target 4: reaches 4 with only 1 left (needs > 1), so it runs to the end -> (13,18,4).
  // std::mt19937_64(1235): 12475983374653888083 573922149886606219 5802434057304372554 9262138314722780250
  // j = r % (i+1) for i = 4..1: 3, 3, 2, 0 -> swap(4,3), then swap(1,0).
  const m = buildSamplesMapping(HAND);
  assert.deepEqual(rows(m), [[2, 4, 6], [0, 2, 6], [4, 7, 6], [13, 18, 4], [7, 9, 3]]);
});

Deno.test("samples mapping, hand-worked: one sentence allowed without the binary head, epochs until enough", () => {
  // short_seq_prob 0: no draws, every target is 6. Per epoch: (0,2) (2,4) (4,7) (7,9), doc3's single
  // sentence (12,13), (13,18): 6 rows; 7 requested -> a second, identical epoch: 12 rows.
  // std::mt19937_64(1235) mod (i+1), i = 11..1: 3 6 4 0 3 3 1 0 2 2 0.
  const m = buildSamplesMapping({ ...HAND, maxNumSamples: 7, shortSeqProb: 0, minNumSent: 1 });
  assert.deepEqual(rows(m), [
    [13, 18, 6],
    [7, 9, 6],
    [12, 13, 6],
    [4, 7, 6],
    [4, 7, 6],
    [2, 4, 6],
    [2, 4, 6],
    [13, 18, 6],
    [0, 2, 6],
    [12, 13, 6],
    [0, 2, 6],
    [7, 9, 6],
  ]);
  // A fixed epoch count instead of a sample cap: one epoch, 6 rows.
  const one = buildSamplesMapping({
    ...HAND,
    numEpochs: 1,
    maxNumSamples: null,
    shortSeqProb: 0,
    minNumSent: 1,
  });
  assert.equal(one.length / 3, 6);
});

Deno.test("samples mapping: bad options fail with one line naming what was expected", () => {
  const base = { ...HAND, shortSeqProb: 0.1 };
  assert.throws(
    () => buildSamplesMapping({ ...base, seed: 0 }),
    /^Error: --seed: the BERT\/T5 samples mapping needs a seed in 1\.\.\d+, found 0$/,
  );
  assert.throws(
    () => buildSamplesMapping({ ...base, shortSeqProb: 1.5 }),
    /^Error: --short-seq-prob: expected a probability in \[0, 1\], found 1\.5$/,
  );
  assert.throws(
    () => buildSamplesMapping({ ...base, maxNumSamples: null }),
    /expected a number of epochs or a maximum number of samples/,
  );
  // Only skipped documents: Megatron would spin through 2^31 epochs; here it is one line.
  assert.throws(
    () => buildSamplesMapping({ ...base, docs: [9, 12, 13] }),
    /^Error: samples mapping: no document has at least 2 sentence\(s\) without a sentence over 512 tokens/,
  );
});

Deno.test("cache name as Python's '{:0.2f}' (ties to even) and Megatron's optional parts", () => {
  assert.equal(formatFixed2(0.125), "0.12");
  assert.equal(formatFixed2(0.375), "0.38");
  assert.equal(formatFixed2(0.625), "0.62");
  assert.equal(formatFixed2(0.875), "0.88");
  assert.equal(formatFixed2(0.1), "0.10");
  assert.equal(formatFixed2(0.015), "0.01");
  assert.equal(formatFixed2(0.005), "0.01");
  assert.equal(formatFixed2(1), "1.00");
  assert.equal(
    samplesMappingFilename("/d/c_text_sentence", "train", null, 2000, 509, 0.1, 1234),
    "/d/c_text_sentence_train_indexmap_2000mns_509msl_0.10ssp_1234s.npy",
  );
  assert.equal(
    samplesMappingFilename("p", "valid", 3, null, 10, 0.125, 7),
    "p_valid_indexmap_3ep_10msl_0.12ssp_7s.npy",
  );
});

Deno.test("RandomState.geometric equals numpy's legacy geometric (inversion below p=1/3, search above)", () => {
  // numpy 2.4: [RandomState(s).geometric(p) for 12 draws], then randint(0, 1000) to check the stream position.
  const cases: [number, number, number[], number][] = [
    [1234, 0.2, [1, 5, 3, 7, 7, 2, 2, 8, 15, 10, 2, 4], 325],
    [5, 0.2, [2, 10, 2, 12, 4, 5, 7, 4, 2, 1, 1, 7], 44],
    [99, 0.5, [2, 1, 3, 1, 3, 2, 1, 1, 7, 1, 3, 2], 642],
    [7, 0.34, [1, 4, 2, 4, 10, 2, 2, 1, 1, 2, 3, 4], 940],
  ];
  for (const [seed, p, want, next] of cases) {
    const r = new RandomState(seed);
    assert.deepEqual(Array.from({ length: 12 }, () => r.geometric(p)), want, `seed ${seed} p ${p}`);
    assert.equal(r.randint(0, 1000), next);
  }
});

Deno.test("T5 masks: make_attention_mask is the outer product of id >= 1, make_history_mask is causal", () => {
  assert.deepEqual(Array.from(makeAttentionMask([5, 0, 7], [1, 9, 0, 0])), [
    1,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
    1,
    1,
    0,
    0,
  ]);
  assert.deepEqual(Array.from(makeHistoryMask(3)), [1, 0, 0, 1, 1, 0, 1, 1, 1]);
});

Deno.test("T5 sample: spans to sentinels by hand; a decoder too short or too few sentinels is one line", () => {
  const vocab = {
    vocabIdList: Int32Array.from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
    startsWord: new Uint8Array(12).fill(1),
    cls: 2,
    sep: 3,
    mask: 4,
    pad: 0,
    bos: 8,
    eos: 9,
    sentinels: Int32Array.from([10, 11]),
  };
  // Input 5 6 7 5 6 with spans {1} and {3,4} masked ([MASK]=4 there).
  const spans = [{ index: [1], label: [6] }, { index: [3, 4], label: [5, 6] }];
  const s = padT5Sample([5, 4, 7, 4, 4], spans, {
    maxSeqLength: 6,
    maxSeqLengthDec: 7,
    maskedLmProb: 0.15,
    vocab,
  }, true);
  assert.deepEqual(Array.from(s.text_enc), [5, 10, 7, 11, 0, 0]);
  assert.deepEqual(Array.from(s.text_dec), [8, 10, 6, 11, 5, 6, 0]);
  assert.deepEqual(Array.from(s.labels), [10, 6, 11, 5, 6, 9, -1]);
  assert.deepEqual(Array.from(s.loss_mask), [1, 1, 1, 1, 1, 1, 0]);
  assert.equal(s.truncated, 1);
  // dec_mask row 2: causal over the 6 real decoder tokens.
  assert.deepEqual(Array.from(s.dec_mask.subarray(14, 21)), [1, 1, 1, 0, 0, 0, 0]);
  assert.deepEqual(Array.from(s.enc_dec_mask.subarray(6 * 6, 7 * 6)), [0, 0, 0, 0, 0, 0]);
  // The JSON view: Megatron's names, masks as 2-D lists ([dec x enc] for enc_dec_mask).
  const j = t5SampleToJson(s);
  assert.deepEqual(Object.keys(j), [
    "text_enc",
    "text_dec",
    "labels",
    "loss_mask",
    "truncated",
    "enc_mask",
    "dec_mask",
    "enc_dec_mask",
  ]);
  assert.deepEqual(j.enc_dec_mask, [
    [1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 0],
  ]);
  assert.deepEqual((j.dec_mask as number[][])[2], [1, 1, 1, 0, 0, 0, 0]);
  assert.throws(
    () =>
      padT5Sample(
        [5, 4, 7, 4, 4],
        spans,
        { maxSeqLength: 6, maxSeqLengthDec: 5, maskedLmProb: 0.15, vocab },
        true,
      ),
    /^Error: T5 sample: 6 decoder tokens do not fit --decoder-seq-length 5$/,
  );
  assert.throws(
    () =>
      padT5Sample([5, 4, 7, 4, 4], spans, {
        maxSeqLength: 6,
        maxSeqLengthDec: 7,
        maskedLmProb: 0.15,
        vocab: { ...vocab, sentinels: Int32Array.from([10]) },
      }, true),
    /^Error: T5 sample: 2 masked spans need as many sentinels, found 1 \(--vocab-extra-ids\)$/,
  );
});

// ---- the reference samples -------------------------------------------------------------------

interface RefSplit {
  docs: [number, number];
  mapping_file: string;
  mapping: number[][];
  samples: Record<string, number[] | number | string>[];
}
interface RefResult {
  config: {
    type: "bert" | "t5";
    seq_length: number;
    decoder_seq_length?: number;
    mask_prob: number;
    short_seq_prob: number;
    seed: number;
    binary_head?: boolean;
    split: string;
    num_samples: [number, number, number];
    extra_ids: number;
  };
  splits: Record<"train" | "valid" | "test", RefSplit>;
}
interface Reference {
  vocab: string[];
  documents: number[][][];
  results: RefResult[];
}

// Line 1: the corpus and vocabulary; then one line per configuration.
const REF: Reference = (() => {
  const lines = Deno.readTextFileSync(new URL("./data/bert_t5_reference.jsonl", import.meta.url)).trim()
    .split("\n");
  const head = JSON.parse(lines[0]);
  return { vocab: head.vocab, documents: head.documents, results: lines.slice(1).map((l) => JSON.parse(l)) };
})();

function writeCorpus(dir: string): string {
  const prefix = `${dir}/ref_text_sentence`;
  const b = new MMapIndexedDatasetBuilder(prefix, "uint16");
  for (const doc of REF.documents) {
    for (const s of doc) b.addItem(s);
    b.endDocument();
  }
  b.finalize();
  return prefix;
}

function tokenizer(extraIds: number): BertWordPieceTokenizer {
  return new BertWordPieceTokenizer(REF.vocab.join("\n") + "\n", true, { vocabExtraIds: extraIds });
}

function build(
  r: RefResult,
  prefix: string,
  opened: MMapIndexedDataset[],
  log: (l: string) => void,
  cache = true,
): MaskedLmSplits<BertSample> | MaskedLmSplits<T5Sample> {
  const c = r.config;
  const common = {
    dataPrefix: [prefix],
    splitString: c.split,
    trainValidTestNumSamples: c.num_samples,
    maskedLmProb: c.mask_prob,
    shortSeqProb: c.short_seq_prob,
    seed: c.seed,
    vocab: maskedLmVocab(tokenizer(c.extra_ids)),
    open: (p: string) => {
      const ds = MMapIndexedDataset.open(p);
      opened.push(ds);
      return ds;
    },
    cache,
    log,
  };
  return c.type === "bert"
    ? buildBertDatasets({ ...common, seqLength: c.seq_length, binaryHead: c.binary_head! })
    : buildT5Datasets({ ...common, encoderSeqLength: c.seq_length, decoderSeqLength: c.decoder_seq_length! });
}

function asPlain(sample: BertSample | T5Sample): Record<string, number[] | number | string> {
  const out: Record<string, number[] | number | string> = {};
  for (const [k, v] of Object.entries(sample)) {
    if (v instanceof Uint8Array) out[k] = Array.from(v).join("");
    else if (typeof v === "number") out[k] = v;
    else out[k] = Array.from(v as Int32Array);
  }
  return out;
}

for (const r of REF.results) {
  const c = r.config;
  const label = `${c.type}${
    c.type === "bert" ? (c.binary_head ? " (binary head)" : " (no binary head)") : ""
  }`;
  Deno.test(`${label}: every sample of train/valid/test equals the numpy reference, field by field; the cache is Megatron's`, () => {
    const dir = Deno.makeTempDirSync();
    const opened: MMapIndexedDataset[] = [];
    try {
      const prefix = writeCorpus(dir);
      const lines: string[] = [];
      const d = build(r, prefix, opened, (l) => lines.push(l));
      let masked = 0, kept = 0, random = 0;
      for (const name of ["train", "valid", "test"] as const) {
        const ref = r.splits[name];
        const ds = d[name] as BertDataset | null;
        assert.ok(ds !== null, `${name} split exists`);
        assert.equal(ds.length, ref.mapping.length, `${name} length`);
        assert.deepEqual(rows(ds.samplesMapping), ref.mapping, `${name} samples mapping`);
        // The cache: Megatron's file name, uint32 [N, 3], the same rows.
        const file = ref.mapping_file.replace("PREFIX", prefix);
        const npy = readNpySync(file);
        assert.equal(npy.descr, "<u4");
        assert.deepEqual(npy.shape, [ref.mapping.length, 3]);
        assert.deepEqual(rows(npy.data as Uint32Array), ref.mapping);
        for (let i = 0; i < ds.length; i++) {
          const item = ds.getItem(i);
          const got = asPlain(item);
          if (c.type === "bert") assert.deepEqual(bertSampleToJson(item as BertSample), got);
          assert.deepEqual(got, ref.samples[i], `${name} sample ${i}`);
          if (c.type === "bert") {
            const text = got.text as number[];
            const labels = got.labels as number[];
            for (let p = 0; p < text.length; p++) {
              if (labels[p] < 0) continue;
              if (text[p] === 4) masked++;
              else if (text[p] === labels[p]) kept++;
              else random++;
            }
          }
        }
      }
      if (c.type === "bert") {
        // The reference exercises all three replacement branches (80% [MASK], 10% kept, 10% random).
        assert.ok(masked > 0 && kept > 0 && random > 0, `masked ${masked} kept ${kept} random ${random}`);
      }
      // A second build loads the caches (no rebuild) and gives the same samples.
      const lines2: string[] = [];
      const again = build(r, prefix, opened, (l) => lines2.push(l));
      // With min 2 sentences every cache is loaded; with min 1 only those showing a one-sentence row
      // (the others cannot be told from a binary-head cache of the same name, so they are rebuilt).
      const minTwo = c.type === "bert" && c.binary_head;
      const provable = (["train", "valid", "test"] as const).filter((n) =>
        minTwo || r.splits[n].mapping.some((m) =>
          m[1] - m[0] === 1
        )
      ).length;
      assert.equal(lines2.filter((l) => l.includes("loaded")).length, provable, lines2.join("\n"));
      assert.equal(lines2.filter((l) => l.includes("built")).length, 3 - provable, lines2.join("\n"));
      const t = again.train as BertDataset;
      assert.deepEqual(asPlain(t.getItem(0)), r.splits.train.samples[0]);
    } finally {
      opened.forEach((ds) => ds.close());
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

Deno.test("cache trap: Megatron's name omits the binary head; a cache from the other mode is detected and rebuilt", () => {
  const dir = Deno.makeTempDirSync();
  const opened: MMapIndexedDataset[] = [];
  try {
    const prefix = writeCorpus(dir);
    const ds = MMapIndexedDataset.open(prefix);
    opened.push(ds);
    const vocab = maskedLmVocab(tokenizer(0));
    const docs = Array.from(ds.docIdx);
    const make = (binaryHead: boolean, cache: boolean, log: string[] = []) =>
      new BertDataset({
        name: "train",
        dataPrefix: prefix,
        indexed: ds,
        docs,
        numSamples: 20,
        maxSeqLength: 24,
        maskedLmProb: 0.15,
        shortSeqProb: 0.1,
        seed: 1234,
        binaryHead,
        vocab,
        cache,
        log: (l) => log.push(l),
      });
    const withHead = make(true, false).samplesMapping;
    const without = make(false, false).samplesMapping;
    assert.notDeepEqual(rows(withHead), rows(without));
    make(true, true); // writes the binary-head cache
    const log1: string[] = [];
    assert.deepEqual(rows(make(false, true, log1).samplesMapping), rows(without));
    assert.ok(
      log1.some((l) => l.includes("differs from this train split's mapping; replacing it")),
      log1.join("\n"),
    );
    const log2: string[] = [];
    assert.deepEqual(rows(make(true, true, log2).samplesMapping), rows(withHead));
    assert.ok(log2.some((l) => l.includes("row") && l.includes("has one sentence")), log2.join("\n"));
    // A corrupt cache is rebuilt, not trusted.
    const file = samplesMappingFilename(prefix, "train", null, 20, 21, 0.1, 1234);
    Deno.writeFileSync(file, new Uint8Array([1, 2, 3]));
    const log3: string[] = [];
    assert.deepEqual(rows(make(true, true, log3).samplesMapping), rows(withHead));
    assert.ok(log3.some((l) => l.includes("WARNING") && l.includes(file)), log3.join("\n"));
    assert.deepEqual(rows(readNpySync(file).data as Uint32Array), rows(withHead));
  } finally {
    opened.forEach((ds) => ds.close());
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("getSamplesMapping with cache off writes nothing; getItem out of range and unknown ids are one line", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const m = getSamplesMapping({ ...HAND, name: "train", dataPrefix: `${dir}/x`, cache: false });
    assert.equal(m.length / 3, 5);
    assert.deepEqual([...Deno.readDirSync(dir)], []);
    const sentences = [[5, 6], [6], [7]];
    const sizes = Int32Array.from(sentences.map((s) => s.length));
    const indexed = { sizes, get: (i: number) => sentences[i] };
    const vocab = {
      vocabIdList: Int32Array.from([0, 1, 2, 3, 4, 5, 6, 7]),
      startsWord: new Uint8Array(8).fill(1),
      cls: 2,
      sep: 3,
      mask: 4,
      pad: 0,
      bos: 0,
      eos: 0,
      sentinels: new Int32Array(0),
    };
    const small = {
      name: "train",
      dataPrefix: `${dir}/x`,
      numSamples: 1,
      maxSeqLength: 12,
      maskedLmProb: 0.15,
      shortSeqProb: 0,
      seed: 3,
      binaryHead: false,
      vocab,
      cache: false,
    };
    const ds = new BertDataset({ ...small, indexed, docs: [0, 3] });
    assert.throws(
      () => ds.getItem(ds.length),
      new RegExp(
        `^Error: BertDataset train: expected a sample index in 0\\.\\.${ds.length - 1}, found ${ds.length}$`,
      ),
    );
    // Token ids the vocabulary does not have fail by position.
    const bad = new BertDataset({
      ...small,
      indexed: { sizes: Int32Array.from([2]), get: () => [5, 99] },
      docs: [0, 1],
    });
    assert.throws(
      () => bad.getItem(0),
      (e: Error) =>
        e.message ===
          `${dir}/x: train sample 0 (sentences 0..0): masking: token id 99 at position 2 is not in the vocabulary`,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("document-level data (one sentence per document) with the binary head: one line naming the data and --split-sentences", () => {
  const sizes = Int32Array.from([5, 7, 3]);
  assert.throws(
    () =>
      getSamplesMapping({
        name: "train",
        dataPrefix: "/d/c_text_document",
        docs: [0, 1, 2, 3],
        sizes,
        numEpochs: null,
        maxNumSamples: 10,
        maxSeqLength: 29,
        shortSeqProb: 0.1,
        seed: 1234,
        minNumSent: 2,
        cache: false,
      }),
    (e: Error) =>
      e.message ===
        "/d/c_text_document (train split): samples mapping: no document has at least 2 sentence(s) without a " +
          "sentence over 512 tokens, so no sample can be built (was the data preprocessed with --split-sentences?)",
  );
});

Deno.test("two weighted prefixes blend BERT samples as Megatron's BlendableDataset", () => {
  const dir = Deno.makeTempDirSync();
  const opened: MMapIndexedDataset[] = [];
  try {
    const p1 = writeCorpus(dir);
    Deno.copyFileSync(`${p1}.bin`, `${dir}/second.bin`);
    Deno.copyFileSync(`${p1}.idx`, `${dir}/second.idx`);
    const r = REF.results[0];
    const c = r.config;
    const d = buildBertDatasets({
      dataPrefix: ["0.3", p1, "0.7", `${dir}/second`],
      splitString: c.split,
      trainValidTestNumSamples: c.num_samples,
      maskedLmProb: c.mask_prob,
      shortSeqProb: c.short_seq_prob,
      seed: c.seed,
      vocab: maskedLmVocab(tokenizer(0)),
      open: (p) => {
        const ds = MMapIndexedDataset.open(p);
        opened.push(ds);
        return ds;
      },
      seqLength: c.seq_length,
      binaryHead: true,
      cache: false,
    });
    const blend = d.train as unknown as {
      datasets: BertDataset[];
      datasetIndex: Uint8Array;
      datasetSampleIndex: Float64Array;
      length: number;
      getItem(i: number): BertSample;
    };
    // Each part asked for ceil(40 * w * 1.005) samples: 13 and 29 (whole epochs make more rows).
    assert.equal(blend.datasets.length, 2);
    assert.equal(blend.length, blend.datasets[0].length + blend.datasets[1].length);
    assert.ok(
      blend.datasets[0].samplesMapping.length / 3 >= 13 && blend.datasets[1].samplesMapping.length / 3 >= 29,
    );
    for (let i = 0; i < 20; i++) {
      const part = blend.datasets[blend.datasetIndex[i]];
      assert.deepEqual(blend.getItem(i), part.getItem(blend.datasetSampleIndex[i]));
    }
    // The 0.7 dataset gets the larger share of the first samples.
    const second = Array.from(blend.datasetIndex.subarray(0, 20)).filter((x) => x === 1).length;
    assert.equal(second, 14);
  } finally {
    opened.forEach((ds) => ds.close());
    Deno.removeSync(dir, { recursive: true });
  }
});
