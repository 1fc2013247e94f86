// Using a trained GPT: checkpoints of any format and layout as full tensors, a one-rank model, the
// KV-cache forward and streaming generation.
export * from "./gpt_weights.ts";
export * from "./gpt_runner.ts";
export * from "./gpt_layout.ts";
