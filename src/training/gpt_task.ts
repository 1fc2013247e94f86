// GPT as a training task (Megatron's pretrain_gpt.py): indexed-dataset samples of seq-length + 1
// tokens, tokens/labels/loss_mask batches, GPTModel chunks that send the hidden state between stages
// and end in logits, and the masked vocab-parallel LM loss logged as "lm loss".

import { GPTModel } from "../models/gpt.ts";
import type { LMLoss } from "../transformer/lm_head.ts";
import type { TransformerConfig } from "../transformer/config.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { type Config, GPT_FLAGS } from "./config.ts";
import { buildGptData } from "./data.ts";
import { checkFits, describeEstimate, estimateMemory } from "./memory_estimate.ts";
import type {
  ChunkEnv,
  ChunkSpec,
  DeviceBatch,
  HostBatch,
  ModelChunk,
  TaskContext,
  TaskLoss,
  TrainingTask,
} from "./task.ts";

/** The GPT model config the flags describe, with the padded vocabulary. */
export function modelConfigOf(cfg: Config, paddedVocab: number): TransformerConfig {
  return {
    numLayers: cfg.numLayers!,
    hiddenSize: cfg.hiddenSize!,
    numAttentionHeads: cfg.numAttentionHeads!,
    kvChannels: cfg.kvChannels,
    ffnHiddenSize: cfg.ffnHiddenSize,
    seqLength: cfg.seqLength!,
    maxPositionEmbeddings: cfg.maxPositionEmbeddings!,
    vocabSize: paddedVocab,
    hiddenDropout: cfg.hiddenDropout,
    attentionDropout: cfg.attentionDropout,
    initMethodStd: cfg.initMethodStd,
    layernormEpsilon: cfg.layernormEpsilon,
    paramsDtype: cfg.paramsDtype,
    activationsCheckpointMethod: cfg.activationsCheckpointMethod ?? null,
    activationsCheckpointNumLayers: cfg.activationsCheckpointNumLayers,
    seed: cfg.seed,
  };
}

/** FLOPs of one iteration (Megatron's formula, without recompute): 72 B s l h² (1 + s/6h + V/12lh). */
export function iterationFlops(batch: number, s: number, l: number, h: number, v: number): number {
  return 72 * batch * s * l * h * h * (1 + s / (6 * h) + v / (12 * l * h));
}

/** A GPTModel stage as a model chunk: tokens in on the first, the hidden state between stages, logits
 *  out of the last. */
export class GPTChunk implements ModelChunk {
  readonly batchFields: readonly string[];

  constructor(readonly model: GPTModel, readonly spec: ChunkSpec) {
    this.batchFields = [
      ...(spec.preProcess ? ["tokens"] : []),
      ...(spec.postProcess ? ["labels", "loss_mask"] : []),
    ];
  }

  params() {
    return this.model.params();
  }

  tiedEmbeddingParam() {
    return this.model.tiedEmbeddingParam();
  }

  async forward(batch: DeviceBatch, received: Tensor[], ctx: Parameters<GPTModel["forward"]>[1]) {
    const input = this.spec.preProcess ? { tokens: batch.tokens } : { hidden: received[0] };
    return [(await this.model.forward(input, ctx)) as Tensor];
  }

  async backward(ctx: Parameters<GPTModel["backward"]>[0], outputGrads: Tensor[]) {
    const dx = await this.model.backward(ctx, outputGrads[0]);
    return dx ? [dx] : [];
  }

  discard(ctx: Parameters<GPTModel["discard"]>[0]) {
    this.model.discard(ctx);
  }
}

/** tokens [s], labels [s], loss mask [s] from one sample of s+1 tokens. */
function fillSample(
  sample: ArrayLike<number>,
  s: number,
  eod: number | null,
  hb: { tokens: Int32Array; labels: Int32Array; lossMask: Float32Array },
  row: number,
): void {
  if (sample.length !== s + 1) {
    throw new Error(`data: a sample has ${sample.length} tokens, expected seq-length + 1 = ${s + 1}`);
  }
  const o = row * s;
  for (let i = 0; i < s; i++) {
    hb.tokens[o + i] = sample[i];
    hb.labels[o + i] = sample[i + 1];
    hb.lossMask[o + i] = eod !== null && sample[i] === eod ? 0 : 1;
  }
}

