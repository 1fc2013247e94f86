import assert from "node:assert/strict";
import { defaultCacheDir, ensureDefaultCorpus, sotuJsonLines } from "../src/data/corpus.ts";
import { MMapIndexedDataset } from "../src/data/indexed_dataset.ts";

// Whitespace tokenizer (token = word length) so the cache logic is tested without vocabulary files.
const TOY = `export function buildTokenizer() {
  return { vocabSize: 50257, eod: 50256, tokenize: (t) => t.split(/\\s+/).filter((w) => w).map((w) => w.length % 1000) };
}`;

Deno.test("corpus: State of the Union package becomes 233 JSON lines, one address each", async () => {
  const { text, documents } = await sotuJsonLines();
  assert.equal(documents, 233);
  const lines = text.trimEnd().split("\n");
  assert.equal(lines.length, 233);
  const first = JSON.parse(lines[0]);
  assert.equal(first.year, 1790);
  assert.equal(first.name, "George Washington");
  assert.ok(first.text.startsWith("Fellow-Citizens of the Senate and House of Representatives"));
  assert.equal(JSON.parse(lines[232]).year, 2021);
});

Deno.test("corpus: cache dir follows MEGATRON_DENO_CACHE, then XDG_CACHE_HOME, then HOME", () => {
  const saved = ["MEGATRON_DENO_CACHE", "XDG_CACHE_HOME", "HOME"].map((k) => [k, Deno.env.get(k)] as const);
  try {
    Deno.env.set("MEGATRON_DENO_CACHE", "/a/own");
    Deno.env.set("XDG_CACHE_HOME", "/b/xdg");
    Deno.env.set("HOME", "/c/home");
    assert.equal(defaultCacheDir(), "/a/own");
    Deno.env.delete("MEGATRON_DENO_CACHE");
    assert.equal(defaultCacheDir(), "/b/xdg/megatron-deno");
    Deno.env.delete("XDG_CACHE_HOME");
    assert.equal(defaultCacheDir(), "/c/home/.cache/megatron-deno");
  } finally {
    for (const [k, v] of saved) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
  }
});

Deno.test("corpus: built once, reused while valid, rebuilt when damaged", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const tokPath = `${dir}/toy.js`;
    Deno.writeTextFileSync(tokPath, TOY);
    const cacheDir = `${dir}/cache`;
    const o = { cacheDir, tokenizerModule: `file://${tokPath}`, workers: 1 };
    const logs: string[] = [];
    const { prefix } = await ensureDefaultCorpus({ ...o, log: (l) => logs.push(l) });
    assert.equal(prefix, `${cacheDir}/sotu_text_document`);
    assert.ok(logs.some((l) => l.includes("first use")));
    const ds = MMapIndexedDataset.open(prefix);
    assert.equal(ds.numDocuments, 233);
    assert.equal(ds.length, 233);
    assert.equal(ds.get(0).at(-1), 50256); // --append-eod
    ds.close();
    const mtime = Deno.statSync(prefix + ".bin").mtime?.getTime();

    logs.length = 0;
    await ensureDefaultCorpus({ ...o, log: (l) => logs.push(l) });
    assert.equal(logs.length, 0, logs.join("; ")); // reused
    assert.equal(Deno.statSync(prefix + ".bin").mtime?.getTime(), mtime);

    Deno.writeFileSync(prefix + ".idx", Deno.readFileSync(prefix + ".idx").subarray(0, 100));
    await ensureDefaultCorpus({ ...o, log: (l) => logs.push(l) });
    assert.ok(logs.some((l) => l.includes("first use")));
    MMapIndexedDataset.open(prefix).close();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
