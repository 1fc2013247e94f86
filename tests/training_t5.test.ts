// T5 pretraining through the generic trainer: layout invariance (TP=2, DP=2 and TP=2 x DP=2 give one
// rank's per-iteration and validation losses within 1e-5 and the same final weights), bit-exact resume,
// Megatron's batch fields from real dataset samples (masks inverted to 1 = masked), T5's flag rules, and
// a real `cli.ts pretrain-t5` run checking the logged loss, the exit code and the checkpoint files.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { loadCheckpoint } from "../src/training/checkpoint.ts";
import { mergeShards, weightRule } from "../src/models/weight_names.ts";
import { type Config, ConfigError, parseArgs, validateForTraining } from "../src/training/config.ts";
import { t5HostBatch, t5Task } from "../src/training/t5_task.ts";
import type { TrainingTask } from "../src/training/task.ts";
import { pretrain } from "../src/training/train.ts";
import { buildTokenizer } from "../src/tokenizer/mod.ts";
import { writeTinyT5Data } from "./helpers/tiny_t5_data.ts";

const task = t5Task as TrainingTask<unknown>;

function baseArgs(d: { vocabFile: string; prefix: string }, iters: number): string[] {
  return [
    ...["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4"],
    ...["--encoder-seq-length", "24", "--decoder-seq-length", "12", "--max-position-embeddings", "24"],
    ...["--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", String(iters)],
    ...["--lr", "5e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine", "--lr-warmup-iters", "2"],
    ...["--weight-decay", "0.01", "--clip-grad", "1.0"],
    ...["--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", d.vocabFile, "--vocab-extra-ids", "8"],
    // 57 tokens + [BOS]/[EOS] + 8 sentinels = 67: padded to 128 at TP=1 and TP=2 alike.
    ...["--make-vocab-size-divisible-by", "64", "--data-path", d.prefix, "--split", "80,20,0"],
    ...["--hidden-dropout", "0.1", "--attention-dropout", "0.1", "--seed", "1234"],
    ...["--eval-iters", "1", "--eval-interval", "3", "--log-interval", "1000"],
  ];
}

interface Layout {
  tp: number;
  dp: number;
}

const layoutArgs = (l: Layout) => [
  ...["--tensor-model-parallel-size", String(l.tp), "--data-parallel-size", String(l.dp)],
];

/** The saved model merged into full TP=1 tensors by the weight table's split rules. */
function merged(save: string, tp: number): Map<string, Float64Array> {
  const shards = new Map<string, { shape: number[]; data: Float64Array }[]>();
  for (let t = 0; t < tp; t++) {
    for (const nt of loadCheckpoint(save, { tp: t, pp: 0 }, { loadOptim: false, ppSize: 1 }).model) {
      const list = shards.get(nt.name) ?? [];
      list[t] = { shape: nt.shape, data: Float64Array.from(nt.data as ArrayLike<number>) };
      shards.set(nt.name, list);
    }
  }
  const out = new Map<string, Float64Array>();
  for (const [n, s] of shards) {
    const split = weightRule(n).split;
    if (split === null) {
      for (const x of s) assert.deepEqual(x.data, s[0].data, `${n}: TP replicas differ`);
    }
    out.set(n, mergeShards(s.map((x) => x.data), s[0].shape, split).data);
  }
  return out;
}

interface RunOut {
  losses: number[];
  valid: number[];
  weights: Map<string, Float64Array>;
  cfg: Config;
}

async function train(args: string[], tp: number, save: string): Promise<RunOut> {
  const cfg = validateForTraining(parseArgs([...args, "--save", save]), task.flags);
  const r = await pretrain(task, cfg, { backend: createCpuBackend({ log: () => {} }), log: () => {} });
  return {
    losses: r.history.map((h) => h.loss),
    valid: r.validation.map((v) => v.loss),
    weights: merged(save, tp),
    cfg,
  };
}

function close(a: number, b: number, rel: number, what: string) {
  assert.ok(Math.abs(a - b) <= rel * Math.max(Math.abs(a), Math.abs(b)), `${what}: ${a} vs ${b}`);
}

