// T5 as a training task (Megatron 2021's pretrain_t5.py): span-masked samples from a sentence-level
// dataset (buildT5Datasets, BERT WordPiece vocabulary with --vocab-extra-ids sentinels), batches with
// Megatron's fields, a whole-model chunk that ends in logits, and the masked LM loss over the decoder's
// labels, sum(CE * loss_mask) / sum(loss_mask), logged as "lm loss". No pipeline parallelism (Megatron
// 2021 had none for T5).

import { maskedLmVocab, type WordPieceVocabSource } from "../data/masked_lm.ts";
import { buildT5Datasets } from "../data/masked_lm_builder.ts";
import { type T5Sample, t5SampleToJson } from "../data/t5_dataset.ts";
import { MaskedLmLoss } from "../models/lm_logits.ts";
import { T5Model } from "../models/t5.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { type MicroBatchContext, newMicroBatchContext } from "../transformer/common.ts";
import type { TransformerConfig } from "../transformer/config.ts";
import { type Config, ConfigError, FLAG_GROUPS, type FlagGroup, type TaskFlags } from "./config.ts";
import { buildMaskedLmDatasets, maskedLmModelConfig } from "./masked_lm_task.ts";
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

/** pretrain_t5's command line: every group; it reads the T5/masking flags GPT rejects. */
export const T5_FLAGS: TaskFlags = {
  command: "pretrain-t5",
  groups: Object.keys(FLAG_GROUPS) as FlagGroup[],
  reads: [
    "decoderSeqLength",
    "maskProb",
    "shortSeqProb",
    "applyResidualConnectionPostLayernorm",
    "noBiasGeluFusion",
  ],
  required: ["decoderSeqLength"],
};

/** The T5 config the flags describe: --seq-length is the encoder length (--encoder-seq-length). */
export function t5ModelConfig(cfg: Config, paddedVocab: number): TransformerConfig {
  return maskedLmModelConfig(cfg, paddedVocab);
}

/** Model FLOPs of one sample, forward + backward (3x forward; no recompute): encoder and decoder
 *  GEMMs (projections, scores, context, MLP; cross-attention keys/values over the encoder length) and
 *  the logits. */
export function t5FlopsPerSample(
  cfg: { numLayers: number; hiddenSize: number; kvChannels: number; numAttentionHeads: number },
  ffn: number,
  se: number,
  sd: number,
  vocab: number,
): number {
  const h = cfg.hiddenSize, p = cfg.kvChannels * cfg.numAttentionHeads;
  const selfAttn = (s: number) => 2 * s * h * 3 * p + 4 * s * s * p + 2 * s * p * h;
  const mlp = (s: number) => 4 * s * h * ffn;
  const cross = 2 * sd * h * p + 2 * se * h * 2 * p + 4 * sd * se * p + 2 * sd * p * h;
  const perLayer = selfAttn(se) + mlp(se) + selfAttn(sd) + cross + mlp(sd);
  return 3 * (cfg.numLayers * perLayer + 2 * sd * h * vocab);
}

/** The whole T5 model as the one chunk of a rank. */
export class T5Chunk implements ModelChunk {
  readonly batchFields = ["text_enc", "text_dec", "enc_mask", "enc_dec_mask", "labels", "loss_mask"] as const;

  constructor(readonly model: T5Model, readonly spec: ChunkSpec) {}

  params() {
    return this.model.params();
  }

  tiedEmbeddingParam() {
    return this.model.embedding.wordEmbeddings;
  }

  async forward(batch: DeviceBatch, _received: Tensor[], ctx: MicroBatchContext) {
    const logits = await this.model.forward({
      textEnc: batch.text_enc,
      textDec: batch.text_dec,
      encMask: batch.enc_mask,
      encDecMask: batch.enc_dec_mask,
    }, ctx);
    return [logits];
  }

  async backward(ctx: MicroBatchContext, outputGrads: Tensor[]) {
    await this.model.backward(ctx, outputGrads[0]);
    this.model.backend.free(outputGrads[0]);
    return [];
  }

