// Megatron 2021's finetuning tasks (tasks/glue/{mnli,qqp}.py, tasks/race/) as TrainingTasks: the
// samples come from src/downstream's readers (GLUE TSV columns and labels, RACE JSON folders), the
// model is BERT's language model with the pooler (no LM or binary head) and a Classification or
// MultipleChoice head on the last stage, and the loss is the cross entropy over the head's logits,
// which also reports how many predictions were correct (eval_utils' accuracy).

import {
  glueSample,
  RACE_NUM_CHOICES,
  readMnli,
  readQqp,
  readRaceFolder,
  type TaskSample,
} from "../downstream/finetune_data.ts";
import { BertModel } from "../models/bert.ts";
import { ClassificationHead, ClassificationLoss, MultipleChoiceHead } from "../models/finetune_heads.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { paddingMaskFromKeep } from "../transformer/attention.ts";
import { type MicroBatchContext, newMicroBatchContext, tpEnv } from "../transformer/common.ts";
import { ConfigError, type FlagKey, GPT_FLAGS, type TaskFlags } from "../training/config.ts";
import { maskedLmModelConfig } from "../training/masked_lm_task.ts";
import type { SampleDataset } from "../data/blendable.ts";
import type {
  ChunkSpec,
  DeviceBatch,
  HostBatch,
  ModelChunk,
  TaskContext,
  TaskLoss,
  TrainingTask,
} from "../training/task.ts";
import type { Tokenizer } from "../tokenizer/types.ts";

export const FINETUNE_TASKS = ["RACE", "MNLI", "QQP"] as const;
export type FinetuneTaskName = (typeof FINETUNE_TASKS)[number];

/** Classes (GLUE) or choices (RACE) of each task. */
export const TASK_CLASSES: Readonly<Record<FinetuneTaskName, number>> = {
  RACE: RACE_NUM_CHOICES,
  MNLI: 3,
  QQP: 2,
};

/** Model rows per sample: RACE feeds its 4 choices as 4 sequences (Megatron's sample_multiplier). */
export function rowsPerSample(task: FinetuneTaskName): number {
  return task === "RACE" ? RACE_NUM_CHOICES : 1;
}

/** One sample: `rows` sequences of seq-length ids, types and padding flags (1 = token), and the
 *  label; label -1 marks a filler sample that completes a last, partial evaluation batch. */
export interface FinetuneSample {
  text: number[][];
  types: number[][];
  paddingMask: number[][];
  label: number;
  uid: number;
}

/** The samples of one --train-data / --valid-data path, named as Megatron names a validation set. */
export interface NamedSamples {
  name: string;
  path: string;
  samples: FinetuneSample[];
}

/** Python's str.strip(chars). */
function stripChars(s: string, chars: string): string {
  let a = 0, b = s.length;
  while (a < b && chars.includes(s[a])) a++;
  while (b > a && chars.includes(s[b - 1])) b--;
  return s.slice(a, b);
}

/** A validation set's name, as Megatron's name_from_datapath: RACE the part after "RACE" with "/" ->
 *  "-" (RACE/dev/middle -> dev-middle); MNLI/QQP the part after the task name without "/" and ".tsv",
 *  "_" -> "-" (MNLI/dev_matched.tsv -> dev-matched). Megatron's `.strip('.tsv')` strips a character
 *  set, which turns QQP's dev.tsv into "de"; here only the suffix goes. */
export function datasetName(task: FinetuneTaskName, path: string): string {
  const tail = path.split(task).at(-1)!;
  if (task === "RACE") return stripChars(tail, "/").replaceAll("/", "-");
  return stripChars(tail.replace(/\.tsv$/, ""), "/").replaceAll("_", "-");
}

/** The special ids the readers need; one line when the tokenizer is not BERT's. */
function specialIds(tok: Tokenizer) {
  if (tok.cls === undefined || tok.sep === undefined || tok.pad === undefined) {
    throw new ConfigError(
      `--tokenizer-type: finetuning needs BertWordPieceLowerCase or BertWordPieceCase, found ${tok.type}`,
    );
  }
  return { cls: tok.cls, sep: tok.sep, pad: tok.pad };
}

