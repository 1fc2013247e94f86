// Bad data through the real CLIs, as a user meets it: `deno run -A tasks/preprocess_data.ts ...` and
// `tasks/pretrain_gpt.ts ...` on tiny hand-made files. Each case checks the exit code, the exact one
// line on stderr and that no output (nor any temporary file) is left behind.

import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { MMapIndexedDataset } from "../src/data/indexed_dataset.ts";
import { buildTokenizer } from "../src/tokenizer/mod.ts";
import { type Ran, runScript } from "./helpers/run_cli.ts";

const PREPROCESS = new URL("../tasks/preprocess_data.ts", import.meta.url).pathname;
const PRETRAIN = new URL("../tasks/pretrain_gpt.ts", import.meta.url).pathname;

const run = (script: string, args: string[]): Promise<Ran> => runScript(script, args);

/** stderr without deno's own npm download/initialize lines: must be exactly one line. */
function oneLine(r: Ran): string {
  const lines = r.stderr.split("\n").filter((l) => l.length > 0 && !/^(Download|Initialize) /.test(l));
  assert.equal(lines.length, 1, `expected one line on stderr, found:\n${r.stderr}`);
  return lines[0];
}

function names(dir: string): string[] {
  return Array.from(Deno.readDirSync(dir), (e) => e.name).sort();
}

/** A fresh folder holding only the given input files. */
function folder(files: Record<string, string | Uint8Array>): string {
  const dir = Deno.makeTempDirSync({ prefix: "bad_input_" });
  for (const [name, content] of Object.entries(files)) {
    if (typeof content === "string") Deno.writeTextFileSync(`${dir}/${name}`, content);
    else Deno.writeFileSync(`${dir}/${name}`, content);
  }
  return dir;
}

const NULL_TOK = ["--tokenizer-type", "NullTokenizer", "--vocab-size", "10"];

/** Runs preprocess on `<dir>/<input>` into `<dir>/out`; the flags after it can override. */
function preprocess(dir: string, input: string, more: string[] = []): Promise<Ran> {
  return run(PREPROCESS, [
    "--input",
    `${dir}/${input}`,
    "--output-prefix",
    `${dir}/out`,
    ...NULL_TOK,
    ...more,
  ]);
}

const te = new TextEncoder();
const bytes = (...parts: (string | number[])[]) => {
  const chunks = parts.map((p) => typeof p === "string" ? te.encode(p) : new Uint8Array(p));
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
};

// ---------------------------------------------------------------------------------------------------
// preprocess: integer flags

const INT_FLAG_CASES: [string, string[], string][] = [
  ["negative --workers", ["--workers", "-3"], '--workers: expected an integer >= 1, found "-3"'],
  ["zero --workers", ["--workers", "0"], '--workers: expected an integer >= 1, found "0"'],
  ["garbage --workers", ["--workers", "two"], '--workers: expected an integer >= 1, found "two"'],
  ["--workers=-3", ["--workers=-3"], '--workers: expected an integer >= 1, found "-3"'],
  ["fraction --workers", ["--workers", "2.5"], '--workers: expected an integer >= 1, found "2.5"'],
  [
    "exponent --log-interval",
    ["--log-interval", "1e3"],
    '--log-interval: expected an integer >= 1, found "1e3"',
  ],
  [
    "negative --log-interval",
    ["--log-interval", "-1"],
    '--log-interval: expected an integer >= 1, found "-1"',
  ],
  [
    "hex --vocab-extra-ids",
    ["--vocab-extra-ids", "0x10"],
    '--vocab-extra-ids: expected an integer >= 0, found "0x10"',
  ],
  [
    "negative --vocab-extra-ids",
    ["--vocab-extra-ids", "-2"],
    '--vocab-extra-ids: expected an integer >= 0, found "-2"',
  ],
  [
    "empty --vocab-extra-ids",
    ["--vocab-extra-ids="],
    '--vocab-extra-ids: expected an integer >= 0, found ""',
  ],
  ["negative --vocab-size", ["--vocab-size", "-10"], '--vocab-size: expected an integer >= 1, found "-10"'],
  [
    "huge --vocab-size",
    ["--vocab-size", "99999999999999999999"],
    '--vocab-size: expected an integer >= 1, found "99999999999999999999"',
  ],
  ["missing value at the end", ["--workers"], "--workers: missing value (expected an integer >= 1)"],
  [
    "missing value before a flag",
    ["--workers", "--append-eod"],
    "--workers: missing value (expected an integer >= 1)",
  ],
];