  discard(ctx: MicroBatchContext) {
    this.model.discard(ctx);
  }
}

/** Megatron's masks are 1 = attend; the model's are 1 = masked (get_batch's `mask < 0.5`). */
function inverted(m: Uint8Array, out: Uint8Array, at: number): void {
  for (let i = 0; i < m.length; i++) out[at + i] = m[i] ? 0 : 1;
}

/** A host batch from T5 samples, under the dataset's (Megatron's) field names. */
export function t5HostBatch(samples: T5Sample[], se: number, sd: number): HostBatch {
  const b = samples.length;
  const textEnc = new Int32Array(b * se), textDec = new Int32Array(b * sd), labels = new Int32Array(b * sd);
  const lossMask = new Float32Array(b * sd);
  const encMask = new Uint8Array(b * se * se), decMask = new Uint8Array(b * sd * sd);
  const encDecMask = new Uint8Array(b * sd * se);
  samples.forEach((s, i) => {
    if (s.text_enc.length !== se || s.text_dec.length !== sd) {
      throw new Error(
        `data: a T5 sample has ${s.text_enc.length} encoder / ${s.text_dec.length} decoder tokens, expected ` +
          `--encoder-seq-length ${se} / --decoder-seq-length ${sd}`,
      );
    }
    textEnc.set(s.text_enc, i * se);
    textDec.set(s.text_dec, i * sd);
    labels.set(s.labels, i * sd);
    lossMask.set(s.loss_mask, i * sd);
    inverted(s.enc_mask, encMask, i * se * se);
    inverted(s.dec_mask, decMask, i * sd * sd);
    inverted(s.enc_dec_mask, encDecMask, i * sd * se);
  });
  return {
    text_enc: { dtype: "i32", shape: [b, se], data: textEnc },
    text_dec: { dtype: "i32", shape: [b, sd], data: textDec },
    labels: { dtype: "i32", shape: [b, sd], data: labels },
    loss_mask: { dtype: "f32", shape: [b, sd], data: lossMask },
    enc_mask: { dtype: "u8", shape: [b, se, se], data: encMask },
    // Not read by the model (its decoder self-attention is causal; see models/t5.ts), kept for fidelity.
    dec_mask: { dtype: "u8", shape: [b, sd, sd], data: decMask },
    enc_dec_mask: { dtype: "u8", shape: [b, sd, se], data: encDecMask },
  };
}

function wordPiece(ctx: TaskContext): WordPieceVocabSource {
  const t = ctx.tokenizer as unknown as Partial<WordPieceVocabSource>;
  if (!(t.vocab instanceof Map)) {
    throw new Error(`T5 needs a BERT WordPiece tokenizer, found --tokenizer-type ${ctx.cfg.tokenizerType}`);
  }
  return t as WordPieceVocabSource;
}

