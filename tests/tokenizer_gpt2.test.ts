// GPT-2 BPE: every token compared with js-tiktoken's gpt2 encoding on a varied corpus, round trips,
// cache-independence, and one-line errors for bad vocab/merge files.
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- the project rule: fully qualified specifiers, importable from a URL
import { getEncoding } from "npm:js-tiktoken@1.0.21";
import {
  buildTokenizer,
  bytesToUnicode,
  defaultGpt2Files,
  GPT2BPETokenizer,
  parseMerges,
  type Tokenizer,
} from "../src/tokenizer/mod.ts";
import { readTestCorpus, sotuSample } from "./helpers/tokenizer_corpus.ts";

const corpusText = await readTestCorpus();

const sotu = await sotuSample();
const ref = getEncoding("gpt2");
const refEncode = (s: string): number[] => ref.encode(s, [], []);
let cached: Tokenizer | undefined;
async function gpt2(): Promise<Tokenizer> {
  cached ??= await buildTokenizer({ tokenizerType: "GPT2BPETokenizer" });
  return cached;
}

function firstDiff(a: number[], b: number[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

Deno.test("gpt2: default vocab loads (50257 tokens, eod 50256, no BERT specials)", async () => {
  const t = await gpt2();
  assert.equal(t.type, "GPT2BPETokenizer");
  assert.equal(t.vocabSize, 50257);
  assert.equal(t.eod, 50256);
  assert.equal(t.cls, undefined);
  assert.equal(t.mask, undefined);
  assert.deepEqual(t.additionalSpecialTokensIds, []);
  const files = await defaultGpt2Files();
  assert.ok(files.mergesText.startsWith("#version: 0.2"));
  assert.equal(parseMerges(files.mergesText).length, 50000);
  const table = bytesToUnicode();
  assert.equal(new Set(table).size, 256);
  assert.deepEqual([table[0x20], table[0x0a], table[0x41], table[0xad]], ["Ġ", "Ċ", "A", "Ń"]);
});

Deno.test("gpt2: known-answer ids", async () => {
  const t = await gpt2();
  assert.deepEqual(t.tokenize("Hello world"), [15496, 995]);
  assert.deepEqual(t.tokenize(" the"), [262]);
  assert.deepEqual(t.tokenize("<|endoftext|>"), [27, 91, 437, 1659, 5239, 91, 29]); // not special-cased
  assert.deepEqual(t.tokenize(""), []);
});

Deno.test("gpt2: every token equals js-tiktoken gpt2 on the corpus (per line and whole text)", async () => {
  const t = await gpt2();
  const texts = [...corpusText.split("\n"), ...sotu.split("\n"), corpusText, sotu];
  let tokens = 0;
  for (const s of texts) {
    const got = t.tokenize(s);
    const want = refEncode(s);
    const d = firstDiff(got, want);
    assert.equal(
      d,
      -1,
      `first mismatch at token ${d} of ${JSON.stringify(s.slice(0, 60))}: ${got[d]} vs ${want[d]}`,
    );
    tokens += got.length;
  }
  assert.ok(tokens > 2000, `corpus too small: ${tokens} tokens`);
});

Deno.test("gpt2: whitespace runs, tabs, CR/LF and mixed scripts match js-tiktoken", async () => {
  const t = await gpt2();
  const cases = [
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "a  b",
    "a   \n  b",
    "\t\tx\t",
    "x   ",
    "  x",
    "\r\n\r\n",
    "a\u00a0b\u3000c\u2028d",
    "'s's'S 'LL'll",
    "123456789012345678901234567890",
    " ".repeat(300) + "end",
    "😀".repeat(40),
    "日本語".repeat(30),
  ];
  for (const s of cases) assert.deepEqual(t.tokenize(s), refEncode(s), JSON.stringify(s));
});

Deno.test("gpt2: decode round-trips the corpus and replaces invalid UTF-8 with U+FFFD", async () => {
  const t = await gpt2();
  for (const s of [corpusText, sotu, "🎉 東京 ☃"]) assert.equal(t.detokenize(t.tokenize(s)), s);
  const ids = t.tokenize("東");
  assert.ok(ids.length > 1);
  assert.equal(t.detokenize(ids.slice(0, 1)), "\ufffd");
  assert.equal(t.detokenize(new Int32Array(t.tokenize("typed arrays"))), "typed arrays");
  assert.throws(() => t.detokenize([50257]), /expected a vocab id at position 0, found 50257/);
});

Deno.test("gpt2: results do not depend on the BPE cache", async () => {
  const files = await defaultGpt2Files();
  const noCache = GPT2BPETokenizer.fromFiles(files.vocabText, files.mergesText, { cacheSize: 0 });
  const tiny = GPT2BPETokenizer.fromFiles(files.vocabText, files.mergesText, { cacheSize: 3 });
  const t = await gpt2();
  for (const s of [corpusText, corpusText]) {
    const want = t.tokenize(s);
    assert.deepEqual(noCache.tokenize(s), want);
    assert.deepEqual(tiny.tokenize(s), want);
  }
});

Deno.test("gpt2: tiny hand-made vocab and merges (known answer, unknown -> 0)", () => {
  // Bytes are spelled with GPT-2's byte->char table: space is "Ġ".
  const vocab = {
    "<unk>": 0,
    "a": 1,
    "b": 2,
    "ab": 3,
    "Ġ": 4,
    "Ġab": 5,
    "<|endoftext|>": 6,
    "c": 7,
    "abc": 8,
  };
  const merges = "#version: 0.2\na b\nĠ ab\nab c\n";
  const t = GPT2BPETokenizer.fromFiles(JSON.stringify(vocab), merges);
  assert.equal(t.vocabSize, 9);
  assert.equal(t.eod, 6);
  assert.deepEqual(t.tokenize("ab abc ba"), [3, 5, 7, 4, 2, 1]);
  assert.deepEqual(t.tokenize("abz"), [3, 0]); // "z" is not in the vocab
  assert.equal(t.detokenize([5, 1]), " aba");
});

async function withTemp(files: Record<string, string>, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tok_gpt2_" });
  try {
    for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(`${dir}/${name}`, text);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("gpt2: --vocab-file/--merge-file override and bad files give one-line errors", async () => {
  const vocab = JSON.stringify({ "a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3 });
  await withTemp({
    "v.json": vocab,
    "m.txt": "#version: 0.2\na b\n",
    "bad.json": "{not json",
    "arr.json": "[1,2]",
    "neg.json": '{"a": -1}',
    "noeod.json": '{"a": 0}',
    "badm.txt": "#version: 0.2\na b\nabc\n",
  }, async (d) => {
    const t = await buildTokenizer({
      tokenizerType: "GPT2BPETokenizer",
      vocabFile: `${d}/v.json`,
      mergeFile: `${d}/m.txt`,
    });
    assert.deepEqual(t.tokenize("abba"), [2, 1, 0]);
    const build = (v: string, m: string) =>
      buildTokenizer({ tokenizerType: "GPT2BPETokenizer", vocabFile: `${d}/${v}`, mergeFile: `${d}/${m}` });
    const oneLine = async (p: Promise<unknown>, re: RegExp) => {
      await assert.rejects(p, (e: Error) => {
        assert.match(e.message, re);
        assert.ok(!e.message.includes("\n"), `multi-line message: ${e.message}`);
        return true;
      });
    };
    await oneLine(
      build("missing.json", "m.txt"),
      /missing\.json: expected a readable GPT-2 encoder\.json \(--vocab-file\), found no such file/,
    );
    await oneLine(
      build("v.json", "nope.txt"),
      /nope\.txt: expected a readable GPT-2 merges file \(--merge-file\)/,
    );
    await oneLine(build("bad.json", "m.txt"), /bad\.json: expected a JSON object .* found invalid JSON/);
    await oneLine(build("arr.json", "m.txt"), /arr\.json: expected a JSON object .* found an array/);
    await oneLine(
      build("neg.json", "m.txt"),
      /neg\.json: expected a non-negative integer id for token "a", found -1/,
    );
    await oneLine(
      build("noeod.json", "m.txt"),
      /noeod\.json: expected the end-of-document token <\|endoftext\|>/,
    );
    await oneLine(build("v.json", "badm.txt"), /badm\.txt:3: expected a merge line .* found "abc"/);
    await oneLine(
      buildTokenizer({ tokenizerType: "GPT2BPETokenizer", vocabFile: `${d}/v.json` }),
      /expected both --vocab-file and --merge-file or neither, found only --vocab-file/,
    );
    await oneLine(
      // deno-lint-ignore no-explicit-any
      buildTokenizer({ tokenizerType: "GPT2Tokenizer" as any }),
      /--tokenizer-type: expected one of GPT2BPETokenizer, BertWordPieceLowerCase, BertWordPieceCase, NullTokenizer, found "GPT2Tokenizer"/,
    );
  });
});

Deno.test("gpt2: heap merge equals the rescanning merge (random text) and js-tiktoken (long pieces)", async () => {
  const files = await defaultGpt2Files();
  const scan = GPT2BPETokenizer.fromFiles(files.vocabText, files.mergesText, {
    cacheSize: 0,
    heapThreshold: Infinity,
  });
  const heap = GPT2BPETokenizer.fromFiles(files.vocabText, files.mergesText, {
    cacheSize: 0,
    heapThreshold: 0,
  });
  let seed = 12345;
  const rnd = (k: number) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return Math.floor((seed / 2147483648) * k);
  };
  const alphabet = Array.from("aaaabcdeeeefghiiijklmnooopqrstuuvwxyz  ..--==é東🎉0123");
  for (let t = 0; t < 200; t++) {
    let s = "";
    const len = 1 + rnd(300);
    for (let i = 0; i < len; i++) s += alphabet[rnd(alphabet.length)];
    assert.deepEqual(heap.tokenize(s), scan.tokenize(s), JSON.stringify(s));
  }
  assert.deepEqual(heap.tokenize(corpusText), scan.tokenize(corpusText));
  let long = "";
  for (let i = 0; i < 1500; i++) long += "abcdefghijklmnopqrstuvwxyz"[rnd(26)];
  const t = await gpt2();
  for (const s of [long, "=".repeat(1000), "ab".repeat(700), "-_-".repeat(400)]) {
    assert.deepEqual(t.tokenize(s), refEncode(s), s.slice(0, 20));
  }
});
