// Relative path flags are taken from the directory the user ran the command in: `deno task` runs in
// the project root and passes the caller's directory as INIT_CWD. Unit checks of the resolvers (every
// path flag, the blend form of --data-path), then the real `deno task preprocess` and
// `deno task pretrain:gpt` run from a sub-folder of the checkout with paths relative to it.

import assert from "node:assert/strict";
import { MMapIndexedDataset } from "../src/data/indexed_dataset.ts";
import { parsePreprocessArgs } from "../src/data/preprocess.ts";
import { readTracker } from "../src/training/checkpoint.ts";
import { flagName, helpText, parseArgs } from "../src/training/config.ts";
import {
  resolvePreprocessPaths,
  resolveTrainingPaths,
  TRAINING_STRING_FLAGS,
  userCwd,
} from "../tasks/user_paths.ts";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const dec = new TextDecoder();

Deno.test("paths: userCwd is INIT_CWD when run by deno task in the project root, else the working directory", () => {
  const env = (v: string | undefined) => ({ get: (k: string) => (k === "INIT_CWD" ? v : undefined) });
  assert.equal(
    userCwd(env("/home/u/project/sub"), "/home/u/project", "/home/u/project"),
    "/home/u/project/sub",
  );
  assert.equal(userCwd(env(undefined), "/home/u/project", "/home/u/project"), "/home/u/project");
  assert.equal(userCwd(env("relative/dir"), "/home/u/project", "/home/u/project"), "/home/u/project");
  // Outside the project root (an installed `megatron`), an inherited INIT_CWD is ignored.
  assert.equal(userCwd(env("/home/u/project"), "/data/run", "/home/u/project"), "/data/run");
  assert.equal(userCwd(env("/home/u/project"), "/data/run", null), "/data/run");
  // The default project root is this checkout.
  assert.equal(userCwd(env("/x"), ROOT), "/x");
  assert.equal(userCwd(env(undefined)), Deno.cwd());
});

Deno.test("paths: every training path flag resolves against the base; blend weights and other flags stay", () => {
  const pathKeys = Object.entries(TRAINING_STRING_FLAGS).filter(([, k]) => k === "path").map(([k]) => k);
  assert.deepEqual(pathKeys.sort(), [
    "dataPath",
    "load",
    "mergeFile",
    "metricsFile",
    "save",
    "tensorboardDir",
    "vocabFile",
  ]);
  // Every classified key is a real flag (--help lists it).
  const help = helpText();
  for (const k of Object.keys(TRAINING_STRING_FLAGS)) {
    // An enumerated flag shows its choices instead of VALUE.
    assert.ok(help.includes(`  ${flagName(k)} VALUE`) || help.includes(`  ${flagName(k)} {`), k);
  }

  const cfg = parseArgs([
    ...["--save", "ck", "--load", "../ck", "--tensorboard-dir", "runs/tb", "--vocab-file", "v.json"],
    ...["--merge-file", "/abs/m.txt", "--metrics-file", "./m.jsonl", "--split", "90,5,5"],
    ...["--data-path", "corpus_text_document"],
  ]);
  const r = resolveTrainingPaths(cfg, "/u/work/sub");
  assert.equal(r.save, "/u/work/sub/ck");
  assert.equal(r.load, "/u/work/ck");
  assert.equal(r.tensorboardDir, "/u/work/sub/runs/tb");
  assert.equal(r.vocabFile, "/u/work/sub/v.json");
  assert.equal(r.mergeFile, "/abs/m.txt");
  assert.equal(r.metricsFile, "/u/work/sub/m.jsonl");
  assert.deepEqual(r.dataPath, ["/u/work/sub/corpus_text_document"]);
  assert.equal(r.split, "90,5,5");
  assert.equal(r.tokenizerType, cfg.tokenizerType);
  assert.deepEqual(r.explicit, cfg.explicit);
  assert.equal(cfg.save, "ck", "the input config is not modified");

  const blend = parseArgs(["--data-path", "0.3", "a/x", "0.7", "/data/y"]);
  assert.deepEqual(resolveTrainingPaths(blend, "/u").dataPath, ["0.3", "/u/a/x", "0.7", "/data/y"]);
  // Unset flags stay unset.
  const none = resolveTrainingPaths(parseArgs([]), "/u");
  for (const k of pathKeys) assert.equal((none as unknown as Record<string, unknown>)[k], undefined, k);
});

Deno.test("paths: preprocess --input, --output-prefix, --vocab-file and --merge-file resolve against the base", () => {
  const o = parsePreprocessArgs([
    ...["--input", "../c.jsonl", "--output-prefix", "out/c", "--tokenizer-type", "GPT2BPETokenizer"],
    ...["--vocab-file", "v.json", "--merge-file", "/m/merges.txt"],
  ])!;
  const r = resolvePreprocessPaths(o, "/u/work/sub");
  assert.equal(r.input, "/u/work/c.jsonl");
  assert.equal(r.outputPrefix, "/u/work/sub/out/c");
  assert.equal(r.vocabFile, "/u/work/sub/v.json");
  assert.equal(r.mergeFile, "/m/merges.txt");
  const plain = resolvePreprocessPaths(
    parsePreprocessArgs([
      "--input",
      "/c.jsonl",
      "--output-prefix",
      "o",
      "--tokenizer-type",
      "GPT2BPETokenizer",
    ])!,
    "/b",
  );
  assert.equal(plain.vocabFile, undefined);
  assert.equal(plain.mergeFile, undefined);
});

