// `deno task finetune` end to end (real processes) on the toy RACE / MNLI / QQP files of
// tests/data/finetune (scripts/finetune_toy_data.ts: each task separable by one word) from a tiny BERT
// that `deno task pretrain:bert` trains here for 4 iterations:
// - QQP reaches >= 90 % through the CLI; the accuracy the CLI prints equals an independent f64 BERT
//   forward (written out below from the saved weights, not the project's modules) on dev.tsv for the
//   best and the last checkpoint; the best checkpoint is the epoch with the maximum accuracy;
// - MNLI with two validation sets: a run stopped mid-epoch and resumed with --load prints the same
//   losses, accuracies and best epoch as an uninterrupted run;
// - RACE from scratch: TP=2, PP=2 and DP=2 give TP=1's losses and accuracies; --keep-last;
// - bad input: one line naming the file/line or flag, exit 1 (data) or 2 (flags), nothing saved.

import assert from "node:assert/strict";
import { glueSample, readQqp } from "../src/downstream/finetune_data.ts";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { FinetuneChunk, finetuneHostBatch } from "../src/finetune/task.ts";
import { BertModel } from "../src/models/bert.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import { decodeTorchCheckpoint, toPlain } from "../src/interop/torch_checkpoint.ts";
import { loadCheckpoint } from "../src/training/checkpoint.ts";
import { uploadBatch } from "../src/training/task.ts";
import { newMicroBatchContext } from "../src/transformer/common.ts";
import { buildTokenizer } from "../src/tokenizer/mod.ts";
import { MMapIndexedDatasetBuilder } from "../src/data/indexed_dataset.ts";
import { writeTinySentences, writeTinyVocab } from "./helpers/bert_tiny.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const DATA = `${ROOT}tests/data/finetune`;
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_finetune_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const VOCAB = writeTinyVocab(DIR);
const SENTENCES = writeTinySentences(DIR);
const dec = new TextDecoder();

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

async function task(name: string, args: string[]): Promise<Ran> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "-q", name, ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** The one "finetune: ..." line on stderr (no stack trace). */
function errorLine(r: Ran): string {
  const lines = r.stderr.split("\n").filter((l) => l.startsWith("finetune: "));
  assert.equal(lines.length, 1, `expected one error line, stderr:\n${r.stderr}\nstdout:\n${r.stdout}`);
  assert.ok(!/^\s+at /m.test(r.stderr), `stack trace in stderr:\n${r.stderr}`);
  return lines[0].slice("finetune: ".length);
}

// The pretrained BERT: 2 layers, hidden 16, seq 32, on the tiny vocabulary.
const PRE = `${DIR}/bert`;
{
  const r = await task("pretrain:bert", [
    ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2", "--seq-length", "32"],
    ...["--max-position-embeddings", "32", "--micro-batch-size", "4", "--global-batch-size", "8"],
    ...["--lr", "1e-3", "--train-iters", "4", "--tokenizer-type", "BertWordPieceLowerCase"],
    ...["--vocab-file", VOCAB, "--data-path", SENTENCES, "--split", "80,20,0", "--eval-iters", "1"],
    ...["--make-vocab-size-divisible-by", "8", "--save", PRE],
  ]);
  if (r.code !== 0) throw new Error(`pretrain:bert failed:\n${r.stderr}`);
}

const BATCH = ["--micro-batch-size", "4", "--global-batch-size", "8"];

/** The logged loss of every iteration. */
const losses = (s: string) => [...s.matchAll(/ loss: ([\d.e+-]+) \|/g)].map((m) => Number(m[1]));

function assertClose(got: number[], want: number[], rel: number, what: string) {
  assert.equal(got.length, want.length, what);
  got.forEach((v, i) =>
    assert.ok(
      Math.abs(v - want[i]) <= rel * Math.abs(want[i]),
      `${what}: iteration ${i + 1}: ${v} vs ${want[i]}`,
    )
  );
}

interface SetLine {
  epoch: string;
  name: string;
  correct: number;
  total: number;
}

