// The optimizer layer's public API: grad scalers, LR schedule, micro-batch calculators, grad-norm
// clipping and MegatronOptimizer (Adam/SGD with Megatron's mixed-precision step).

export * from "./grad_scaler.ts";
export * from "./lr_schedule.ts";
export * from "./microbatches.ts";
export * from "./clip.ts";
export * from "./optimizer.ts";
