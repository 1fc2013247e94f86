// deno task evaluate --task WIKITEXT103|LAMBADA --valid-data FILE --load CKPT: Megatron's
// tasks/main.py zero-shot GPT evaluation (src/downstream/zeroshot.ts) over the model's own forward.
// Prints Megatron's result line. Exit codes: 0 done, 1 bad input, 2 bad usage.

import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import {
  evaluateLambada,
  evaluateWikitext,
  type LogitsProvider,
  prepareWikitext,
  readLambada,
} from "../src/downstream/zeroshot.ts";
import { buildGptModel, modelLogits } from "../src/inference/gpt_runner.ts";
import { type FlagTable, runCommand, UsageError } from "./inference_flags.ts";
import { loadModel, MODEL_FLAGS } from "./inference_model.ts";

export const EVALUATE_FLAGS: FlagTable = {
  ...MODEL_FLAGS,
  task: { kind: "string", help: "zero-shot task", required: true, choices: ["WIKITEXT103", "LAMBADA"] },
  "valid-data": { kind: "path", help: "WikiText-103 tokens file, or LAMBADA JSON lines", required: true },
  "overlapping-eval": { kind: "int", help: "WikiText sliding-window stride", default: 32 },
  "strict-lambada": { kind: "bool", help: "LAMBADA label = the whole last word" },
  "micro-batch-size": { kind: "int", help: "windows per forward", default: 1 },
};

const WHAT = "Zero-shot WikiText-103 perplexity or LAMBADA accuracy of a GPT checkpoint (tasks/main.py).";

export function main(argv: string[]): Promise<number> {
  return runCommand("evaluate", WHAT, EVALUATE_FLAGS, argv, async (f) => {
    const mbs = f["micro-batch-size"] as number, overlap = f["overlapping-eval"] as number;
    if (mbs < 1) throw new UsageError(`--micro-batch-size ${mbs}: expected >= 1`);
    if (overlap < 1) throw new UsageError(`--overlapping-eval ${overlap}: expected >= 1`);
    if (f["strict-lambada"] && f.task !== "LAMBADA") {
      throw new UsageError("--strict-lambada applies to --task LAMBADA");
    }
    const { full, tokenizer, seqLength } = await loadModel(f);
    // Megatron accepts a stride above the window but then skips tokens while dividing by all of them.
    if (f.task === "WIKITEXT103" && overlap > seqLength) {
      throw new UsageError(`--overlapping-eval ${overlap}: larger than --seq-length ${seqLength}`);
    }
    const model = buildGptModel(full, createCpuBackend({ log: () => {} }));
    const V = model.cfg.vocabSize;
    const provider: LogitsProvider = {
      vocabSize: V,
      async forward(rows) {
        const s = rows[0].length;
        const l = await modelLogits(model, rows.map((r) => Array.from(r)));
        return rows.map((_, i) => l.subarray(i * s * V, (i + 1) * s * V));
      },
    };
    const file = f["valid-data"] as string;
    let text: string;
    try {
      text = Deno.readTextFileSync(file);
    } catch (e) {
      throw new Error(`--valid-data ${file}: cannot read (${(e as Error).message.split("\n")[0]})`);
    }
    const tokenize = (t: string) => tokenizer.tokenize(t);
    let line: string;
    if (f.task === "WIKITEXT103") {
      const data = prepareWikitext(text, file, tokenize);
      const r = await evaluateWikitext(data, {
        seqLen: seqLength,
        overlappingEval: overlap,
        padId: tokenizer.eod,
        batchSize: mbs,
      }, provider);
      line = r.line;
    } else {
      const samples = readLambada(text, file, tokenize, f["strict-lambada"] === true);
      const r = await evaluateLambada(samples, {
        seqLen: seqLength,
        padId: tokenizer.eod,
        batchSize: mbs,
        file,
      }, provider);
      line = r.line;
    }
    const dashes = "-".repeat(line.length + 1);
    console.log(`${dashes}\n${line}\n${dashes}`);
    return 0;
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));