/** Megatron's per-set accuracy lines (" > |epoch: 3| metrics for dev: correct / total = ..."). */
function setLines(stdout: string): SetLine[] {
  return [
    ...stdout.matchAll(
      / > \|(epoch|iteration): (-?\d+)\| metrics for (\S+): correct \/ total = (\d+) \/ (\d+) = /g,
    ),
  ]
    .map((m) => ({ epoch: `${m[1]} ${m[2]}`, name: m[3], correct: Number(m[4]), total: Number(m[5]) }));
}

/** The overall accuracy per epoch, in percent. */
function overall(stdout: string): number[] {
  return [...stdout.matchAll(/ >> \|epoch: \d+\| overall: correct \/ total = \d+ \/ \d+ = ([\d.]+) %/g)]
    .map((m) => Number(m[1]));
}

/** Log lines with the timing fields removed (what a resumed run must repeat exactly). */
function stable(stdout: string, re: RegExp): string[] {
  return stdout.split("\n").filter((l) => re.test(l)).map((l) =>
    l.replace(/ elapsed time per iteration \(ms\): [\d.]+ \|/, "").replace(
      /, elapsed time \(sec\): [\d.]+/,
      "",
    )
  );
}

// ---- an independent BERT classifier forward (f64), from the checkpoint's tensors ------------------

type Weights = Map<string, { shape: number[]; data: Float64Array }>;

function weightsOf(dir: string): Weights {
  const ck = loadCheckpoint(dir, { tp: 0, pp: 0 }, { loadOptim: false });
  return new Map(
    ck.model.map((t) => [t.name, { shape: t.shape, data: Float64Array.from(t.data as Float32Array) }]),
  );
}

/** y[r] = x[r] W^T + b for W [out, in]. */
function dense(x: Float64Array[], w: Weights, name: string): Float64Array[] {
  const W = w.get(`${name}.weight`)!, b = w.get(`${name}.bias`)!.data;
  const [out, inF] = W.shape;
  return x.map((row) => {
    const y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let s = b[o];
      for (let i = 0; i < inF; i++) s += W.data[o * inF + i] * row[i];
      y[o] = s;
    }
    return y;
  });
}

function layerNorm(x: Float64Array[], w: Weights, name: string): Float64Array[] {
  const g = w.get(`${name}.weight`)!.data, b = w.get(`${name}.bias`)!.data;
  return x.map((row) => {
    const mean = row.reduce((a, v) => a + v, 0) / row.length;
    const v = row.reduce((a, x) => a + (x - mean) ** 2, 0) / row.length;
    return row.map((x, i) => (x - mean) / Math.sqrt(v + 1e-5) * g[i] + b[i]);
  });
}

const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)));

/** Logits of one [CLS] a [SEP] b [SEP] sequence: embeddings (word + position + token type), pre-LN
 *  layers (softmax(q k^T / sqrt(hn)) over unpadded keys, the tanh GeLU MLP), final LayerNorm, pooler
 *  tanh(dense) on [CLS], classification_head. */
