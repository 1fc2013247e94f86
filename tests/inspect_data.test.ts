// `inspect-data` shows what training reads: the samples a real pretrain() run takes from each split
// (recorded by a spy around the task's datasets) equal inspect-data's, position for position, for
// single and cyclic data loading, DP=2 and batch ramp-up; the CLI's GPT lines are byte-for-byte
// {"text": GPTDataset.getItem(i)} at the hand-computed sample counts; --decode is the tokenizer's
// detokenization; --output is written whole or not at all; each bad input is one line. BERT and T5 run
// through the same path once their tasks are in this checkout.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import type { SampleDataset } from "../src/data/blendable.ts";
import { torchRandperm } from "../src/data/sampler.ts";
import { type Config, parseArgs, validateForTraining } from "../src/training/config.ts";
import { buildGptData } from "../src/training/data.ts";
import { gptTask } from "../src/training/gpt_task.ts";
import { buildTaskContext, runSampleCounts, type Subset } from "../src/training/run_data.ts";
import type { TrainingTask } from "../src/training/task.ts";
import { pretrain } from "../src/training/train.ts";
import { buildTokenizer } from "../src/tokenizer/mod.ts";
import { DATASET_TYPES, inspectData, inspectSamples, type TaskLoader } from "../tasks/inspect_data.ts";
import { preprocessTinyCorpus } from "./helpers/tiny_corpus.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const dec = new TextDecoder();
const quiet = () => {};

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

async function inspectCli(args: string[]): Promise<Ran> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "inspect-data", ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** The error: exactly one "inspect_data: ..." line on stderr, no stack trace, nothing on stdout. */
function errorLine(r: Ran): string {
  const lines = r.stderr.split("\n").filter((l) => l.startsWith("inspect_data: "));
  assert.equal(lines.length, 1, `expected one error line, stderr:\n${r.stderr}`);
  assert.ok(!/^\s+at /m.test(r.stderr), `stack trace in stderr:\n${r.stderr}`);
  assert.equal(r.stdout, "");
  return lines[0].slice("inspect_data: ".length);
}

const DOCS = Array.from(
  { length: 40 },
  (_, i) =>
    Array.from({ length: 4 + (i % 9) }, (_, j) => `word${(i * 7 + j) % 13}`).join(" ") +
    (i % 3 === 0 ? " The end." : " Fin, it's over!"),
);

/** Documents of NullTokenizer ids (vocabulary 64; the EOD is 63). */
const ID_DOCS = Array.from(
  { length: 40 },
  (_, i) => Array.from({ length: 5 + (i % 9) }, (_, j) => String((i * 7 + j) % 60 + 1)).join(" "),
);

/** Writes `texts` as `<dir>/<name>.jsonl` and preprocesses it by the real CLI into `<dir>/<name>_*`. */
async function cliPreprocess(dir: string, name: string, texts: string[], flags: string[]): Promise<void> {
  Deno.writeTextFileSync(
    `${dir}/${name}.jsonl`,
    texts.map((text) => JSON.stringify({ text })).join("\n") + "\n",
  );
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      ...[
        "run",
        "-A",
        CLI,
        "preprocess",
        "--input",
        `${dir}/${name}.jsonl`,
        "--output-prefix",
        `${dir}/${name}`,
      ],
      ...flags,
      ...["--workers", "1"],
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, dec.decode(out.stderr));
}

/** DOCS preprocessed with GPT-2 BPE (+ EOD) by the real CLI; the prefix. */
async function gpt2Corpus(dir: string): Promise<string> {
  await cliPreprocess(dir, "g", DOCS, ["--append-eod", "--tokenizer-type", "GPT2BPETokenizer"]);
  return `${dir}/g_text_document`;
}

const MODEL = [
  ...["--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2"],
  ...["--seq-length", "16", "--max-position-embeddings", "16", "--lr", "1e-3"],
];

function config(args: string[]): Config {
  return validateForTraining(parseArgs(args));
}

/** gptTask whose datasets record every getItem (split, index, sample) the trainer makes. */
function spyTask(seen: Record<Subset, { index: number; text: number[] }[]>): TrainingTask<unknown> {
  const base = gptTask as TrainingTask<unknown>;
  const spy = (name: Subset, ds: SampleDataset<unknown> | null): SampleDataset<unknown> | null =>
    ds && {
      length: ds.length,
      getItem(i: number) {
        const s = ds.getItem(i) as Int32Array;
        seen[name].push({ index: i, text: Array.from(s) });
        return s;
      },
    };
  return {
    ...base,
    buildDatasets(ctx, n) {
      const d = base.buildDatasets(ctx, n);
      return {
        train: spy("train", d.train),
        valid: spy("valid", d.valid),
        test: spy("test", d.test),
        close: d.close,
      };
    },
  };
}

