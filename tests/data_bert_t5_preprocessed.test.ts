// BERT and T5 datasets over real data: a small corpus preprocessed by the real CLI with
// --split-sentences and the bundled BERT uncased vocabulary, then every sample of every split is
// checked against its samples-mapping row: undoing the masking must give back the row's sentences
// (segments A/B as contiguous, possibly truncated runs, swapped when is_random; T5's sentinels and
// spans must splice back into the cut text), with whole-word masks and Megatron's budgets.

import assert from "node:assert/strict";
import type { BertDataset } from "../src/data/bert_dataset.ts";
import { MMapIndexedDataset } from "../src/data/indexed_dataset.ts";
import { maskedLmVocab } from "../src/data/masked_lm.ts";
import { buildBertDatasets, buildT5Datasets } from "../src/data/masked_lm_builder.ts";
import type { T5Dataset } from "../src/data/t5_dataset.ts";
import { pythonRound } from "../src/data/split.ts";
import type { BertWordPieceTokenizer } from "../src/tokenizer/bert.ts";
import { buildTokenizer } from "../src/tokenizer/mod.ts";

const PARAGRAPHS = [
  "The committee met on Tuesday. Its members discussed the unprecedented budget. Nobody agreed. " +
  "They adjourned until spring.",
  "Photosynthesis converts light into chemical energy. Chlorophyll absorbs mostly blue and red light. " +
  "Green light is reflected, which is why leaves look green.",
  "A single sentence document stays alone.",
  "Rivers carve valleys over millennia. Sediment settles where the current slows. Deltas form at the " +
  "mouths of large rivers. Floods renew the soil. Farmers have relied on this for thousands of years.",
  "Tokenization splits words into wordpieces. Unfamiliar words become several pieces. " +
  "Whole-word masking hides every piece of a word together.",
  "The library opens at nine. Visitors must sign in. Rare manuscripts stay in the reading room.",
  "Compilers translate source code. Optimizers rewrite intermediate representations aggressively. " +
  "Linkers resolve symbols across object files. Loaders map the result into memory.",
  "Glaciers retreat as temperatures rise. Meltwater raises sea levels. Coastal cities plan defenses.",
];

async function preprocess(dir: string): Promise<string> {
  const lines = PARAGRAPHS.map((text) => JSON.stringify({ text }));
  Deno.writeTextFileSync(`${dir}/c.jsonl`, lines.join("\n") + "\n");
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../cli.ts", import.meta.url).pathname,
      "preprocess",
      ...["--input", `${dir}/c.jsonl`, "--output-prefix", `${dir}/c`, "--split-sentences"],
      ...["--tokenizer-type", "BertWordPieceLowerCase", "--workers", "1"],
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return `${dir}/c_text_sentence`;
}

// Whether `part` occurs contiguously in `whole`.
function isRun(part: number[], whole: number[]): boolean {
  if (part.length === 0) return true;
  outer: for (let i = 0; i + part.length <= whole.length; i++) {
    for (let j = 0; j < part.length; j++) if (whole[i + j] !== part[j]) continue outer;
    return true;
  }
  return false;
}

function rowSentences(ds: { samplesMapping: Uint32Array; indexed: MMapIndexedDataset }, idx: number) {
  const m = ds.samplesMapping;
  const out: number[][] = [];
  for (let s = m[3 * idx]; s < m[3 * idx + 1]; s++) out.push(Array.from(ds.indexed.get(s)));
  return { sentences: out, target: m[3 * idx + 2] };
}

