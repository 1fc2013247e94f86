// BERT as a training task (Megatron 2021 pretrain_bert.py): masked-LM samples from a sentence-level
// dataset (buildBertDatasets, the BERT WordPiece tokenizer), batches under Megatron's names (text,
// types, labels, is_random, loss_mask, padding_mask) plus the extended attention mask, BertModel chunks
// that send the hidden state between stages, and loss = lm loss + sop loss, each logged by name.

import { type BertSample, bertSampleToJson } from "../data/bert_dataset.ts";
import { maskedLmVocab, type WordPieceVocabSource } from "../data/masked_lm.ts";
import { buildBertDatasets } from "../data/masked_lm_builder.ts";
import { BertModel } from "../models/bert.ts";
import { SopLoss } from "../models/bert_heads.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { paddingMaskFromKeep } from "../transformer/attention.ts";
import { newMicroBatchContext, tpEnv } from "../transformer/common.ts";
import { vocabParallelLMLoss } from "../transformer/lm_head.ts";
import { type Config, ConfigError, type FlagKey, GPT_FLAGS, type TaskFlags } from "./config.ts";
import { iterationFlops } from "./gpt_task.ts";
import { buildMaskedLmDatasets, maskedLmModelConfig } from "./masked_lm_task.ts";
import type {
  ChunkSpec,
  DeviceBatch,
  HostBatch,
  ModelChunk,
  TaskContext,
  TaskLoss,
  TrainingTask,
} from "./task.ts";

/** BERT's command line: every group, plus the BERT flags GPT rejects. */
export const BERT_FLAGS: TaskFlags = {
  command: "pretrain-bert",
  groups: GPT_FLAGS.groups,
  reads: [
    "bertNoBinaryHead",
    "maskProb",
    "shortSeqProb",
    "vocabExtraIds",
    "applyResidualConnectionPostLayernorm",
    "noBiasGeluFusion",
  ] satisfies FlagKey[],
  required: [],
};

/** A BertModel stage as a model chunk. */
export class BertChunk implements ModelChunk {
  readonly batchFields: readonly string[];

  constructor(readonly model: BertModel, readonly spec: ChunkSpec) {
    this.batchFields = [
      "attention_mask", // every stage's layers read the padding mask
      ...(spec.preProcess ? ["text", "types"] : []),
      ...(spec.postProcess ? ["labels", "loss_mask", ...(model.binaryHead ? ["is_random"] : [])] : []),
    ];
  }

  params() {
    return this.model.params();
  }

  tiedEmbeddingParam() {
    return this.model.tiedEmbeddingParam();
  }

  forward(batch: DeviceBatch, received: Tensor[], ctx: Parameters<BertModel["forward"]>[1]) {
    const mask = batch.attention_mask;
    return this.model.forward(
      this.spec.preProcess ? { text: batch.text, types: batch.types, mask } : { hidden: received[0], mask },
      ctx,
    );
  }

  async backward(ctx: Parameters<BertModel["backward"]>[0], outputGrads: Tensor[]) {
    const dx = await this.model.backward(ctx, outputGrads);
    return dx ? [dx] : [];
  }

  discard(ctx: Parameters<BertModel["discard"]>[0]) {
    this.model.discard(ctx);
  }
}

/** The BERT tokenizer's vocabulary as masking needs it; one line when the tokenizer is not WordPiece. */
function vocabOf(ctx: TaskContext) {
  const t = ctx.tokenizer as unknown as Partial<WordPieceVocabSource>;
  if (!(t.vocab instanceof Map) || t.cls === undefined || t.mask === undefined) {
    throw new ConfigError(
      `--tokenizer-type: BERT needs BertWordPieceLowerCase or BertWordPieceCase, found ${ctx.cfg.tokenizerType}`,
    );
  }
  return maskedLmVocab(t as WordPieceVocabSource);
}

/** Samples of one micro-batch -> Megatron's batch fields, plus attention_mask u8 [b, s, s]
 *  (bert_extended_attention_mask of padding_mask, 1 = masked). */
export function bertHostBatch(samples: BertSample[], s: number): HostBatch {
  const b = samples.length;
  const text = new Int32Array(b * s), types = new Int32Array(b * s), labels = new Int32Array(b * s);
  const lossMask = new Float32Array(b * s), keep = new Uint8Array(b * s), isRandom = new Int32Array(b);
  samples.forEach((x, i) => {
    if (x.text.length !== s) {
      throw new Error(`data: a BERT sample has ${x.text.length} tokens, expected --seq-length ${s}`);
    }
    text.set(x.text, i * s);
    types.set(x.types, i * s);
    labels.set(x.labels, i * s);
    for (let j = 0; j < s; j++) {
      lossMask[i * s + j] = x.loss_mask[j];
      keep[i * s + j] = x.padding_mask[j];
    }
    isRandom[i] = x.is_random;
  });
  return {
    text: { dtype: "i32", shape: [b, s], data: text },
    types: { dtype: "i32", shape: [b, s], data: types },
    labels: { dtype: "i32", shape: [b, s], data: labels },
    loss_mask: { dtype: "f32", shape: [b, s], data: lossMask },
    padding_mask: { dtype: "u8", shape: [b, s], data: keep },
    is_random: { dtype: "i32", shape: [b], data: isRandom },
    attention_mask: { dtype: "u8", shape: [b, s, s], data: paddingMaskFromKeep(keep, b, s) },
  };
}

