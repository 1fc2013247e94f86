// `deno task pretrain:t5 [flags]`: T5 pretraining with Megatron-LM 2021's flags (pretrain_t5.py):
// --encoder-seq-length (or --seq-length), --decoder-seq-length, --vocab-extra-ids, --mask-prob,
// --short-seq-prob, a BERT WordPiece tokenizer and a sentence-level dataset (preprocess
// --split-sentences). Tensor and data parallelism; no pipeline parallelism (Megatron 2021 had none).

import { t5Task } from "../src/training/t5_task.ts";
import type { TrainingTask } from "../src/training/task.ts";
import { type PretrainCommand, runPretrain } from "./pretrain.ts";

/** `megatron pretrain-t5` / `deno task pretrain:t5`. */
export const PRETRAIN_T5: PretrainCommand = { name: "pretrain_t5", task: t5Task as TrainingTask<unknown> };

/** A bad flag is one line and exit code 2, a failure one line and exit code 1. */
export function run(argv: string[]): Promise<void> {
  return runPretrain(PRETRAIN_T5, argv);
}

if (import.meta.main) await run(Deno.args);
