// deno task generate:gpt: tools/generate_samples_gpt.py. Contexts from --sample-input-file (one per
// line; output to --sample-output-file, default <input>.out, in Megatron's "Context:" / "Megatron-LM:"
// layout), unconditional samples (--num-samples N, starting from eod), or an interactive prompt on a
// TTY (--num-samples 0). --genfile collects JSON lines {context, text, tokens}. The default decodes
// with a key/value cache; --recompute runs the model's full forward over the whole prefix per token.
// --tensor-model-parallel-size / --pipeline-model-parallel-size split the checkpoint onto that many
// in-process ranks (src/inference/gpt_layout.ts); --device picks the CPU or CUDA backend.
// Exit codes: 0 done, 1 bad input, 2 bad usage.

import { type DeviceFlag, selectBackend } from "../src/backend/cuda/select.ts";
import { generateTokens } from "../src/generation/generate.ts";
import { validateSampling } from "../src/generation/sampling.ts";
import { nextLogitsFn } from "../src/inference/gpt_runner.ts";
import { checkLayout } from "../src/inference/gpt_layout.ts";
import { type FlagTable, type FlagValues, runCommand, UsageError } from "./inference_flags.ts";
import { loadModel, MODEL_FLAGS } from "./inference_model.ts";

export const GENERATE_FLAGS: FlagTable = {
  ...MODEL_FLAGS,
  "out-seq-length": { kind: "int", help: "tokens to generate at most", default: 1024 },
  temperature: { kind: "float", help: "sampling temperature", default: 1.0 },
  top_k: { kind: "int", help: "top-k sampling (0: off)", default: 0 },
  top_p: { kind: "float", help: "top-p sampling (0: off)", default: 0.0 },
  greedy: { kind: "bool", help: "argmax instead of sampling" },
  "num-samples": { kind: "int", help: "unconditional samples; 0: interactive prompt on a TTY", default: 0 },
  "sample-input-file": { kind: "path", help: "one context per line" },
  "sample-output-file": { kind: "path", help: "output for --sample-input-file (default <input>.out)" },
  genfile: { kind: "path", help: "JSON lines {context, text, tokens} of every sample" },
  recompute: { kind: "bool", help: "no KV cache: full forward over the prefix at every token" },
  seed: { kind: "int", help: "random seed", default: 1234 },
  "tensor-model-parallel-size": {
    kind: "int",
    help: "tensor-parallel ranks the model is split over",
    default: 1,
  },
  "pipeline-model-parallel-size": {
    kind: "int",
    help: "pipeline stages the model is split over",
    default: 1,
  },
  device: {
    kind: "string",
    help: "cpu, cuda, or cuda when available",
    default: "auto",
    choices: ["cpu", "cuda", "auto"],
  },
};

const WHAT = "Generate text with a GPT checkpoint (Megatron's tools/generate_samples_gpt.py).";

interface Sample {
  context: string;
  text: string;
  tokens: number[];
}

export function main(argv: string[]): Promise<number> {
  return runCommand("generate-gpt", WHAT, GENERATE_FLAGS, argv, (f) => run(f));
}

