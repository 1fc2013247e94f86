// The first-run paths of `tasks/pretrain_gpt.ts` through the real CLI: flags without --data-path adjust
// the embedded default (user flags win, the default fills the rest, and the run says which flags were
// the user's); --help shows the choices of enumerated flags; resuming with evaluation/data flags that
// no longer fit the checkpoint's consumed samples stops at start-up with one line.

import assert from "node:assert/strict";
import { CORPUS_PACKAGE } from "../src/data/corpus.ts";
import { MMapIndexedDataset } from "../src/data/indexed_dataset.ts";
import { parsePreprocessArgs, preprocess } from "../src/data/preprocess.ts";
import { parseArgs, validateForTraining, withDefaults } from "../src/training/config.ts";
import { EMBEDDED_DEFAULT } from "../tasks/pretrain_gpt.ts";
import { type Ran, runScript } from "./helpers/run_cli.ts";

const SCRIPT = new URL("../tasks/pretrain_gpt.ts", import.meta.url).pathname;
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_first_run_" });
// Remove the scratch directory when the test module ends.
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));

function cli(args: string[], env: Record<string, string> = {}): Promise<Ran> {
  return runScript(SCRIPT, args, env);
}

/** A corpus cache ($MEGATRON_DENO_CACHE) holding a tiny GPT-2 tokenized stand-in for the bundled
 *  corpus, with the manifest the corpus module checks, so the embedded default trains in seconds. */
async function seedCorpusCache(cache: string): Promise<string> {
  Deno.mkdirSync(cache, { recursive: true });
  const words = ["the", "union", "state", "of", "our", "nation", "is", "strong", "and", "free", "people"];
  const docs = Array.from(
    { length: 40 },
    (_, d) => Array.from({ length: 30 + d }, (_, i) => words[(i * 5 + d) % words.length]).join(" ") + ".",
  );
  Deno.writeTextFileSync(`${cache}/in.jsonl`, docs.map((text) => JSON.stringify({ text })).join("\n") + "\n");
  await preprocess(
    parsePreprocessArgs([
      ...["--input", `${cache}/in.jsonl`, "--output-prefix", `${cache}/sotu`, "--append-eod"],
      ...["--tokenizer-type", "GPT2BPETokenizer"],
    ])!,
  );
  const prefix = `${cache}/sotu_text_document`;
  const ds = MMapIndexedDataset.open(prefix, { mmap: false });
  const manifest = {
    source: CORPUS_PACKAGE,
    format: 1,
    tokenizer: "GPT2BPETokenizer",
    appendEod: true,
    documents: ds.numDocuments,
    sequences: ds.length,
    tokens: ds.sizes.reduce((a, b) => a + b, 0),
  };
  ds.close();
  Deno.writeTextFileSync(`${cache}/sotu.manifest.json`, JSON.stringify(manifest));
  return prefix;
}

Deno.test("cli: flags without --data-path adjust the embedded default and are listed as the user's", async () => {
  const cache = `${DIR}/cache`;
  const prefix = await seedCorpusCache(cache);
  const save = `${DIR}/default_ck`;
  const r = await cli([
    ...["--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2"],
    ...["--seq-length", "16", "--max-position-embeddings", "16", "--train-iters", "2"],
    ...["--log-interval", "1", "--eval-iters", "1", "--save", save, "--device", "cpu"],
  ], { MEGATRON_DENO_CACHE: cache });
  assert.equal(r.code, 0, r.stderr);
  assert.ok(!r.stdout.includes("corpus: building"), `the seeded cache was rebuilt:\n${r.stdout}`);
  assert.ok(
    r.stdout.includes(
      `> no --data-path: training the embedded default GPT on ${prefix}; from the command line: ` +
        `--num-layers 1, --hidden-size 16, --num-attention-heads 2, --seq-length 16, ` +
        `--max-position-embeddings 16, --train-iters 2, --log-interval 1, --eval-iters 1, --save ${save}, ` +
        `--device cpu`,
    ),
    r.stdout,
  );
  // The user's shape and length...
  assert.match(r.stdout, /^> model: 1 layers, hidden 16, 2 heads, seq 16, /m);
  assert.match(r.stdout, /^ iteration +2\/ +2 \|/m);
  // ...and the embedded default's batch (8) and schedule (lr 1e-3, 20 warmup iterations: 1e-3 * 2/20).
  assert.match(
    r.stdout,
    / iteration +2\/ +2 \| consumed samples: +16 \|.* learning rate: 1\.000e-4 \| global batch size: +8 \|/,
  );
  assert.ok(r.stdout.includes(`checkpoint saved in ${save}/iter_0000002`), r.stdout);
});