/** A GPT host batch from ready arrays (tokens/labels i32, loss mask f32, each [b, s]). */
export function gptHostBatch(
  tokens: Int32Array,
  labels: Int32Array,
  lossMask: Float32Array,
  b: number,
  s: number,
): HostBatch {
  return {
    tokens: { dtype: "i32", shape: [b, s], data: tokens },
    labels: { dtype: "i32", shape: [b, s], data: labels },
    loss_mask: { dtype: "f32", shape: [b, s], data: lossMask },
  };
}

/** Megatron's GPT pretraining task. */
export const gptTask: TrainingTask<Int32Array> = {
  name: "gpt",
  lossNames: ["lm loss"],
  flags: GPT_FLAGS,
  modelConfig: (ctx) => modelConfigOf(ctx.cfg, ctx.paddedVocab),
  buildDatasets(ctx, numSamples) {
    const { cfg } = ctx;
    return buildGptData({
      dataPath: cfg.dataPath!,
      split: cfg.split,
      seqLength: cfg.seqLength!,
      seed: cfg.seed,
      vocabSize: ctx.paddedVocab,
      numSamples,
      log: ctx.log,
      dataImpl: cfg.dataImpl,
      mmapWarmup: cfg.mmapWarmup,
    });
  },
  buildChunk(ctx, spec, env: ChunkEnv) {
    const model = new GPTModel(modelConfigOf(ctx.cfg, ctx.paddedVocab), env.backend, env.ps, env.comm, {
      preProcess: spec.preProcess,
      postProcess: spec.postProcess,
      layers: spec.layers,
    });
    return new GPTChunk(model, spec);
  },
  makeBatch(ctx: TaskContext, samples: Int32Array[]): HostBatch {
    const s = ctx.cfg.seqLength!, b = samples.length;
    const hb = {
      tokens: new Int32Array(b * s),
      labels: new Int32Array(b * s),
      lossMask: new Float32Array(b * s),
    };
    const eod = ctx.cfg.eodMaskLoss ? ctx.tokenizer.eod : null;
    samples.forEach((sample, i) => fillSample(sample, s, eod, hb, i));
    return gptHostBatch(hb.tokens, hb.labels, hb.lossMask, b, s);
  },
  stageTensors: (
    ctx,
    b,
  ) => [{ shape: [b, ctx.cfg.seqLength!, ctx.cfg.hiddenSize!], dtype: ctx.cfg.paramsDtype }],
  async loss(_ctx, chunk, outputs, batch): Promise<TaskLoss> {
    const model = (chunk as GPTChunk).model;
    const l: LMLoss = await model.loss(outputs[0], batch.labels, batch.loss_mask);
    return {
      loss: l.out.loss,
      scalars: { "lm loss": l.out.loss },
      backward: (factor) => [l.backward(factor)],
      discard: () => l.discard(),
    };
  },
  tokensPerSample: (ctx) => ctx.cfg.seqLength!,
  flopsPerSample: (ctx) =>
    iterationFlops(1, ctx.cfg.seqLength!, ctx.cfg.numLayers!, ctx.cfg.hiddenSize!, ctx.paddedVocab),
  // Megatron's GPTDataset item: {"text": seq-length + 1 token ids}; with decode, their detokenization.
  sampleJson: (ctx, sample, { decode }) => ({
    text: Array.from(sample),
    ...(decode ? { text_decoded: ctx.tokenizer.detokenize(sample) } : {}),
  }),
  estimateMemory(ctx, layout) {
    const e = estimateMemory(modelConfigOf(ctx.cfg, ctx.paddedVocab), layout);
    return { describe: () => describeEstimate(e), check: (avail, perRank) => checkFits(e, avail, perRank) };
  },
};
