// Transformer configuration (shared by GPT, BERT and T5) and the derived per-rank sizes. Plain data,
// validated once.

import type { DType } from "../tensor/dtype.ts";

export type ParamsDType = "f32" | "f16" | "bf16" | "f64";
export type CheckpointMethod = null | "uniform" | "block";

export interface TransformerConfig {
  /** Total transformer layers of the whole model (all pipeline stages). */
  numLayers: number;
  hiddenSize: number;
  numAttentionHeads: number;
  /** Per-head size; default hiddenSize / numAttentionHeads. */
  kvChannels?: number;
  /** MLP inner size; default 4 * hiddenSize. */
  ffnHiddenSize?: number;
  seqLength: number;
  maxPositionEmbeddings: number;
  /** Already padded (see padVocabSize). */
  vocabSize: number;
  hiddenDropout: number;
  attentionDropout: number;
  initMethodStd: number;
  /** Default 1e-5. */
  layernormEpsilon?: number;
  paramsDtype: ParamsDType;
  activationsCheckpointMethod: CheckpointMethod;
  /** Layers per checkpointed chunk (uniform) or number of checkpointed layers (block); default 1. */
  activationsCheckpointNumLayers?: number;
  seed: number;
  /** Megatron's --apply-residual-connection-post-layernorm (BERT): each residual starts at the
   *  LayerNorm's output instead of its input. Default false. */
  applyResidualConnectionPostLayernorm?: boolean;
  /** Megatron's bias_gelu_fusion: true (default) is the fused bias + tanh-approximation GeLU; false
   *  (--no-bias-gelu-fusion) adds the bias in the linear layer and applies torch's exact erf GeLU, as
   *  Hugging Face BERT does. */
  biasGeluFusion?: boolean;
}

/** TransformerConfig with every default filled in. */
export interface ResolvedTransformerConfig extends TransformerConfig {
  kvChannels: number;
  ffnHiddenSize: number;
  layernormEpsilon: number;
  activationsCheckpointNumLayers: number;
  applyResidualConnectionPostLayernorm: boolean;
  biasGeluFusion: boolean;
}

/** GPT's names for the same config (kept for existing callers). */
export type GPTConfig = TransformerConfig;
export type ResolvedGPTConfig = ResolvedTransformerConfig;

/** Megatron's padded vocabulary: round up to a multiple of divisibleBy * tp. */
export function padVocabSize(vocab: number, divisibleBy: number, tp: number): number {
  for (const [name, v] of [["vocab", vocab], ["divisibleBy", divisibleBy], ["tp", tp]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new Error(`padVocabSize: ${name} must be a positive integer, found ${v}`);
    }
  }
  const m = divisibleBy * tp;
  return Math.ceil(vocab / m) * m;
}

function need(ok: boolean, msg: string): void {
  if (!ok) throw new Error(`GPTConfig: ${msg}`);
}

const isPosInt = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v > 0;

/** Fill defaults and check the config against a tensor-parallel size; throws one line per problem. */
export function resolveConfig(cfg: TransformerConfig, tpSize = 1): ResolvedTransformerConfig {
  for (
    const k of [
      "numLayers",
      "hiddenSize",
      "numAttentionHeads",
      "seqLength",
      "maxPositionEmbeddings",
      "vocabSize",
    ] as const
  ) {
    need(isPosInt(cfg[k]), `${k} must be a positive integer, found ${cfg[k]}`);
  }
  const kvChannels = cfg.kvChannels ?? cfg.hiddenSize / cfg.numAttentionHeads;
  need(
    isPosInt(kvChannels),
    `kvChannels must be a positive integer (default hiddenSize/numAttentionHeads), found ${kvChannels}`,
  );
  const ffnHiddenSize = cfg.ffnHiddenSize ?? 4 * cfg.hiddenSize;
  need(isPosInt(ffnHiddenSize), `ffnHiddenSize must be a positive integer, found ${ffnHiddenSize}`);
  need(
    cfg.seqLength <= cfg.maxPositionEmbeddings,
    `seqLength ${cfg.seqLength} exceeds maxPositionEmbeddings ${cfg.maxPositionEmbeddings}`,
  );
  for (const k of ["hiddenDropout", "attentionDropout"] as const) {
    need(cfg[k] >= 0 && cfg[k] < 1, `${k} must be in [0, 1), found ${cfg[k]}`);
  }
  need(cfg.initMethodStd > 0, `initMethodStd must be > 0, found ${cfg.initMethodStd}`);
  need(
    ["f32", "f16", "bf16", "f64"].includes(cfg.paramsDtype),
    `paramsDtype must be f32, f16, bf16 or f64, found ${cfg.paramsDtype}`,
  );
  need(
    cfg.activationsCheckpointMethod === null || cfg.activationsCheckpointMethod === "uniform" ||
      cfg.activationsCheckpointMethod === "block",
    `activationsCheckpointMethod must be null, "uniform" or "block", found ${cfg.activationsCheckpointMethod}`,
  );
  const ckN = cfg.activationsCheckpointNumLayers ?? 1;
  need(isPosInt(ckN), `activationsCheckpointNumLayers must be a positive integer, found ${ckN}`);
  need(
    Number.isInteger(cfg.seed) && cfg.seed >= 0 && cfg.seed < 2 ** 32,
    `seed must be a u32, found ${cfg.seed}`,
  );
  need(isPosInt(tpSize), `tensor-parallel size must be a positive integer, found ${tpSize}`);
  need(
    cfg.numAttentionHeads % tpSize === 0,
    `numAttentionHeads ${cfg.numAttentionHeads} is not divisible by tensor-parallel size ${tpSize}`,
  );
  need(
    ffnHiddenSize % tpSize === 0,
    `ffnHiddenSize ${ffnHiddenSize} is not divisible by tensor-parallel size ${tpSize}`,
  );
  need(
    cfg.vocabSize % tpSize === 0,
    `vocabSize ${cfg.vocabSize} is not divisible by tensor-parallel size ${tpSize}`,
  );
  return {
    ...cfg,
    kvChannels,
    ffnHiddenSize,
    layernormEpsilon: cfg.layernormEpsilon ?? 1e-5,
    activationsCheckpointNumLayers: ckN,
    applyResidualConnectionPostLayernorm: cfg.applyResidualConnectionPostLayernorm ?? false,
    biasGeluFusion: cfg.biasGeluFusion ?? true,
  };
}

/** Gradient / statistics dtype for a model dtype: f64 models keep everything in f64. */
export function gradDType(d: ParamsDType): DType {
  return d === "f64" ? "f64" : "f32";
}