Deno.test("cli: --help shows the choices of enumerated flags", async () => {
  const r = await cli(["--help"]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.split("\n");
  const flagLine = (f: string) => lines.find((l) => l.trimStart().startsWith(f + " "));
  for (
    const [flag, choices] of [
      ["--lr-decay-style", "{constant,linear,cosine}"],
      ["--optimizer", "{adam,sgd}"],
      ["--dataloader-type", "{single,cyclic}"],
      ["--DDP-impl", "{local,torch}"],
      ["--tokenizer-type", "{BertWordPieceLowerCase,BertWordPieceCase,GPT2BPETokenizer,NullTokenizer}"],
      ["--activations-checkpoint-method", "{uniform,block}"],
      ["--device", "{cpu,cuda,auto}"],
      ["--data-impl", "{mmap,infer}"],
    ]
  ) {
    const l = flagLine(flag);
    assert.ok(l, `${flag} missing from --help`);
    assert.ok(l.trimStart().startsWith(`${flag} ${choices} `), l);
  }
  // Flags megatron-deno rejects say so.
  assert.match(flagLine("--DDP-impl")!, / \[only the default\] \(default: local\)$/);
  assert.match(flagLine("--openai-gelu")!, / \[not supported\] \(default: off\)$/);
  assert.match(flagLine("--decoder-seq-length")!, / \[not supported\] \(default: none\)$/);
  assert.doesNotMatch(flagLine("--num-layers")!, /not supported|only the default/);
  // Free-form values keep VALUE.
  assert.ok(flagLine("--num-layers")!.trimStart().startsWith("--num-layers VALUE "));
});

Deno.test("withDefaults: a flag given by the user replaces the default's exclusive alternative", () => {
  const fill = (args: string[]) =>
    validateForTraining(withDefaults(parseArgs(args), { ...EMBEDDED_DEFAULT, dataPath: ["x"] }));
  const samples = fill(["--train-samples", "16"]);
  assert.equal(samples.trainIters, undefined);
  assert.equal(samples.trainSamples, 16);
  assert.equal(samples.lrWarmupFraction, 0.1);
  const warm = fill(["--lr-warmup-iters", "5", "--train-iters", "10"]);
  assert.equal(warm.lrWarmupFraction, undefined);
  assert.equal(warm.lrWarmupIters, 5);
  assert.equal(warm.trainIters, 10);
  assert.equal(fill([]).trainIters, 200);
});

async function tinyData(): Promise<string> {
  const docs = Array.from(
    { length: 60 },
    (_, d) => JSON.stringify({ text: Array.from({ length: 40 + d }, (_, i) => (i * 7 + d) % 30).join(" ") }),
  );
  Deno.writeTextFileSync(`${DIR}/c.jsonl`, docs.join("\n") + "\n");
  await preprocess(
    parsePreprocessArgs([
      ...["--input", `${DIR}/c.jsonl`, "--output-prefix", `${DIR}/c`, "--append-eod"],
      ...["--tokenizer-type", "NullTokenizer", "--vocab-size", "30"],
    ])!,
  );
  return `${DIR}/c_text_document`;
}

Deno.test("cli: resuming with evaluation flags that run past the validation split stops at start-up with one line", async () => {
  const data = await tinyData();
  const save = `${DIR}/resume_ck`;
  const run = (more: string[]) =>
    cli([
      ...["--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2", "--seq-length", "16"],
      ...["--max-position-embeddings", "16", "--micro-batch-size", "2", "--global-batch-size", "4"],
      ...["--lr", "1e-3", "--lr-decay-iters", "20", "--log-interval", "1", "--eval-interval", "1"],
      ...["--split", "90,10,0", "--make-vocab-size-divisible-by", "8", "--device", "cpu"],
      ...["--data-path", data, "--tokenizer-type", "NullTokenizer", "--vocab-size", "30", "--save", save],
      ...more,
    ]);
  // 4 iterations, each evaluating 8 batches of 4: 128 validation samples consumed.
  const first = await run(["--train-iters", "4", "--eval-iters", "8"]);
  assert.equal(first.code, 0, first.stderr);

  // This run sizes the validation split for (8 // 1 + 1) * 1 * 4 = 36 samples (whole epochs of the
  // split, well under 128 + 4 * 4 = 144), so its first evaluation would index past the end.
  const bad = await run(["--load", save, "--train-iters", "8", "--eval-iters", "1"]);
  assert.equal(bad.code, 1, bad.stderr);
  const lines = bad.stderr.trim().split("\n");
  assert.equal(lines.length, 1, bad.stderr);
  assert.match(
    lines[0],
    new RegExp(
      `^pretrain_gpt: --load ${save}: resuming at iteration 4, evaluation needs samples up to 144 \\(128 ` +
        `consumed before\\) but the validation split has \\d+; changed since the checkpoint: ` +
        `--eval-iters 8 -> 1, --train-iters 4 -> 8; resume with the checkpoint's values, or start a new ` +
        `run without --load$`,
    ),
  );
  assert.doesNotMatch(bad.stdout, /^ iteration/m, "it trained before failing");

  // The checkpoint's evaluation flags resume fine (128 + 4 * 32 of a split sized for 288).
  const ok = await run(["--load", save, "--train-iters", "8", "--eval-iters", "8"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /^ iteration +8\/ +8 \|/m);
});