/** Megatron's T5 pretraining task. */
export const t5Task: TrainingTask<T5Sample> = {
  name: "t5",
  lossNames: ["lm loss"],
  flags: T5_FLAGS,
  validate(cfg) {
    if (cfg.pipelineModelParallelSize !== 1) {
      throw new ConfigError(
        `--pipeline-model-parallel-size ${cfg.pipelineModelParallelSize}: T5 has no pipeline parallelism ` +
          `(as in Megatron 2021); use tensor and data parallelism`,
      );
    }
    if (!cfg.tokenizerType?.startsWith("BertWordPiece")) {
      throw new ConfigError(
        `--tokenizer-type ${cfg.tokenizerType}: T5 needs BertWordPieceLowerCase or BertWordPieceCase`,
      );
    }
    // GPT flags T5 would otherwise take and ignore.
    if (cfg.eodMaskLoss) {
      throw new ConfigError("--eod-mask-loss: applies to GPT; T5's loss mask comes from its dataset");
    }
    if (cfg.mergeFile !== undefined) {
      throw new ConfigError("--merge-file: applies to GPT2BPETokenizer; T5 uses a WordPiece --vocab-file");
    }
    if (cfg.vocabExtraIds < 1) {
      throw new ConfigError("--vocab-extra-ids: T5 needs sentinel tokens, found none (Megatron uses 100)");
    }
  },
  modelConfig: (ctx) => t5ModelConfig(ctx.cfg, ctx.paddedVocab),
  buildDatasets(ctx, numSamples) {
    const { cfg } = ctx;
    const vocab = maskedLmVocab(wordPiece(ctx));
    return buildMaskedLmDatasets(
      ctx,
      `> building train, validation, and test datasets for T5 (samples: ${numSamples.join(", ")}) ...`,
      (open) =>
        buildT5Datasets({
          dataPrefix: cfg.dataPath!,
          splitString: cfg.split,
          trainValidTestNumSamples: numSamples,
          maskedLmProb: cfg.maskProb,
          shortSeqProb: cfg.shortSeqProb,
          seed: cfg.seed,
          vocab,
          open,
          encoderSeqLength: cfg.seqLength!,
          decoderSeqLength: cfg.decoderSeqLength!,
          log: ctx.log,
        }),
    );
  },
  buildChunk(ctx, spec, env: ChunkEnv) {
    if (!spec.preProcess || !spec.postProcess) {
      throw new Error("T5: a chunk must be the whole model (no pipeline parallelism)");
    }
    return new T5Chunk(
      new T5Model(t5ModelConfig(ctx.cfg, ctx.paddedVocab), env.backend, env.ps, env.comm),
      spec,
    );
  },
  makeBatch: (ctx, samples) => t5HostBatch(samples, ctx.cfg.seqLength!, ctx.cfg.decoderSeqLength!),
  // Nothing crosses a stage boundary with one stage; the runner still sizes its (unused) send buffer.
  stageTensors: (
    ctx,
    b,
  ) => [{ shape: [b, ctx.cfg.seqLength!, ctx.cfg.hiddenSize!], dtype: ctx.cfg.paramsDtype }],
  async loss(_ctx, chunk, outputs, batch): Promise<TaskLoss> {
    const model = (chunk as T5Chunk).model;
    const tp = { backend: model.backend, comm: model.comm, ps: model.ps, dtype: model.cfg.paramsDtype };
    const lm = new MaskedLmLoss(tp, model.vocabStart);
    // The loss keeps its state in a context of its own (it is one step, outside the chunk's).
    const lctx = newMicroBatchContext({ iteration: 0, firstGlobalSample: 0 });
    const labels = batch.labels.view([batch.labels.size]);
    const out = await lm.forward(outputs[0], labels, batch.loss_mask.view([batch.loss_mask.size]), lctx);
    return {
      loss: out.loss,
      scalars: { "lm loss": out.loss },
      backward: (factor) => [lm.backward(lctx, factor)],
      discard: () => lm.discard(lctx),
    };
  },
  tokensPerSample: (ctx) => ctx.cfg.seqLength! + ctx.cfg.decoderSeqLength!,
  flopsPerSample: (ctx) =>
    t5FlopsPerSample(
      {
        numLayers: ctx.cfg.numLayers!,
        hiddenSize: ctx.cfg.hiddenSize!,
        kvChannels: ctx.cfg.kvChannels!,
        numAttentionHeads: ctx.cfg.numAttentionHeads!,
      },
      ctx.cfg.ffnHiddenSize!,
      ctx.cfg.seqLength!,
      ctx.cfg.decoderSeqLength!,
      ctx.paddedVocab,
    ),
  sampleJson(ctx, sample, { decode }) {
    const json: Record<string, unknown> = t5SampleToJson(sample);
    if (decode) {
      const real = (ids: ArrayLike<number>, min: number) => Array.from(ids).filter((t) => t >= min);
      json.text_enc_decoded = ctx.tokenizer.detokenize(real(sample.text_enc, 1));
      json.text_dec_decoded = ctx.tokenizer.detokenize(real(sample.text_dec, 1));
      json.labels_decoded = ctx.tokenizer.detokenize(real(sample.labels, 0));
    }
    return json;
  },
};
