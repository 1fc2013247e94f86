// End to end on a tiny GPT: JSON lines -> `deno task preprocess` (NullTokenizer ids) -> pretrainGPT ->
// checkpoint -> resume. A run stopped by --exit-interval and resumed with --load must reproduce the
// uninterrupted run bit for bit (losses, learning rates, loss scales, grad norms, validation losses,
// metrics file, saved weights and optimizer state), with dropout on, in f32 and in fp16 with dynamic
// loss scaling. --finetune and --no-load-optim are checked against what Megatron does.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { readTracker } from "../src/training/checkpoint.ts";
import { parseArgs, validateForTraining } from "../src/training/config.ts";
import { readMetrics } from "../src/training/metrics.ts";
import { pretrainGPT, type TrainResult } from "../src/training/train.ts";

const VOCAB = 63; // ids 0..62 in the text, eod = 63, padded vocab 64

/** Deterministic pseudo-random documents of space-separated token ids. */
function writeCorpus(path: string, docs: number): void {
  let s = 12345;
  const rnd = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const lines: string[] = [];
  for (let d = 0; d < docs; d++) {
    const n = 20 + Math.floor(rnd() * 180);
    // A little structure (a token often follows its predecessor + 1) so the loss can fall.
    const ids: number[] = [];
    let prev = Math.floor(rnd() * VOCAB);
    for (let i = 0; i < n; i++) {
      prev = rnd() < 0.6 ? (prev + 1) % VOCAB : Math.floor(rnd() * VOCAB);
      ids.push(prev);
    }
    lines.push(JSON.stringify({ text: ids.join(" ") }));
  }
  Deno.writeTextFileSync(path, lines.join("\n") + "\n");
}

async function preprocessCli(dir: string): Promise<string> {
  writeCorpus(`${dir}/corpus.jsonl`, 200);
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../tasks/preprocess_data.ts", import.meta.url).pathname,
      "--input",
      `${dir}/corpus.jsonl`,
      "--output-prefix",
      `${dir}/tiny`,
      "--tokenizer-type",
      "NullTokenizer",
      "--vocab-size",
      String(VOCAB),
      "--append-eod",
      "--workers",
      "2",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return `${dir}/tiny_text_document`;
}

const DIR = Deno.makeTempDirSync({ prefix: "mdeno_e2e_" });
// Remove the scratch directory when the test module ends.
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const DATA = preprocessCli(DIR);
const backend = createCpuBackend({ log: () => {} });

