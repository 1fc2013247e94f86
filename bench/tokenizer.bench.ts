// GPT-2 encode throughput (MB of UTF-8 per second) vs js-tiktoken's gpt2 encoding on the same text:
// ~1 MB of State of the Union addresses plus the multilingual test corpus. BERT uncased vs the
// @huggingface/tokenizers BERT pipeline on the same text, for reference.
// `deno bench -A bench/tokenizer.bench.ts` (prints a MB/s summary first, then deno bench's table).
// deno-lint-ignore no-import-prefix -- the project rule: fully qualified specifiers, importable from a URL
import { getEncoding } from "npm:js-tiktoken@1.0.21";
// deno-lint-ignore no-import-prefix -- the project rule: fully qualified specifiers, importable from a URL
import { Tokenizer as HfTokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import { sotuAddresses } from "../src/data/corpus.ts";
import {
  BertWordPieceTokenizer,
  defaultBertUncasedVocab,
  defaultGpt2Files,
  GPT2BPETokenizer,
} from "../src/tokenizer/mod.ts";

async function benchText(): Promise<string> {
  const all = await sotuAddresses();
  const corpus = await Deno.readTextFile(new URL("../assets/tokenizer/test_corpus.txt", import.meta.url));
  let text = "";
  for (let i = all.length - 1; i >= 0 && text.length < 1_000_000; i--) text += all[i].text + "\n\n" + corpus;
  return text;
}

const text = await benchText();
const mb = new TextEncoder().encode(text).length / 1e6;
const files = await defaultGpt2Files();
const ours = GPT2BPETokenizer.fromFiles(files.vocabText, files.mergesText);
const oursNoCache = GPT2BPETokenizer.fromFiles(files.vocabText, files.mergesText, { cacheSize: 0 });
const tiktoken = getEncoding("gpt2");

function mbPerSec(fn: () => number[], reps: number): { mbs: number; tokens: number } {
  let tokens = fn().length; // warm-up (JIT, and the BPE cache where there is one)
  const t0 = performance.now();
  for (let r = 0; r < reps; r++) tokens = fn().length;
  return { mbs: (mb * reps) / ((performance.now() - t0) / 1000), tokens };
}

const a = mbPerSec(() => ours.tokenize(text), 3);
const b = mbPerSec(() => oursNoCache.tokenize(text), 1);
const c = mbPerSec(() => tiktoken.encode(text, [], []), 3);
if (a.tokens !== c.tokens) throw new Error(`token counts differ: ours ${a.tokens}, js-tiktoken ${c.tokens}`);
console.log(`text: ${mb.toFixed(2)} MB, ${a.tokens} tokens`);
console.log(`megatron-deno GPT2BPETokenizer (cache on):  ${a.mbs.toFixed(2)} MB/s`);
console.log(`megatron-deno GPT2BPETokenizer (cache off): ${b.mbs.toFixed(2)} MB/s`);
console.log(`js-tiktoken@1.0.21 gpt2:                    ${c.mbs.toFixed(2)} MB/s`);

const bertVocab = await defaultBertUncasedVocab();
const bert = new BertWordPieceTokenizer(bertVocab, true);
const bertLines = bertVocab.split("\n");
bertLines.pop();
const hf = new HfTokenizer(
  {
    version: "1.0",
    added_tokens: [],
    normalizer: { type: "BertNormalizer", clean_text: true, handle_chinese_chars: true, lowercase: true },
    pre_tokenizer: { type: "BertPreTokenizer" },
    post_processor: null,
    decoder: null,
    model: {
      type: "WordPiece",
      unk_token: "[UNK]",
      continuing_subword_prefix: "##",
      max_input_chars_per_word: 200,
      vocab: Object.fromEntries(bertLines.map((t, i) => [t, i])),
    },
    // deno-lint-ignore no-explicit-any
  } as any,
  // deno-lint-ignore no-explicit-any
  {} as any,
);
// deno-lint-ignore no-explicit-any
const hfEncode = (s: string): number[] => hf.encode(s, { add_special_tokens: false } as any).ids;
const d = mbPerSec(() => bert.tokenize(text), 3);
const e = mbPerSec(() => hfEncode(text), 1);
if (d.tokens !== e.tokens) throw new Error(`BERT token counts differ: ours ${d.tokens}, HF ${e.tokens}`);
console.log(`megatron-deno BertWordPieceLowerCase:       ${d.mbs.toFixed(2)} MB/s (${d.tokens} tokens)`);
console.log(`@huggingface/tokenizers@0.2.0 BERT:         ${e.mbs.toFixed(2)} MB/s`);

Deno.bench(
  { name: "gpt2 encode: megatron-deno", group: "gpt2-encode", baseline: true, n: 5, warmup: 1 },
  () => {
    ours.tokenize(text);
  },
);
Deno.bench({ name: "gpt2 encode: megatron-deno, no cache", group: "gpt2-encode", n: 2, warmup: 1 }, () => {
  oursNoCache.tokenize(text);
});
Deno.bench({ name: "gpt2 encode: js-tiktoken", group: "gpt2-encode", n: 5, warmup: 1 }, () => {
  tiktoken.encode(text, [], []);
});
Deno.bench(
  { name: "bert uncased: megatron-deno", group: "bert-encode", baseline: true, n: 5, warmup: 1 },
  () => {
    bert.tokenize(text);
  },
);
Deno.bench({ name: "bert uncased: @huggingface/tokenizers", group: "bert-encode", n: 2, warmup: 1 }, () => {
  hfEncode(text);
});
