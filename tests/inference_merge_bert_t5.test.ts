// merge-checkpoints for BERT and T5 through the real CLI. A BERT trained at TP 2 (HF BERT's layer form:
// post-LN residual, erf GeLU, eps 1e-12, dropout on) is resharded to (1, 1) and (2, 2); a T5 trained at
// TP 2 to TP 1 (T5 has no pipeline parallelism, as Megatron 2021). The trainer resumed from each
// reshard (weights only, same data position) gives the original's losses (relative 1e-5), and
// resharding back restores every tensor bit for bit (T5 also through a Megatron .pt folder). A T5
// reshard to PP 2, or a T5 to Hugging Face, is one line.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { bertTaskFor } from "../src/training/bert_task.ts";
import { parseArgs, validateForTraining } from "../src/training/config.ts";
import { readSafetensors } from "../src/training/safetensors.ts";
import { t5Task } from "../src/training/t5_task.ts";
import type { TrainingTask } from "../src/training/task.ts";
import { pretrain } from "../src/training/train.ts";
import { writeTinySentences, writeTinyVocab } from "./helpers/bert_tiny.ts";
import { writeTinyT5Data } from "./helpers/tiny_t5_data.ts";
import { errorLine, runScript } from "./helpers/run_cli.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_merge_bert_t5_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const backend = createCpuBackend({ log: () => {} });
const RESUME = ["--no-load-optim", "--no-load-rng"];

const merge = (load: string, save: string, tp: number, pp: number) =>
  runScript(CLI, [
    "merge-checkpoints",
    ...["--load", load, "--save", save],
    ...["--target-tensor-parallel-size", String(tp), "--target-pipeline-parallel-size", String(pp)],
  ]);

function assertLosses(got: number[], want: number[], what: string) {
  assert.equal(got.length, want.length, what);
  got.forEach((l, i) =>
    assert.ok(Math.abs(l - want[i]) <= 1e-5 * Math.abs(want[i]), `${what}: ${l} vs ${want[i]}`)
  );
}

/** Every tensor of rank `rank` in two checkpoints equal in name, shape, dtype and bytes. */
function sameRank(a: string, b: string, rank: string) {
  const x = readSafetensors(`${a}/${rank}/model.safetensors`).tensors;
  const y = new Map(readSafetensors(`${b}/${rank}/model.safetensors`).tensors.map((t) => [t.name, t]));
  assert.equal(y.size, x.length, rank);
  const bytes = (d: ArrayBufferView) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  for (const t of x) {
    const u = y.get(t.name);
    assert.ok(u, `${rank}: ${t.name} missing`);
    assert.deepEqual(u.shape, t.shape, t.name);
    assert.equal(u.dtype, t.dtype, t.name);
    assert.deepEqual(bytes(u.data), bytes(t.data), `${rank} ${t.name}`);
  }
}

Deno.test("merge-checkpoints (BERT): TP 2 -> (1,1) and (2,2) resume with the original's losses; back to TP 2 is exact", async () => {
  const vocab = writeTinyVocab(DIR), data = writeTinySentences(DIR);
  const args = (tp: number, pp: number, iters: number, extra: string[]) => [
    ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2"],
    ...["--seq-length", "16", "--max-position-embeddings", "16", "--micro-batch-size", "2"],
    ...["--global-batch-size", "4", "--lr", "1e-3", "--train-iters", String(iters)],
    ...["--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", vocab, "--data-path", data],
    ...["--split", "80,20,0", "--eval-interval", "100", "--eval-iters", "1", "--log-interval", "1"],
    // 97 tokens pad to 98 at TP 1 and TP 2 alike, so a reshard keeps every trained vocabulary row.
    ...["--make-vocab-size-divisible-by", "7"],
    ...[
      "--apply-residual-connection-post-layernorm",
      "--no-bias-gelu-fusion",
      "--layernorm-epsilon",
      "1e-12",
    ],
    ...["--tensor-model-parallel-size", String(tp), "--pipeline-model-parallel-size", String(pp)],
    ...extra,
  ];
  const train = async (argv: string[]) => {
    const cfg = validateForTraining(parseArgs(argv), bertTaskFor(parseArgs(argv)).flags);
    const r = await pretrain(bertTaskFor(cfg) as TrainingTask<unknown>, cfg, { backend, log: () => {} });
    return r.history.map((h) => h.loss);
  };
  const orig = `${DIR}/bert_orig`;
  await train(args(2, 1, 2, ["--save", orig, "--save-interval", "2"]));
  const ref = await train(args(2, 1, 4, ["--load", orig, ...RESUME]));
  assert.equal(ref.length, 2);
  for (const [tp, pp] of [[1, 1], [2, 2]]) {
    const dst = `${DIR}/bert_m${tp}${pp}`;
    const r = await merge(orig, dst, tp, pp);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`resharded bert .* TP ${tp}, PP ${pp}`));
    assertLosses(await train(args(tp, pp, 4, ["--load", dst, ...RESUME])), ref, `BERT (${tp},${pp})`);
  }
  const back = `${DIR}/bert_back`;
  const r = await merge(`${DIR}/bert_m22`, back, 2, 1);
  assert.equal(r.code, 0, r.stderr);
  for (const rank of ["mp_rank_00", "mp_rank_01"]) {
    sameRank(`${orig}/iter_0000002`, `${back}/iter_0000002`, rank);
  }
});

