// `deno run -A tasks/pretrain_gpt.ts ...` as a user runs it: every invalid flag combination is one
// line and exit code 2, --help lists Megatron's groups, a bad --data-path or a mismatched --load is
// one line and exit code 1, and the output is usable by scripts.

import assert from "node:assert/strict";
import { preprocessTinyCorpus } from "./helpers/tiny_corpus.ts";
import { errorLine, type Ran, runScript } from "./helpers/run_cli.ts";

const SCRIPT = new URL("../tasks/pretrain_gpt.ts", import.meta.url).pathname;
const dec = new TextDecoder();

function cli(args: string[]): Promise<Ran> {
  return runScript(SCRIPT, args);
}

const SHAPE = [
  ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2"],
  ...["--seq-length", "16", "--max-position-embeddings", "16", "--micro-batch-size", "2"],
  ...["--lr", "1e-3", "--train-iters", "4"],
];

const USAGE_CASES: [string, string[], string | RegExp][] = [
  [
    "unknown flag with a suggestion",
    ["--num-layer", "2"],
    "unknown flag --num-layer; did you mean --num-layers?",
  ],
  ["unknown flag, nothing close", ["--frobnicate"], "unknown flag --frobnicate"],
  ["removed flag", ["--batch-size", "4"], "--batch-size is no longer valid; use --micro-batch-size"],
  [
    "missing value at the end",
    ["--hidden-size"],
    "--hidden-size: missing value (expected a positive integer)",
  ],
  [
    "missing value before a flag",
    ["--lr", "--train-iters", "3"],
    "--lr: missing value (expected a non-negative number)",
  ],
  ["wrong type", ["--num-layers", "two"], '--num-layers: expected a positive integer, found "two"'],
  [
    "bad choice",
    ["--lr-decay-style", "exp"],
    "--lr-decay-style: expected one of constant, linear, cosine, found exp",
  ],
  ["value on a switch", ["--fp16=yes"], '--fp16: takes no value, found "yes"'],
  [
    "train-iters xor train-samples",
    ["--train-iters", "2", "--train-samples", "8"],
    "--train-iters and --train-samples are mutually exclusive",
  ],
  [
    "rampup with train-iters",
    ["--rampup-batch-size", "4", "4", "100", "--train-iters", "5"],
    "--rampup-batch-size needs --train-samples, not --train-iters",
  ],
  [
    "rampup without train-samples",
    ["--rampup-batch-size", "4", "4", "100"],
    "--rampup-batch-size needs --train-samples",
  ],
  ["fp16 and bf16", ["--fp16", "--bf16"], "--fp16 and --bf16 cannot be used together"],
  [
    "hidden not divisible by heads",
    ["--hidden-size", "30", "--num-attention-heads", "4"],
    "--hidden-size: 30 is not divisible by --num-attention-heads 4 (or give --kv-channels)",
  ],
  [
    "global batch not divisible by micro * dp",
    ["--micro-batch-size", "3", "--global-batch-size", "8"],
    "--global-batch-size: 8 is not divisible by --micro-batch-size (3) * data-parallel size (1)",
  ],
  [
    "global batch with data parallelism",
    ["--micro-batch-size", "2", "--global-batch-size", "6", "--world-size", "2"],
    "--global-batch-size: 6 is not divisible by --micro-batch-size (2) * data-parallel size (2)",
  ],
  [
    "seq longer than positions",
    ["--seq-length", "64", "--max-position-embeddings", "32"],
    "--seq-length: 64 is larger than --max-position-embeddings 32",
  ],
  [
    "heads not divisible by TP",
    ["--num-attention-heads", "3", "--tensor-model-parallel-size", "2"],
    "--num-attention-heads: 3 is not divisible by --tensor-model-parallel-size 2",
  ],
  [
    "layers not divisible by PP",
    ["--num-layers", "3", "--pipeline-model-parallel-size", "2"],
    "--num-layers: 3 is not divisible by --pipeline-model-parallel-size 2",
  ],
  [
    "sample-based LR flag in iteration mode",
    ["--train-iters", "10", "--lr-decay-samples", "100"],
    "--lr-decay-samples needs --train-samples (training is iteration-based)",
  ],
  ["save interval without save", ["--save-interval", "10"], "--save-interval needs --save"],
  ["min-lr above lr", ["--lr", "1e-4", "--min-lr", "1e-3"], "--min-lr: 0.001 is larger than --lr 0.0001"],
  [
    "exit duration is an integer (as Megatron's int flag)",
    ["--exit-duration-in-mins", "0.5"],
    '--exit-duration-in-mins: expected a positive integer, found "0.5"',
  ],
  // With --data-path the user's own run must be complete (without it flags adjust the embedded default).
  ["required shape flag", ["--lr", "1e-3", "--data-path", "x"], "--num-layers is required for training"],
  [
    "train length required",
    [...SHAPE.filter((_, i) => i < SHAPE.length - 2), "--data-path", "x"],
    "one of --train-iters or --train-samples is required for training",
  ],
  [
    "tokenizer flags without --data-path",
    ["--tokenizer-type", "NullTokenizer"],
    "--tokenizer-type: the embedded default trains on the bundled GPT-2 BPE corpus; give --data-path to train on other data",
  ],
  [
    "NullTokenizer needs a vocab size",
    [...SHAPE, "--data-path", "x", "--tokenizer-type", "NullTokenizer"],
    "--tokenizer-type NullTokenizer needs --vocab-size",
  ],
];

