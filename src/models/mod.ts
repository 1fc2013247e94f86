// Models built from src/transformer.
export * from "./gpt.ts";
export * from "./bert.ts";
export * from "./weight_names.ts";
export { padVocabSize } from "../transformer/config.ts";
export type {
  CheckpointMethod,
  GPTConfig,
  ParamsDType,
  ResolvedTransformerConfig,
  TransformerConfig,
} from "../transformer/config.ts";
export type { MicroBatchContext } from "../transformer/common.ts";
export type { LossOutput } from "../transformer/lm_head.ts";
// BERT/T5 modules after the transformer, and the tokentype embedding they use.
export * from "./lm_logits.ts";
export * from "./bert_heads.ts";
export * from "./t5_head.ts";
export * from "./t5.ts";
export * from "../transformer/tokentype_embedding.ts";
