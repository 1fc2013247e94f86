// Models built from src/transformer.
export * from "./gpt.ts";
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
