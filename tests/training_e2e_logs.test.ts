// What a real training run reports: TensorBoard event files (read back with CRC checks) agreeing with
// the JSON-lines metrics, the growing global batch of --rampup-batch-size, and
// --exit-duration-in-mins (through pretrainGPT's injectable clock).

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { parsePreprocessArgs, preprocess } from "../src/data/preprocess.ts";
import { readTracker } from "../src/training/checkpoint.ts";
import { parseArgs, validateForTraining } from "../src/training/config.ts";
import { readMetrics } from "../src/training/metrics.ts";
import { readEvents } from "../src/training/tensorboard.ts";
import { pretrainGPT, type TrainEnv, type TrainResult } from "../src/training/train.ts";

const VOCAB = 40;

async function prepare(dir: string): Promise<string> {
  let s = 99;
  const rnd = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const lines: string[] = [];
  for (let d = 0; d < 150; d++) {
    const n = 30 + Math.floor(rnd() * 120);
    lines.push(
      JSON.stringify({ text: Array.from({ length: n }, () => Math.floor(rnd() * VOCAB)).join(" ") }),
    );
  }
  Deno.writeTextFileSync(`${dir}/c.jsonl`, lines.join("\n") + "\n");
  const opts = parsePreprocessArgs([
    ...["--input", `${dir}/c.jsonl`, "--output-prefix", `${dir}/c`, "--append-eod"],
    ...["--tokenizer-type", "NullTokenizer", "--vocab-size", String(VOCAB)],
  ])!;
  await preprocess(opts);
  return `${dir}/c_text_document`;
}

const DIR = Deno.makeTempDirSync({ prefix: "mdeno_e2e_logs_" });
// Remove the scratch directory when the test module ends.
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const DATA = prepare(DIR);
const backend = createCpuBackend({ log: () => {} });

async function train(extra: string[], env: Partial<TrainEnv> = {}): Promise<TrainResult> {
  const cfg = validateForTraining(parseArgs([
    ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2"],
    ...["--seq-length", "16", "--max-position-embeddings", "16", "--make-vocab-size-divisible-by", "8"],
    ...["--micro-batch-size", "2", "--lr", "5e-3", "--seed", "3", "--log-interval", "1"],
    ...["--data-path", await DATA, "--tokenizer-type", "NullTokenizer", "--vocab-size", String(VOCAB)],
    ...extra,
  ]));
  return await pretrainGPT(cfg, { backend, log: () => {}, ...env });
}

Deno.test("e2e: --tensorboard-dir events from a real run: CRCs check, tags and values match the metrics file", async () => {
  const tbDir = `${DIR}/tb`, metricsPath = `${DIR}/tb_metrics.jsonl`;
  const r = await train([
    ...["--global-batch-size", "4", "--train-iters", "6", "--eval-interval", "3", "--eval-iters", "1"],
    ...["--fp16", "--initial-loss-scale", "1024", "--clip-grad", "1.0"],
    ...["--tensorboard-dir", tbDir, "--metrics-file", metricsPath],
  ]);
  assert.equal(r.iteration, 6);
  const files = [...Deno.readDirSync(tbDir)].map((e) => e.name);
  assert.equal(files.length, 1, files.join(","));
  assert.match(files[0], /^events\.out\.tfevents\.\d+\./);
  const events = readEvents(`${tbDir}/${files[0]}`); // throws on any length/data CRC mismatch
  assert.equal(events[0].fileVersion, "brain.Event:2");

  // tag -> step -> value
  const tb = new Map<string, Map<number, number>>();
  for (const e of events) {
    for (const s of e.scalars) {
      if (!tb.has(s.tag)) tb.set(s.tag, new Map());
      tb.get(s.tag)!.set(e.step, s.value);
    }
  }
  for (const tag of ["lm loss", "learning-rate", "loss-scale", "grad-norm", "lm loss validation"]) {
    assert.ok(tb.has(tag), `missing tag "${tag}" (have: ${[...tb.keys()].join(", ")})`);
  }
  const f32 = Math.fround; // simple_value is a float
  const rec = readMetrics(metricsPath);
  const trainRecs = rec.filter((x) => x.kind === "train");
  assert.equal(trainRecs.length, 6);
  for (const m of trainRecs) {
    const it = m.iteration as number;
    assert.equal(tb.get("lm loss")!.get(it), f32(m.lm_loss as number), `lm loss @${it}`);
    assert.equal(tb.get("learning-rate")!.get(it), f32(m.learning_rate as number), `lr @${it}`);
    assert.equal(tb.get("loss-scale")!.get(it), f32(m.loss_scale as number), `loss scale @${it}`);
    assert.equal(tb.get("grad-norm")!.get(it), f32(m.grad_norm as number), `grad norm @${it}`);
  }
  const validRecs = rec.filter((x) => x.kind === "validation");
  assert.deepEqual(validRecs.map((v) => v.iteration), [3, 6]);
  for (const v of validRecs) {
    assert.equal(tb.get("lm loss validation")!.get(v.iteration as number), f32(v.lm_loss as number));
    const ppl = tb.get("lm loss validation ppl")?.get(v.iteration as number);
    if (ppl !== undefined) assert.equal(ppl, f32(v.ppl as number));
  }
  // And the metrics file agrees with the returned history.
  assert.deepEqual(trainRecs.map((m) => m.lm_loss), r.history.map((h) => h.loss));
});

