// Checkpoint interop: PyTorch pickles/zips, Megatron 2021 .pt checkpoints, Hugging Face folders.
export * from "./pickle.ts";
export * from "./torch_checkpoint.ts";
export * from "./megatron_checkpoint.ts";
export * from "./hf.ts";