/** Read one path of a task: a TSV file (MNLI, QQP) or a RACE folder of *.txt JSON lines. */
export function readTaskPath(
  task: FinetuneTaskName,
  path: string,
  tok: Tokenizer,
  seqLength: number,
  log: (line: string) => void,
): NamedSamples {
  const sp = specialIds(tok);
  const tokenize = (t: string) => tok.tokenize(t);
  let samples: FinetuneSample[];
  if (task === "RACE") {
    samples = readRaceFolder(path, { ...sp, tokenize, maxSeqLength: seqLength }).map(raceSample);
  } else {
    let text: string;
    try {
      text = Deno.readTextFileSync(path);
    } catch (e) {
      throw new Error(`${path}: cannot read the ${task} file (${(e as Error).message})`);
    }
    let raw;
    if (task === "MNLI") raw = readMnli(text, path);
    else {
      const q = readQqp(text, path);
      for (const w of q.warnings) log(`> warning: ${w}`);
      raw = q.samples;
    }
    samples = raw.map((r) => glueRows(glueSample(r, tokenize, seqLength, sp)));
  }
  if (samples.length === 0) throw new Error(`${path}: no ${task} samples`);
  return { name: datasetName(task, path), path, samples };
}

function raceSample(s: TaskSample<number[][]>): FinetuneSample {
  return { text: s.text, types: s.types, paddingMask: s.paddingMask, label: s.label, uid: s.uid };
}

function glueRows(s: TaskSample<number[]>): FinetuneSample {
  return { text: [s.text], types: [s.types], paddingMask: [s.paddingMask], label: s.label, uid: s.uid };
}

/** A list of samples as a SampleDataset. */
export function listDataset(samples: FinetuneSample[]): SampleDataset<FinetuneSample> {
  return { length: samples.length, getItem: (i) => samples[i] } as SampleDataset<FinetuneSample>;
}

/** The finetuning command line: every flag group; BERT's residual option is read. */
export const FINETUNE_FLAGS: TaskFlags = {
  command: "finetune",
  groups: GPT_FLAGS.groups,
  reads: ["applyResidualConnectionPostLayernorm"] satisfies FlagKey[],
  required: [],
};

/** The model of one stage: BERT's language model with the pooler and, on the last stage, the head. */
export class FinetuneChunk implements ModelChunk {
  readonly batchFields: readonly string[];
  readonly head: ClassificationHead | MultipleChoiceHead | null;

  constructor(readonly model: BertModel, readonly spec: ChunkSpec, readonly task: FinetuneTaskName) {
    const cfg = model.cfg, tp = tpEnv({ cfg, backend: model.backend, ps: model.ps, comm: model.comm });
    const opts = {
      hiddenSize: cfg.hiddenSize,
      hiddenDropout: cfg.hiddenDropout,
      seed: cfg.seed,
      initMethodStd: cfg.initMethodStd,
    };
    this.head = !spec.postProcess
      ? null
      : task === "RACE"
      ? new MultipleChoiceHead(tp, { ...opts, numChoices: RACE_NUM_CHOICES })
      : new ClassificationHead(tp, { ...opts, numClasses: TASK_CLASSES[task] });
    this.batchFields = [
      "attention_mask",
      ...(spec.preProcess ? ["text", "types"] : []),
      ...(spec.postProcess ? ["label"] : []),
    ];
  }

  params() {
    return [...this.model.params(), ...(this.head?.params() ?? [])];
  }

  tiedEmbeddingParam() {
    // No LM head: nothing is tied between the first and the last stage.
    return null;
  }

  /** The transformer addresses dropout by model row; a RACE sample is 4 rows. */
  private rowCtx(ctx: MicroBatchContext): MicroBatchContext {
    const r = rowsPerSample(this.task);
    return r === 1 ? ctx : { ...ctx, firstGlobalSample: ctx.firstGlobalSample * r };
  }

  async forward(batch: DeviceBatch, received: Tensor[], ctx: MicroBatchContext): Promise<Tensor[]> {
    const mask = batch.attention_mask;
    const outs = await this.model.forward(
      this.spec.preProcess ? { text: batch.text, types: batch.types, mask } : { hidden: received[0], mask },
      this.rowCtx(ctx),
    );
    if (!this.head) return outs;
    const logits = this.head.forward(outs[0], ctx);
    this.model.backend.free(outs[0]);
    return [logits];
  }

  async backward(ctx: MicroBatchContext, outputGrads: Tensor[]): Promise<Tensor[]> {
    let grads = outputGrads;
    if (this.head) {
      const dPooled = this.head.backward(outputGrads[0], ctx);
      this.model.backend.free(outputGrads[0]);
      grads = [dPooled];
    }
    const dx = await this.model.backward(this.rowCtx(ctx), grads);
    return dx ? [dx] : [];
  }

  discard(ctx: MicroBatchContext): void {
    this.head?.discard(ctx);
    this.model.discard(this.rowCtx(ctx));
  }
}

/** Samples of one micro-batch -> text, types i32 [b * rows, s], padding_mask u8, attention_mask u8
 *  [b * rows, s, s] (1 = masked), label i32 [b]. */