async function run(f: FlagValues): Promise<number> {
  const sampling = {
    greedy: f.greedy === true,
    temperature: f.temperature as number,
    topK: f.top_k as number,
    topP: f.top_p as number,
  };
  try {
    validateSampling(sampling);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const outSeq = f["out-seq-length"] as number, numSamples = f["num-samples"] as number;
  if (outSeq < 1) throw new UsageError(`--out-seq-length ${outSeq}: expected >= 1`);
  if (numSamples < 0) throw new UsageError(`--num-samples ${numSamples}: expected >= 0`);
  const input = f["sample-input-file"] as string | undefined;
  if (input === undefined && numSamples === 0 && !Deno.stdin.isTerminal()) {
    throw new UsageError(
      "--num-samples 0 is the interactive prompt and needs a terminal; give --sample-input-file or --num-samples N",
    );
  }
  const tp = f["tensor-model-parallel-size"] as number, pp = f["pipeline-model-parallel-size"] as number;
  if (tp < 1) throw new UsageError(`--tensor-model-parallel-size ${tp}: expected >= 1`);
  if (pp < 1) throw new UsageError(`--pipeline-model-parallel-size ${pp}: expected >= 1`);
  const { full, tokenizer, seqLength } = await loadModel(f);
  try {
    checkLayout(full, tp, pp);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const { backend, note } = await selectBackend(f.device as DeviceFlag, { log: () => {} });
  // stdout carries the samples; the device goes to stderr.
  if (backend.name !== "cpu" || f.device !== "cpu") console.error(note);
  const next = nextLogitsFn(full, { cache: !f.recompute, backend, tp, pp });
  const opts = {
    ...sampling,
    vocabSize: full.arch.vocabSize,
    outSeqLength: outSeq,
    seqLength,
    eod: tokenizer.eod,
    seed: f.seed as number,
  };
  const samples: Sample[] = [];
  const generate = async (contextText: string, context: number[], row: number, echo: boolean) => {
    const tokens: number[] = [];
    for await (const t of generateTokens(context, next, { ...opts, row })) {
      tokens.push(t);
      if (echo) await Deno.stdout.write(new TextEncoder().encode(tokenizer.detokenize([t]) + " "));
    }
    const s = { context: contextText, text: tokenizer.detokenize(tokens), tokens };
    samples.push(s);
    return s;
  };
  if (input !== undefined) {
    let text: string;
    try {
      text = Deno.readTextFileSync(input);
    } catch (e) {
      throw new Error(`--sample-input-file ${input}: cannot read (${(e as Error).message})`);
    }
    const lines = text.split(/\r?\n/).filter((l, i, all) => !(i === all.length - 1 && l === ""));
    const out: string[] = [];
    for (const [i, line] of lines.entries()) {
      const ctx = tokenizer.tokenize(line);
      if (ctx.length === 0) throw new Error(`${input}:${i + 1}: empty context`);
      if (ctx.length >= seqLength) {
        throw new Error(
          `${input}:${i + 1}: context of ${ctx.length} tokens leaves no room under --seq-length ${seqLength}`,
        );
      }
      const s = await generate(line, ctx, 0, false);
      out.push(`\nContext:${line}\n\nMegatron-LM:${s.text}\n`);
    }
    writeAtomic((f["sample-output-file"] as string | undefined) ?? `${input}.out`, out.join(""));
  } else if (numSamples > 0) {
    for (let i = 0; i < numSamples; i++) {
      const s = await generate("", [tokenizer.eod], i, false);
      if (f.genfile === undefined) console.log(JSON.stringify(s));
    }
  } else {
    // Interactive, as Megatron's: one context per prompt until "stop".
    const lines = (async function* () {
      const dec = new TextDecoder();
      let buf = "";
      for await (const chunk of Deno.stdin.readable) {
        buf += dec.decode(chunk, { stream: true });
        let k;
        while ((k = buf.indexOf("\n")) >= 0) {
          yield buf.slice(0, k);
          buf = buf.slice(k + 1);
        }
      }
    })();
    while (true) {
      await Deno.stdout.write(new TextEncoder().encode("\nContext prompt (stop to exit) >>> "));
      const { value, done } = await lines.next();
      if (done || value.trim() === "stop") break;
      const ctx = tokenizer.tokenize(value);
      if (ctx.length === 0) continue;
      if (ctx.length >= seqLength) {
        console.log(`context of ${ctx.length} tokens leaves no room under --seq-length ${seqLength}`);
        continue;
      }
      await Deno.stdout.write(new TextEncoder().encode("\nMegatron-LM: "));
      await generate(value, ctx, 0, true);
      console.log("");
    }
  }
  if (f.genfile !== undefined) {
    writeAtomic(
      f.genfile as string,
      samples.map((s) => JSON.stringify(s) + "\n").join(""),
    );
  }
  return 0;
}

/** Write via a temp name + rename, so a failure leaves no half-written file. */
function writeAtomic(path: string, text: string): void {
  const tmp = `${path}.tmp-${Deno.pid}`;
  try {
    Deno.writeTextFileSync(tmp, text);
    Deno.renameSync(tmp, path);
  } catch (e) {
    try {
      Deno.removeSync(tmp);
    } catch { /* not created */ }
    throw new Error(`${path}: cannot write (${(e as Error).message.split("\n")[0]})`);
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
