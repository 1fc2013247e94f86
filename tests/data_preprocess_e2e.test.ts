import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { MMapIndexedDataset } from "../src/data/indexed_dataset.ts";
import { parsePreprocessArgs, preprocess, splitSentences, UsageError } from "../src/data/preprocess.ts";
import type { PreprocessOptions } from "../src/data/preprocess.ts";

// A tiny deterministic tokenizer injected through tokenizerModule (so these tests do not depend on
// vocabulary files): one token per word, id = sum of char codes mod 50000; eod = 50256.
const TOY_TOKENIZER = `
export function buildTokenizer(_args) {
  return {
    vocabSize: 50257,
    eod: 50256,
    tokenize(text) {
      return text.split(/\\s+/).filter((w) => w.length > 0)
        .map((w) => Array.from(w).reduce((a, c) => a + c.codePointAt(0), 0) % 50000);
    },
  };
}
`;

function toyTokenize(text: string): number[] {
  return text.split(/\s+/).filter((w) => w.length > 0)
    .map((w) => Array.from(w).reduce((a, c) => a + c.codePointAt(0)!, 0) % 50000);
}

interface Env {
  dir: string;
  tokenizerModule: string;
}

function setup(): Env {
  const dir = Deno.makeTempDirSync();
  const tokPath = `${dir}/toy_tokenizer.js`;
  Deno.writeTextFileSync(tokPath, TOY_TOKENIZER);
  return { dir, tokenizerModule: new URL(`file://${tokPath}`).href };
}

function opts(env: Env, input: string, extra: Partial<PreprocessOptions> = {}): PreprocessOptions {
  return {
    input,
    jsonKeys: ["text"],
    splitSentences: false,
    keepNewlines: false,
    tokenizerType: "GPT2BPETokenizer",
    tokenizerModule: env.tokenizerModule,
    appendEod: true,
    outputPrefix: `${env.dir}/out`,
    datasetImpl: "mmap",
    workers: 1,
    logInterval: 100,
    skipInvalid: false,
    ...extra,
  };
}

const DOCS = [
  { text: "Hello world. This is a test.", title: "first" },
  { text: "", title: "empty text" },
  { text: "One more document!  Second sentence here? Third.", title: "third" },
  { text: "caf\u00e9 \u65e5\u672c\u8a9e \ud83d\ude00 unicode", title: "fourth" },
];

function jsonl(docs: object[]): string {
  return docs.map((d) => JSON.stringify(d)).join("\n") + "\n";
}

function outputs(dir: string): string[] {
  return Array.from(Deno.readDirSync(dir), (e) => e.name).filter((n) => n.startsWith("out")).sort();
}

Deno.test("preprocess: document mode tokens equal tokenizer output + eod, empty docs skipped", async () => {
  const env = setup();
  try {
    const input = `${env.dir}/in.jsonl`;
    Deno.writeTextFileSync(input, jsonl(DOCS) + "\n");
    const res = await preprocess(opts(env, input));
    assert.deepEqual(res.prefixes, [`${env.dir}/out_text_document`]);
    assert.equal(res.documents, 4);
    const ds = MMapIndexedDataset.open(res.prefixes[0]);
    const nonEmpty = DOCS.filter((d) => toyTokenize(d.text).length > 0);
    assert.equal(ds.dtype, "uint16");
    assert.equal(ds.length, nonEmpty.length);
    assert.deepEqual(Array.from(ds.docIdx), [0, 1, 2, 3]);
    nonEmpty.forEach((d, i) => assert.deepEqual(Array.from(ds.get(i)), [...toyTokenize(d.text), 50256]));
    ds.close();
  } finally {
    Deno.removeSync(env.dir, { recursive: true });
  }
});

