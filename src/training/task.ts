// What a model brings to the generic trainer (Megatron's pretrain(train_valid_test_dataset_provider,
// model_provider, forward_step_func)): its datasets, a model chunk per pipeline stage, how samples
// become a micro-batch, what crosses a stage boundary, and its loss. The loop, ranks, schedules,
// evaluation, checkpoints, logging and the optimizer (train.ts, rank.ts) know nothing else about it.

import type { Backend } from "../backend/backend.ts";
import type { SampleDataset } from "../data/blendable.ts";
import type { Communicator, ParallelState } from "../parallel/types.ts";
import type { Param } from "../tensor/param.ts";
import type { DType } from "../tensor/dtype.ts";
import type { Tensor } from "../tensor/tensor.ts";
import type { Tokenizer } from "../tokenizer/types.ts";
import type { MicroBatchContext } from "../transformer/common.ts";
import type { TransformerConfig } from "../transformer/config.ts";
import type { Config, TaskFlags } from "./config.ts";

/** One named host array of a micro-batch, row-major. */
export type BatchArray =
  | { dtype: "i32"; shape: number[]; data: Int32Array }
  | { dtype: "f32"; shape: number[]; data: Float32Array }
  | { dtype: "u8"; shape: number[]; data: Uint8Array };

/** A host micro-batch: named arrays under Megatron's names (GPT: tokens, labels, loss_mask; BERT:
 *  text, types, labels, loss_mask, padding_mask, is_random; ...). */
export type HostBatch = Record<string, BatchArray>;

/** The fields of a micro-batch a chunk asked for, on the device (the runner's; alive until backward). */
export type DeviceBatch = Record<string, Tensor>;

/** Which part of the model a chunk is: Megatron's pre_process / post_process and its layer range. */
export interface ChunkSpec {
  /** First chunk of the first stage: owns the embeddings. */
  preProcess: boolean;
  /** Last chunk of the last stage: owns the output head; its outputs go to the task's loss. */
  postProcess: boolean;
  /** Global 0-based layer numbers of this chunk, in order (Megatron's interleaved assignment). */
  layers: number[];
  /** Virtual pipeline chunk index (0 without interleaving) and the number of chunks per stage. */
  virtualChunk: number;
  virtualChunks: number;
}

/** A model chunk for one pipeline stage (or virtual chunk). */
export interface ModelChunk {
  readonly spec: ChunkSpec;
  /** Batch fields this chunk's forward (and, on the last chunk, the task's loss) reads. */
  readonly batchFields: readonly string[];
  /** Parameters in Megatron state-dict order, stage-local names (the trainer adds model0., ...). */
  params(): Param[];
  /** The tied word-embedding copy summed over the embedding group (first/last stage), else null. */
  tiedEmbeddingParam(): Param | null;
  /**
   * `received`: the tensors from the previous stage ([] on the first chunk), the runner's, alive until
   * backward. Returns this chunk's outputs (caller owns them): sent to the next stage, or on the last
   * chunk handed to the task's loss (GPT: [logits]).
   */
  forward(batch: DeviceBatch, received: Tensor[], ctx: MicroBatchContext): Promise<Tensor[]>;
  /** `outputGrads`: one per output (last chunk: the loss's, taken over; else the runner's). Returns
   *  the gradients of `received` (caller owns; [] on the first chunk). */
  backward(ctx: MicroBatchContext, outputGrads: Tensor[]): Promise<Tensor[]>;
  /** Free what forward saved without a backward (evaluation). */
  discard(ctx: MicroBatchContext): void;
}

/** A micro-batch's loss, computed from the last chunk's outputs. */
export interface TaskLoss {
  /** The backpropagated loss of this micro-batch (BERT: lm + sop). */
  loss: number;
  /** Named values to log, averaged over micro-batches and DP ranks (GPT: {"lm loss"}). */
  scalars: Record<string, number>;
  /** Per-sample outputs an evaluation may keep (finetuning: each sample's class probabilities,
   *  [b, classes] row-major). */
  rows?: Float64Array;
  /** Gradients of the outputs for d(loss * factor) (the trainer hands them to the chunk's backward). */
  backward(factor: number): Tensor[];
  /** Free the saved state without a backward (evaluation). */
  discard(): void;
}