Deno.test("merge-checkpoints (T5): TP 2 -> TP 1 resumes with the original's losses; back is exact; PP is refused", async () => {
  const d = writeTinyT5Data(Deno.makeTempDirSync({ dir: DIR }));
  const args = (tp: number, iters: number, extra: string[]) => [
    ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2"],
    ...["--encoder-seq-length", "24", "--decoder-seq-length", "12", "--max-position-embeddings", "24"],
    ...[
      "--micro-batch-size",
      "2",
      "--global-batch-size",
      "4",
      "--train-iters",
      String(iters),
      "--lr",
      "1e-3",
    ],
    ...["--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", d.vocabFile, "--vocab-extra-ids", "8"],
    // 67 tokens pad to 128 at TP 1 and TP 2 alike.
    ...["--make-vocab-size-divisible-by", "64", "--data-path", d.prefix, "--split", "80,20,0"],
    ...["--eval-iters", "1", "--eval-interval", "100", "--log-interval", "1000"],
    ...["--tensor-model-parallel-size", String(tp)],
    ...extra,
  ];
  const task = t5Task as TrainingTask<unknown>;
  const train = async (argv: string[]) => {
    const r = await pretrain(task, validateForTraining(parseArgs(argv), task.flags), {
      backend,
      log: () => {},
    });
    return r.history.map((h) => h.loss);
  };
  const orig = `${DIR}/t5_orig`;
  await train(args(2, 2, ["--save", orig, "--save-interval", "2"]));
  const ref = await train(args(2, 4, ["--load", orig, ...RESUME]));
  const dst = `${DIR}/t5_m1`;
  let r = await merge(orig, dst, 1, 1);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /resharded t5 .* TP 1, PP 1/);
  assertLosses(await train(args(1, 4, ["--load", dst, ...RESUME])), ref, "T5 TP 1");
  r = await merge(dst, `${DIR}/t5_back`, 2, 1);
  assert.equal(r.code, 0, r.stderr);
  for (const rank of ["mp_rank_00", "mp_rank_01"]) {
    sameRank(`${orig}/iter_0000002`, `${DIR}/t5_back/iter_0000002`, rank);
  }
  // T5 through a Megatron .pt folder (TP 2) and back: bit-exact too.
  const convert = (...a: string[]) => runScript(CLI, ["convert", ...a]);
  r = await convert(
    "--from",
    "megatron-deno",
    "--to",
    "megatron-pt",
    "--load",
    orig,
    "--save",
    `${DIR}/t5_pt`,
  );
  assert.equal(r.code, 0, r.stderr);
  assert.ok(Deno.statSync(`${DIR}/t5_pt/iter_0000002/mp_rank_00/model_optim_rng.pt`).isFile);
  r = await convert(
    ...[
      "--from",
      "megatron-pt",
      "--to",
      "megatron-deno",
      "--load",
      `${DIR}/t5_pt`,
      "--save",
      `${DIR}/t5_pt_back`,
    ],
    ...["--target-tensor-parallel-size", "2"],
  );
  assert.equal(r.code, 0, r.stderr);
  for (const rank of ["mp_rank_00", "mp_rank_01"]) {
    sameRank(`${orig}/iter_0000002`, `${DIR}/t5_pt_back/iter_0000002`, rank);
  }
  r = await convert("--from", "megatron-deno", "--to", "hf", "--load", dst, "--save", `${DIR}/t5_hf`);
  assert.equal(r.code, 1);
  assert.match(errorLine(r, "convert"), /^--to hf: Megatron's T5 .* has no Hugging Face T5 equivalent$/);
  r = await merge(orig, `${DIR}/t5_pp`, 1, 2);
  assert.equal(r.code, 1);
  assert.equal(
    errorLine(r, "merge-checkpoints"),
    "--target-pipeline-parallel-size 2: T5 has no pipeline parallelism (as Megatron 2021); use TP only",
  );
  assert.throws(() => Deno.statSync(`${DIR}/t5_pp`));
});