function classify(w: Weights, ids: number[], types: number[], keep: number[], heads: number, layers: number) {
  const h = w.get("language_model.embedding.position_embeddings.weight")!.shape[1], hn = h / heads;
  const word = w.get("language_model.embedding.word_embeddings.weight")!.data;
  const pos = w.get("language_model.embedding.position_embeddings.weight")!.data;
  const tt = w.get("language_model.embedding.tokentype_embeddings.weight")!.data;
  let x = ids.map((id, t) =>
    Float64Array.from({ length: h }, (_, j) => word[id * h + j] + pos[t * h + j] + tt[types[t] * h + j])
  );
  for (let l = 0; l < layers; l++) {
    const p = `language_model.encoder.layers.${l}.`;
    const qkv = dense(layerNorm(x, w, `${p}input_layernorm`), w, `${p}self_attention.query_key_value`);
    const ctx = x.map(() => new Float64Array(h));
    for (let n = 0; n < heads; n++) {
      // Rows of the fused weight are [heads, 3, hn]: head n's q, k, v are consecutive blocks.
      const q = (t: number) => qkv[t].subarray(n * 3 * hn, n * 3 * hn + hn);
      const k = (t: number) => qkv[t].subarray(n * 3 * hn + hn, n * 3 * hn + 2 * hn);
      const v = (t: number) => qkv[t].subarray(n * 3 * hn + 2 * hn, n * 3 * hn + 3 * hn);
      for (let i = 0; i < x.length; i++) {
        const sc = x.map((_, j) =>
          keep[j] ? q(i).reduce((a, qv, d) => a + qv * k(j)[d], 0) / Math.sqrt(hn) : -Infinity
        );
        const m = Math.max(...sc), e = sc.map((s) => Math.exp(s - m)), z = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j < x.length; j++) {
          for (let d = 0; d < hn; d++) ctx[i][n * hn + d] += e[j] / z * v(j)[d];
        }
      }
    }
    const att = dense(ctx, w, `${p}self_attention.dense`);
    x = x.map((r, t) => r.map((v, j) => v + att[t][j]));
    const mid = dense(layerNorm(x, w, `${p}post_attention_layernorm`), w, `${p}mlp.dense_h_to_4h`).map((r) =>
      r.map(gelu)
    );
    const mlp = dense(mid, w, `${p}mlp.dense_4h_to_h`);
    x = x.map((r, t) => r.map((v, j) => v + mlp[t][j]));
  }
  const cls = layerNorm([x[0]], w, "language_model.encoder.final_layernorm");
  const pooled = dense(cls, w, "language_model.pooler.dense").map((r) => r.map(Math.tanh));
  return dense(pooled, w, "classification_head")[0];
}

/** Correct predictions of a checkpoint on a QQP file, computed by `classify`; also checks the logits
 *  against the project's finetuning model (FinetuneChunk) loaded with the same weights. */
async function referenceQqp(ckpt: string, file: string): Promise<{ correct: number; total: number }> {
  const tok = await buildTokenizer({ tokenizerType: "BertWordPieceLowerCase", vocabFile: VOCAB });
  const sp = { cls: tok.cls!, sep: tok.sep!, pad: tok.pad! };
  const w = weightsOf(ckpt);
  const chunk = projectModel(w);
  let correct = 0, total = 0;
  for (const raw of readQqp(Deno.readTextFileSync(file), file).samples) {
    const s = glueSample(raw, (t) => tok.tokenize(t), 32, sp);
    const z = classify(w, s.text, s.types.map((t, i) => s.paddingMask[i] ? t : 0), s.paddingMask, 2, 2);
    const sample = {
      text: [s.text],
      types: [s.types],
      paddingMask: [s.paddingMask],
      label: raw.label,
      uid: 0,
    };
    const batch = uploadBatch(BE, finetuneHostBatch([sample], 32, 1), chunk.batchFields);
    const ctx = newMicroBatchContext({ iteration: 0, firstGlobalSample: 0, training: false });
    const [logits] = await chunk.forward(batch, [], ctx);
    const mine = BE.toF64(logits);
    chunk.discard(ctx);
    for (let k = 0; k < 2; k++) {
      assert.ok(Math.abs(mine[k] - z[k]) < 1e-5, `logit ${k}: ${mine[k]} vs ${z[k]}`);
    }
    const pred = z[1] > z[0] ? 1 : 0;
    if (pred === raw.label) correct++;
    total++;
  }
  return { correct, total };
}

const BE = createCpuBackend({ log: () => {} });

/** The project's QQP model (2 layers, hidden 16, f32) with the checkpoint's weights. */
function projectModel(w: Weights): FinetuneChunk {
  const spec = { preProcess: true, postProcess: true, layers: [0, 1], virtualChunk: 0, virtualChunks: 1 };
  const cfg = {
    numLayers: 2,
    hiddenSize: 16,
    numAttentionHeads: 2,
    seqLength: 32,
    maxPositionEmbeddings: 32,
    vocabSize: w.get("language_model.embedding.word_embeddings.weight")!.shape[0],
    hiddenDropout: 0.1,
    attentionDropout: 0.1,
    initMethodStd: 0.02,
    paramsDtype: "f32" as const,
    activationsCheckpointMethod: null,
    seed: 1234,
  };
  const model = new BertModel(
    cfg,
    BE,
    makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    new SingleRankCommunicator(),
    spec,
    {
      binaryHead: false,
      pooledOutput: true,
    },
  );
  const chunk = new FinetuneChunk(model, spec, "QQP");
  for (const p of chunk.params()) {
    const t = w.get(p.name)!;
    BE.copy(BE.fromHost("f32", t.shape, t.data), p.value);
  }
  return chunk;
}

