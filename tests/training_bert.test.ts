// `deno task pretrain:bert` end to end on tiny data (a real process: exit code, the logged "lm loss" /
// "sop loss" per iteration and validation, the checkpoint it saves under Megatron's names), its
// one-line errors, and the BERT flags GPT rejects: each is read by the BERT task and changes the run.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { bertSampleToJson } from "../src/data/bert_dataset.ts";
import { buildTokenizer } from "../src/tokenizer/mod.ts";
import { BERT_FLAGS, bertTask, bertTaskFor } from "../src/training/bert_task.ts";
import { loadCheckpoint } from "../src/training/checkpoint.ts";
import { parseArgs, validateForTraining } from "../src/training/config.ts";
import type { TaskContext, TrainingTask } from "../src/training/task.ts";
import { pretrain, type TrainResult } from "../src/training/train.ts";
import { writeTinySentences, writeTinyVocab } from "./helpers/bert_tiny.ts";

const DIR = Deno.makeTempDirSync({ prefix: "mdeno_bert_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const VOCAB = writeTinyVocab(DIR);
const DATA = writeTinySentences(DIR);
const ROOT = new URL("..", import.meta.url).pathname;
const dec = new TextDecoder();

const ARGS = [
  ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2"],
  ...["--seq-length", "16", "--max-position-embeddings", "16", "--micro-batch-size", "2"],
  ...["--global-batch-size", "4", "--lr", "1e-3", "--train-iters", "4"],
  ...["--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", VOCAB, "--data-path", DATA],
  ...["--split", "80,20,0", "--eval-interval", "2", "--eval-iters", "1", "--log-interval", "1"],
  ...["--make-vocab-size-divisible-by", "8"],
];

async function task(args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "-q", "pretrain:bert", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** The error: exactly one "pretrain_bert: ..." line on stderr, no stack trace. */
function errorLine(r: { stderr: string }): string {
  const lines = r.stderr.split("\n").filter((l) => l.startsWith("pretrain_bert: "));
  assert.equal(lines.length, 1, `expected one error line, stderr:\n${r.stderr}`);
  assert.ok(!/^\s+at /m.test(r.stderr), `stack trace in stderr:\n${r.stderr}`);
  return lines[0].slice("pretrain_bert: ".length);
}

Deno.test("pretrain:bert trains on tiny data, logs lm and sop loss, saves Megatron's BERT names", async () => {
  const save = `${DIR}/ckpt`;
  const r = await task([...ARGS, "--save", save]);
  assert.equal(r.code, 0, r.stderr);
  for (let it = 1; it <= 4; it++) {
    assert.match(
      r.stdout,
      new RegExp(
        ` iteration\\s+${it}/\\s+4 \\|.* lm loss: \\d\\.\\d{6}e[+-]\\d+ \\| sop loss: \\d\\.\\d{6}e[+-]\\d+ \\|`,
      ),
    );
  }
  assert.match(r.stdout, /validation loss at iteration 2 \| lm loss value: \d.* \| sop loss value: \d/);
  assert.ok(
    r.stdout.includes(`checkpoint saved in ${save}/iter_0000004 (resume with --load ${save})`),
    r.stdout,
  );
  const ck = loadCheckpoint(save, { tp: 0, pp: 0 }, { loadOptim: false });
  const names = ck.model.map((t) => t.name);
  assert.deepEqual(names.filter((n) => !n.includes(".layers.")), [
    "language_model.embedding.word_embeddings.weight",
    "language_model.embedding.position_embeddings.weight",
    "language_model.embedding.tokentype_embeddings.weight",
    "language_model.encoder.final_layernorm.weight",
    "language_model.encoder.final_layernorm.bias",
    "language_model.pooler.dense.weight",
    "language_model.pooler.dense.bias",
    "lm_head.bias",
    "lm_head.dense.weight",
    "lm_head.dense.bias",
    "lm_head.layernorm.weight",
    "lm_head.layernorm.bias",
    "binary_head.weight",
    "binary_head.bias",
  ]);
  assert.deepEqual(ck.model.find((t) => t.name.endsWith("tokentype_embeddings.weight"))!.shape, [2, 16]);
  assert.deepEqual(ck.model.find((t) => t.name === "lm_head.bias")!.shape, [104]);
});

Deno.test("pretrain:bert: a GPT tokenizer or a T5-only flag is one line, exit 2", async () => {
  const gpt = ARGS.map((a, i, all) => all[i - 1] === "--tokenizer-type" ? "GPT2BPETokenizer" : a)
    .filter((a, i, all) => a !== "--vocab-file" && all[i - 1] !== "--vocab-file");
  const r = await task(gpt);
  assert.equal(r.code, 2, r.stderr);
  assert.equal(
    errorLine(r),
    "--tokenizer-type: BERT needs BertWordPieceLowerCase or BertWordPieceCase, found GPT2BPETokenizer",
  );
  const t5 = await task([...ARGS, "--decoder-seq-length", "8"]);
  assert.equal(t5.code, 2, t5.stderr);
  assert.equal(
    errorLine(t5),
    "--decoder-seq-length 8: not supported; it applies to T5's decoder; GPT uses --seq-length",
  );
});

async function run(extra: string[]): Promise<TrainResult> {
  const cfg = validateForTraining(parseArgs([...ARGS, ...extra]), BERT_FLAGS);
  return await pretrain(bertTaskFor(cfg) as TrainingTask<unknown>, cfg, {
    backend: createCpuBackend({ log: () => {} }),
    log: () => {},
  });
}

Deno.test("BERT flags GPT rejects are read by pretrain-bert and change the run", async () => {
  const base = await run([]);
  const lm = (r: TrainResult) => r.history.map((h) => h.scalars["lm loss"]);
  const sop = (r: TrainResult) => r.history.map((h) => h.scalars["sop loss"]);
  assert.ok(sop(base).every(Number.isFinite));
  const noBin = await run(["--bert-no-binary-head"]);
  assert.deepEqual(Object.keys(noBin.history[0].scalars), ["lm loss"]);
  assert.deepEqual(noBin.history.map((h) => h.loss), lm(noBin));
  for (
    const extra of [
      ["--mask-prob", "0.3"],
      ["--short-seq-prob", "0.9"],
      ["--apply-residual-connection-post-layernorm"],
      ["--no-bias-gelu-fusion"],
    ]
  ) {
    const r = await run(extra);
    assert.notDeepEqual(lm(r), lm(base), `${extra.join(" ")}: lm losses unchanged`);
  }
  // --vocab-extra-ids appends sentinel tokens to the WordPiece vocabulary (97 + 5 -> padded 104).
  assert.equal(base.paddedVocabSize, 104);
  assert.equal((await run(["--vocab-extra-ids", "10"])).paddedVocabSize, 112);
});

Deno.test("bertTask: batches carry Megatron's fields and the extended mask; sampleJson is bertSampleToJson", async () => {
  const cfg = validateForTraining(parseArgs([...ARGS, "--seq-length", "12"]), BERT_FLAGS);
  const tokenizer = await buildTokenizer({ tokenizerType: "BertWordPieceLowerCase", vocabFile: VOCAB });
  const ctx: TaskContext = { cfg, paddedVocab: 104, tokenizer, log: () => {} };
  const ds = bertTask.buildDatasets(ctx, [8, 0, 0]);
  try {
    const samples = [0, 1, 2, 3].map((i) => ds.train!.getItem(i));
    // At seq-length 12 some samples end in padding (short targets): the mask must show it.
    const padded = samples.findIndex((s) => s.padding_mask.includes(0));
    assert.ok(padded >= 0, "no padded sample among the first four");
    const hb = bertTask.makeBatch(ctx, samples);
    assert.deepEqual(Object.keys(hb).sort(), [
      "attention_mask",
      "is_random",
      "labels",
      "loss_mask",
      "padding_mask",
      "text",
      "types",
    ]);
    assert.deepEqual(hb.attention_mask.shape, [4, 12, 12]);
    for (let b = 0; b < 4; b++) {
      const s = samples[b];
      assert.deepEqual(Array.from(hb.text.data.subarray(b * 12, b * 12 + 12)), Array.from(s.text));
      assert.equal(hb.is_random.data[b], s.is_random);
      for (let i = 0; i < 12; i++) {
        assert.equal(hb.loss_mask.data[b * 12 + i], s.loss_mask[i]);
        for (let j = 0; j < 12; j++) {
          const want = s.padding_mask[i] === 1 && s.padding_mask[j] === 1 ? 0 : 1;
          assert.equal(hb.attention_mask.data[(b * 12 + i) * 12 + j], want, `sample ${b} (${i}, ${j})`);
        }
      }
    }
    const s = samples[padded];
    const json = bertTask.sampleJson!(ctx, s, { decode: true });
    const { decoded, ...fields } = json;
    assert.deepEqual(fields, bertSampleToJson(s));
    const real = s.text.filter((_, i) => s.padding_mask[i] === 1);
    assert.equal(decoded, tokenizer.detokenize(real));
    assert.ok(!("decoded" in bertTask.sampleJson!(ctx, s, { decode: false })));
  } finally {
    ds.close();
  }
});

Deno.test("pretrain:bert without --data-path builds the BERT corpus on first use, then it and pretrain:t5 reuse it", async () => {
  const cache = `${DIR}/cache`;
  const small = [
    ...["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2", "--seq-length", "32"],
    ...["--micro-batch-size", "2", "--global-batch-size", "2", "--train-iters", "2", "--eval-iters", "1"],
    ...["--eval-interval", "2", "--save", `${DIR}/default_ckpt`],
  ];
  const runDefault = async () => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}/cli.ts`, "pretrain-bert", ...small],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", MEGATRON_DENO_CACHE: cache },
    }).output();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  };
  const prefix = `${cache}/bert/sotu_text_sentence`;
  const first = await runDefault();
  assert.equal(first.code, 0, first.stderr);
  assert.ok(first.stdout.includes(`corpus: building ${prefix} from `), first.stdout);
  // 233 addresses split into sentences, bert-base-uncased (30522 + [BOS]/[EOS], padded to 30592).
  assert.match(first.stdout, /corpus: 233 documents, \d{5,} sentences, \d+ tokens/);
  assert.ok(first.stdout.includes("> padded vocab (size: 30524) with 68 dummy tokens (new size: 30592)"));
  assert.ok(first.stdout.includes(`> no --data-path: training the embedded default BERT on ${prefix}`));
  assert.match(first.stdout, / iteration\s+2\/\s+2 \|.* lm loss: .* \| sop loss: /);
  const again = await runDefault();
  assert.equal(again.code, 0, again.stderr);
  assert.ok(!again.stdout.includes("corpus: building"), again.stdout);

  // pretrain:t5's embedded default trains on the same cached build (sentinels only extend the vocabulary).
  const t5 = await new Deno.Command(Deno.execPath(), {
    args: [
      ...["run", "-A", `${ROOT}/cli.ts`, "pretrain-t5"],
      ...["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2", "--kv-channels", "16"],
      ...["--ffn-hidden-size", "64", "--encoder-seq-length", "32", "--decoder-seq-length", "8"],
      ...["--max-position-embeddings", "32", "--micro-batch-size", "2", "--global-batch-size", "2"],
      ...["--train-iters", "2", "--eval-iters", "1", "--eval-interval", "2", "--save", `${DIR}/default_t5`],
    ],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", MEGATRON_DENO_CACHE: cache },
  }).output();
  const t5out = dec.decode(t5.stdout);
  assert.equal(t5.code, 0, dec.decode(t5.stderr));
  assert.ok(!t5out.includes("corpus: building"), t5out);
  assert.ok(
    t5out.includes(
      `> no --data-path: training the embedded default T5 on ${prefix}; from the command line: `,
    ),
  );
  assert.match(t5out, / iteration\s+2\/\s+2 \|.* lm loss: /);
  assert.ok(!t5out.includes("sop loss"), t5out);
});
