// Megatron 2021 tasks/: zero-shot evaluation (WikiText-103, LAMBADA) and finetuning data (RACE, GLUE).
export * from "./text.ts";
export * from "./zeroshot.ts";
export * from "./finetune_data.ts";