async function inspectAll(cfg: Config, subset: Subset, count: number) {
  const got: { index: number; text: number[] }[] = [];
  await inspectSamples(
    gptTask as TrainingTask<unknown>,
    cfg,
    { subset, start: 0, numSamples: count, decode: false },
    quiet,
    (s) => got.push({ index: s.index, text: s.json.text as number[] }),
  );
  return got;
}

const byIndex = (a: { index: number }, b: { index: number }) => a.index - b.index;

Deno.test("inspect-data's samples are the ones a real training run reads (single and cyclic, DP=2, ramp-up)", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const prefix = await preprocessTinyCorpus(dir, ID_DOCS, 64);
    const data = [
      ...[
        "--data-path",
        prefix,
        "--tokenizer-type",
        "NullTokenizer",
        "--vocab-size",
        "64",
        "--split",
        "80,10,10",
      ],
    ];
    const cases: { name: string; args: string[]; ordered: boolean; counts: Record<Subset, number> }[] = [
      {
        // 4 iterations x 4; evaluations at 2 and 4 (none more at the end), 1 x 4 each, although the
        // datasets are built for (4 // 2 + 1) x 4 = 12; one test evaluation.
        name: "single, DP=1",
        args: [
          ...MODEL,
          ...data,
          ...["--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "4"],
          ...["--eval-interval", "2", "--eval-iters", "1"],
        ],
        ordered: true,
        counts: { train: 16, valid: 8, test: 4 },
      },
      {
        // Ramp-up 4 -> 8 over 16 samples: batches 4, 4, 4, 4, 8, 8, 8 = 40 samples in 7 iterations;
        // evaluations at 3, 6 and the end (7), each 2 x 8; one test evaluation, 2 x 8.
        name: "cyclic, DP=2, ramp-up",
        args: [
          ...MODEL,
          ...data,
          ...["--micro-batch-size", "2", "--global-batch-size", "8", "--world-size", "2"],
          ...["--train-samples", "40", "--rampup-batch-size", "4", "4", "16", "--dataloader-type", "cyclic"],
          ...["--eval-interval", "3", "--eval-iters", "2"],
        ],
        ordered: false,
        counts: { train: 40, valid: 48, test: 16 },
      },
    ];
    for (const c of cases) {
      const cfg = config(c.args);
      const seen: Record<Subset, { index: number; text: number[] }[]> = { train: [], valid: [], test: [] };
      const be = createCpuBackend({ log: quiet });
      const run = await pretrain(spyTask(seen), cfg, { backend: be, log: quiet });
      assert.equal(run.exitReason, "done");
      const counts = runSampleCounts(cfg).consumed;
      assert.deepEqual(counts, c.counts, c.name);
      for (const subset of ["train", "valid", "test"] as const) {
        assert.equal(seen[subset].length, counts[subset], `${c.name}: ${subset} samples read by training`);
        const got = await inspectAll(cfg, subset, counts[subset]);
        // DP ranks run as interleaved coroutines: their reads are compared as a multiset.
        const want = c.ordered ? seen[subset] : [...seen[subset]].sort(byIndex);
        assert.deepEqual(c.ordered ? got : got.sort(byIndex), want, `${c.name}: ${subset}`);
      }
      if (!c.ordered) {
        // The order itself, written out from Megatron's random sampler: rank d owns the bucket
        // [d * bucket, (d + 1) * bucket) and reads it in torch.randperm(bucket, seed = epoch 0) order; global
        // position k is block k // (micro * dp), rank (k % 4) // 2, sample k % 2 of that rank's micro-batch.
        const trainLen = (() => {
          const ctx = { cfg, paddedVocab: 128, tokenizer: null as never, log: quiet };
          const d = gptTask.buildDatasets(ctx, runSampleCounts(cfg).requested);
          const n = d.train!.length;
          d.close();
          return n;
        })();
        const bucket = Math.floor(trainLen / 4) * 2;
        const perm = torchRandperm(bucket, 0);
        const want = Array.from({ length: 40 }, (_, k) => {
          const block = Math.floor(k / 4), d = Math.floor((k % 4) / 2), i = k % 2;
          return d * bucket + perm[block * 2 + i];
        });
        assert.ok(40 <= 2 * bucket, "the 40 train samples stay in epoch 0");
        assert.deepEqual((await inspectAll(cfg, "train", 40)).map((s) => s.index), want);
        assert.notDeepEqual(want.slice(0, 8), [0, 1, 2, 3, 4, 5, 6, 7]);
      }
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("inspect-data CLI, GPT: exact JSON lines = GPTDataset.getItem, --decode, --start/--num-samples, --output", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const prefix = await gpt2Corpus(dir);
    const flags = [
      ...MODEL,
      ...[
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "4",
        "--train-iters",
        "5",
        "--eval-interval",
        "2",
      ],
      ...[
        "--eval-iters",
        "1",
        "--data-path",
        prefix,
        "--split",
        "80,10,10",
        "--tokenizer-type",
        "GPT2BPETokenizer",
      ],
    ];
    // Independently: Megatron's counts for these flags are [5*4, (5//2 + 1)*1*4, 1*4] and GPT-2's
    // 50257 tokens pad to 50304; --dataloader-type single reads position k at index k.
    const ds = buildGptData({
      dataPath: [prefix],
      split: "80,10,10",
      seqLength: 16,
      seed: 1234,
      vocabSize: 50304,
      numSamples: [20, 12, 4],
      log: quiet,
    });
    const tok = await buildTokenizer({ tokenizerType: "GPT2BPETokenizer" });
    const line = (s: Int32Array, decode: boolean) =>
      JSON.stringify(
        decode ? { text: Array.from(s), text_decoded: tok.detokenize(s) } : { text: Array.from(s) },
      );
    const want = (split: "train" | "valid" | "test", from: number, n: number, decode = false) =>
      Array.from({ length: n }, (_, k) => line(ds[split]!.getItem(from + k), decode) + "\n").join("");

    const train = await inspectCli([
      ...flags,
      "--dataset-type",
      "gpt",
      "--subset",
      "train",
      "--num-samples",
      "4",
      "--start",
      "3",
    ]);
    assert.equal(train.code, 0, train.stderr);
    assert.equal(train.stdout, want("train", 3, 4));
    assert.match(train.stdout.split("\n")[0], /^\{"text":\[(\d+,){16}\d+\]\}$/); // seq-length + 1 ids, one field

    const valid = await inspectCli([
      ...flags,
      "--dataset-type=gpt",
      "--subset=valid",
      "--num-samples=12",
      "--decode",
    ]);
    assert.equal(valid.code, 0, valid.stderr);
    assert.equal(valid.stdout, want("valid", 0, 12, true));
    // Each piece between <|endoftext|> markers is a run of one source document (docs are shuffled).
    for (const l of valid.stdout.trim().split("\n")) {
      for (const piece of (JSON.parse(l).text_decoded as string).split("<|endoftext|>")) {
        assert.ok(
          DOCS.some((d) => d.includes(piece)),
          `decoded piece ${JSON.stringify(piece)} is in no document`,
        );
      }
    }

    const out = `${dir}/samples.jsonl`;
    const test = await inspectCli([
      ...flags,
      "--dataset-type",
      "gpt",
      "--subset",
      "test",
      "--num-samples",
      "4",
      "--output",
      out,
    ]);
    assert.equal(test.code, 0, test.stderr);
    assert.equal(test.stdout, "");
    assert.equal(Deno.readTextFileSync(out), want("test", 0, 4));
    assert.match(test.stderr, /> wrote 4 test samples \(positions 0\.\.3 of 4\) to /);
    // A failing run leaves the previous file as it was and no temporary behind.
    const bad = await inspectCli([
      ...flags,
      "--dataset-type",
      "gpt",
      "--subset",
      "test",
      "--num-samples",
      "1",
      "--start",
      "4",
      "--output",
      out,
    ]);
    assert.equal(errorLine(bad), "--start 4: beyond the test subset, which has 4 samples");
    assert.equal(bad.code, 2);
    assert.equal(Deno.readTextFileSync(out), want("test", 0, 4));
    assert.deepEqual([...Deno.readDirSync(dir)].filter((e) => e.name.includes(".tmp-")), []);
    ds.close();

    const help = await inspectCli(["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^usage: deno task inspect-data --dataset-type gpt\|bert\|t5 /);
    assert.match(help.stdout, /\n {2}--num-layers VALUE /); // the pretraining flags follow

    // Bad input: one line each, exit code 2.
    const base = [...flags, "--dataset-type", "gpt"];
    const cases: [string[], string][] = [
      [
        [...base, "--subset", "dev", "--num-samples", "1"],
        '--subset: expected one of train, valid, test, found "dev"',
      ],
      [[...base, "--num-samples", "1"], "--subset is required (train, valid or test)"],
      [[...base, "--subset", "train"], "--num-samples is required (an integer >= 1)"],
      [
        [...base, "--subset", "train", "--num-samples", "0"],
        '--num-samples: expected an integer >= 1, found "0"',
      ],
      [
        [...base, "--subset", "train", "--num-samples", "1", "--start", "-1"],
        '--start: expected an integer >= 0, found "-1"',
      ],
      [
        [...base, "--subset", "train", "--num-samples", "1", "--start", "20"],
        "--start 20: beyond the train subset, which has 20 samples",
      ],
      [
        [...base, "--subset", "valid", "--num-samples", "3", "--start", "10"],
        "--num-samples 3: from --start 10 it runs past the valid subset, which has 12 samples",
      ],
      [
        [...flags, "--subset", "train", "--num-samples", "1"],
        "--dataset-type is required (one of gpt, bert, t5)",
      ],
      [
        [...flags, "--dataset-type", "gtp", "--subset", "train", "--num-samples", "1"],
        '--dataset-type: expected one of gpt, bert, t5, found "gtp"',
      ],
      [
        [...base.filter((a) => a !== "1e-3" && a !== "--lr"), "--subset", "train", "--num-samples", "1"],
        "--lr is required for training",
      ],
      [
        [...base, "--mask-prob", "0.2", "--subset", "train", "--num-samples", "1"],
        "--mask-prob 0.2: not supported; ",
      ],
      [
        [...base, "--subset", "train", "--num-samples", "1", "--decode=yes"],
        '--decode: takes no value, found "yes"',
      ],
      [
        [...base, "--subset", "train", "--num-sample", "1"],
        "unknown flag --num-sample; did you mean --num-samples?",
      ],
      [
        [...base, "--subset", "train", "--num-samples", "1", "--num-layer", "2"],
        "unknown flag --num-layer; did you mean --num-layers?",
      ],
    ];
    for (const [args, msg] of cases) {
      const r = await inspectCli(args);
      const got = errorLine(r);
      assert.ok(got.startsWith(msg), `${args.join(" ")}\n  got:  ${got}\n  want: ${msg}`);
      assert.equal(r.code, 2, got);
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("inspect-data is generic over TrainingTask: a test task's sampleJson, a task without one, an absent one", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const prefix = await preprocessTinyCorpus(dir, ID_DOCS, 64);
    const args = [
      ...MODEL,
      ...["--data-path", prefix, "--tokenizer-type", "NullTokenizer", "--vocab-size", "64"],
      ...["--micro-batch-size", "2", "--train-iters", "3", "--eval-iters", "1", "--split", "80,10,10"],
    ];
    const base = gptTask as TrainingTask<unknown>;
    const fake: TrainingTask<unknown> = {
      ...base,
      name: "fake",
      sampleJson: (ctx, s, { decode }) => {
        const a = s as Int32Array;
        return {
          first: a[0],
          n: a.length,
          ...(decode ? { first_decoded: ctx.tokenizer.detokenize([a[0]]) } : {}),
        };
      },
    };
    const types: Record<string, TaskLoader> = {
      fake: () => Promise.resolve({ task: base, forConfig: () => fake }),
      bare: () => Promise.resolve({ task: { ...base, name: "bare", sampleJson: undefined } }),
      absent: () => Promise.resolve(null),
    };
    const errors: string[] = [];
    const consoleError = console.error;
    console.error = (l: string) => errors.push(l);
    try {
      const out = `${dir}/f.jsonl`;
      const code = await inspectData(
        [
          ...args,
          "--dataset-type",
          "fake",
          "--subset",
          "train",
          "--num-samples",
          "6",
          "--decode",
          "--output",
          out,
        ],
        types,
      );
      assert.equal(code, 0);
      const cfg = config(args);
      const ctx = await buildTaskContext(cfg, quiet);
      const d = base.buildDatasets(ctx, runSampleCounts(cfg).requested);
      const want = Array.from({ length: 6 }, (_, k) => {
        const s = d.train!.getItem(k) as Int32Array;
        return JSON.stringify({ first: s[0], n: 17, first_decoded: String(s[0]) }) + "\n";
      }).join("");
      d.close();
      assert.equal(Deno.readTextFileSync(out), want);
      const one = ["--subset", "train", "--num-samples", "1"];
      assert.equal(
        await inspectData([...args, "--dataset-type", "bare", ...one, "--output", `${dir}/b.jsonl`], types),
        2,
      );
      assert.equal(await inspectData([...args, "--dataset-type", "absent", ...one], types), 2);
    } finally {
      console.error = consoleError;
    }
    assert.deepEqual(errors.filter((l) => l.startsWith("inspect_data: ")), [
      "inspect_data: --dataset-type bare: this task has no sampleJson",
      "inspect_data: --dataset-type absent: not available",
    ]);
    assert.deepEqual([...Deno.readDirSync(dir)].filter((e) => e.name.startsWith("b.jsonl")), []);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

// BERT and T5 tasks are written elsewhere; until they are merged the registry says so in one line.
const MASKED_LM = [
  {
    type: "bert",
    module: "../src/training/bert_task.ts",
    fields: ["text", "types", "labels", "is_random", "loss_mask", "padding_mask", "truncated"],
    flags: ["--seq-length", "32", "--max-position-embeddings", "32"],
    toJson: async () => (await import("../src/data/bert_dataset.ts")).bertSampleToJson,
  },
  {
    type: "t5",
    module: "../src/training/t5_task.ts",
    fields: [
      "text_enc",
      "text_dec",
      "labels",
      "loss_mask",
      "truncated",
      "enc_mask",
      "dec_mask",
      "enc_dec_mask",
    ],
    flags: [
      ...["--encoder-seq-length", "32", "--decoder-seq-length", "16", "--max-position-embeddings", "32"],
      ...["--vocab-extra-ids", "100"],
    ],
    toJson: async () => (await import("../src/data/t5_dataset.ts")).t5SampleToJson,
  },
];

const SENTENCES = [
  "The committee met on Tuesday. Its members discussed the budget. Nobody agreed. They adjourned.",
  "Photosynthesis converts light into chemical energy. Chlorophyll absorbs blue and red light. Leaves look green.",
  "Rivers carve valleys over millennia. Sediment settles where the current slows. Deltas form at the mouths.",
  "The library opens at nine. Visitors must sign in. Rare manuscripts stay in the reading room.",
  "Compilers translate source code. Optimizers rewrite it. Linkers resolve symbols. Loaders map the result.",
  "Glaciers retreat as temperatures rise. Meltwater raises sea levels. Coastal cities plan defenses.",
];

for (const m of MASKED_LM) {
  Deno.test(`inspect-data --dataset-type ${m.type}: Megatron's fields through the task's sampleJson`, async () => {
    const present = (() => {
      try {
        return Deno.statSync(new URL(m.module, import.meta.url)).isFile;
      } catch {
        return false;
      }
    })();
    const dir = Deno.makeTempDirSync();
    try {
      if (!present) {
        const r = await inspectCli(["--dataset-type", m.type, "--subset", "train", "--num-samples", "1"]);
        assert.equal(errorLine(r), `--dataset-type ${m.type}: not available`);
        assert.equal(r.code, 2);
        assert.equal(await DATASET_TYPES[m.type](), null);
        return;
      }
      await cliPreprocess(dir, "s", SENTENCES, [
        "--split-sentences",
        "--tokenizer-type",
        "BertWordPieceLowerCase",
      ]);
      const flags = [
        ...["--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2", "--lr", "1e-3"],
        ...m.flags,
        ...["--micro-batch-size", "2", "--train-iters", "4", "--eval-interval", "2", "--eval-iters", "1"],
        ...["--data-path", `${dir}/s_text_sentence`, "--split", "4,1,1"],
        ...["--tokenizer-type", "BertWordPieceLowerCase"],
      ];
      const r = await inspectCli([
        ...flags,
        "--dataset-type",
        m.type,
        "--subset",
        "train",
        "--num-samples",
        "8",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
      assert.equal(lines.length, 8);
      for (const l of lines) assert.deepEqual(Object.keys(l), m.fields);
      // The same samples through the data module's own JSON, at the single sampler's indices 0..7.
      const loaded = (await DATASET_TYPES[m.type]())!;
      const cfg = validateForTraining(parseArgs(flags), loaded.task.flags);
      const task = loaded.forConfig?.(cfg) ?? loaded.task;
      const ctx = await buildTaskContext(cfg, quiet);
      const d = task.buildDatasets(ctx, runSampleCounts(cfg).requested);
      const toJson = (await m.toJson()) as (s: unknown) => Record<string, unknown>;
      assert.deepEqual(lines, Array.from({ length: 8 }, (_, i) => toJson(d.train!.getItem(i))));
      d.close();
      const decoded = await inspectCli([
        ...flags,
        "--dataset-type",
        m.type,
        "--subset",
        "test",
        "--num-samples",
        "2",
        "--decode",
      ]);
      assert.equal(decoded.code, 0, decoded.stderr);
      for (const l of decoded.stdout.trim().split("\n")) {
        const o = JSON.parse(l);
        assert.deepEqual(Object.keys(o).slice(0, m.fields.length), m.fields);
        assert.ok(Object.keys(o).length > m.fields.length, "--decode adds the detokenized text");
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });
}
