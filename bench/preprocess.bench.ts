// Preprocess throughput on ~4 MB of generated JSON lines, 1 vs 2 workers.
// MB/s of JSON in = input MB / time per iteration (the input size is printed once).
// "toy" uses a whitespace tokenizer and measures the pipeline itself (reading, JSON, workers,
// builder); "gpt2" uses the real GPT-2 BPE tokenizer from src/tokenizer.

import { preprocess } from "../src/data/preprocess.ts";
import type { PreprocessOptions } from "../src/data/preprocess.ts";

const TOY = `export function buildTokenizer() {
  return { vocabSize: 50257, eod: 50256, tokenize: (t) => t.split(/\\s+/).filter((w) => w).map((w) => w.length) };
}`;

const WORDS =
  ("the of and to in a is that for it as was with be by on not he this are or his from at which " +
    "government country congress people states united nation public year world new war peace law").split(" ");

function makeInput(dir: string, targetBytes: number): { path: string; bytes: number } {
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const lines: string[] = [];
  let bytes = 0;
  while (bytes < targetBytes) {
    const n = 50 + Math.floor(rand() * 400);
    const words: string[] = [];
    for (let i = 0; i < n; i++) {
      const w = WORDS[Math.floor(rand() * WORDS.length)];
      words.push(rand() < 0.08 ? w[0].toUpperCase() + w.slice(1) + "." : w);
    }
    const line = JSON.stringify({ text: words.join(" ") + "." });
    lines.push(line);
    bytes += line.length + 1;
  }
  const path = `${dir}/bench.jsonl`;
  Deno.writeTextFileSync(path, lines.join("\n") + "\n");
  return { path, bytes };
}

const dir = Deno.makeTempDirSync({ prefix: "preprocess-bench-" });
const toyPath = `${dir}/toy.js`;
Deno.writeTextFileSync(toyPath, TOY);
const input = makeInput(dir, 4_000_000);
console.log(`preprocess bench input: ${(input.bytes / 1e6).toFixed(2)} MB of JSON lines`);

function opts(workers: number, toy: boolean): PreprocessOptions {
  return {
    input: input.path,
    jsonKeys: ["text"],
    splitSentences: false,
    keepNewlines: false,
    tokenizerType: "GPT2BPETokenizer",
    tokenizerModule: toy ? `file://${toyPath}` : undefined,
    appendEod: true,
    outputPrefix: `${dir}/out_w${workers}`,
    datasetImpl: "mmap",
    workers,
    logInterval: 1e9,
    skipInvalid: false,
  };
}

for (const tok of ["toy", "gpt2"] as const) {
  for (const workers of [1, 2]) {
    Deno.bench({
      name: `preprocess ${tok} tokenizer, ${workers} worker(s), ${(input.bytes / 1e6).toFixed(1)} MB`,
      group: `preprocess-${tok}`,
      baseline: workers === 1,
      n: 3,
      warmup: 1,
      async fn() {
        const r = await preprocess(opts(workers, tok === "toy"));
        if (r.documents === 0) throw new Error("no documents");
      },
    });
  }
}

globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
