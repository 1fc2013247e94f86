// deno task convert --from hf|megatron-pt|megatron-deno --to hf|megatron-pt|megatron-deno --load SRC --save DST
// GPT and BERT checkpoints between Hugging Face folders (GPT-2, BertForPreTraining), Megatron-LM .pt
// folders and this project's checkpoints, and T5 between the last two; the architecture comes from the
// source. Exit codes: 0 done, 1 bad input, 2 bad usage.

import { readModel, writeGpt } from "../src/inference/gpt_weights.ts";
import type { CheckpointFormat } from "../src/inference/gpt_weights.ts";
import { type FlagTable, runCommand, UsageError } from "./inference_flags.ts";

export const CONVERT_FLAGS: FlagTable = {
  from: { kind: "format", help: "source format", required: true },
  to: { kind: "format", help: "destination format", required: true },
  load: {
    kind: "path",
    help: "source: HF folder, Megatron .pt folder (or one .pt file), or checkpoint folder",
    required: true,
  },
  save: { kind: "path", help: "destination folder (must not exist, or be empty)", required: true },
  "target-tensor-parallel-size": { kind: "int", help: "TP of the written checkpoint", default: 1 },
  "target-pipeline-parallel-size": { kind: "int", help: "PP of the written checkpoint", default: 1 },
  "vocab-size": { kind: "int", help: "real vocabulary when the source cannot tell it (unpadded, with eod)" },
};

const WHAT =
  "Convert a GPT, BERT or T5 checkpoint between Hugging Face, Megatron-LM PyTorch and megatron-deno formats.";

export function main(argv: string[]): Promise<number> {
  return runCommand("convert", WHAT, CONVERT_FLAGS, argv, (f) => {
    const tp = f["target-tensor-parallel-size"] as number, pp = f["target-pipeline-parallel-size"] as number;
    if (tp < 1) throw new UsageError(`--target-tensor-parallel-size ${tp}: expected >= 1`);
    if (pp < 1) throw new UsageError(`--target-pipeline-parallel-size ${pp}: expected >= 1`);
    const full = readModel(
      f.from as CheckpointFormat,
      f.load as string,
      f["vocab-size"] as number | undefined,
    );
    writeGpt(f.to as CheckpointFormat, f.save as string, full, tp, pp);
    const a = full.arch;
    console.log(
      `converted ${
        a.model ?? "gpt"
      } ${f.from} ${f.load} -> ${f.to} ${f.save}: ${a.numLayers} layers, hidden ${a.hiddenSize}, ` +
        `${a.numAttentionHeads} heads, vocab ${a.vocabSize}, TP ${tp}, PP ${pp}`,
    );
    return 0;
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));