// ------------------------------------------------------------------------------------------------

Deno.test("finetune QQP: >= 90 % on a separable task, printed accuracy = an independent forward, best epoch kept", async () => {
  const save = `${DIR}/qqp`;
  const r = await task("finetune", [
    ...["--task", "QQP", "--train-data", `${DATA}/QQP/train.tsv`, "--valid-data", `${DATA}/QQP/dev.tsv`],
    ...["--pretrained-checkpoint", PRE, "--epochs", "10", ...BATCH, "--lr", "2e-2"],
    ...["--lr-decay-style", "constant", "--log-interval", "100", "--save", save],
    ...["--metrics-file", `${save}/metrics.jsonl`],
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    /loaded pretrained checkpoint .*: 31 tensors; not used: lm_head, binary_head; classification_head freshly initialized/,
  );
  assert.match(r.stdout, /10 epochs x 6 iterations = 60/);
  const acc = overall(r.stdout);
  assert.equal(acc.length, 10);
  const max = Math.max(...acc), bestEpoch = acc.indexOf(max);
  // --metrics-file: one "accuracy" record per epoch with the printed numbers.
  const recs = Deno.readTextFileSync(`${save}/metrics.jsonl`).trim().split("\n").map((l) => JSON.parse(l));
  assert.deepEqual(
    recs.filter((x) => x.kind === "accuracy").map((x) => [x.epoch, x.accuracy]),
    acc.map((a, e) => [e, a]),
  );
  assert.ok(max >= 90, `best accuracy ${max}: ${acc.join(", ")}`);
  assert.ok(acc[0] < 90, `already separable before training? ${acc.join(", ")}`);
  const best = JSON.parse(Deno.readTextFileSync(`${save}/best/best.json`));
  assert.deepEqual([best.task, best.epoch, best.iteration, best.accuracy], [
    "QQP",
    bestEpoch,
    6 * (bestEpoch + 1),
    max,
  ]);
  assert.ok(
    r.stdout.includes(
      `best accuracy ${
        max.toFixed(4)
      } % (${best.correct} / 20) at epoch ${bestEpoch} (iteration ${best.iteration}); checkpoint ${save}/best`,
    ),
  );
  assert.deepEqual([...Deno.readDirSync(`${save}/best`)].map((e) => e.name).sort(), [
    "best.json",
    `iter_${String(best.iteration).padStart(7, "0")}`,
    "latest_checkpointed_iteration.txt",
  ]);
  // The saved head and no pretraining heads.
  const names = loadCheckpoint(save, { tp: 0, pp: 0 }, { loadOptim: false }).model.map((t) => t.name);
  assert.ok(names.includes("classification_head.weight") && !names.some((n) => n.startsWith("lm_head")));
  // The CLI's numbers against the independent forward: the best checkpoint and the last one.
  const lines = setLines(r.stdout);
  const ref = await referenceQqp(`${save}/best`, `${DATA}/QQP/dev.tsv`);
  assert.deepEqual(ref, { correct: best.correct, total: 20 });
  const last = lines.at(-1)!;
  assert.deepEqual([last.name, last.epoch], ["dev", "epoch 9"]);
  assert.deepEqual(await referenceQqp(save, `${DATA}/QQP/dev.tsv`), {
    correct: last.correct,
    total: last.total,
  });
});

Deno.test("finetune --epochs 0: evaluation only, Megatron's epoch -1 lines and predictions .pt (any DP)", async () => {
  const save = `${DIR}/qqp_eval`;
  const base = ["--task", "QQP", "--valid-data", `${DATA}/QQP/dev.tsv`, `${DATA}/QQP/train.tsv`];
  const trained = await task("finetune", [
    ...base,
    ...["--train-data", `${DATA}/QQP/train.tsv`, "--pretrained-checkpoint", PRE, "--epochs", "1", ...BATCH],
    ...["--lr", "2e-2", "--log-interval", "100", "--save", save],
  ]);
  assert.equal(trained.code, 0, trained.stderr);
  const before = [...Deno.readDirSync(save)].map((e) => e.name).sort();
  // DP = 2, micro-batch 4: dev's 20 samples end in a partial global batch; train has 48.
  const r = await task("finetune", [
    ...base,
    "--epochs",
    "0",
    "--load",
    save,
    ...BATCH,
    "--data-parallel-size",
    "2",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^evaluation only mode, setting epoch to -1$/m);
  assert.match(r.stdout, /^done: evaluated the checkpoint of iteration 6$/m);
  const sets = setLines(r.stdout);
  assert.deepEqual(sets.map((x) => [x.epoch, x.name, x.total]), [["epoch -1", "dev", 20], [
    "epoch -1",
    "train",
    48,
  ]]);
  // The same weights as epoch 0's end: the same counts as the training run printed.
  assert.deepEqual(
    sets.map((x) => x.correct),
    setLines(trained.stdout).map((x) => x.correct),
  );
  assert.match(r.stdout, / >> \|epoch: -1\| overall: correct \/ total = \d+ \/ 68 = [\d.]+ %/);
  // Nothing saved; the predictions file is the one new entry of the --load folder.
  const file = `${save}/predictions_dev_train.pt`;
  assert.deepEqual(
    [...Deno.readDirSync(save)].map((e) => e.name).sort(),
    [...before, "predictions_dev_train.pt"].sort(),
  );
  assert.ok(r.stdout.includes(`> predictions of dev, train saved in ${file}`));
  // torch.save([(name, (softmaxes, labels, ids)), ...]) read back by the restricted unpickler.
  const got = toPlain(decodeTorchCheckpoint(Deno.readFileSync(file))) as [
    string,
    [number[][], number[], number[]],
  ][];
  assert.deepEqual(got.map(([n]) => n), ["dev", "train"]);
  const w = weightsOf(save);
  const tok = await buildTokenizer({ tokenizerType: "BertWordPieceLowerCase", vocabFile: VOCAB });
  const sp = { cls: tok.cls!, sep: tok.sep!, pad: tok.pad! };
  for (const [k, name] of ["dev", "train"].entries()) {
    const path = `${DATA}/QQP/${name}.tsv`;
    const raws = readQqp(Deno.readTextFileSync(path), path).samples;
    const [softmaxes, labels, ids] = got[k][1];
    assert.deepEqual(labels, raws.map((x) => x.label));
    assert.deepEqual(ids, raws.map((x) => x.uid));
    let correct = 0;
    raws.forEach((raw, i) => {
      // The probabilities of an independent f64 forward of the checkpoint, in the file's order.
      const s = glueSample(raw, (t) => tok.tokenize(t), 32, sp);
      const z = classify(w, s.text, s.types.map((t, j) => s.paddingMask[j] ? t : 0), s.paddingMask, 2, 2);
      const m = Math.max(...z), e = z.map((v) => Math.exp(v - m)), sum = e[0] + e[1];
      for (let c = 0; c < 2; c++) {
        assert.ok(Math.abs(softmaxes[i][c] - e[c] / sum) < 1e-5, `${name} ${i} class ${c}`);
      }
      if ((softmaxes[i][1] > softmaxes[i][0] ? 1 : 0) === labels[i]) correct++;
    });
    assert.equal(correct, sets[k].correct, name);
  }
  // Bad input: one line each.
  const noLoad = await task("finetune", [...base, "--epochs", "0", "--pretrained-checkpoint", PRE, ...BATCH]);
  assert.equal(
    errorLine(noLoad),
    "--epochs 0 (evaluation only): pass --load, the checkpoint to evaluate (its predictions go there)",
  );
  const noValid = await task("finetune", ["--task", "QQP", "--epochs", "0", "--load", save, ...BATCH]);
  assert.equal(errorLine(noValid), "--epochs 0 (evaluation only): pass --valid-data, the sets to evaluate");
  const empty = `${DIR}/qqp_empty`;
  Deno.mkdirSync(empty);
  const none = await task("finetune", [
    ...base,
    "--epochs",
    "0",
    "--load",
    empty,
    ...BATCH,
    "--vocab-file",
    VOCAB,
  ]);
  assert.match(
    errorLine(none),
    /^--load .*qqp_empty: no checkpoint to evaluate \(no latest_checkpointed_iteration\.txt\)$/,
  );
  assert.deepEqual([...Deno.readDirSync(empty)], []);
});

const MNLI = [
  ...["--task", "MNLI", "--train-data", `${DATA}/MNLI/train.tsv`, "--valid-data"],
  ...[`${DATA}/MNLI/dev_matched.tsv`, `${DATA}/MNLI/dev_mismatched.tsv`, "--pretrained-checkpoint", PRE],
  ...["--epochs", "3", ...BATCH, "--lr", "1e-2", "--log-interval", "1", "--eval-interval", "4"],
];

Deno.test("finetune MNLI: stopped mid-epoch and resumed with --load, the same losses, accuracies and best epoch", async () => {
  const full = await task("finetune", [...MNLI, "--save", `${DIR}/mnli_a`]);
  assert.equal(full.code, 0, full.stderr);
  assert.deepEqual(
    setLines(full.stdout).filter((l) => l.epoch.startsWith("epoch")).slice(0, 2).map((
      l,
    ) => [l.epoch, l.name, l.total]),
    [
      ["epoch 0", "dev-matched", 18],
      ["epoch 0", "dev-mismatched", 12],
    ],
  );
  // --eval-interval 4: accuracies at iterations 4, 8, 12 and 16 besides each epoch's end.
  assert.deepEqual(
    setLines(full.stdout).filter((l) => l.epoch.startsWith("iteration")).map((l) => `${l.epoch} ${l.name}`),
    [4, 8, 12, 16].flatMap((i) => [`iteration ${i} dev-matched`, `iteration ${i} dev-mismatched`]),
  );
  const b = `${DIR}/mnli_b`;
  const first = await task("finetune", [...MNLI, "--save", b, "--exit-interval", "8"]);
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stdout, /exiting at iteration 8 \(exit-interval\)/);
  const second = await task("finetune", [...MNLI, "--save", b, "--load", b]);
  assert.equal(second.code, 0, second.stderr);
  assert.match(second.stdout, /loaded checkpoint .* at iteration 8/);
  const iterRe = / iteration +\d+\/ +18 \|/, accRe = /\|(epoch: [12]|iteration: 1[26])\|/;
  const after = (l: string) => Number(/ iteration +(\d+)\//.exec(l)![1]) > 8;
  assert.deepEqual(stable(second.stdout, iterRe), stable(full.stdout, iterRe).filter(after));
  assert.equal(stable(second.stdout, iterRe).length, 10);
  assert.deepEqual(stable(second.stdout, accRe), stable(full.stdout, accRe));
  // Other training data: the saved position would not mean the same epoch.
  const other = await task("finetune", [
    ...MNLI.map((a) => a.endsWith("train.tsv") ? `${DATA}/MNLI/dev_matched.tsv` : a),
    "--load",
    b,
  ]);
  assert.equal(other.code, 1, other.stderr);
  assert.equal(
    errorLine(other),
    `--load ${b}: saved by a run over 48 training samples with --global-batch-size 8, this run has 18 with 8: ` +
      `its epochs would not line up (start a new --save)`,
  );
  const bestLine = (s: string) =>
    s.split("\n").find((l) => l.startsWith("best accuracy"))!.replace(/; checkpoint .*/, "");
  assert.equal(bestLine(second.stdout), bestLine(full.stdout));
});

const RACE = [
  ...[
    "--task",
    "RACE",
    "--train-data",
    `${DATA}/RACE/train/middle`,
    "--valid-data",
    `${DATA}/RACE/dev/middle`,
  ],
  ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2", "--seq-length", "32"],
  ...["--max-position-embeddings", "32", "--vocab-file", VOCAB, "--make-vocab-size-divisible-by", "8"],
  ...[
    "--epochs",
    "2",
    "--micro-batch-size",
    "2",
    "--global-batch-size",
    "4",
    "--lr",
    "1e-2",
    "--log-interval",
    "1",
  ],
];

Deno.test("finetune RACE from scratch: TP=2, PP=2 and DP=2 give TP=1's losses and accuracies; --keep-last", async () => {
  const one = await task("finetune", RACE);
  assert.equal(one.code, 0, one.stderr);
  assert.match(one.stdout, /no --pretrained-checkpoint/);
  assert.match(one.stdout, /2 epochs x 6 iterations = 12/); // 24 questions / 4
  const ref = losses(one.stdout);
  assert.equal(ref.length, 12);
  for (
    const layout of [["--tensor-model-parallel-size", "2"], ["--pipeline-model-parallel-size", "2"], [
      "--data-parallel-size",
      "2",
    ]]
  ) {
    const r = await task("finetune", [...RACE, ...layout]);
    assert.equal(r.code, 0, r.stderr);
    const got = losses(r.stdout);
    got.forEach((v, i) =>
      assert.ok(
        Math.abs(v - ref[i]) <= 1e-4 * Math.abs(ref[i]),
        `${layout}: iteration ${i + 1}: ${v} vs ${ref[i]}`,
      )
    );
    assert.deepEqual(setLines(r.stdout), setLines(one.stdout), layout.join(" "));
  }
  const keep = await task("finetune", [
    ...RACE.slice(0, -8),
    "--epochs",
    "1",
    "--micro-batch-size",
    "5",
    "--global-batch-size",
    "5",
    "--lr",
    "1e-2",
    "--keep-last",
  ]);
  assert.equal(keep.code, 0, keep.stderr);
  assert.match(keep.stdout, /1 epochs x 5 iterations = 5/); // 24 / 5 = 4.8, the last batch kept
});

Deno.test("finetune: the pretrained checkpoint's layout is free (TP=1 BERT -> TP=2 / PP=2 runs, TP=2 x PP=2 BERT -> TP=1)", async () => {
  const pre22 = `${DIR}/bert_tp2pp2`;
  const p = await task("pretrain:bert", [
    ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2", "--seq-length", "32"],
    ...["--max-position-embeddings", "32", "--micro-batch-size", "4", "--global-batch-size", "8"],
    ...["--lr", "1e-3", "--train-iters", "4", "--tokenizer-type", "BertWordPieceLowerCase"],
    ...["--vocab-file", VOCAB, "--data-path", SENTENCES, "--split", "80,20,0", "--eval-iters", "1"],
    ...["--make-vocab-size-divisible-by", "8", "--save", pre22],
    ...["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"],
  ]);
  assert.equal(p.code, 0, p.stderr);
  const qqp = [
    ...["--task", "QQP", "--train-data", `${DATA}/QQP/train.tsv`, "--valid-data", `${DATA}/QQP/dev.tsv`],
    ...["--epochs", "2", ...BATCH, "--lr", "1e-2", "--log-interval", "1"],
  ];
  // Each checkpoint against its own layout (TP=2 pads the vocabulary to 112 rows, TP=1 to 104, and the
  // padding columns take part in pretraining's softmax, so the two BERTs differ slightly).
  for (
    const [pre, native, others] of [
      [PRE, [], [["--tensor-model-parallel-size", "2"], ["--pipeline-model-parallel-size", "2"]]],
      [pre22, [], [["--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1"]]],
    ] as const
  ) {
    const ref = await task("finetune", [...qqp, "--pretrained-checkpoint", pre, ...native]);
    assert.equal(ref.code, 0, ref.stderr);
    assert.equal(losses(ref.stdout).length, 12);
    for (const extra of others) {
      const r = await task("finetune", [...qqp, "--pretrained-checkpoint", pre, ...extra]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /loaded pretrained checkpoint .*: 31 tensors; not used: lm_head, binary_head/);
      assertClose(losses(r.stdout), losses(ref.stdout), 1e-4, `${pre} ${extra.join(" ")}`);
      assert.deepEqual(setLines(r.stdout), setLines(ref.stdout), extra.join(" "));
    }
  }
});

Deno.test("finetune: bad input is one line naming the file:line or flag, nothing saved", async () => {
  const bad = `${DIR}/bad`;
  Deno.mkdirSync(bad, { recursive: true });
  const header = Deno.readTextFileSync(`${DATA}/MNLI/train.tsv`).split("\n").slice(0, 3);
  Deno.writeTextFileSync(`${bad}/cols.tsv`, [header[0], "0\t1\t2\tfiction\tx", header[2]].join("\n") + "\n");
  Deno.writeTextFileSync(
    `${bad}/label.tsv`,
    [header[0], header[1], header[2].replace(/\t[a-z]+\t[a-z]+$/, "\tmaybe\tmaybe")].join("\n") + "\n",
  );
  const base = ["--pretrained-checkpoint", PRE, "--epochs", "1", ...BATCH, "--lr", "1e-2"];
  const save = `${bad}/save`;
  const cases: [string[], number, string | RegExp][] = [
    [
      ["--task", "MNLI", "--train-data", `${bad}/cols.tsv`, "--save", save],
      1,
      `${bad}/cols.tsv:2: 5 columns, expected at least 10`,
    ],
    [
      ["--task", "MNLI", "--train-data", `${bad}/label.tsv`, "--save", save],
      1,
      `${bad}/label.tsv:3: label "maybe", expected contradiction, entailment or neutral`,
    ],
    [
      ["--task", "RACE", "--train-data", `${bad}/RACE/train/middle`],
      1,
      new RegExp(`^${bad}/RACE/train/middle: cannot list the RACE folder \\(`),
    ],
    [
      ["--task", "SST", "--train-data", `${DATA}/QQP/train.tsv`],
      2,
      `--task: expected one of RACE, MNLI, QQP, found "SST"`,
    ],
    [
      ["--task", "QQP", "--train-data", `${DATA}/QQP/train.tsv`, "--train-iters", "5"],
      2,
      "--train-iters: not a flag of finetune; the iterations are --epochs x (training samples / --global-batch-size)",
    ],
    [
      ["--task", "QQP", "--train-data", `${DATA}/QQP/train.tsv`, "--num-layers", "3"],
      1,
      "checkpoint arguments do not match this run: --num-layers: checkpoint 2, run 3",
    ],
    [
      ["--task", "QQP", "--train-data", `${DATA}/QQP/train.tsv`, "--load", PRE],
      1,
      `--load ${PRE}: not a finetuning checkpoint, expected --task QQP (start from a pretrained BERT with --pretrained-checkpoint)`,
    ],
  ];
  for (const [args, code, want] of cases) {
    const r = await task("finetune", [...args, ...base]);
    assert.equal(r.code, code, `${args.join(" ")}\n${r.stderr}`);
    const line = errorLine(r);
    if (typeof want === "string") assert.equal(line, want);
    else assert.match(line, want);
  }
  // A GPT checkpoint is not a BERT to finetune.
  const gptData = `${bad}/gpt_text`;
  const b = new MMapIndexedDatasetBuilder(gptData, "uint16");
  for (let i = 0; i < 40; i++) {
    b.addItem(Array.from({ length: 40 }, (_, j) => (i * 7 + j) % 90));
    b.endDocument();
  }
  b.finalize();
  const gpt = `${bad}/gpt`;
  const g = await task("pretrain:gpt", [
    ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2", "--seq-length", "16"],
    ...["--max-position-embeddings", "16", "--micro-batch-size", "2", "--lr", "1e-3", "--train-iters", "2"],
    ...["--data-path", gptData, "--tokenizer-type", "NullTokenizer", "--vocab-size", "100", "--save", gpt],
  ]);
  assert.equal(g.code, 0, g.stderr);
  const r = await task("finetune", [
    "--task",
    "QQP",
    "--train-data",
    `${DATA}/QQP/train.tsv`,
    ...base,
    "--pretrained-checkpoint",
    gpt,
  ]);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(
    errorLine(r),
    `--pretrained-checkpoint ${gpt}: a NullTokenizer model; finetuning needs a BERT (BertWordPieceLowerCase or BertWordPieceCase)`,
  );
  const left = (() => {
    try {
      return [...Deno.readDirSync(save)].map((e) => e.name).filter((n) =>
        n.startsWith("iter_") || n.startsWith("latest")
      );
    } catch {
      return [];
    }
  })();
  assert.deepEqual(left, [], "no checkpoint written");
});
