// Using a trained model: GPT / BERT / T5 checkpoints of any format and layout as full tensors, a
// one-rank GPT with the KV-cache forward and streaming generation, a one-rank BERT's logits.
export * from "./gpt_weights.ts";
export * from "./gpt_runner.ts";
export * from "./bert_runner.ts";
export * from "./gpt_layout.ts";
export * from "./model_load.ts";
