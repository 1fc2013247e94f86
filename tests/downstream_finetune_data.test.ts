// Finetuning readers (Megatron 2021 tasks/race, tasks/glue) on tiny files in the real formats
// (tests/data/downstream), with the expected samples worked out by hand. The toy tokenizer maps each
// space-separated word to its length, so ids can be read off the text.

import assert from "node:assert/strict";
import {
  buildTokensTypesPaddings,
  cleanText,
  glueSample,
  raceSamplesFromText,
  readMnli,
  readQqp,
  readRaceFolder,
} from "../src/downstream/finetune_data.ts";

const DATA = new URL("./data/downstream/", import.meta.url).pathname;
const lengths = (t: string) => t.split(" ").filter((w) => w !== "").map((w) => w.length);
const SP = { cls: 101, sep: 102, pad: 99 };

function throwsWith(fn: () => unknown, text: string) {
  assert.throws(fn, (e: Error) => {
    assert.ok(e.message.includes(text), `expected "${text}" in: ${e.message}`);
    return true;
  });
}

Deno.test("clean_text and the [CLS] A [SEP] B [SEP] builder: trimming, padding, types padded with the pad id", () => {
  // " . . . " -> pass 1 ". . " (non-overlapping matches) -> pass 2 ".. "; a final " ." has no space after.
  assert.equal(cleanText("a .\nb  \t c . . . d ."), "a. b c. .. d .");
  // Fits: [CLS] 1 2 [SEP] 3 [SEP] then 2 pads; the pad id also fills the types (Megatron's quirk).
  assert.deepEqual(buildTokensTypesPaddings([1, 2], [3], 8, SP), {
    ids: [101, 1, 2, 102, 3, 102, 99, 99],
    types: [0, 0, 0, 0, 1, 1, 99, 99],
    paddings: [1, 1, 1, 1, 1, 1, 0, 0],
  });
  // Too long: cut to max - 1, then [SEP] with type 1.
  assert.deepEqual(buildTokensTypesPaddings([1, 2], [3, 4, 5], 6, SP), {
    ids: [101, 1, 2, 102, 3, 102],
    types: [0, 0, 0, 0, 1, 1],
    paddings: [1, 1, 1, 1, 1, 1],
  });
  // Single text: no final [SEP] unless trimmed (then type 0).
  assert.deepEqual(buildTokensTypesPaddings([1], null, 4, SP).ids, [101, 1, 102, 99]);
  assert.deepEqual(buildTokensTypesPaddings([1, 2, 3], null, 4, SP), {
    ids: [101, 1, 2, 102],
    types: [0, 0, 0, 0],
    paddings: [1, 1, 1, 1],
  });
});

