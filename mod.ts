// megatron-deno public API. Everything here is importable from a URL.
export * from "./src/tensor/dtype.ts";
export * from "./src/tensor/tensor.ts";
export type * from "./src/backend/backend.ts";
export * from "./src/rng/philox.ts";
export * from "./src/parallel/types.ts";
export type * from "./src/tensor/param.ts";
