// deno task merge-checkpoints --load SRC --save DST --target-tensor-parallel-size T --target-pipeline-parallel-size P
// tools/merge_mp_partitions.py generalized: any (TP, PP) layout of a GPT or BERT checkpoint to any other
// (T5: any TP, PP 1), through the weight-name table (vocabulary padding recomputed for the new TP). Model weights only: load the
// result with --no-load-optim --no-load-rng (or --finetune). Exit codes: 0 done, 1 bad input, 2 bad usage.

import { type CheckpointFormat, detectFormat, readModel, writeGpt } from "../src/inference/gpt_weights.ts";
import { type FlagTable, runCommand, UsageError } from "./inference_flags.ts";

export const MERGE_FLAGS: FlagTable = {
  load: { kind: "path", help: "checkpoint folder (megatron-deno or Megatron-LM .pt)", required: true },
  save: { kind: "path", help: "destination folder (must not exist, or be empty)", required: true },
  "target-tensor-parallel-size": { kind: "int", help: "TP of the written checkpoint", default: 1 },
  "target-pipeline-parallel-size": { kind: "int", help: "PP of the written checkpoint", default: 1 },
  format: { kind: "format", help: "format of both checkpoints (default: detected from --load)" },
};

const WHAT =
  "Reshard a GPT, BERT or T5 checkpoint: any (TP, PP) to any (TP, PP; T5: PP 1), model weights only.";

export function main(argv: string[]): Promise<number> {
  return runCommand("merge-checkpoints", WHAT, MERGE_FLAGS, argv, (f) => {
    const tp = f["target-tensor-parallel-size"] as number, pp = f["target-pipeline-parallel-size"] as number;
    if (tp < 1) throw new UsageError(`--target-tensor-parallel-size ${tp}: expected >= 1`);
    if (pp < 1) throw new UsageError(`--target-pipeline-parallel-size ${pp}: expected >= 1`);
    const load = f.load as string;
    const format = (f.format as CheckpointFormat | undefined) ?? detectFormat(load);
    if (format === null) {
      throw new Error(
        `--load ${load}: not a megatron-deno or Megatron-LM checkpoint folder (no tracker / rank files)`,
      );
    }
    if (format === "hf") {
      throw new UsageError(`--format hf: a Hugging Face folder has no layout; use convert`);
    }
    const full = readModel(format, load);
    writeGpt(format, f.save as string, full, tp, pp);
    console.log(`resharded ${full.arch.model ?? "gpt"} ${load} -> ${f.save}: TP ${tp}, PP ${pp} (${format})`);
    return 0;
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));