Deno.test("BERT and T5 over a --split-sentences corpus with the real WordPiece vocab: every sample undoes to its sentences", async () => {
  const dir = Deno.makeTempDirSync();
  const opened: MMapIndexedDataset[] = [];
  try {
    const prefix = await preprocess(dir);
    const tok = await buildTokenizer({
      tokenizerType: "BertWordPieceLowerCase",
      vocabExtraIds: 100,
    }) as BertWordPieceTokenizer;
    const vocab = maskedLmVocab(tok);
    // Megatron's vocab_id_list: every id, [BOS]/[EOS] and the 100 sentinels included.
    assert.equal(vocab.vocabIdList.length, 30524 + 100);
    assert.deepEqual([vocab.bos, vocab.eos, vocab.sentinels[0], vocab.sentinels[99]], [
      30522,
      30523,
      30524,
      30623,
    ]);
    const open = (p: string) => {
      const ds = MMapIndexedDataset.open(p);
      opened.push(ds);
      return ds;
    };
    const common = {
      dataPrefix: [prefix],
      splitString: "6,1,1",
      trainValidTestNumSamples: [60, 6, 6] as [number, number, number],
      maskedLmProb: 0.15,
      shortSeqProb: 0.1,
      seed: 1234,
      vocab,
      open,
    };
    const isPiece = (id: number) => vocab.startsWord[id] === 0;
    const special = (id: number) => id === vocab.cls || id === vocab.sep;
    const seqLength = 32;
    const bert = buildBertDatasets({ ...common, seqLength, binaryHead: true });
    let checked = 0;
    for (const split of [bert.train, bert.valid, bert.test]) {
      const ds = split as BertDataset;
      for (let i = 0; i < ds.length; i++) {
        const s = ds.getItem(i);
        const { sentences, target } = rowSentences(
          ds as unknown as { samplesMapping: Uint32Array; indexed: MMapIndexedDataset },
          i,
        );
        const n = s.padding_mask.reduce((a, b) => a + b, 0);
        const orig = Array.from(s.text.subarray(0, n), (t, p) => (s.loss_mask[p] ? s.labels[p] : t));
        assert.equal(orig[0], vocab.cls);
        assert.equal(orig[n - 1], vocab.sep);
        const sep1 = orig.indexOf(vocab.sep);
        let a = orig.slice(1, sep1);
        let b = orig.slice(sep1 + 1, n - 1);
        assert.ok(b.length > 0 && !b.includes(vocab.sep), `sample ${i}: [CLS] A [SEP] B [SEP]`);
        assert.deepEqual(Array.from(s.types.subarray(0, n)), orig.map((_, p) => (p <= sep1 ? 0 : 1)));
        assert.ok(Array.from(s.text.subarray(n)).every((t) => t === vocab.pad));
        assert.ok(
          a.length + b.length <= target,
          `sample ${i}: ${a.length}+${b.length} tokens > target ${target}`,
        );
        if (s.is_random) [a, b] = [b, a];
        // Some split point k puts A inside sentences[0:k] and B inside sentences[k:].
        let found = false;
        let full = 0;
        for (let k = 1; k < sentences.length && !found; k++) {
          const first = sentences.slice(0, k).flat();
          const rest = sentences.slice(k).flat();
          found = isRun(a, first) && isRun(b, rest);
          full = first.length + rest.length;
        }
        assert.ok(found, `sample ${i}: segments are not runs of the row's sentences`);
        assert.equal(s.truncated, a.length + b.length < full ? 1 : 0);
        // Budget and whole words: a masked "##" piece's word start (previous non-special token) is masked.
        const masked = s.loss_mask.reduce((x, y) => x + y, 0);
        assert.ok(
          masked <= Math.min(0.15 * target, Math.max(1, pythonRound(n * 0.15))),
          `sample ${i}: ${masked} masked`,
        );
        for (let p = 0; p < n; p++) {
          if (!s.loss_mask[p] || !isPiece(orig[p])) continue;
          let q = p - 1;
          while (q > 0 && special(orig[q])) q--;
          if (q > 0) assert.equal(s.loss_mask[q], 1, `sample ${i}: piece at ${p} masked without its word`);
        }
        checked++;
      }
    }
    assert.ok(checked >= 66, `checked ${checked} BERT samples`);

    const t5 = buildT5Datasets({ ...common, encoderSeqLength: 32, decoderSeqLength: 16 });
    let spans = 0;
    for (const split of [t5.train, t5.valid, t5.test]) {
      const ds = split as T5Dataset;
      for (let i = 0; i < ds.length; i++) {
        const s = ds.getItem(i);
        const { sentences, target } = rowSentences(
          ds as unknown as { samplesMapping: Uint32Array; indexed: MMapIndexedDataset },
          i,
        );
        const flat = sentences.flat();
        const cut = flat.slice(0, target);
        assert.equal(s.truncated, flat.length > target ? 1 : 0);
        const decLen = s.loss_mask.reduce((x, y) => x + y, 0);
        const labels = Array.from(s.labels.subarray(0, decLen));
        assert.equal(s.text_dec[0], vocab.bos);
        assert.deepEqual(Array.from(s.text_dec.subarray(1, decLen)), labels.slice(0, -1));
        assert.equal(labels[decLen - 1], vocab.eos);
        // Splice each sentinel's span from the labels back into the encoder text.
        const spanOf = new Map<number, number[]>();
        let cur: number[] | null = null;
        for (const t of labels.slice(0, -1)) {
          if (t >= vocab.sentinels[0]) spanOf.set(t, cur = []);
          else cur!.push(t);
        }
        spans += spanOf.size;
        const enc = Array.from(s.text_enc).filter((t) => t !== vocab.pad);
        const rebuilt = enc.flatMap((t) => spanOf.get(t) ?? [t]);
        assert.deepEqual(rebuilt, cut, `T5 sample ${i}`);
        // Sentinels in order 0, 1, ...; enc_mask row 0 marks the real encoder tokens.
        assert.deepEqual(
          [...spanOf.keys()],
          spanOf.size ? Array.from(vocab.sentinels.subarray(0, spanOf.size)) : [],
        );
        assert.equal(s.enc_mask.subarray(0, 32).reduce((x, y) => x + y, 0), enc.length);
      }
    }
    assert.ok(spans > 0);
  } finally {
    opened.forEach((d) => d.close());
    Deno.removeSync(dir, { recursive: true });
  }
});