/** One split's samples; sample type is the task's. */
export interface TaskDatasets<S> {
  train: SampleDataset<S> | null;
  valid: SampleDataset<S> | null;
  test: SampleDataset<S> | null;
  close(): void;
}

/** What the trainer hands a task besides the flags. */
export interface TaskContext {
  cfg: Config;
  /** Vocabulary padded for TP (--make-vocab-size-divisible-by x TP). */
  paddedVocab: number;
  tokenizer: Tokenizer;
  log: (line: string) => void;
}

/** Where a chunk lives. */
export interface ChunkEnv {
  backend: Backend;
  ps: ParallelState;
  comm: Communicator;
}

/** The shape and dtype of one tensor that crosses a pipeline stage boundary. */
export interface StageTensorSpec {
  shape: number[];
  dtype: DType;
}

export interface TrainingTask<S = unknown> {
  /** Short name for logs ("gpt"). */
  readonly name: string;
  /** Loss scalar names in log order (GPT: ["lm loss"]); validation/test print and log each. */
  readonly lossNames: readonly string[];
  /** Its command line: flag groups, flags it reads that others reject, extra required flags. */
  readonly flags: TaskFlags;
  /** Task-specific checks of the validated flags (one line per problem); run before anything else. */
  validate?(cfg: Config): void;
  /** The transformer config a chunk is built from (memory estimate, model log line). */
  modelConfig(ctx: TaskContext): TransformerConfig;
  /** Megatron's train_valid_test_datasets_provider for [train, valid, test] sample counts. */
  buildDatasets(ctx: TaskContext, numSamples: [number, number, number]): TaskDatasets<S>;
  /** Megatron's model_provider for one (virtual) stage. */
  buildChunk(ctx: TaskContext, spec: ChunkSpec, env: ChunkEnv): ModelChunk;
  /** Samples of one micro-batch (in order) -> host batch. */
  makeBatch(ctx: TaskContext, samples: S[]): HostBatch;
  /** Tensors sent between stages for a micro-batch of `microBatch` samples (GPT: the hidden state). */
  stageTensors(ctx: TaskContext, microBatch: number): StageTensorSpec[];
  /** The loss step (Megatron's loss_func): consumes the last chunk's outputs. */
  loss(ctx: TaskContext, chunk: ModelChunk, outputs: Tensor[], batch: DeviceBatch): Promise<TaskLoss>;
  /** Tokens of one sample, for tokens/s (GPT: seq-length). */
  tokensPerSample(ctx: TaskContext): number;
  /** Model FLOPs of one sample forward+backward, for TFLOP/s and MFU; null when unknown. */
  flopsPerSample?(ctx: TaskContext): number | null;
  /** Bytes a rank needs (checked against free memory before allocating); omit to skip the check. */
  estimateMemory?(ctx: TaskContext, layout: MemoryLayout): TaskMemoryEstimate | null;
  /** One sample as `inspect-data` prints it: Megatron's field names and values (masks as 2-D 0/1
   *  lists); with `decode`, the detokenized text beside them. */
  sampleJson?(ctx: TaskContext, sample: S, opts: { decode: boolean }): Record<string, unknown>;
}

export interface MemoryLayout {
  tp: number;
  pp: number;
  dp: number;
  vp: number;
  microBatchSize: number;
  numMicroBatches: number;
  optimizer: "adam" | "sgd";
}

/** An opaque estimate plus how the trainer reports it (see memory_estimate.ts for GPT's). */
export interface TaskMemoryEstimate {
  /** One line for the model log line. */
  describe(): string;
  /** null when it fits in what is available (or that is unknown), else the one-line error. */
  check(
    available: { bytes: number; what: string } | null,
    /** One process per rank: only the largest rank's share must fit (default: all ranks). */
    perRank?: boolean,
  ): string | null;
}

/** Upload the batch fields a chunk needs (i32/f32/u8 as on the host). */
export function uploadBatch(backend: Backend, host: HostBatch, fields: readonly string[]): DeviceBatch {
  const out: DeviceBatch = {};
  for (const f of fields) {
    const a = host[f];
    if (!a) {
      throw new Error(
        `batch: the model asks for field "${f}", the batch has ${Object.keys(host).join(", ")}`,
      );
    }
    out[f] = backend.fromHost(a.dtype, a.shape, a.data);
  }
  return out;
}