Deno.test("T5 layout invariance: TP=2, DP=2, TP=2 x DP=2 (also with recompute) give one rank's losses and weights (dropout on)", async (t) => {
  const dir = Deno.makeTempDirSync({ prefix: "t5_layout_" });
  try {
    const d = writeTinyT5Data(dir);
    const ref = await train([...baseArgs(d, 6), ...layoutArgs({ tp: 1, dp: 1 })], 1, `${dir}/ref`);
    assert.ok(ref.losses.every(Number.isFinite) && ref.losses.length === 6);
    assert.ok(ref.losses[5] < ref.losses[0], `loss did not decrease: ${ref.losses}`);
    assert.equal(ref.valid.length, 2, "validation at iterations 3 and 6");
    const recompute = [
      "--activations-checkpoint-method",
      "uniform",
      "--activations-checkpoint-num-layers",
      "1",
    ];
    for (
      const l of [{ tp: 2, dp: 1 }, { tp: 1, dp: 2 }, { tp: 2, dp: 2 }, { tp: 2, dp: 2, extra: recompute }]
    ) {
      const label = `TP=${l.tp} DP=${l.dp}${l.extra ? " with activation recompute" : ""}`;
      await t.step(label, async () => {
        const got = await train(
          [...baseArgs(d, 6), ...layoutArgs(l), ...(l.extra ?? [])],
          l.tp,
          `${dir}/tp${l.tp}dp${l.dp}${l.extra ? "r" : ""}`,
        );
        got.losses.forEach((x, i) => close(x, ref.losses[i], 1e-5, `iteration ${i + 1}`));
        got.valid.forEach((x, i) => close(x, ref.valid[i], 1e-5, `validation ${i}`));
        assert.deepEqual([...got.weights.keys()].sort(), [...ref.weights.keys()].sort());
        for (const [n, w] of ref.weights) {
          // Key biases get only rounding noise (softmax is shift-invariant); compare them absolutely.
          const g = got.weights.get(n)!;
          let d2 = 0, w2 = 0;
          for (let i = 0; i < w.length; i++) {
            d2 += (g[i] - w[i]) ** 2;
            w2 += w[i] ** 2;
          }
          if (/query_key_value\.bias|key_value\.bias/.test(n)) continue;
          assert.ok(Math.sqrt(d2 / w2) <= 1e-5, `${n}: relative L2 ${Math.sqrt(d2 / w2)}`);
        }
      });
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("T5 resume (TP=2 x DP=2): stop at iteration 3, load, finish = uninterrupted run bit for bit", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "t5_resume_" });
  try {
    const d = writeTinyT5Data(dir);
    const l = { tp: 2, dp: 2 };
    const args = [...baseArgs(d, 6), ...layoutArgs(l)];
    const full = await train(args, l.tp, `${dir}/full`);
    const save = `${dir}/split`;
    const be = createCpuBackend({ log: () => {} });
    const run = (extra: string[]) =>
      pretrain(task, validateForTraining(parseArgs([...args, "--save", save, ...extra]), task.flags), {
        backend: be,
        log: () => {},
      });
    const first = await run(["--exit-interval", "3"]);
    assert.equal(first.exitReason, "exit-interval");
    const second = await run(["--load", save]);
    assert.deepEqual([...first.history, ...second.history].map((h) => h.loss), full.losses);
    const resumed = merged(save, l.tp);
    for (const [n, w] of full.weights) assert.deepEqual(resumed.get(n), w, `${n} differs after resume`);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("T5 batch: Megatron's fields from dataset samples, masks inverted to 1 = masked", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "t5_batch_" });
  try {
    const d = writeTinyT5Data(dir);
    const cfg = validateForTraining(parseArgs(baseArgs(d, 2)), task.flags);
    const tokenizer = await buildTokenizer({
      tokenizerType: "BertWordPieceLowerCase",
      vocabFile: d.vocabFile,
      vocabExtraIds: 8,
    });
    const ctx = { cfg, paddedVocab: 128, tokenizer, log: () => {} };
    const data = t5Task.buildDatasets(ctx, [16, 0, 0]);
    try {
      const samples = [data.train!.getItem(0), data.train!.getItem(1)];
      const hb = t5Task.makeBatch(ctx, samples);
      assert.deepEqual(Object.keys(hb).sort(), [
        "dec_mask",
        "enc_dec_mask",
        "enc_mask",
        "labels",
        "loss_mask",
        "text_dec",
        "text_enc",
      ]);
      assert.deepEqual(hb.text_enc.shape, [2, 24]);
      assert.deepEqual(hb.enc_dec_mask.shape, [2, 12, 24]);
      for (const [i, s] of samples.entries()) {
        assert.deepEqual(Array.from(hb.text_enc.data.subarray(i * 24, (i + 1) * 24)), Array.from(s.text_enc));
        assert.deepEqual(Array.from(hb.labels.data.subarray(i * 12, (i + 1) * 12)), Array.from(s.labels));
        assert.deepEqual(
          Array.from(hb.loss_mask.data.subarray(i * 12, (i + 1) * 12)),
          Array.from(s.loss_mask),
        );
        const m = hb.enc_dec_mask.data.subarray(i * 288, (i + 1) * 288);
        assert.deepEqual(Array.from(m), Array.from(s.enc_dec_mask, (x) => 1 - x));
        const e = hb.enc_mask.data.subarray(i * 576, (i + 1) * 576);
        assert.deepEqual(Array.from(e), Array.from(s.enc_mask, (x) => 1 - x));
      }
      // A sentinel (vocab 57 + [BOS]/[EOS] = ids 57, 58; sentinels from 59) is in every encoder input.
      assert.ok(samples.every((s) => s.text_enc.some((x) => x >= 59)));
      assert.throws(
        () => t5HostBatch(samples, 24, 10),
        /^Error: data: a T5 sample has 24 encoder \/ 12 decoder tokens, expected --encoder-seq-length 24 \/ --decoder-seq-length 10$/,
      );
      const j = t5Task.sampleJson!(ctx, samples[0], { decode: true });
      assert.deepEqual(j.text_enc, Array.from(samples[0].text_enc));
      assert.equal(typeof j.text_enc_decoded, "string");
      assert.match(j.text_enc_decoded as string, /<extra_id_0>/);
    } finally {
      data.close();
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("T5 flag rules: one line each", () => {
  const d = { vocabFile: "/nope/vocab.txt", prefix: "/nope/x" };
  const v = (extra: string[]) => {
    const cfg = validateForTraining(parseArgs([...baseArgs(d, 2), ...extra]), task.flags);
    t5Task.validate!(cfg);
  };
  const err = (extra: string[], msg: string) =>
    assert.throws(() => v(extra), (e) => e instanceof ConfigError && e.message === msg);
  err(
    ["--pipeline-model-parallel-size", "2"],
    "--pipeline-model-parallel-size 2: T5 has no pipeline parallelism (as in Megatron 2021); use tensor and data parallelism",
  );
  err(
    ["--vocab-extra-ids", "0"],
    "--vocab-extra-ids: T5 needs sentinel tokens, found none (Megatron uses 100)",
  );
  // Flags GPT rejects that T5 reads are accepted; GPT's other rejections stay.
  v(["--mask-prob", "0.2", "--short-seq-prob", "0.05", "--apply-residual-connection-post-layernorm"]);
  err(
    ["--reset-position-ids"],
    "--reset-position-ids: not supported; position ids always run 0..seq-length-1 over a sample",
  );
  const noDec = baseArgs(d, 2).filter((a, i, all) =>
    a !== "--decoder-seq-length" && all[i - 1] !== "--decoder-seq-length"
  );
  assert.throws(
    () => validateForTraining(parseArgs(noDec), task.flags),
    (e) => e instanceof ConfigError && e.message === "--decoder-seq-length is required for training",
  );
});

const CLI = new URL("../cli.ts", import.meta.url).pathname;

Deno.test("cli pretrain-t5: trains on tiny data, logs the lm loss, saves Megatron's checkpoint files; PP=2 is one line, exit 2", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "t5_cli_" });
  try {
    const d = writeTinyT5Data(dir);
    const save = `${dir}/ckpt`;
    const args = baseArgs(d, 4).map((a, i, all) => (all[i - 1] === "--log-interval" ? "2" : a));
    const run = (extra: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", CLI, "pretrain-t5", ...args, ...extra],
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output();
    const ok = await run(["--save", save, "--tensor-model-parallel-size", "2"]);
    const out = new TextDecoder().decode(ok.stdout), errText = new TextDecoder().decode(ok.stderr);
    assert.equal(ok.code, 0, errText + out);
    const losses = [...out.matchAll(/ iteration\s+(\d)\/\s+4 \|.* lm loss: (\S+) \|/g)].map((m) =>
      Number(m[2])
    );
    assert.equal(losses.length, 2, out);
    // 128 padded ids: the first loss is near ln(128), finite and decreasing.
    assert.ok(losses.every(Number.isFinite) && Math.abs(losses[0] - Math.log(128)) < 0.5, `${losses}`);
    assert.match(out, /validation loss at iteration 3 \| lm loss value: \d/);
    assert.ok(out.includes(`checkpoint saved in ${save}/iter_0000004 (resume with --load ${save})`), out);
    assert.equal(Deno.readTextFileSync(`${save}/latest_checkpointed_iteration.txt`).trim(), "4");
    for (const r of ["mp_rank_00", "mp_rank_01"]) {
      const names = [...Deno.readDirSync(`${save}/iter_0000004/${r}`)].map((e) => e.name).sort();
      assert.deepEqual(names.filter((n) => n.endsWith(".safetensors")), [
        "model.safetensors",
        "optim.safetensors",
      ]);
    }
    const names = loadCheckpoint(save, { tp: 1, pp: 0 }, { loadOptim: false, ppSize: 1 }).model.map((t) =>
      t.name
    );
    assert.ok(names.includes("language_model.decoder.layers.1.inter_attention.key_value.weight"), `${names}`);
    assert.ok(names.includes("lm_head.bias"));

    const bad = await run(["--pipeline-model-parallel-size", "2"]);
    const badErr = new TextDecoder().decode(bad.stderr);
    assert.equal(bad.code, 2, badErr);
    assert.deepEqual(badErr.trim().split("\n"), [
      "pretrain_t5: --pipeline-model-parallel-size 2: T5 has no pipeline parallelism (as in Megatron 2021); " +
      "use tensor and data parallelism",
    ]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