for (const [name, flags, line] of INT_FLAG_CASES) {
  Deno.test(`preprocess CLI: ${name} -> one line naming the flag, exit 2, no output`, async () => {
    const dir = folder({ "in.jsonl": '{"text": "1 2 3"}\n' });
    try {
      const r = await preprocess(dir, "in.jsonl", flags);
      assert.equal(r.code, 2, r.stderr);
      assert.equal(oneLine(r), line);
      assert.deepEqual(names(dir), ["in.jsonl"]);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

Deno.test("preprocess CLI: a negative number is still a value for a string flag, as argparse takes it", async () => {
  const dir = folder({ "-1.jsonl": '{"text": "1 2"}\n' });
  try {
    // --input -1.jsonl: node:util parseArgs alone calls this "ambiguous".
    const r = await run(PREPROCESS, ["--output-prefix", `${dir}/out`, ...NULL_TOK, "--input", "-1.jsonl"]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(oneLine(r), /^(\/.*\/)?-1\.jsonl: cannot open input: /);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("preprocess CLI: --help documents --replace-invalid-utf8 and the empty-input rule", async () => {
  const r = await run(PREPROCESS, ["--help"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^ {2}--replace-invalid-utf8 +decode invalid UTF-8 bytes as U\+FFFD/m);
  assert.match(r.stdout, /An input with no documents \(empty, or only blank lines\) is an error\./);
});

// ---------------------------------------------------------------------------------------------------
// preprocess: empty input

const EMPTY_CASES: [string, string, string[], (f: string) => string][] = [
  [
    "an empty file",
    "",
    [],
    (f) => `${f}: no documents (the input is empty or has only blank lines); no output written`,
  ],
  [
    "only blank lines, 2 workers",
    "\n  \n\r\n\n",
    ["--workers", "2"],
    (f) => `${f}: no documents (the input is empty or has only blank lines); no output written`,
  ],
  [
    "only invalid lines, skipped",
    "{oops\n[1,\n",
    ["--skip-invalid"],
    (f) => `${f}: no valid documents (2 invalid lines skipped); no output written`,
  ],
  [
    "documents that all tokenize to nothing",
    '{"text": ""}\n{"text": "   "}\n',
    ["--append-eod"],
    (f) => `${f}: key "text" has no tokens in any of the 2 documents (all empty); no output written`,
  ],
];

for (const [name, content, flags, line] of EMPTY_CASES) {
  Deno.test(`preprocess CLI: ${name} is an error naming the file, exit 1, no output`, async () => {
    const dir = folder({ "in.jsonl": content });
    try {
      const r = await preprocess(dir, "in.jsonl", flags);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(oneLine(r), line(`${dir}/in.jsonl`));
      assert.deepEqual(names(dir), ["in.jsonl"]);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

Deno.test("preprocess CLI: an empty .gz input is an error too", async () => {
  const dir = folder({ "in.jsonl.gz": new Uint8Array(gzipSync(new Uint8Array(0))) });
  try {
    const r = await preprocess(dir, "in.jsonl.gz");
    assert.equal(r.code, 1, r.stderr);
    assert.equal(
      oneLine(r),
      `${dir}/in.jsonl.gz: no documents (the input is empty or has only blank lines); no output written`,
    );
    assert.deepEqual(names(dir), ["in.jsonl.gz"]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------
// preprocess: invalid UTF-8

// Line 3 has a lone continuation byte 0x80 at byte 12 of the line; lines 1-2 are 15 bytes each.
const BAD_UTF8 = bytes('{"text":"1 2"}\n', '{"text":"3 4"}', [0x0a], '{"text":"5 ', [0x80, 0x20], '6"}\n');

for (const workers of ["1", "2"]) {
  Deno.test(`preprocess CLI: invalid UTF-8 names file:line, byte and offset (workers ${workers})`, async () => {
    const dir = folder({ "in.jsonl": BAD_UTF8 });
    try {
      const r = await preprocess(dir, "in.jsonl", ["--workers", workers]);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(
        oneLine(r),
        `${dir}/in.jsonl:3: invalid UTF-8 at byte 12 of the line (80 20 36 22; file offset 41); ` +
          `pass --replace-invalid-utf8 to decode it as U+FFFD`,
      );
      assert.deepEqual(names(dir), ["in.jsonl"]);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

Deno.test("preprocess CLI: invalid UTF-8 kinds (overlong, surrogate, truncated at the end) and a BOM", async () => {
  const cases: [Uint8Array, string][] = [
    // Overlong "/" (c0 af), after a BOM that is not part of the line.
    [
      bytes([0xef, 0xbb, 0xbf], '{"text":"', [0xc0, 0xaf], '"}\n'),
      ":1: invalid UTF-8 at byte 10 of the line (c0 af 22 7d; file offset 12)",
    ],
    // UTF-16 surrogate encoded in UTF-8 (ed a0 80).
    [
      bytes('{"text":"1"}\n{"text":"', [0xed, 0xa0, 0x80], '"}\n'),
      ":2: invalid UTF-8 at byte 10 of the line (ed a0 80 22; file offset 22)",
    ],
    // A 3-byte sequence cut by the end of the file (no final newline).
    [
      bytes('{"text":"1"}\n{"text":"', [0xe2, 0x82]),
      ":2: invalid UTF-8 at byte 10 of the line (e2 82; file offset 22)",
    ],
  ];
  for (const [content, where] of cases) {
    const dir = folder({ "in.jsonl": content });
    try {
      const r = await preprocess(dir, "in.jsonl");
      assert.equal(r.code, 1, r.stderr);
      assert.equal(oneLine(r), `${dir}/in.jsonl${where}; pass --replace-invalid-utf8 to decode it as U+FFFD`);
      assert.deepEqual(names(dir), ["in.jsonl"]);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  }
});

Deno.test("preprocess CLI: lines longer than a read chunk: tokens intact, invalid UTF-8 still at its line and offset", async () => {
  // Documents of 60k ids (~120 KB per line) span several 64 KiB reads.
  const doc = (d: number) => Array.from({ length: 60_000 }, (_, i) => (i * 3 + d) % 10);
  const good = [0, 1, 2].map((d) => JSON.stringify({ text: doc(d).join(" ") })).join("\n") + "\n";
  const dir = folder({ "in.jsonl": good });
  try {
    const r = await preprocess(dir, "in.jsonl", ["--workers", "2"]);
    assert.equal(r.code, 0, r.stderr);
    const ds = MMapIndexedDataset.open(`${dir}/out_text_document`);
    try {
      assert.equal(ds.numDocuments, 3);
      for (const d of [0, 1, 2]) assert.deepEqual(Array.from(ds.get(d)), doc(d));
    } finally {
      ds.close();
    }
    // Corrupt a byte deep inside line 3 (100000 bytes into it).
    const bytesIn = te.encode(good);
    const line3 = bytesIn.indexOf(10, bytesIn.indexOf(10) + 1) + 1;
    bytesIn[line3 + 100_000] = 0xfe;
    Deno.writeFileSync(`${dir}/in.jsonl`, bytesIn);
    Deno.removeSync(`${dir}/out_text_document.bin`);
    Deno.removeSync(`${dir}/out_text_document.idx`);
    const bad = await preprocess(dir, "in.jsonl");
    assert.equal(bad.code, 1, bad.stderr);
    const next = Array.from(bytesIn.subarray(line3 + 100_001, line3 + 100_004), (b) => b.toString(16)).join(
      " ",
    );
    assert.equal(
      oneLine(bad),
      `${dir}/in.jsonl:3: invalid UTF-8 at byte 100001 of the line (fe ${next}; file offset ${
        line3 + 100_000
      }); ` +
        `pass --replace-invalid-utf8 to decode it as U+FFFD`,
    );
    assert.deepEqual(names(dir), ["in.jsonl"]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("preprocess CLI: invalid UTF-8 in a .gz names the line (no file offset: it is compressed)", async () => {
  const dir = folder({ "in.jsonl.gz": new Uint8Array(gzipSync(BAD_UTF8)) });
  try {
    const r = await preprocess(dir, "in.jsonl.gz");
    assert.equal(r.code, 1, r.stderr);
    assert.equal(
      oneLine(r),
      `${dir}/in.jsonl.gz:3: invalid UTF-8 at byte 12 of the line (80 20 36 22); ` +
        `pass --replace-invalid-utf8 to decode it as U+FFFD`,
    );
    assert.deepEqual(names(dir), ["in.jsonl.gz"]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("preprocess CLI: --replace-invalid-utf8 tokenizes U+FFFD in place of each bad sequence", async () => {
  const dir = folder({
    "in.jsonl": bytes('{"text":"caf', [0xe9], ' ok"}\n{"text":"x', [0xff, 0xfe], 'y"}\n'),
  });
  try {
    const r = await run(PREPROCESS, [
      ...["--input", `${dir}/in.jsonl`, "--output-prefix", `${dir}/out`, "--replace-invalid-utf8"],
      ...["--tokenizer-type", "GPT2BPETokenizer", "--append-eod", "--workers", "2"],
    ]);
    assert.equal(r.code, 0, r.stderr);
    const gpt2 = await buildTokenizer({ tokenizerType: "GPT2BPETokenizer" });
    const ds = MMapIndexedDataset.open(`${dir}/out_text_document`);
    try {
      assert.equal(ds.numDocuments, 2);
      assert.deepEqual(Array.from(ds.get(0)), [...gpt2.tokenize("caf\uFFFD ok"), gpt2.eod]);
      // WHATWG: ff and fe are two invalid bytes, two replacement characters.
      assert.deepEqual(Array.from(ds.get(1)), [...gpt2.tokenize("x\uFFFD\uFFFDy"), gpt2.eod]);
    } finally {
      ds.close();
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------
// preprocess: malformed lines and nothing half-written

Deno.test("preprocess CLI: malformed JSON, a non-string key and a tokenizer rejection name file:line", async () => {
  const cases: [string, string, string][] = [
    ['{"text": "1"}\n\n{"text": 2}\n', "2", ':3: expected key "text" with a string value, found number'],
    [
      '{"text": "1"}\n{"title": "2"}\n',
      "1",
      ':2: expected key "text" with a string value, found no such key',
    ],
    // The tokenizer's own message carries no line number; preprocess adds it.
    ['{"text": "1 2"}\n{"text": "3 x"}\n', "2", ":2: NullTokenizer: expected token ids in 0..10, found 'x'"],
  ];
  for (const [content, workers, tail] of cases) {
    const dir = folder({ "in.jsonl": content });
    try {
      const r = await preprocess(dir, "in.jsonl", ["--workers", workers]);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(oneLine(r), `${dir}/in.jsonl${tail}`);
      assert.deepEqual(names(dir), ["in.jsonl"]);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  }
});

Deno.test("preprocess CLI: an error late in a long input (many batches, 2 workers) leaves earlier outputs untouched and no temp files", async () => {
  // 3000 documents = 12 batches of 256 lines; line 2900 is bad JSON.
  const lines = Array.from({ length: 3000 }, (_, i) => JSON.stringify({ text: `${i % 10} ${(i * 3) % 10}` }));
  const good = lines.join("\n") + "\n";
  lines[2899] = '{"text": "1 2"';
  const dir = folder({ "good.jsonl": good, "bad.jsonl": lines.join("\n") + "\n" });
  try {
    // --log-interval: no progress lines on stderr, only the error.
    const ok = await preprocess(dir, "good.jsonl", ["--workers", "2", "--log-interval", "100000"]);
    assert.equal(ok.code, 0, ok.stderr);
    const before = [
      Deno.readFileSync(`${dir}/out_text_document.bin`),
      Deno.readFileSync(`${dir}/out_text_document.idx`),
    ];
    const r = await preprocess(dir, "bad.jsonl", ["--workers", "2", "--log-interval", "100000"]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(oneLine(r), new RegExp(`^${dir}/bad\\.jsonl:2900: `));
    assert.deepEqual(names(dir), [
      "bad.jsonl",
      "good.jsonl",
      "out_text_document.bin",
      "out_text_document.idx",
    ]);
    assert.deepEqual(Deno.readFileSync(`${dir}/out_text_document.bin`), before[0]);
    assert.deepEqual(Deno.readFileSync(`${dir}/out_text_document.idx`), before[1]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("preprocess CLI: an output folder that does not exist is one line naming the output", async () => {
  const dir = folder({ "in.jsonl": '{"text": "1"}\n' });
  try {
    const r = await run(PREPROCESS, [
      "--input",
      `${dir}/in.jsonl`,
      "--output-prefix",
      `${dir}/no/out`,
      ...NULL_TOK,
    ]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      oneLine(r),
      new RegExp(`^${dir}/no/out_text_document\\.bin: cannot create the output file: No such file`),
    );
    assert.deepEqual(names(dir), ["in.jsonl"]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------
// pretrain_gpt: data that does not belong together

const SHAPE = [
  ...["--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2"],
  ...["--seq-length", "16", "--max-position-embeddings", "16", "--micro-batch-size", "2"],
  ...["--global-batch-size", "2", "--lr", "1e-3", "--train-iters", "2", "--eval-iters", "1"],
  ...["--eval-interval", "2", "--split", "100,0,0", "--device", "cpu", "--make-vocab-size-divisible-by", "8"],
  ...["--tokenizer-type", "NullTokenizer", "--vocab-size", "30"],
];

/** Preprocesses docs (space-separated ids, NullTokenizer of `vocab`, eod appended) into <dir>/c. */
async function corpus(dir: string, docs: number[][], vocab: number): Promise<string> {
  Deno.writeTextFileSync(
    `${dir}/c.jsonl`,
    docs.map((d) => JSON.stringify({ text: d.join(" ") })).join("\n") + "\n",
  );
  const r = await run(PREPROCESS, [
    ...["--input", `${dir}/c.jsonl`, "--output-prefix", `${dir}/c`, "--append-eod"],
    ...["--tokenizer-type", "NullTokenizer", "--vocab-size", String(vocab)],
  ]);
  assert.equal(r.code, 0, r.stderr);
  return `${dir}/c_text_document`;
}

function pretrainError(r: Ran): string {
  assert.equal(r.code, 1, r.stderr);
  const line = oneLine(r);
  assert.ok(line.startsWith("pretrain_gpt: "), line);
  return line.slice("pretrain_gpt: ".length);
}

const GOOD_DOCS = Array.from({ length: 8 }, (_, d) => Array.from({ length: 30 }, (_, i) => (i * 7 + d) % 30));

Deno.test("pretrain CLI: a .bin larger or smaller than its .idx says fails at open naming both files", async () => {
  const dir = folder({});
  try {
    const prefix = await corpus(dir, GOOD_DOCS, 30);
    const bin = Deno.readFileSync(`${prefix}.bin`);
    // 8 documents of 31 tokens (eod appended), uint16.
    assert.equal(bin.length, 8 * 31 * 2);
    for (const size of [bin.length + 2, bin.length - 1]) {
      const changed = new Uint8Array(size);
      changed.set(bin.subarray(0, Math.min(size, bin.length)));
      Deno.writeFileSync(`${prefix}.bin`, changed);
      const r = await run(PRETRAIN, [...SHAPE, "--data-path", prefix]);
      assert.equal(
        pretrainError(r),
        `${prefix}.bin: size ${size} bytes does not match ${prefix}.idx, which needs exactly ${bin.length} bytes ` +
          `(last pointer + last size * 2); the two files do not belong together`,
      );
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("pretrain CLI: a wrong .idx magic is 'not a Megatron MMIDIDX index', not 'not found'", async () => {
  const dir = folder({ "x.idx": '{"text": "hello"}\n', "x.bin": "" });
  try {
    const r = await run(PRETRAIN, [...SHAPE, "--data-path", `${dir}/x`]);
    assert.equal(
      pretrainError(r),
      `${dir}/x.idx: not a Megatron MMIDIDX index (magic 7b2274657874223a20, expected 4d4d49444944580000 "MMIDIDX\\0\\0")`,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("pretrain CLI: every other .idx header problem is one line naming the .idx", async () => {
  const dir = folder({});
  try {
    const prefix = await corpus(dir, GOOD_DOCS, 30);
    const idx = Deno.readFileSync(`${prefix}.idx`);
    // 8 sequences, 9 doc_idx entries: 34 + 12 * 8 + 8 * 9 = 202 bytes.
    assert.equal(idx.length, 202);
    const edit = (f: (b: Uint8Array) => Uint8Array) => f(idx.slice());
    const legacy = new Uint8Array(64);
    legacy.set(te.encode("TNTIDX\0\0"));
    const cases: [Uint8Array, string][] = [
      [edit((b) => (b[9] = 2, b)), "expected index version 1, found 2"],
      [edit((b) => (b[17] = 9, b)), "expected a dtype code in 1..8, found 9"],
      [edit((b) => b.subarray(0, 20)), "truncated .idx: expected at least 34 header bytes, found 20"],
      [new Uint8Array(0), "truncated .idx: expected at least 34 header bytes, found 0"],
      [
        edit((b) => b.subarray(0, 150)),
        "truncated .idx: N=8 sequences and 9 doc_idx entries need 202 bytes, found 150",
      ],
      [
        legacy,
        "a legacy lazy/cached indexed dataset (magic TNTIDX, found by --data-impl infer); " +
        "megatron-deno reads only mmap datasets: re-preprocess the data with --dataset-impl mmap",
      ],
    ];
    for (const [bytes, what] of cases) {
      Deno.writeFileSync(`${prefix}.idx`, bytes);
      const r = await run(PRETRAIN, [...SHAPE, "--data-path", prefix]);
      assert.equal(pretrainError(r), `${prefix}.idx: ${what}`);
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("pretrain CLI: an .idx whose .bin is missing (and the reverse) names the missing file", async () => {
  const dir = folder({});
  try {
    const prefix = await corpus(dir, GOOD_DOCS, 30);
    Deno.renameSync(`${prefix}.bin`, `${dir}/elsewhere.bin`);
    let r = await run(PRETRAIN, [...SHAPE, "--data-path", prefix]);
    assert.equal(pretrainError(r), `--data-path ${prefix}: ${prefix}.bin not found (its .idx exists)`);
    Deno.renameSync(`${dir}/elsewhere.bin`, `${prefix}.bin`);
    Deno.removeSync(`${prefix}.idx`);
    r = await run(PRETRAIN, [...SHAPE, "--data-path", prefix]);
    assert.equal(pretrainError(r), `--data-path ${prefix}: ${prefix}.idx not found (its .bin exists)`);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("pretrain CLI: a token id >= the padded vocabulary fails as the sample is read, naming file, document and id", async () => {
  const dir = folder({});
  try {
    // Tokenized for a 40-id vocabulary, trained with --vocab-size 30 (+eod = 31, padded to 32):
    // every id in the data is 35, and eod is 40.
    const prefix = await corpus(dir, Array.from({ length: 4 }, () => new Array(30).fill(35)), 40);
    const r = await run(PRETRAIN, [...SHAPE, "--data-path", prefix]);
    assert.match(
      pretrainError(r),
      new RegExp(
        `^${prefix}: document [0-3] has token id (35|40) at position \\d+, expected ids in 0\\.\\.31 ` +
          `\\(padded vocabulary size 32\\); was the data preprocessed with another tokenizer\\?$`,
      ),
    );
    // The same files with the vocabulary they were made for train.
    const ok = await run(PRETRAIN, [...SHAPE.slice(0, -1), "40", "--data-path", prefix]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, / iteration\s+2\/\s+2 \|/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------
// preprocess: stopped by a signal

for (const [sig, code] of [["SIGTERM", 143], ["SIGINT", 130]] as const) {
  Deno.test(`preprocess CLI: ${sig} mid-run exits ${code} with one line and removes its temporary files`, async () => {
    const lines = Array.from({ length: 300_000 }, (_, i) => `{"text": "${i % 7} ${i % 5} ${i % 3}"}`);
    const dir = folder({ "in.jsonl": lines.join("\n") + "\n" });
    try {
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          ...["run", "-A", PREPROCESS, "--input", `${dir}/in.jsonl`, "--output-prefix", `${dir}/out`],
          ...[...NULL_TOK, "--workers", "2", "--log-interval", "20000"],
        ],
        stdout: "null",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).spawn();
      // Signal once the first progress line shows it is tokenizing (temporary files exist by then).
      let err = "";
      const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
      while (!err.includes("processed ")) {
        const r = await reader.read();
        if (r.done) break;
        err += r.value;
      }
      assert.ok(
        names(dir).some((n) => n.includes(".tmp-")),
        `temporary outputs while running: ${names(dir)}`,
      );
      child.kill(sig);
      for (let r = await reader.read(); !r.done; r = await reader.read()) err += r.value;
      const status = await child.status;
      assert.equal(status.code, code, err);
      const last = err.trim().split("\n").filter((l) => !l.startsWith("processed ")).at(-1);
      assert.equal(last, `preprocess: interrupted by ${sig}; no output written`);
      assert.deepEqual(names(dir), ["in.jsonl"]);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });
}