Deno.test("preprocess: sentence mode, several json keys, output names and doc boundaries", async () => {
  const env = setup();
  try {
    const input = `${env.dir}/in.jsonl`;
    Deno.writeTextFileSync(input, jsonl(DOCS));
    const res = await preprocess(opts(env, input, { splitSentences: true, jsonKeys: ["text", "title"] }));
    assert.deepEqual(outputs(env.dir), [
      "out_text_sentence.bin",
      "out_text_sentence.idx",
      "out_title_sentence.bin",
      "out_title_sentence.idx",
    ]);
    const seg = new Intl.Segmenter("en", { granularity: "sentence" });
    const text = MMapIndexedDataset.open(res.prefixes[0]);
    // Doc 0: 2 sentences, doc 1 empty (no document), doc 2: 3 sentences, doc 3: 1 sentence.
    assert.deepEqual(Array.from(text.docIdx), [0, 2, 5, 6]);
    assert.deepEqual(splitSentences(DOCS[2].text, false, seg), [
      "One more document!",
      "Second sentence here?",
      "Third.",
    ]);
    assert.deepEqual(Array.from(text.get(2)), toyTokenize("One more document!"));
    assert.deepEqual(Array.from(text.get(4)), [...toyTokenize("Third."), 50256]); // eod on the last item
    text.close();
    const title = MMapIndexedDataset.open(res.prefixes[1]);
    assert.deepEqual(Array.from(title.docIdx), [0, 1, 2, 3, 4]);
    title.close();
    assert.deepEqual(splitSentences("A b.\nC d.\n", true, seg), ["A b.\n", "C d.\n"]);
    assert.deepEqual(splitSentences("A b.\nC d.\n", false, seg), ["A b.", "C d."]);
  } finally {
    Deno.removeSync(env.dir, { recursive: true });
  }
});

Deno.test("preprocess: .gz input and 1 vs 2 workers give byte-identical files", async () => {
  const env = setup();
  try {
    const docs = Array.from({ length: 1500 }, (_, i) => ({
      text: `Document ${i}. ` + "word ".repeat(i % 37) + `Tail ${i * 7}?`,
    }));
    const plain = `${env.dir}/in.jsonl`;
    const gz = `${env.dir}/in.jsonl.gz`;
    Deno.writeTextFileSync(plain, jsonl(docs));
    Deno.writeFileSync(gz, gzipSync(new TextEncoder().encode(jsonl(docs))));
    const variants: [string, string, number][] = [["a", plain, 1], ["b", gz, 1], ["c", plain, 2], [
      "d",
      gz,
      3,
    ]];
    for (const [name, input, workers] of variants) {
      await preprocess(
        opts(env, input, { outputPrefix: `${env.dir}/out${name}`, workers, splitSentences: true }),
      );
    }
    const ref = `${env.dir}/outa_text_sentence`;
    const ds = MMapIndexedDataset.open(ref);
    assert.equal(ds.numDocuments, 1500);
    ds.close();
    for (const name of ["b", "c", "d"]) {
      for (const ext of [".bin", ".idx"]) {
        assert.deepEqual(
          Deno.readFileSync(`${env.dir}/out${name}_text_sentence${ext}`),
          Deno.readFileSync(ref + ext),
          `variant ${name}${ext}`,
        );
      }
    }
  } finally {
    Deno.removeSync(env.dir, { recursive: true });
  }
});

Deno.test("preprocess: malformed line stops with file:line and leaves no output; --skip-invalid counts", async () => {
  const env = setup();
  try {
    const input = `${env.dir}/in.jsonl`;
    const lines = jsonl(DOCS).split("\n");
    lines.splice(2, 0, `{"text": "unterminated`); // becomes line 3
    lines.splice(4, 0, `{"title": "no text key"}`); // line 5
    Deno.writeTextFileSync(input, lines.join("\n"));
    for (const workers of [1, 2]) {
      await assert.rejects(
        preprocess(opts(env, input, { workers })),
        (e: Error) => {
          assert.ok(e.message.startsWith(`${input}:3: `), e.message);
          assert.ok(!e.message.includes("\n"));
          return true;
        },
      );
      assert.deepEqual(outputs(env.dir), []);
      assert.deepEqual(Array.from(Deno.readDirSync(env.dir), (e) => e.name).sort(), [
        "in.jsonl",
        "toy_tokenizer.js",
      ]);
    }
    const res = await preprocess(opts(env, input, { skipInvalid: true, workers: 2 }));
    assert.equal(res.skippedInvalid, 2);
    assert.equal(res.documents, 4);
    assert.deepEqual(outputs(env.dir), ["out_text_document.bin", "out_text_document.idx"]);
  } finally {
    Deno.removeSync(env.dir, { recursive: true });
  }
});