/** Megatron's BERT pretraining task; `binaryHead` false is --bert-no-binary-head (only "lm loss"). */
export function makeBertTask(binaryHead: boolean): TrainingTask<BertSample> {
  const modelConfig = (ctx: TaskContext) => maskedLmModelConfig(ctx.cfg, ctx.paddedVocab);
  return {
    name: "bert",
    lossNames: binaryHead ? ["lm loss", "sop loss"] : ["lm loss"],
    flags: BERT_FLAGS,
    validate(cfg: Config) {
      if (cfg.bertNoBinaryHead === binaryHead) {
        throw new Error(
          `bert task: built with binaryHead ${binaryHead} for --bert-no-binary-head ${cfg.bertNoBinaryHead}`,
        );
      }
      if (cfg.tokenizerType !== undefined && !cfg.tokenizerType.startsWith("Bert")) {
        throw new ConfigError(
          `--tokenizer-type: BERT needs BertWordPieceLowerCase or BertWordPieceCase, found ${cfg.tokenizerType}`,
        );
      }
    },
    modelConfig,
    buildDatasets(ctx, numSamples) {
      const { cfg } = ctx;
      return buildMaskedLmDatasets(
        ctx,
        `> building train, validation, and test datasets (samples: ${numSamples.join(", ")}) ...`,
        (open) =>
          buildBertDatasets({
            dataPrefix: cfg.dataPath!,
            splitString: cfg.split,
            trainValidTestNumSamples: numSamples,
            maskedLmProb: cfg.maskProb,
            shortSeqProb: cfg.shortSeqProb,
            seed: cfg.seed,
            vocab: vocabOf(ctx),
            seqLength: cfg.seqLength!,
            binaryHead,
            open,
            log: ctx.log,
          }),
      );
    },
    buildChunk(ctx, spec, env) {
      const model = new BertModel(modelConfig(ctx), env.backend, env.ps, env.comm, spec, { binaryHead });
      return new BertChunk(model, spec);
    },
    makeBatch: (ctx, samples) => bertHostBatch(samples, ctx.cfg.seqLength!),
    stageTensors: (ctx, b) => [{
      shape: [b, ctx.cfg.seqLength!, ctx.cfg.hiddenSize!],
      dtype: ctx.cfg.paramsDtype,
    }],
    async loss(_ctx, chunk, outputs, batch): Promise<TaskLoss> {
      const model = (chunk as BertChunk).model;
      const tp = tpEnv({ cfg: model.cfg, backend: model.backend, ps: model.ps, comm: model.comm });
      // lm loss: sum(CE * loss_mask) / sum(loss_mask); labels are -1 off the masked positions.
      const lm = await vocabParallelLMLoss(tp, outputs[0], batch.labels, batch.loss_mask, model.vocabStart);
      if (!binaryHead) {
        return {
          loss: lm.out.loss,
          scalars: { "lm loss": lm.out.loss },
          backward: (f) => [lm.backward(f)],
          discard: () => lm.discard(),
        };
      }
      // sop loss: cross entropy of the binary logits against is_random (a private context: the
      // loss step has none of its own).
      const sop = new SopLoss(tp);
      const sctx = newMicroBatchContext({ iteration: 0, firstGlobalSample: 0 });
      const s = sop.forward(outputs[1], batch.is_random, sctx);
      model.backend.free(outputs[1]);
      return {
        loss: lm.out.loss + s.loss,
        scalars: { "lm loss": lm.out.loss, "sop loss": s.loss },
        backward: (f) => [lm.backward(f), sop.backward(sctx, f)],
        discard: () => {
          lm.discard();
          sop.discard(sctx);
        },
      };
    },
    tokensPerSample: (ctx) => ctx.cfg.seqLength!,
    // Megatron's transformer FLOPs formula (the heads' small dense layers are not counted).
    flopsPerSample: (ctx) =>
      iterationFlops(1, ctx.cfg.seqLength!, ctx.cfg.numLayers!, ctx.cfg.hiddenSize!, ctx.paddedVocab),
    sampleJson(ctx, sample, { decode }) {
      const out: Record<string, unknown> = bertSampleToJson(sample);
      if (decode) {
        out.decoded = ctx.tokenizer.detokenize(sample.text.filter((_, i) => sample.padding_mask[i] === 1));
      }
      return out;
    },
  };
}

/** BERT with the sentence-order head (Megatron's default). */
export const bertTask: TrainingTask<BertSample> = makeBertTask(true);
/** --bert-no-binary-head. */
export const bertTaskNoBinaryHead: TrainingTask<BertSample> = makeBertTask(false);

/** The task for a validated config. */
export function bertTaskFor(cfg: Config): TrainingTask<BertSample> {
  return cfg.bertNoBinaryHead ? bertTaskNoBinaryHead : bertTask;
}
