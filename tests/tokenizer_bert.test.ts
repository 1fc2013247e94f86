// BERT WordPiece: every token compared with @huggingface/tokenizers' BERT pipeline (BertNormalizer,
// BertPreTokenizer, WordPiece) for the rebuilt bert-base-uncased vocab and for a small cased vocab;
// specials, extra ids, the vocab rebuild rule and one-line errors.
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- the project rule: fully qualified specifiers, importable from a URL
import { Tokenizer as HfTokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import {
  bertBasicTokenize,
  BertWordPieceTokenizer,
  buildTokenizer,
  defaultBertUncasedVocab,
  type Tokenizer,
} from "../src/tokenizer/mod.ts";
import { readTestCorpus, sotuSample } from "./helpers/tokenizer_corpus.ts";

const corpusText = await readTestCorpus();

const sotu = await sotuSample();

/** Edge cases for the BasicTokenizer: controls, odd spaces, marks, long words, CJK, specials in text. */
const EDGE_CASES = [
  "a\u0000b\ufffdc\u0007d\u200be\u00adf",
  "no\u00a0break\u3000ideographic\u2028line\u2029para\u0085nel\u000bvt\u000cff",
  "e\u0301 combining, A\u030a, ñ vs n\u0303, Ǆ ǅ ǆ, ﬁ ligature",
  "x".repeat(200) + " " + "y".repeat(201) + " " + "the".repeat(70),
  "unaffable unaffableness xyzzyqwrtp 123456789 3.14 don't",
  "漢字かなカナ한글 中文abc中文",
  "[CLS] [SEP] [MASK] [PAD] [UNK] <extra_id_0>",
  "\t\n\r  \n",
  "",
  "$5 ^caret^ `tick` ~tilde~ _under_ |pipe| \\back\\ {brace} <angle> ¡¿ ‰ ′ ‽ ⁂ 、。「」",
];

function hfBert(vocab: Map<string, number>, lowercase: boolean): HfTokenizer {
  const json = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: {
      type: "BertNormalizer",
      clean_text: true,
      handle_chinese_chars: true,
      strip_accents: null, // follows lowercase, as in BERT
      lowercase,
    },
    pre_tokenizer: { type: "BertPreTokenizer" },
    post_processor: null,
    decoder: { type: "WordPiece", prefix: "##", cleanup: true },
    model: {
      type: "WordPiece",
      unk_token: "[UNK]",
      continuing_subword_prefix: "##",
      max_input_chars_per_word: 200,
      vocab: Object.fromEntries(vocab),
    },
  };
  // deno-lint-ignore no-explicit-any
  return new HfTokenizer(json as any, {} as any);
}

function vocabMap(text: string): Map<string, number> {
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  return new Map(lines.map((t, i) => [t, i]));
}

function compareAll(mine: BertWordPieceTokenizer, hf: HfTokenizer, texts: string[]): number {
  let n = 0;
  for (const s of texts) {
    const got = mine.tokenize(s);
    // deno-lint-ignore no-explicit-any
    const want = hf.encode(s, { add_special_tokens: false } as any).ids;
    assert.deepEqual(
      got,
      want,
      `${JSON.stringify(s.slice(0, 60))}\n mine: ${mine.tokenizeToStrings(s).join(" ")}\n hf:   ${
        hf.tokenize(s).join(" ")
      }`,
    );
    n += got.length;
  }
  return n;
}

let uncasedText: string | undefined;
async function uncasedVocabText(): Promise<string> {
  uncasedText ??= await defaultBertUncasedVocab();
  return uncasedText;
}

Deno.test("bert: rebuilt bert-base-uncased vocab has the well-known ids", async () => {
  const v = vocabMap(await uncasedVocabText());
  assert.equal(v.size, 30522);
  const known: Array<[string, number]> = [
    ["[PAD]", 0],
    ["[unused0]", 1],
    ["[unused98]", 99],
    ["[UNK]", 100],
    ["[CLS]", 101],
    ["[SEP]", 102],
    ["[MASK]", 103],
    ["[unused99]", 104],
    ["[unused993]", 998],
    ["!", 999],
    ["the", 1996],
    ["##s", 2015],
    ["a", 1037],
    ["is", 2003],
    ["##ing", 2075],
    ["##ed", 2098],
  ];
  for (const [tok, id] of known) assert.equal(v.get(tok), id, tok);
});

Deno.test("bert uncased: default tokenizer specials, vocab size, eod throws", async () => {
  const t: Tokenizer = await buildTokenizer({ tokenizerType: "BertWordPieceLowerCase" });
  assert.equal(t.type, "BertWordPieceLowerCase");
  assert.equal(t.vocabSize, 30524); // + [BOS], [EOS]
  assert.deepEqual([t.pad, t.cls, t.sep, t.mask, t.bos, t.eos], [0, 101, 102, 103, 30522, 30523]);
  assert.throws(() => t.eod, /^Error: BertWordPiece tokenizers have no eod$/);
  assert.deepEqual(t.additionalSpecialTokensIds, []);
  const x = await buildTokenizer({ tokenizerType: "BertWordPieceLowerCase", vocabExtraIds: 3 });
  assert.equal(x.vocabSize, 30527);
  assert.deepEqual(x.additionalSpecialTokensIds, [30524, 30525, 30526]);
});