Deno.test("preprocess: flags as tools/preprocess_data.py; bad usage is one UsageError line", () => {
  const o = parsePreprocessArgs([
    "--input",
    "x.json",
    "--json-keys",
    "text",
    "title",
    "--split-sentences",
    "--tokenizer-type",
    "GPT2BPETokenizer",
    "--vocab-file",
    "v.json",
    "--merge-file",
    "m.txt",
    "--append-eod",
    "--output-prefix",
    "o",
    "--workers",
    "4",
    "--dataset-impl",
    "mmap",
  ])!;
  assert.deepEqual(o.jsonKeys, ["text", "title"]);
  assert.equal(o.workers, 4);
  assert.equal(o.splitSentences, true);
  assert.equal(o.appendEod, true);
  assert.equal(o.logInterval, 100);
  assert.equal(parsePreprocessArgs(["--help"]), null);
  const base = ["--input", "x", "--output-prefix", "o", "--tokenizer-type", "GPT2BPETokenizer"];
  assert.throws(
    () => parsePreprocessArgs([...base, "--bogus"]),
    (e: Error) => e instanceof UsageError && /bogus/.test(e.message),
  );
  assert.throws(
    () => parsePreprocessArgs([...base, "--dataset-impl", "lazy"]),
    /--dataset-impl: expected mmap, found "lazy"/,
  );
  assert.throws(
    () => parsePreprocessArgs([...base, "--workers", "0"]),
    /--workers: expected an integer >= 1, found "0"/,
  );
  assert.throws(() => parsePreprocessArgs(["--input", "x"]), /--output-prefix is required/);
});

Deno.test("preprocess CLI: unknown flag exits 2, malformed input exits 1 with file:line", async () => {
  const env = setup();
  try {
    const cli = new URL("../tasks/preprocess_data.ts", import.meta.url).pathname;
    const run = async (args: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", cli, ...args],
        stdout: "piped",
        stderr: "piped",
      })
        .output();
      return { code: out.code, err: new TextDecoder().decode(out.stderr) };
    };
    const bad = await run(["--nope"]);
    assert.equal(bad.code, 2);
    assert.equal(bad.err.trim().split("\n").length, 1);
    const help = await run(["--help"]);
    assert.equal(help.code, 0);
    const input = `${env.dir}/in.jsonl`;
    Deno.writeTextFileSync(input, `{"text": "ok"}\n{"text": oops}\n`);
    const r = await run([
      "--input",
      input,
      "--output-prefix",
      `${env.dir}/out`,
      "--tokenizer-type",
      "GPT2BPETokenizer",
    ]);
    assert.equal(r.code, 1);
    assert.match(r.err.trim(), new RegExp(`^${input.replaceAll("/", "\\/")}:2: `));
    assert.deepEqual(outputs(env.dir), []);
  } finally {
    Deno.removeSync(env.dir, { recursive: true });
  }
});

Deno.test("preprocess: real GPT-2 tokenizer, tokens = tokenize(text) + eod, workers 1 and 2 identical", async () => {
  const env = setup();
  try {
    const { buildTokenizer } = await import("../src/tokenizer/mod.ts");
    const gpt2 = await buildTokenizer({ tokenizerType: "GPT2BPETokenizer" });
    const docs = [
      ...DOCS,
      { text: "Fellow-Citizens of the Senate and House of Representatives:\n\nIn meeting you again..." },
      { text: "  leading spaces, 'quotes' and numbers 12345 don't break it." },
    ];
    const input = `${env.dir}/in.jsonl`;
    Deno.writeTextFileSync(input, jsonl(docs));
    for (const workers of [1, 2]) {
      const o = opts(env, input, { outputPrefix: `${env.dir}/w${workers}`, workers });
      delete o.tokenizerModule;
      await preprocess(o);
    }
    const prefix = `${env.dir}/w1_text_document`;
    for (const ext of [".bin", ".idx"]) {
      assert.deepEqual(
        Deno.readFileSync(`${env.dir}/w2_text_document${ext}`),
        Deno.readFileSync(prefix + ext),
      );
    }
    const ds = MMapIndexedDataset.open(prefix);
    const nonEmpty = docs.filter((d) => d.text.length > 0);
    assert.equal(ds.numDocuments, nonEmpty.length);
    nonEmpty.forEach((d, i) => assert.deepEqual(Array.from(ds.get(i)), [...gpt2.tokenize(d.text), gpt2.eod]));
    assert.equal(gpt2.eod, 50256);
    ds.close();
  } finally {
    Deno.removeSync(env.dir, { recursive: true });
  }
});