async function flags(extra: string[]): Promise<string[]> {
  return [
    ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2"],
    ...["--seq-length", "16", "--max-position-embeddings", "16", "--make-vocab-size-divisible-by", "8"],
    ...["--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "8"],
    ...["--lr", "1e-2", "--min-lr", "1e-3", "--lr-warmup-iters", "2", "--lr-decay-style", "cosine"],
    ...["--hidden-dropout", "0.1", "--attention-dropout", "0.1", "--seed", "7"],
    ...["--data-path", await DATA, "--tokenizer-type", "NullTokenizer", "--vocab-size", String(VOCAB)],
    ...["--log-interval", "1", "--eval-interval", "4", "--eval-iters", "2", "--split", "90,10,0"],
    ...extra,
  ];
}

async function train(extra: string[], logs?: string[]): Promise<TrainResult> {
  const cfg = validateForTraining(parseArgs(await flags(extra)));
  return await pretrainGPT(cfg, { backend, log: (l) => logs?.push(l) });
}

const bytes = (p: string) => Deno.readFileSync(p);
const TIMING = new Set(["ms_per_iteration", "tokens_per_second", "tflops", "mfu"]);
/** Metrics records without the wall-clock fields. */
function metricsNoTiming(path: string) {
  return readMetrics(path).map((r) => Object.fromEntries(Object.entries(r).filter(([k]) => !TIMING.has(k))));
}

/** Uninterrupted run vs stop at `k` (--exit-interval) + resume (--load, same --save dir). */
async function resumeCase(name: string, extra: string[], k: number) {
  const a = `${DIR}/${name}_a`, b = `${DIR}/${name}_b`;
  const A = await train([...extra, "--save", a, "--metrics-file", `${a}/metrics.jsonl`]);
  assert.equal(A.exitReason, "done");
  assert.equal(A.iteration, 8);

  const B1 = await train([
    ...extra,
    "--save",
    b,
    "--metrics-file",
    `${b}/metrics.jsonl`,
    "--exit-interval",
    `${k}`,
  ]);
  assert.equal(B1.exitReason, "exit-interval");
  assert.equal(B1.iteration, k);
  assert.equal(B1.savedTo, `${b}/iter_${String(k).padStart(7, "0")}`);
  assert.deepEqual(readTracker(b), { iteration: k, release: false });

  const logs: string[] = [];
  const B2 = await train([...extra, "--save", b, "--metrics-file", `${b}/metrics.jsonl`, "--load", b], logs);
  assert.ok(logs.some((l) => l.includes(`loaded checkpoint ${b} at iteration ${k}`)), logs.join("\n"));
  assert.equal(B2.history[0].iteration, k + 1);

  // Bit-identical per-iteration records (loss, lr, loss scale, grad norm, skipped) and validation.
  assert.deepEqual([...B1.history, ...B2.history], A.history);
  assert.deepEqual([...B1.validation, ...B2.validation], A.validation);
  assert.deepEqual(B2.test, A.test);
  assert.deepEqual(metricsNoTiming(`${b}/metrics.jsonl`), metricsNoTiming(`${a}/metrics.jsonl`));
  // Final weights and optimizer state of every rank directory: same bytes.
  const rankDirs = [...Deno.readDirSync(`${a}/iter_0000008`)].map((e) => e.name).sort();
  assert.ok(rankDirs.length >= 1 && rankDirs.every((d) => d.startsWith("mp_rank_")), rankDirs.join(","));
  assert.deepEqual([...Deno.readDirSync(`${b}/iter_0000008`)].map((e) => e.name).sort(), rankDirs);
  for (const d of rankDirs) {
    for (const f of ["model.safetensors", "optim.safetensors"]) {
      const pa = `${a}/iter_0000008/${d}/${f}`, pb = `${b}/iter_0000008/${d}/${f}`;
      assert.ok(bytes(pa).length > 0);
      assert.deepEqual(bytes(pb), bytes(pa), `${d}/${f} differs after resume`);
    }
  }
  return { A, rankDirs };
}

Deno.test("e2e: preprocess -> train -> --exit-interval save -> --load resume is bit-exact (f32, dropout)", async () => {
  const { A } = await resumeCase("f32", [], 3);
  // Sanity: the run really trains and evaluates.
  assert.equal(A.validation.length, 2);
  assert.ok(A.history.every((h) => Number.isFinite(h.loss) && !h.skipped));
  assert.ok(new Set(A.history.map((h) => h.lr)).size > 3, "lr schedule should vary");
});

Deno.test("e2e: fp16 resume is bit-exact, dynamic loss scaler state (scale, growth, hysteresis) included", async () => {
  // 2^26 overflows the first steps; hysteresis 2 and a growth window of 2 make the scaler's trackers
  // matter at the resume point.
  const extra = [
    "--fp16",
    "--initial-loss-scale",
    String(2 ** 26),
    "--hysteresis",
    "2",
    "--loss-scale-window",
    "2",
  ];
  const { A } = await resumeCase("fp16", extra, 3);
  const skipped = A.history.filter((h) => h.skipped).length;
  assert.ok(skipped > 0 && skipped < A.history.length, `expected some skipped steps, found ${skipped}`);
  assert.ok(new Set(A.history.map((h) => h.lossScale)).size >= 3, "loss scale should move");
  const meta = JSON.parse(Deno.readTextFileSync(`${DIR}/fp16_b/iter_0000003/mp_rank_00/meta.json`));
  assert.equal(typeof meta.grad_scaler.scale, "number");
  assert.equal(typeof meta.grad_scaler.growth_tracker, "number");
  assert.equal(typeof meta.grad_scaler.hysteresis_tracker, "number");
});

Deno.test("e2e: bf16 resume is bit-exact", async () => {
  await resumeCase("bf16", ["--bf16"], 5);
});

Deno.test("e2e: TP=2 x PP=2 x DP=2 fp16 resume is bit-exact across all rank checkpoints", async () => {
  const extra = [
    ...["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2", "--world-size", "8"],
    ...["--global-batch-size", "8", "--fp16", "--initial-loss-scale", String(2 ** 26)],
    ...["--hysteresis", "2", "--loss-scale-window", "2"],
  ];
  const { rankDirs } = await resumeCase("par", extra, 3);
  assert.deepEqual(rankDirs, ["mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]);
});

Deno.test("e2e: --finetune loads weights only: iteration 0, fresh optimizer, LR schedule and data order", async () => {
  // A checkpoint holding the initial weights: one step at lr 0 leaves them unchanged (Adam and weight
  // decay both scale by lr). Fine-tuning from it must then be exactly a fresh run.
  const init = `${DIR}/ft_init`;
  await train(["--save", init, "--train-iters", "1", "--lr", "0", "--min-lr", "0", "--lr-warmup-iters", "0"]);
  const fresh = await train([]);
  const logs: string[] = [];
  const ft = await train(["--load", init, "--finetune"], logs);
  assert.ok(logs.some((l) => l.includes("--finetune")), logs.join("\n"));
  assert.deepEqual(ft.history, fresh.history);
  assert.deepEqual(ft.validation, fresh.validation);

  // From a trained checkpoint (iteration 3): restarts at iteration 1 and sample 0, without reading
  // optim.safetensors (removed here), with the fresh run's learning rates.
  const src = `${DIR}/ft_src`;
  await train(["--save", src, "--exit-interval", "3"]);
  Deno.removeSync(`${src}/iter_0000003/mp_rank_00/optim.safetensors`);
  const ft2 = await train(["--load", src, "--finetune"]);
  assert.equal(ft2.history.length, 8);
  assert.equal(ft2.history[0].iteration, 1);
  assert.equal(ft2.history[0].consumedSamples, 4);
  assert.deepEqual(ft2.history.map((h) => h.lr), fresh.history.map((h) => h.lr));
  assert.notEqual(ft2.history[0].loss, fresh.history[0].loss, "weights should come from the checkpoint");
  // Without --finetune / --no-load-optim the missing optimizer file is an error naming it.
  await assert.rejects(() => train(["--load", src]), /optim\.safetensors: missing/);
});

Deno.test("e2e: --no-load-optim keeps iteration and data position, restarts optimizer and LR schedule", async () => {
  const full = await train([]);
  const src = `${DIR}/nlo_src`;
  await train(["--save", src, "--exit-interval", "3"]);
  Deno.removeSync(`${src}/iter_0000003/mp_rank_00/optim.safetensors`);
  const logs: string[] = [];
  const r = await train(["--load", src, "--no-load-optim"], logs);
  assert.ok(logs.some((l) => l.includes("optimizer state not loaded")), logs.join("\n"));
  assert.equal(r.history.length, 5);
  assert.equal(r.history[0].iteration, 4);
  assert.equal(r.history[0].consumedSamples, 16);
  // Same weights, samples and dropout masks at iteration 4: the same loss before any update...
  assert.equal(r.history[0].loss, full.history[3].loss);
  // ...then the fresh scheduler's warmup (Megatron does not load lr_scheduler either) and fresh Adam.
  assert.equal(r.history[0].lr, full.history[0].lr);
  assert.notEqual(r.history[1].loss, full.history[4].loss);
});