Deno.test("bert uncased: known-answer word pieces", async () => {
  const t = new BertWordPieceTokenizer(await uncasedVocabText(), true);
  assert.deepEqual(t.tokenizeToStrings("Hello, World! unaffable"), [
    "hello",
    ",",
    "world",
    "!",
    "una",
    "##ffa",
    "##ble",
  ]);
  assert.deepEqual(t.tokenize("the cats"), [1996, 8870]);
  assert.deepEqual(t.tokenizeToStrings("Naïve CAFÉ"), ["naive", "cafe"]);
  assert.equal(t.detokenize(t.tokenize("Hello, unaffable world")), "hello , unaffable world");
});

Deno.test("bert: astral CJK characters are split one by one (BERT's ranges; HF-js 0.2.0 checks UTF-16 units)", () => {
  assert.deepEqual(bertBasicTokenize("a𠀀𪜀b", true), ["a", "𠀀", "𪜀", "b"]);
});

Deno.test("bert uncased: every token equals HF BertNormalizer+BertPreTokenizer+WordPiece", async () => {
  const text = await uncasedVocabText();
  const mine = new BertWordPieceTokenizer(text, true);
  const hf = hfBert(vocabMap(text), true);
  const n = compareAll(mine, hf, [
    ...corpusText.split("\n"),
    corpusText,
    ...sotu.split("\n"),
    sotu,
    ...EDGE_CASES,
  ]);
  assert.ok(n > 2000, `corpus too small: ${n} tokens`);
});

/** A small cased vocab: specials, ASCII characters, some corpus words as written, common suffixes. */
function makeCasedVocab(): string {
  const toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
  for (let c = 33; c < 127; c++) {
    const ch = String.fromCharCode(c);
    toks.push(ch);
    if (/[A-Za-z0-9]/.test(ch)) toks.push("##" + ch);
  }
  const words = new Set<string>();
  let i = 0;
  for (const m of (corpusText + sotu).matchAll(/\p{L}+/gu)) if (i++ % 3 === 0) words.add(m[0]);
  toks.push(...words, "##ing", "##s", "##ed", "##er", "##ly", "##tion", "é", "##é", "Ö", "##ü");
  return [...new Set(toks)].join("\n") + "\n";
}

Deno.test("bert cased: every token equals HF with lowercase off (small vocab)", () => {
  const text = makeCasedVocab();
  const mine = new BertWordPieceTokenizer(text, false);
  assert.equal(mine.type, "BertWordPieceCase");
  const hf = hfBert(vocabMap(text), false);
  const n = compareAll(mine, hf, [...corpusText.split("\n"), ...sotu.split("\n"), ...EDGE_CASES]);
  assert.ok(n > 2000);
  assert.deepEqual(bertBasicTokenize("Naïve CAFÉ", false), ["Naïve", "CAFÉ"]);
  const unk = mine.vocab.get("[UNK]")!;
  assert.ok(mine.tokenize(corpusText).some((id) => id !== unk));
});

Deno.test("bert: [BOS]/[EOS] already in the vocab are reused; extra ids appended in order", () => {
  const t = new BertWordPieceTokenizer("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n[EOS]\nhi\n", true, {
    vocabExtraIds: 2,
  });
  assert.equal(t.eos, 5);
  assert.equal(t.bos, 7);
  assert.deepEqual(t.additionalSpecialTokensIds, [8, 9]);
  assert.equal(t.vocabSize, 10);
  assert.deepEqual(t.tokenize("Hi hix"), [6, 1]);
  assert.equal(t.detokenize([2, 6, 3]), "[CLS] hi [SEP]");
  assert.throws(() => t.detokenize([10]), /expected a vocab id at position 0, found 10/);
});

Deno.test("bert: bad vocab files and options give one-line errors", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tok_bert_" });
  try {
    await Deno.writeTextFile(`${dir}/nocls.txt`, "[PAD]\n[UNK]\n[SEP]\n[MASK]\nhi\n");
    await Deno.writeTextFile(`${dir}/empty.txt`, "");
    const cases: Array<[() => Promise<unknown>, RegExp]> = [
      [
        () => buildTokenizer({ tokenizerType: "BertWordPieceCase", vocabFile: `${dir}/nocls.txt` }),
        /nocls\.txt: expected the special token \[CLS\] in the BERT vocab, found none/,
      ],
      [
        () => buildTokenizer({ tokenizerType: "BertWordPieceCase", vocabFile: `${dir}/empty.txt` }),
        /empty\.txt: expected a BERT vocab\.txt with one token per line, found an empty file/,
      ],
      [
        () => buildTokenizer({ tokenizerType: "BertWordPieceLowerCase", vocabFile: `${dir}/none.txt` }),
        /none\.txt: expected a readable BERT vocab\.txt \(--vocab-file\), found no such file/,
      ],
      [
        () => buildTokenizer({ tokenizerType: "BertWordPieceCase" }),
        /BertWordPieceCase: expected --vocab-file/,
      ],
      [
        () => buildTokenizer({ tokenizerType: "BertWordPieceLowerCase", vocabExtraIds: -1 }),
        /--vocab-extra-ids: expected a non-negative integer, found -1/,
      ],
    ];
    for (const [p, re] of cases) {
      await assert.rejects(p(), (e: Error) => {
        assert.match(e.message, re);
        assert.ok(!e.message.includes("\n"));
        return true;
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bert: results do not depend on the word cache", async () => {
  const text = await uncasedVocabText();
  const a = new BertWordPieceTokenizer(text, true, { cacheSize: 0 });
  const b = new BertWordPieceTokenizer(text, true, { cacheSize: 2 });
  const c = new BertWordPieceTokenizer(text, true);
  for (const s of [corpusText, sotu, corpusText]) {
    const want = c.tokenize(s);
    assert.deepEqual(a.tokenize(s), want);
    assert.deepEqual(b.tokenize(s), want);
  }
});