Deno.test("RACE folder: 4 rows per question, qa built from '_' or appended, trimmed and padded", () => {
  const s = readRaceFolder(`${DATA}RACE/train/middle`, { ...SP, tokenize: lengths, maxSeqLength: 12 });
  assert.equal(s.length, 3);
  // 1.txt: article "The cat sat .\nIt ran ." -> "The cat sat. It ran ." -> [3, 3, 4, 2, 3, 1].
  // Q1 "The cat _ ." + "sat" -> "The cat sat ." -> [3, 3, 3, 1]; 12 >= 12 so cut to 11 and close.
  assert.deepEqual(s[0].text[0], [101, 3, 3, 3, 1, 102, 3, 3, 4, 2, 3, 102]);
  assert.deepEqual(s[0].types[0], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
  assert.deepEqual(s[0].text[3], [101, 3, 3, 4, 1, 102, 3, 3, 4, 2, 3, 102]); // "flew"
  assert.deepEqual([s[0].label, s[0].uid], [0, 0]);
  // Q2 "Who ran?" + " " + "none" -> [3, 4, 4]; 11 tokens, closing [SEP] makes 12.
  assert.deepEqual(s[1].text[3], [101, 3, 4, 4, 102, 3, 3, 4, 2, 3, 1, 102]);
  assert.deepEqual([s[1].label, s[1].uid], [3, 1]);
  // 2.txt: "Hi ." -> [2, 1]; "Why _" + "ccc" -> "Why ccc" -> [3, 3]; 7 tokens + 5 pads.
  assert.deepEqual(s[2].text[2], [101, 3, 3, 102, 2, 1, 102, 99, 99, 99, 99, 99]);
  assert.deepEqual(s[2].types[2], [0, 0, 0, 0, 1, 1, 1, 99, 99, 99, 99, 99]);
  assert.deepEqual(s[2].paddingMask[2], [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
  assert.deepEqual([s[2].label, s[2].uid], [2, 2]);
  // maxQaLength cuts the qa ids.
  const short = readRaceFolder(`${DATA}RACE/train/middle`, {
    ...SP,
    tokenize: lengths,
    maxSeqLength: 12,
    maxQaLength: 1,
  });
  assert.deepEqual(short[2].text[2].slice(0, 3), [101, 3, 102]);
  const bad = JSON.stringify({
    article: "a",
    questions: ["q"],
    options: [["a", "b", "c", "d"]],
    answers: ["E"],
  });
  throwsWith(
    () => raceSamplesFromText(`${bad}\n`, "r.txt", { ...SP, tokenize: lengths, maxSeqLength: 8 }),
    'r.txt:1: question 1: answer "E", expected A, B, C or D',
  );
  const three = JSON.stringify({
    article: "a",
    questions: ["q"],
    options: [["a", "b", "c"]],
    answers: ["A"],
  });
  throwsWith(
    () => raceSamplesFromText(`${three}\n`, "r.txt", { ...SP, tokenize: lengths, maxSeqLength: 8 }),
    "r.txt:1: question 1: expected 4 option strings",
  );
  throwsWith(
    () => readRaceFolder(`${DATA}MNLI`, { ...SP, tokenize: lengths, maxSeqLength: 8 }),
    "MNLI: no *.txt files",
  );
});

Deno.test("MNLI: columns 8/9, labels contradiction 0 entailment 1 neutral 2, test rows get the test label", () => {
  const train = readMnli(Deno.readTextFileSync(`${DATA}MNLI/train.tsv`), "train.tsv");
  assert.deepEqual(train[0], {
    textA: "Conceptually cream skimming .",
    textB: "Product and geography .",
    label: 2,
    uid: 0,
  });
  assert.deepEqual(train.map((r) => [r.uid, r.label]), [[0, 2], [1, 1], [2, 0]]);
  const test = readMnli(Deno.readTextFileSync(`${DATA}MNLI/test_matched.tsv`), "test_matched.tsv");
  assert.deepEqual(test, [{ textA: "Hierbas , ans seco .", textB: "This is a bar .", label: 0, uid: 0 }]);
  assert.equal(readMnli(Deno.readTextFileSync(`${DATA}MNLI/test_matched.tsv`), "t", "neutral")[0].label, 2);
  // [CLS] 12 5 8 1 [SEP] 7 3 9 1 [SEP] + 5 pads at 16.
  assert.deepEqual(glueSample(train[0], lengths, 16, SP), {
    text: [101, 12, 5, 8, 1, 102, 7, 3, 9, 1, 102, 99, 99, 99, 99, 99],
    types: [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 99, 99, 99, 99, 99],
    paddingMask: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    label: 2,
    uid: 0,
  });
  const header = Deno.readTextFileSync(`${DATA}MNLI/train.tsv`).split("\n")[0];
  throwsWith(
    () => readMnli(`${header}\n0\t1\t2\t3\t4\t5\t6\t7\ta\tb\tx\tmaybe\n`, "m.tsv"),
    'm.tsv:2: label "maybe", expected contradiction, entailment or neutral',
  );
  throwsWith(
    () => readMnli(`${header}\nx\t1\t2\t3\t4\t5\t6\t7\ta\tb\tx\tneutral\n`, "m.tsv"),
    'm.tsv:2: column 1 "x"',
  );
});

Deno.test("QQP: 6-column train with Megatron's skips, 3-column test", () => {
  const { samples, warnings } = readQqp(Deno.readTextFileSync(`${DATA}QQP/train.tsv`), "train.tsv");
  assert.deepEqual(samples, [
    {
      uid: 133273,
      textA: "How is the life of a math student?",
      textB: "Which level of prepration is enough ?",
      label: 0,
    },
    {
      uid: 402555,
      textA: "How do I control my horny emotions?",
      textB: "How do you control your horniness?",
      label: 1,
    },
  ]);
  assert.deepEqual(warnings, ["train.tsv:4: 5 columns, skipped", "train.tsv:5: empty question1, skipped"]);
  const test = readQqp(Deno.readTextFileSync(`${DATA}QQP/test.tsv`), "test.tsv", 1);
  assert.deepEqual(test.samples, [{ uid: 0, textA: "What is it?", textB: "Is it ?", label: 1 }]);
  throwsWith(
    () => readQqp("a\tb\n", "q.tsv"),
    "q.tsv:1: header has 2 columns, expected 6 (train/dev) or 3 (test)",
  );
  throwsWith(
    () => readQqp("id\tqid1\tqid2\tq1\tq2\tis_duplicate\n1\t2\t3\ta\tb\t2\n", "q.tsv"),
    "q.tsv:2: label 2, expected 0 or 1",
  );
});
