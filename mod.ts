// megatron-deno public API. Everything here is importable from a URL: relative imports plus fully
// qualified npm:/node: specifiers only. Importing this module has no side effects.
//
// Layers, bottom to top: tensor, rng -> backend -> tokenizer -> data -> optimizer -> parallel ->
// transformer -> models -> pipeline -> training -> generation, downstream, interop -> inference.

// ---- tensor, dtype, parameters ------------------------------------------------------------------
export * from "./src/tensor/dtype.ts";
export * from "./src/tensor/tensor.ts";
export type * from "./src/tensor/param.ts";

// ---- counter-based RNG --------------------------------------------------------------------------
export * from "./src/rng/philox.ts";

// ---- backends -----------------------------------------------------------------------------------
export type * from "./src/backend/backend.ts";
export { CpuBackend, type CpuBackendOptions, createCpuBackend } from "./src/backend/cpu/cpu_backend.ts";
export {
  type DeviceFlag,
  parseDeviceFlag,
  selectBackend,
  type SelectedBackend,
} from "./src/backend/cuda/select.ts";
export { createCudaBackend, type CudaBackend, probeCuda } from "./src/backend/cuda/cuda_backend.ts";

// ---- tokenizers ---------------------------------------------------------------------------------
export * from "./src/tokenizer/mod.ts";

// ---- data: indexed datasets, GPT datasets, samplers, preprocessing ------------------------------
export * from "./src/data/indexed_dataset.ts";
export * from "./src/data/gpt_dataset.ts";
export * from "./src/data/blendable.ts";
export * from "./src/data/sampler.ts";
export * from "./src/data/split.ts";
export * from "./src/data/npy.ts";
export * from "./src/data/numpy_random.ts";
export * from "./src/data/corpus.ts";
export * from "./src/data/preprocess.ts";
// BERT and T5 datasets (Megatron 2021's samples mapping, masking and sample layout)
export * from "./src/data/samples_mapping.ts";
export * from "./src/data/masked_lm.ts";
export * from "./src/data/bert_dataset.ts";
export * from "./src/data/t5_dataset.ts";
export * from "./src/data/masked_lm_builder.ts";

// ---- optimizer, mixed precision, LR schedule ----------------------------------------------------
export * from "./src/optimizer/mod.ts";
// checkpoint.ts declares the same {scale, growthTracker, hysteresisTracker} shape; this one wins.
export type { GradScalerState } from "./src/optimizer/mod.ts";

// ---- parallel state and communicators -----------------------------------------------------------
export * from "./src/parallel/types.ts";
export * from "./src/parallel/local_comm.ts";
export * from "./src/parallel/ddp.ts";

// ---- transformer building blocks and models -----------------------------------------------------
export * from "./src/transformer/mod.ts";
export * from "./src/models/mod.ts";

// ---- pipeline schedules -------------------------------------------------------------------------
export * from "./src/pipeline/schedules.ts";

// ---- training: loop, flags, checkpoints, logs ---------------------------------------------------
export * from "./src/training/train.ts";
export * from "./src/training/task.ts";
export * from "./src/training/gpt_task.ts";
export * from "./src/training/t5_task.ts";
export * from "./src/training/bert_task.ts";
export * from "./src/training/config.ts";
export * from "./src/training/checkpoint.ts";
export * from "./src/training/lock.ts";
export * from "./src/training/memory_estimate.ts";
export * from "./src/training/safetensors.ts";
export * from "./src/training/tensorboard.ts";
export * from "./src/training/metrics.ts";

// ---- interop, generation sampling, downstream tasks (namespaced: their helper names are generic) -
export * as interop from "./src/interop/mod.ts";
export * as generation from "./src/generation/mod.ts";
export * as downstream from "./src/downstream/mod.ts";
// Checkpoints in any format/layout as full GPT weights, one-rank inference, KV cache, generation on a
// (TP, PP) layout on the CPU or CUDA, streamGpt.
export * as inference from "./src/inference/mod.ts";
