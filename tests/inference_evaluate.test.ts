// evaluate through the real CLI on a small random GPT and tiny files in the real formats (WikiText's
// token file, LAMBADA JSON lines). The expected numbers are computed here: Megatron's _LMDataset
// windows written out again, GPTModel's full-forward logits per window, f64 log-softmax over every
// logit column, and the LAMBADA labels chosen from the model's own argmax so the accuracy is known.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { buildGptModel, modelLogits } from "../src/inference/gpt_runner.ts";
import { type FullGpt, readGpt, writeGpt } from "../src/inference/gpt_weights.ts";
import { randomGpt } from "./helpers/random_gpt.ts";
import { errorLine, runScript } from "./helpers/run_cli.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_evaluate_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const backend = createCpuBackend({ log: () => {} });
const VOCAB = 40, EOD = 39, SEQ = 8;

function checkpoint(): FullGpt {
  writeGpt(
    "megatron-deno",
    `${DIR}/ckpt`,
    randomGpt(backend, {
      layers: 1,
      heads: 2,
      seq: SEQ,
      vocab: VOCAB,
      paddedVocab: 48,
      makeVocabSizeDivisibleBy: 16,
      seed: 11,
      iteration: 3,
    }),
  );
  return readGpt("megatron-deno", `${DIR}/ckpt`);
}
const full = checkpoint();
const model = buildGptModel(full, backend);
const V = model.cfg.vocabSize;

/** Python's "{:.4E}". */
function e4(x: number): string {
  const [m, e] = x.toExponential(4).toUpperCase().split("E");
  const n = Number(e);
  return `${m}E${n < 0 ? "-" : "+"}${String(Math.abs(n)).padStart(2, "0")}`;
}

const evaluate = (...args: string[]) => runScript(CLI, ["evaluate", "--load", `${DIR}/ckpt`, ...args]);

Deno.test("evaluate WIKITEXT103: Megatron's windows and perplexities, computed independently", async () => {
  const ids = Array.from({ length: 23 }, (_, i) => (i * 11 + 3) % EOD);
  const file = `${DIR}/wiki.test.tokens`;
  Deno.writeTextFileSync(file, " " + ids.join(" ") + " \n");
  for (const overlap of [4, SEQ]) {
    const stride = Math.min(overlap, SEQ);
    // _LMDataset: windows of SEQ + 1 tokens every `overlap`; after the first only the last `overlap`
    // targets count; padding with eod is masked.
    const targets = ids.length - 1;
    const n = Math.ceil(Math.max(targets - (SEQ - overlap), 0) / overlap) + 1;
    let total = 0;
    for (let w = 0; w < n; w++) {
      const win = ids.slice(w * overlap, w * overlap + SEQ + 1);
      const mask = Array.from({ length: SEQ }, (_, i) => (i + 1 < win.length ? 1 : 0));
      if (overlap !== SEQ && w !== 0) { for (let i = 0; i < SEQ - stride; i++) mask[i] = 0; }
      const row = [...win, ...Array(SEQ + 1 - win.length).fill(EOD)].slice(0, SEQ);
      const l = await modelLogits(model, [row]);
      for (let i = 0; i < SEQ; i++) {
        if (!mask[i]) continue;
        const target = i + 1 < win.length ? win[i + 1] : EOD;
        let max = -Infinity;
        for (let v = 0; v < V; v++) max = Math.max(max, l[i * V + v]);
        let z = 0;
        for (let v = 0; v < V; v++) z += Math.exp(l[i * V + v] - max);
        total -= l[i * V + target] - max - Math.log(z);
      }
    }
    const valLoss = total / (ids.length - 1);
    const ppl = Math.exp(Math.min(20, valLoss));
    const r = await evaluate(
      ...["--task", "WIKITEXT103", "--valid-data", file, "--overlapping-eval", String(overlap)],
      ...(overlap === 4 ? ["--micro-batch-size", "2"] : []),
    );
    assert.equal(r.code, 0, r.stderr);
    const line = ` validation results on WIKITEXT103 | avg loss: ${e4(valLoss)} | ppl: ${e4(ppl)} | ` +
      `adjusted ppl: ${e4(ppl)} | token ratio: 1.0 |`;
    const dashes = "-".repeat(line.length + 1);
    assert.equal(r.stdout, `${dashes}\n${line}\n${dashes}\n`, `overlap ${overlap}`);
  }
});

Deno.test("evaluate LAMBADA: every-token accuracy with labels from the model's own argmax", async () => {
  const contexts = [[1, 2, 3], [5, 8, 13, 21], [2, 7], [30, 31, 32, 33, 34], [9]];
  const argmax = async (ctx: number[]) => {
    const l = await modelLogits(model, [ctx]);
    let best = 0;
    for (let v = 1; v < V; v++) if (l[(ctx.length - 1) * V + v] > l[(ctx.length - 1) * V + best]) best = v;
    return best;
  };
  const lines: string[] = [];
  let correct = 0;
  for (const [i, ctx] of contexts.entries()) {
    const best = await argmax(ctx);
    // Samples 0, 2, 4 end with the model's choice; 1 and 3 with another id.
    const label = i % 2 === 0 ? best : (best + 1) % EOD;
    if (label === best) correct++;
    lines.push(JSON.stringify({ text: [...ctx, label].join(" ") }));
  }
  assert.equal(correct, 3);
  const file = `${DIR}/lambada_test.jsonl`;
  Deno.writeTextFileSync(file, lines.join("\n") + "\n");
  for (const strict of [[], ["--strict-lambada"]]) {
    const r = await evaluate("--task", "LAMBADA", "--valid-data", file, ...strict);
    assert.equal(r.code, 0, r.stderr);
    const line = ` validation results on LAMBADA | number correct: ${e4(3)} | total examples: ${e4(5)} | ` +
      `avg accuracy: ${e4(0.6)}`;
    assert.equal(r.stdout.split("\n")[1], line);
  }
});

Deno.test("evaluate: bad input is one line", async () => {
  let r = await evaluate("--task", "WIKITEXT103", "--valid-data", `${DIR}/wiki.test.tokens`);
  assert.equal(r.code, 2);
  assert.equal(errorLine(r, "evaluate"), "--overlapping-eval 32: larger than --seq-length 8");
  r = await evaluate("--task", "PTB", "--valid-data", "x");
  assert.equal(r.code, 2);
  assert.equal(errorLine(r, "evaluate"), '--task: expected one of WIKITEXT103, LAMBADA, found "PTB"');
  r = await evaluate("--task", "WIKITEXT103", "--valid-data", `${DIR}/wiki.test.tokens`, "--strict-lambada");
  assert.equal(r.code, 2);
  assert.equal(errorLine(r, "evaluate"), "--strict-lambada applies to --task LAMBADA");
  Deno.writeTextFileSync(`${DIR}/lambada_bad.jsonl`, '{"text": "1 2"}\n{"txt": 3}\n');
  r = await evaluate("--task", "LAMBADA", "--valid-data", `${DIR}/lambada_bad.jsonl`);
  assert.equal(r.code, 1);
  assert.equal(errorLine(r, "evaluate"), `${DIR}/lambada_bad.jsonl:2: expected a string field "text"`);
  r = await evaluate("--task", "LAMBADA", "--valid-data", `${DIR}/missing.jsonl`);
  assert.equal(r.code, 1);
  assert.match(errorLine(r, "evaluate"), /^--valid-data .*missing\.jsonl: cannot read/);
});