/** Megatron's ramp-up, written out independently: the batch for each iteration and the iteration count. */
function expectedRampup(start: number, incr: number, rampSamples: number, gbs: number, trainSamples: number) {
  const perIncr = rampSamples / ((gbs - start) / incr);
  const batches: number[] = [];
  let consumed = 0;
  while (consumed <= rampSamples) {
    const b = start + Math.floor(consumed / perIncr) * incr;
    batches.push(b);
    consumed += b;
  }
  const constant = Math.floor((trainSamples - consumed) / gbs);
  for (let i = 0; i < constant; i++) batches.push(gbs);
  return batches;
}

Deno.test("e2e: --rampup-batch-size with --train-samples logs Megatron's growing global batch sizes", async () => {
  const metricsPath = `${DIR}/ramp.jsonl`;
  const logs: string[] = [];
  const r = await train([
    ...["--global-batch-size", "8", "--rampup-batch-size", "2", "2", "12", "--train-samples", "40"],
    ...["--eval-interval", "100", "--eval-iters", "0", "--metrics-file", metricsPath],
  ], { log: (l) => logs.push(l) });
  const want = expectedRampup(2, 2, 12, 8, 40);
  assert.deepEqual(want, [2, 2, 4, 6, 8, 8, 8]);
  const got = readMetrics(metricsPath).filter((m) => m.kind === "train").map((m) => m.global_batch_size);
  assert.deepEqual(got, want);
  const fromLog = logs.filter((l) => l.includes(" iteration ")).map((l) =>
    Number(/global batch size:\s+(\d+)/.exec(l)![1])
  );
  assert.deepEqual(fromLog, want);
  let consumed = 0;
  assert.deepEqual(r.history.map((h) => h.consumedSamples), want.map((b) => (consumed += b)));
  assert.equal(r.consumedTrainSamples, 38);
});

Deno.test("e2e: --exit-duration-in-mins saves and stops once the (injected) clock passes the limit", async () => {
  const save = `${DIR}/dur`;
  // The clock advances 25 s with every iteration log line: 75 s > 1 min after iteration 3.
  let t = 0;
  const r = await train([
    ...["--global-batch-size", "4", "--train-iters", "50", "--eval-interval", "100", "--eval-iters", "1"],
    ...["--exit-duration-in-mins", "1", "--save", save],
  ], {
    now: () => t,
    log: (l) => {
      if (l.includes(" iteration ")) t += 25_000;
    },
  });
  assert.equal(r.exitReason, "exit-duration");
  assert.equal(r.iteration, 3);
  assert.equal(r.test, null);
  assert.deepEqual(readTracker(save), { iteration: 3, release: false });
  const meta = JSON.parse(Deno.readTextFileSync(`${save}/iter_0000003/mp_rank_00/meta.json`));
  assert.equal(meta.iteration, 3);
  assert.equal(meta.consumed_train_samples, 12);
});

Deno.test("e2e: fp16 overflow iterations are logged as skipped, without an lm loss (as Megatron)", async () => {
  const logs: string[] = [];
  const r = await train([
    ...["--global-batch-size", "4", "--train-iters", "3", "--eval-interval", "100", "--eval-iters", "0"],
    ...["--fp16", "--initial-loss-scale", String(2 ** 40), "--hysteresis", "1"],
  ], { log: (l) => logs.push(l) });
  assert.ok(r.history.every((h) => h.skipped), JSON.stringify(r.history));
  const lines = logs.filter((l) => l.startsWith(" iteration"));
  assert.equal(lines.length, 3);
  for (const l of lines) {
    assert.ok(!l.includes("lm loss"), l);
    assert.match(l, /number of skipped iterations:\s+1 \|/);
    assert.match(l, /grad norm: - \|/);
  }
  assert.deepEqual(r.history.map((h) => h.lossScale), [2 ** 39, 2 ** 38, 2 ** 37]);
});
