// What the BERT and T5 training tasks share: the model config their flags describe and building the
// train/valid/test datasets from sentence-level indexed datasets that are closed again on failure.

import type { MMapIndexedDataset } from "../data/indexed_dataset.ts";
import type { DocumentDataset, MaskedLmSplits } from "../data/masked_lm_builder.ts";
import type { TransformerConfig } from "../transformer/config.ts";
import type { Config } from "./config.ts";
import { openIndexedDataset } from "./data.ts";
import { modelConfigOf } from "./gpt_task.ts";
import type { TaskContext, TaskDatasets } from "./task.ts";

/** GPT's config fields plus --apply-residual-connection-post-layernorm and --no-bias-gelu-fusion (erf
 *  GeLU, as Hugging Face BERT), which BERT and T5 read. */
export function maskedLmModelConfig(cfg: Config, paddedVocab: number): TransformerConfig {
  return {
    ...modelConfigOf(cfg, paddedVocab),
    applyResidualConnectionPostLayernorm: cfg.applyResidualConnectionPostLayernorm,
    biasGeluFusion: !cfg.noBiasGeluFusion,
  };
}

/**
 * Logs `header`, then runs build with an opener for --data-path prefixes; every dataset it opened is
 * closed by the result's close(), or at once when build throws (no open files left behind).
 */
export function buildMaskedLmDatasets<T>(
  ctx: TaskContext,
  header: string,
  build: (open: (prefix: string) => DocumentDataset) => MaskedLmSplits<T>,
): TaskDatasets<T> {
  const { cfg } = ctx;
  const opened: MMapIndexedDataset[] = [];
  ctx.log(header);
  try {
    const d = build((prefix) =>
      openIndexedDataset(prefix, { dataImpl: cfg.dataImpl, mmapWarmup: cfg.mmapWarmup, log: ctx.log }, opened)
    );
    return { ...d, close: () => opened.forEach((ds) => ds.close()) };
  } catch (e) {
    for (const ds of opened) ds.close();
    throw e;
  }
}
