// Transformer building blocks with explicit forward/backward.
export * from "./config.ts";
export * from "./common.ts";
export * from "./embedding.ts";
export * from "./layer_norm.ts";
export * from "./attention.ts";
export * from "./mlp.ts";
export * from "./layer.ts";
export * from "./block.ts";
export * from "./lm_head.ts";
export * from "./gradcheck.ts";
