// merge-checkpoints through the real CLI: a GPT trained at (TP, PP) = (2, 2) is resharded to (1, 1),
// (1, 2) and (2, 1); the trainer resumed from each (weights only, same data position) gives the same
// losses as resumed from the original (relative 1e-5), and resharding back to (2, 2) restores every
// tensor bit for bit.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { parsePreprocessArgs, preprocess } from "../src/data/preprocess.ts";
import { parseArgs, validateForTraining } from "../src/training/config.ts";
import { pretrainGPT } from "../src/training/train.ts";
import { readSafetensors } from "../src/training/safetensors.ts";
import { errorLine, runScript } from "./helpers/run_cli.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const VOCAB = 30;
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_merge_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const backend = createCpuBackend({ log: () => {} });

async function data(): Promise<string> {
  const docs = Array.from(
    { length: 40 },
    (_, d) =>
      JSON.stringify({ text: Array.from({ length: 20 + d }, (_, i) => (i * 7 + d * 3) % VOCAB).join(" ") }),
  );
  Deno.writeTextFileSync(`${DIR}/c.jsonl`, docs.join("\n") + "\n");
  await preprocess(
    parsePreprocessArgs([
      ...["--input", `${DIR}/c.jsonl`, "--output-prefix", `${DIR}/c`, "--append-eod"],
      ...["--tokenizer-type", "NullTokenizer", "--vocab-size", String(VOCAB)],
    ])!,
  );
  return `${DIR}/c_text_document`;
}

const args = (dataPath: string, tp: number, pp: number, iters: number, extra: string[]) => [
  ...["--num-layers", "2", "--hidden-size", "8", "--num-attention-heads", "2"],
  ...[
    "--seq-length",
    "8",
    "--max-position-embeddings",
    "8",
    "--micro-batch-size",
    "2",
    "--global-batch-size",
    "4",
  ],
  ...["--lr", "1e-2", "--train-iters", String(iters), "--eval-interval", "100", "--eval-iters", "1"],
  ...["--log-interval", "1", "--make-vocab-size-divisible-by", "8", "--split", "80,10,10"],
  ...["--tokenizer-type", "NullTokenizer", "--vocab-size", String(VOCAB), "--data-path", dataPath],
  ...["--tensor-model-parallel-size", String(tp), "--pipeline-model-parallel-size", String(pp)],
  ...extra,
];

async function train(argv: string[]): Promise<number[]> {
  const r = await pretrainGPT(validateForTraining(parseArgs(argv)), { backend, log: () => {} });
  return r.history.map((h) => h.loss);
}

const merge = (load: string, save: string, tp: number, pp: number) =>
  runScript(CLI, [
    "merge-checkpoints",
    ...["--load", load, "--save", save],
    ...["--target-tensor-parallel-size", String(tp), "--target-pipeline-parallel-size", String(pp)],
  ]);

Deno.test("merge-checkpoints: (2,2) -> (1,1), (1,2), (2,1) resume with the original's losses; back to (2,2) is exact", async () => {
  const dataPath = await data();
  const orig = `${DIR}/orig`;
  await train(args(dataPath, 2, 2, 2, ["--save", orig, "--save-interval", "2"]));
  const resume = ["--no-load-optim", "--no-load-rng"];
  const ref = await train(args(dataPath, 2, 2, 4, ["--load", orig, ...resume]));
  assert.equal(ref.length, 2);
  for (const [tp, pp] of [[1, 1], [1, 2], [2, 1]]) {
    const dst = `${DIR}/m${tp}${pp}`;
    const r = await merge(orig, dst, tp, pp);
    assert.equal(r.code, 0, r.stderr);
    const got = await train(args(dataPath, tp, pp, 4, ["--load", dst, ...resume]));
    assert.equal(got.length, ref.length);
    got.forEach((l, i) =>
      assert.ok(Math.abs(l - ref[i]) <= 1e-5 * Math.abs(ref[i]), `(${tp},${pp}) ${l} vs ${ref[i]}`)
    );
  }
  // (1,1) -> (2,2): every rank's tensors equal the trainer's own, bit for bit.
  const back = `${DIR}/back22`;
  const r = await merge(`${DIR}/m11`, back, 2, 2);
  assert.equal(r.code, 0, r.stderr);
  for (const rank of ["mp_rank_00_000", "mp_rank_01_000", "mp_rank_00_001", "mp_rank_01_001"]) {
    const a = readSafetensors(`${orig}/iter_0000002/${rank}/model.safetensors`).tensors;
    const b = new Map(
      readSafetensors(`${back}/iter_0000002/${rank}/model.safetensors`).tensors.map((t) => [t.name, t]),
    );
    assert.equal(b.size, a.length, rank);
    for (const t of a) {
      const u = b.get(t.name)!;
      assert.deepEqual(u.shape, t.shape, t.name);
      assert.deepEqual(
        new Uint8Array(u.data.buffer, u.data.byteOffset, u.data.byteLength),
        new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
        `${rank} ${t.name}`,
      );
    }
  }
});

Deno.test("merge-checkpoints: bad input is one line and writes nothing", async () => {
  const r = await merge(`${DIR}/nothing`, `${DIR}/out`, 1, 1);
  assert.equal(r.code, 1);
  assert.match(
    errorLine(r, "merge-checkpoints"),
    /^--load .*nothing: not a megatron-deno or Megatron-LM checkpoint folder/,
  );
  const u = await runScript(CLI, [
    "merge-checkpoints",
    "--load",
    DIR,
    "--save",
    `${DIR}/out`,
    "--target-tensor-parallel-size",
    "x",
  ]);
  assert.equal(u.code, 2);
  assert.equal(
    errorLine(u, "merge-checkpoints"),
    '--target-tensor-parallel-size: expected an integer, found "x"',
  );
  assert.throws(() => Deno.statSync(`${DIR}/out`));
});