export function finetuneHostBatch(samples: FinetuneSample[], s: number, rows: number): HostBatch {
  const n = samples.length * rows;
  const text = new Int32Array(n * s), types = new Int32Array(n * s), keep = new Uint8Array(n * s);
  const label = new Int32Array(samples.length);
  samples.forEach((x, i) => {
    if (x.text.length !== rows) throw new Error(`data: a sample has ${x.text.length} rows, expected ${rows}`);
    for (let r = 0; r < rows; r++) {
      const o = (i * rows + r) * s;
      if (x.text[r].length !== s) {
        throw new Error(`data: a sample has ${x.text[r].length} tokens, expected --seq-length ${s}`);
      }
      text.set(x.text[r], o);
      for (let j = 0; j < s; j++) {
        keep[o + j] = x.paddingMask[r][j];
        // Megatron pads the types with the pad id; only the padded (masked) positions carry it.
        const t = x.types[r][j];
        types[o + j] = keep[o + j] === 1 ? t : 0;
        if (keep[o + j] === 1 && t !== 0 && t !== 1) throw new Error(`data: token type ${t} is not 0 or 1`);
      }
    }
    label[i] = x.label;
  });
  return {
    text: { dtype: "i32", shape: [n, s], data: text },
    types: { dtype: "i32", shape: [n, s], data: types },
    padding_mask: { dtype: "u8", shape: [n, s], data: keep },
    attention_mask: { dtype: "u8", shape: [n, s, s], data: paddingMaskFromKeep(keep, n, s) },
    label: { dtype: "i32", shape: [samples.length], data: label },
  };
}

/** Loss scalars a finetuning step reports per micro-batch: the mean cross entropy and the counts
 *  accuracy is summed from. */
export const FINETUNE_LOSS_NAMES = ["loss", "correct", "samples"] as const;

/** The task for one finetuning run; `train` and `valid` are the samples read from --train-data and
 *  --valid-data (the first validation set stands for `valid`). */
export function makeFinetuneTask(
  task: FinetuneTaskName,
  data: { train: FinetuneSample[]; valid: FinetuneSample[] | null },
): TrainingTask<FinetuneSample> {
  const rows = rowsPerSample(task);
  const modelConfig = (ctx: TaskContext) => maskedLmModelConfig(ctx.cfg, ctx.paddedVocab);
  return {
    name: task,
    lossNames: FINETUNE_LOSS_NAMES,
    flags: FINETUNE_FLAGS,
    validate(cfg) {
      if (cfg.tokenizerType !== undefined && !cfg.tokenizerType.startsWith("Bert")) {
        throw new ConfigError(
          `--tokenizer-type: finetuning needs BertWordPieceLowerCase or BertWordPieceCase, found ${cfg.tokenizerType}`,
        );
      }
    },
    modelConfig,
    buildDatasets: () => ({
      train: listDataset(data.train),
      valid: data.valid ? listDataset(data.valid) : null,
      test: null,
      close() {},
    }),
    buildChunk(ctx, spec, env) {
      const model = new BertModel(modelConfig(ctx), env.backend, env.ps, env.comm, spec, {
        binaryHead: false,
        pooledOutput: true,
      });
      return new FinetuneChunk(model, spec, task);
    },
    makeBatch: (ctx, samples) => finetuneHostBatch(samples, ctx.cfg.seqLength!, rows),
    stageTensors: (ctx, b) => [{
      shape: [b * rows, ctx.cfg.seqLength!, ctx.cfg.hiddenSize!],
      dtype: ctx.cfg.paramsDtype,
    }],
    loss(_ctx, chunk, outputs, batch): Promise<TaskLoss> {
      const c = chunk as FinetuneChunk;
      const m = c.model;
      const ce = new ClassificationLoss(tpEnv({ cfg: m.cfg, backend: m.backend, ps: m.ps, comm: m.comm }));
      // The loss step has no context of its own; the saved probabilities live in a private one.
      const lctx = newMicroBatchContext({ iteration: 0, firstGlobalSample: 0 });
      const labels = m.backend.toHost(batch.label) as Int32Array;
      const out = ce.forward(outputs[0], labels, lctx);
      m.backend.free(outputs[0]);
      return Promise.resolve({
        loss: out.loss,
        scalars: { loss: out.loss, correct: out.correct, samples: out.samples },
        rows: out.probs,
        backward: (f) => [ce.backward(lctx, f)],
        discard: () => ce.discard(lctx),
      });
    },
    tokensPerSample: (ctx) => ctx.cfg.seqLength! * rows,
  };
}