for (const [name, args, want] of USAGE_CASES) {
  Deno.test(`cli: ${name} -> one line, exit 2`, async () => {
    const r = await cli(args);
    assert.equal(r.code, 2, `exit code; stderr:\n${r.stderr}`);
    const line = errorLine(r);
    if (typeof want === "string") assert.equal(line, want);
    else assert.match(line, want);
  });
}

Deno.test("cli: --help exits 0 and lists every flag group with defaults", async () => {
  const r = await cli(["--help"]);
  assert.equal(r.code, 0, r.stderr);
  const groups = [
    "network size",
    "regularization",
    "training",
    "initialization",
    "learning rate",
    "checkpointing",
    "mixed precision",
    "distributed",
    "validation",
    "data and dataloader",
    "logging",
    "activation checkpointing",
  ];
  const headers = r.stdout.split("\n").filter((l) => /^\S.*:$/.test(l)).map((l) => l.slice(0, -1));
  for (const g of groups) assert.ok(headers.includes(g), `group "${g}" missing; have ${headers.join(", ")}`);
  // Groups come in Megatron's order.
  const idx = groups.map((g) => headers.indexOf(g));
  assert.deepEqual(idx, [...idx].sort((a, b) => a - b));
  for (
    const [flag, dflt] of [
      ["--num-layers", "none"],
      ["--micro-batch-size", "none"],
      ["--lr-decay-style", "linear"],
      ["--initial-loss-scale", "2^32"],
      ["--eval-interval", "1000"],
      ["--eval-iters", "100"],
      ["--log-interval", "100"],
      ["--split", "969,30,1"],
      ["--seed", "1234"],
      ["--exit-signal-handler", "off"],
    ]
  ) {
    const line = r.stdout.split("\n").find((l) => l.trimStart().startsWith(flag + " "));
    assert.ok(line, `${flag} missing from --help`);
    assert.ok(line.includes(`(default: ${dflt})`), line);
  }
});

Deno.test("cli: -h is --help", async () => {
  const r = await cli(["-h"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^usage: deno task pretrain:gpt/);
});

// --- runtime errors (exit 1) on a tiny preprocessed corpus ---

const DIR = Deno.makeTempDirSync({ prefix: "mdeno_cli_" });
// Remove the scratch directory when the test module ends.
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));

function tinyData(): Promise<string> {
  const docs = Array.from(
    { length: 60 },
    (_, d) => Array.from({ length: 40 + d }, (_, i) => (i * 7 + d) % 30).join(" "),
  );
  return preprocessTinyCorpus(DIR, docs, 30);
}
const DATA = tinyData();

const tiny = async (more: string[]) => [
  ...SHAPE,
  ...["--global-batch-size", "4", "--make-vocab-size-divisible-by", "8", "--log-interval", "1"],
  ...["--eval-interval", "2", "--eval-iters", "1", "--split", "90,10,0", "--device", "cpu"],
  ...["--data-path", await DATA, "--tokenizer-type", "NullTokenizer", "--vocab-size", "30"],
  ...more,
];

Deno.test("cli: a missing --data-path prefix is one line, exit 1", async () => {
  const args = (await tiny([])).map((a, i, all) => all[i - 1] === "--data-path" ? `${DIR}/nope` : a);
  const r = await cli(args);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(errorLine(r), `--data-path ${DIR}/nope: no ${DIR}/nope.idx / ${DIR}/nope.bin found`);
});