async function denoTask(cwd: string, task: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", task, ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
    env: freshEnv(),
    clearEnv: true,
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** This process's environment as a user's shell would pass it: no INIT_CWD inherited from a `deno task`
 *  that runs the tests (deno task keeps an inherited value). */
function freshEnv(): Record<string, string> {
  const env = Deno.env.toObject();
  delete env.INIT_CWD;
  return { ...env, NO_COLOR: "1" };
}

Deno.test("paths: deno task preprocess and pretrain:gpt from a sub-folder read and write relative to it", async () => {
  // A scratch folder inside the checkout (*.tmp is git-ignored) so `deno task` finds the project's
  // deno.json from it; `sub/` is where the user stands.
  const top = Deno.makeTempDirSync({ dir: ROOT, prefix: "cli_paths_", suffix: ".tmp" });
  const sub = `${top}/sub`;
  Deno.mkdirSync(`${sub}/data`, { recursive: true });
  try {
    // A GPT-2 BPE vocabulary of four tokens: "abba" -> ab b a; eod = 3.
    Deno.writeTextFileSync(`${top}/encoder.jsn`, JSON.stringify({ a: 0, b: 1, ab: 2, "<|endoftext|>": 3 }));
    Deno.writeTextFileSync(`${sub}/merges.txt`, "#version: 0.2\na b\n");
    const docs = Array.from({ length: 40 }, (_, d) => "ab".repeat(20 + d) + "ba".repeat(d % 7));
    Deno.writeTextFileSync(
      `${top}/corpus.jsonl`,
      docs.map((text) => JSON.stringify({ text })).join("\n") + "\n",
    );

    // ../ is the parent of the user's folder; resolved in the project root it would be /work or so.
    const pre = await denoTask(sub, "preprocess", [
      ...["--input", "../corpus.jsonl", "--output-prefix", "data/c", "--append-eod"],
      ...[
        "--tokenizer-type",
        "GPT2BPETokenizer",
        "--vocab-file",
        "../encoder.jsn",
        "--merge-file",
        "merges.txt",
      ],
    ]);
    assert.equal(pre.code, 0, pre.stderr);
    assert.ok(pre.stderr.includes(`-> ${sub}/data/c_text_document`), pre.stderr);
    const ds = MMapIndexedDataset.open(`${sub}/data/c_text_document`);
    try {
      assert.equal(ds.length, 40);
      assert.deepEqual(Array.from(ds.get(0)), [...Array(20).fill(2), 3]);
      assert.deepEqual(Array.from(ds.get(8)), [...Array(28).fill(2), 1, 0, 3]);
    } finally {
      ds.close();
    }
    assert.ok(!existsSync(`${ROOT}/data/c_text_document.idx`));

    // Training: the blend form of --data-path, then resume with --load, all relative to sub/.
    const shape = [
      ...["--num-layers", "1", "--hidden-size", "8", "--num-attention-heads", "2", "--seq-length", "8"],
      ...["--max-position-embeddings", "8", "--micro-batch-size", "2", "--lr", "1e-3", "--log-interval", "1"],
      ...[
        "--eval-interval",
        "1000",
        "--eval-iters",
        "1",
        "--split",
        "80,20,0",
        "--device",
        "cpu",
        "--no-progress",
      ],
      ...["--data-path", "0.5", "data/c_text_document", "0.5", "../sub/data/c_text_document"],
      ...[
        "--tokenizer-type",
        "GPT2BPETokenizer",
        "--vocab-file",
        "../encoder.jsn",
        "--merge-file",
        "merges.txt",
      ],
      ...["--save", "ck", "--tensorboard-dir", "tb", "--metrics-file", "m.jsonl"],
    ];
    const first = await denoTask(sub, "pretrain:gpt", [
      ...shape,
      "--train-iters",
      "3",
      "--exit-interval",
      "2",
    ]);
    assert.equal(first.code, 0, first.stderr);
    assert.ok(
      first.stdout.includes(`checkpoint saved in ${sub}/ck/iter_0000002 (resume with --load ${sub}/ck)`),
    );
    assert.equal(readTracker(`${sub}/ck`)?.iteration, 2);
    assert.ok([...Deno.readDirSync(`${sub}/tb`)].some((e) => e.name.startsWith("events.out.tfevents.")));
    assert.ok(Deno.readTextFileSync(`${sub}/m.jsonl`).includes('"iteration":2'));

    const resumed = await denoTask(sub, "pretrain:gpt", [...shape, "--train-iters", "3", "--load", "ck"]);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.ok(resumed.stdout.includes(`loaded checkpoint ${sub}/ck at iteration 2`), resumed.stdout);
    assert.equal(readTracker(`${sub}/ck`)?.iteration, 3);
    for (const p of ["ck", "tb", "m.jsonl", "data"]) assert.ok(!existsSync(`${ROOT}/${p}`), `${ROOT}/${p}`);
  } finally {
    Deno.removeSync(top, { recursive: true });
  }
});

function existsSync(p: string): boolean {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
}
