// The model and tokenizer a generate / evaluate command runs: a checkpoint of any format (detected
// unless --format), its architecture from the checkpoint, and the tokenizer its arguments name
// (GPT-2 BPE with the bundled or given files, or NullTokenizer ids for small vocabularies).

import { buildTokenizer, type Tokenizer, type TokenizerType } from "../src/tokenizer/mod.ts";
import { type CheckpointFormat, detectFormat, type FullGpt, readGpt } from "../src/inference/gpt_weights.ts";
import type { FlagTable, FlagValues } from "./inference_flags.ts";

export const MODEL_FLAGS: FlagTable = {
  load: {
    kind: "path",
    help: "checkpoint: megatron-deno or Megatron-LM folder, or HF GPT-2 folder",
    required: true,
  },
  format: { kind: "format", help: "checkpoint format (default: detected)" },
  "vocab-size": { kind: "int", help: "real vocabulary (with eod) when the checkpoint cannot tell it" },
  "vocab-file": { kind: "path", help: "GPT-2 encoder.json (default: the bundled one)" },
  "merge-file": { kind: "path", help: "GPT-2 merges (default: the bundled one)" },
  "seq-length": { kind: "int", help: "sequence length (default: the checkpoint's)" },
};

export async function loadModel(
  f: FlagValues,
): Promise<{ full: FullGpt; tokenizer: Tokenizer; seqLength: number }> {
  const load = f.load as string;
  const format = (f.format as CheckpointFormat | undefined) ?? detectFormat(load);
  if (format === null) {
    throw new Error(
      `--load ${load}: not a checkpoint (no config.json, tracker or rank files); pass --format`,
    );
  }
  const full = readGpt(format, load, f["vocab-size"] as number | undefined);
  const a = full.arch;
  const tokenizer = await buildTokenizer({
    tokenizerType: a.tokenizerType as TokenizerType | "NullTokenizer",
    vocabFile: f["vocab-file"] as string | undefined,
    mergeFile: f["merge-file"] as string | undefined,
    vocabSize: a.tokenizerType === "NullTokenizer" ? a.vocabSize - 1 : undefined,
  });
  if (tokenizer.vocabSize !== a.vocabSize) {
    throw new Error(
      `--load ${load}: the tokenizer has ${tokenizer.vocabSize} ids, the checkpoint ${a.vocabSize}`,
    );
  }
  const seqLength = (f["seq-length"] as number | undefined) ?? a.seqLength;
  if (seqLength < 2 || seqLength > a.maxPositionEmbeddings) {
    throw new Error(
      `--seq-length ${seqLength}: expected 2..${a.maxPositionEmbeddings} (max-position-embeddings)`,
    );
  }
  return { full, tokenizer, seqLength };
}