Deno.test("cli: trains, saves, says where; --load with another architecture names every mismatch", async () => {
  const save = `${DIR}/arch`;
  const ok = await cli(await tiny(["--save", save]));
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, / iteration\s+4\/\s+4 \|/);
  // On a CPU the utilization is relative to the measured GEMM rate, and the line says so.
  assert.match(ok.stdout, / MFU \(vs measured CPU GEMM peak\): \d+\.\d\d% \|/);
  assert.match(ok.stdout, /validation loss at iteration 2 \| lm loss value: \d/);
  // Validations at iterations 2 and 4: the closing line gives the first and the last.
  assert.match(
    ok.stdout,
    /^done: 4 iterations, \d+ tokens\/s, validation loss (\d+\.\d{3}) -> (?!\1$)\d+\.\d{3}$/m,
  );
  // One validation (--eval-interval past the end: only the final one): its loss alone.
  const once = await cli((await tiny([])).map((a, i, all) => all[i - 1] === "--eval-interval" ? "100" : a));
  assert.equal(once.code, 0, once.stderr);
  assert.match(once.stdout, /^done: 4 iterations, \d+ tokens\/s, validation loss \d+\.\d{3}$/m);
  assert.ok(
    ok.stdout.includes(`checkpoint saved in ${save}/iter_0000004 (resume with --load ${save})`),
    ok.stdout,
  );

  const bad = await cli([
    ...(await tiny(["--load", save])).map((a, i, all) =>
      all[i - 1] === "--num-layers" ? "4" : all[i - 1] === "--hidden-size" ? "32" : a
    ),
    ...["--max-position-embeddings", "32"],
  ]);
  assert.equal(bad.code, 1, bad.stderr);
  assert.equal(
    errorLine(bad),
    "checkpoint arguments do not match this run: --num-layers: checkpoint 2, run 4; " +
      "--hidden-size: checkpoint 16, run 32; --max-position-embeddings: checkpoint 16, run 32",
  );
});

Deno.test("cli: scripts/pretrain_gpt.sh (GPT-345M flags) passes validation up to the data", async () => {
  // Every flag in the script must parse and validate: the first error is then the missing dataset.
  const script = new URL("../scripts/pretrain_gpt.sh", import.meta.url).pathname;
  const out = await new Deno.Command("bash", {
    args: [script],
    cwd: DIR,
    env: { DATA_PATH: "nope/prefix", CHECKPOINT_PATH: "ck", DEVICE: "cpu", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const r = { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  assert.equal(r.code, 1, r.stderr);
  // Relative paths were made absolute against the caller's directory.
  assert.equal(
    errorLine(r),
    `--data-path ${DIR}/nope/prefix: no ${DIR}/nope/prefix.idx / ${DIR}/nope/prefix.bin found`,
  );
  assert.match(r.stdout, /padded vocab \(size: 50257\) with 47 dummy tokens \(new size: 50304\)/);
  for (
    const f of ["'--num-layers' '24'", "'--hidden-size' '1024'", "'--global-batch-size' '8'", "'--fp16'"]
  ) {
    assert.ok(r.stderr.includes(f), `${f} not passed to the task:\n${r.stderr}`);
  }
});

Deno.test("cli: progress bar on a terminal only (script(1) provides the pty)", async () => {
  const hasScript = await new Deno.Command("sh", { args: ["-c", "command -v script"], stdout: "null" })
    .output()
    .then((o) => o.success, () => false);
  if (!hasScript) return; // no util-linux script(1): nothing to drive a terminal with
  const args = await tiny(["--eval-interval", "100", "--log-interval", "4"]);
  const quoted = ["run", "-A", SCRIPT, ...args].map((a) => `'${a}'`).join(" ");
  const viaPty = async (extra: string) => {
    const out = await new Deno.Command("script", {
      args: ["-qec", `'${Deno.execPath()}' ${quoted}${extra}`, "/dev/null"],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    assert.equal(out.code, 0, dec.decode(out.stderr));
    return dec.decode(out.stdout);
  };
  const tty = await viaPty("");
  const CLEAR = "\r\x1b[2K"; // carriage return + erase line, as the CLI draws its status
  const plain = tty.replaceAll(CLEAR, "<CLEAR>");
  const status = [...plain.matchAll(/<CLEAR>iteration (\d+)\/4 \| loss \d/g)].map((m) => Number(m[1]));
  assert.deepEqual(status, [1, 2, 3, 4]);
  // The status line is cleared before each log line, so log lines start clean.
  assert.match(plain, /<CLEAR> iteration\s+4\/\s+4 \|/);
  assert.ok(!(await viaPty(" --no-progress")).includes("\x1b[2K"), "--no-progress still drew a bar");
  const piped = await cli(args);
  assert.ok(!piped.stdout.includes("\x1b[2K"), "progress bar drawn into a pipe");
});

Deno.test("cli: --load without a tracker starts from scratch; a tracker naming a missing iteration is one line, exit 1", async () => {
  const empty = `${DIR}/empty`;
  Deno.mkdirSync(empty, { recursive: true });
  const fresh = await cli(await tiny(["--load", empty]));
  assert.equal(fresh.code, 0, fresh.stderr);
  assert.ok(fresh.stdout.includes(`no checkpoint found in ${empty}`), fresh.stdout);
  assert.match(fresh.stdout, /^ iteration\s+1\/\s+4 \|/m);

  const broken = `${DIR}/broken`;
  Deno.mkdirSync(broken, { recursive: true });
  Deno.writeTextFileSync(`${broken}/latest_checkpointed_iteration.txt`, "7");
  const r = await cli(await tiny(["--load", broken]));
  assert.equal(r.code, 1, r.stderr);
  assert.equal(errorLine(r), `${broken}/iter_0000007: missing (the tracker names iteration 7)`);
});
