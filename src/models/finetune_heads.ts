// The finetuning heads of Megatron 2021 (megatron/model/classification.py, multiple_choice.py) on the
// BERT pooler's output: dropout(hidden_dropout) -> get_linear_layer(hidden, num_classes) for
// Classification, get_linear_layer(hidden, 1) with the logits regrouped [batch, num_choices] for
// MultipleChoice, both initialized with init_method_normal(init_method_std); and the cross entropy over
// their logits (F.cross_entropy, a mean over the batch) that also counts correct argmax predictions.
// The dense layer is replicated over TP as Megatron's get_linear_layer is.

import { Purpose, streamId } from "../rng/philox.ts";
import type { NormalInit, TPEnv } from "../parallel/tensor_parallel.ts";
import type { DType } from "../tensor/dtype.ts";
import type { Param } from "../tensor/param.ts";
import { shapeStr, type Tensor } from "../tensor/tensor.ts";
import { type MicroBatchContext, takeSaved } from "../transformer/common.ts";
import { headInit } from "../transformer/tokentype_embedding.ts";
import { DenseLayer } from "./bert_heads.ts";

/** Init streams of the task heads: after HeadInitKind's ids 10..13 (tokentype, pooler, LM head,
 *  binary head), so adding a head leaves every pretrained weight's draw unchanged. */
export const TaskHeadInitKind = {
  classification: 14,
  multipleChoice: 15,
} as const;

/** The head's dropout stream (Purpose.user + 15 is generation's). */
export const TASK_HEAD_DROPOUT_STREAM = streamId(Purpose.user + 14, 0);

export interface TaskHeadOptions {
  hiddenSize: number;
  /** Megatron's hidden_dropout (the head's torch.nn.Dropout). */
  hiddenDropout: number;
  /** The run's seed and --init-method-std: the weight is N(0, std) from the head's own stream. */
  seed: number;
  initMethodStd: number;
}

interface HeadSaved {
  x: Tensor; // the dropped-out pooled rows [rows, h] (owned; the dense layer's input)
  rows: number;
  p: number;
}

/** pooled -> dropout -> dense [h, outFeatures]; `rowsPerSample` pooled rows belong to one sample
 *  (RACE: 4), which addresses the dropout by global sample as every other dropout here. */
class PooledDenseHead {
  readonly dense: DenseLayer;
  readonly init: NormalInit;

  constructor(
    readonly tp: TPEnv,
    readonly opts: TaskHeadOptions,
    name: string,
    readonly outFeatures: number,
    kind: number,
    readonly rowsPerSample: number,
  ) {
    this.init = headInit(opts.seed, opts.initMethodStd, kind);
    this.dense = new DenseLayer(tp, name, opts.hiddenSize, outFeatures, this.init);
  }

  params(): Param[] {
    return this.dense.params();
  }

  protected logits(pooled: Tensor, ctx: MicroBatchContext): Tensor {
    const be = this.tp.backend, h = this.opts.hiddenSize;
    if (pooled.shape[pooled.rank - 1] !== h || pooled.size % (h * this.rowsPerSample) !== 0) {
      throw new Error(
        `${this.constructor.name}.forward: pooled ${shapeStr(pooled.shape)} is not [rows, ${h}]`,
      );
    }
    const rows = pooled.size / h;
    const p = ctx.training ? this.opts.hiddenDropout : 0;
    const x = be.empty(pooled.dtype, [rows, h]);
    if (p > 0) be.dropout(pooled.view([rows, h]), p, this.dropoutAddr(ctx), x);
    else be.copy(pooled.view([rows, h]), x);
    ctx.saved.set(this, { x, rows, p } satisfies HeadSaved);
    return this.dense.forward(x);
  }

  /** Rows are addressed by (global sample * rowsPerSample + row) * h + feature. */
  private dropoutAddr(ctx: MicroBatchContext) {
    const h = this.opts.hiddenSize;
    return {
      seed: this.opts.seed,
      stream: TASK_HEAD_DROPOUT_STREAM,
      iteration: ctx.iteration,
      base: ctx.firstGlobalSample * this.rowsPerSample * h,
      rowStride: h,
      rowLen: h,
    };
  }

  /** dLogits (stays the caller's) -> d pooled [rows, h] (caller owns); accumulates the dense grads. */
  backward(dLogits: Tensor, ctx: MicroBatchContext): Tensor {
    const be = this.tp.backend;
    const sv = takeSaved<HeadSaved>(ctx, this, `${this.constructor.name}.backward`);
    const dx = this.dense.backward(sv.x, dLogits.view([sv.rows, this.outFeatures]));
    be.free(sv.x);
    if (sv.p === 0) return dx;
    // The same mask again: dropout's backward is dropout of the gradient with the forward's address.
    const d = be.empty(dx.dtype, dx.shape);
    be.dropout(dx, sv.p, this.dropoutAddr(ctx), d);
    be.free(dx);
    return d;
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as HeadSaved | undefined;
    if (sv) this.tp.backend.free(sv.x);
    ctx.saved.delete(this);
  }
}

/** Megatron's Classification head: logits [b, numClasses] = dense(dropout(pooled [b, h])). Params
 *  `classification_head.weight|bias`. */
export class ClassificationHead extends PooledDenseHead {
  constructor(tp: TPEnv, opts: TaskHeadOptions & { numClasses: number }) {
    super(tp, opts, "classification_head", opts.numClasses, TaskHeadInitKind.classification, 1);
  }

  /** pooled [b, h] (need not stay alive) -> logits [b, numClasses] (caller owns). */
  forward(pooled: Tensor, ctx: MicroBatchContext): Tensor {
    return this.logits(pooled, ctx);
  }
}

/** Megatron's MultipleChoice head: one score per choice row, dense [h, 1] on dropout(pooled
 *  [b * numChoices, h]), regrouped as logits [b, numChoices]. Params `multichoice_head.weight|bias`. */
export class MultipleChoiceHead extends PooledDenseHead {
  constructor(tp: TPEnv, opts: TaskHeadOptions & { numChoices: number }) {
    super(tp, opts, "multichoice_head", 1, TaskHeadInitKind.multipleChoice, opts.numChoices);
  }

  get numChoices(): number {
    return this.rowsPerSample;
  }

  /** pooled [b * numChoices, h] (choices of one sample adjacent) -> logits [b, numChoices]. */
  forward(pooled: Tensor, ctx: MicroBatchContext): Tensor {
    const y = this.logits(pooled, ctx);
    return y.view([y.size / this.numChoices, this.numChoices]);
  }
}

export interface ClassificationLossOutput {
  /** Mean cross entropy over the samples with a label (0 when none). */
  loss: number;
  lossSum: number;
  /** Samples with a label (label -1 is ignored: padding of a last, partial batch). */
  samples: number;
  /** Of those, how many have argmax(logits) == label (the first maximum wins, as torch.max). */
  correct: number;
  /** argmax per sample, labelled or not. */
  predictions: Int32Array;
  /** softmax(logits) per sample [b, classes] (f64), labelled or not. */
  probs: Float64Array;
}

interface LossSaved {
  probs: Float64Array;
  labels: Int32Array;
  classes: number;
  count: number;
  dtype: DType;
}

/** F.cross_entropy(logits.float(), labels) over [b, C] logits, computed in f64 on the host (the
 *  logits are replicated over TP), with Megatron's eval_utils correctness count (argmax == label). */
export class ClassificationLoss {
  constructor(readonly tp: TPEnv) {}

  forward(logits: Tensor, labels: ArrayLike<number>, ctx: MicroBatchContext): ClassificationLossOutput {
    if (logits.rank !== 2) {
      throw new Error(
        `ClassificationLoss.forward: logits must be [b, classes], found ${shapeStr(logits.shape)}`,
      );
    }
    const [b, c] = logits.shape;
    const lab = Int32Array.from(labels);
    if (lab.length !== b) {
      throw new Error(`ClassificationLoss.forward: ${lab.length} labels for ${b} samples`);
    }
    const z = this.tp.backend.toF64(logits);
    const probs = new Float64Array(b * c), predictions = new Int32Array(b);
    let lossSum = 0, count = 0, correct = 0;
    for (let i = 0; i < b; i++) {
      let m = -Infinity, arg = 0;
      for (let k = 0; k < c; k++) if (z[i * c + k] > m) (m = z[i * c + k]), (arg = k);
      let s = 0;
      for (let k = 0; k < c; k++) s += Math.exp(z[i * c + k] - m);
      const lse = m + Math.log(s);
      for (let k = 0; k < c; k++) probs[i * c + k] = Math.exp(z[i * c + k] - lse);
      predictions[i] = arg;
      const y = lab[i];
      if (y === -1) continue;
      if (!Number.isInteger(y) || y < 0 || y >= c) {
        throw new Error(`ClassificationLoss.forward: label ${y} of sample ${i} is outside [0, ${c})`);
      }
      lossSum += lse - z[i * c + y];
      count++;
      if (arg === y) correct++;
    }
    ctx.saved.set(this, { probs, labels: lab, classes: c, count, dtype: logits.dtype } satisfies LossSaved);
    return { loss: count > 0 ? lossSum / count : 0, lossSum, samples: count, correct, predictions, probs };
  }

  /** d(factor * loss)/d logits [b, C] in the logits' dtype (caller owns). */
  backward(ctx: MicroBatchContext, factor: number): Tensor {
    const sv = takeSaved<LossSaved>(ctx, this, "ClassificationLoss.backward");
    const b = sv.labels.length, c = sv.classes, d = new Float64Array(b * c);
    for (let i = 0; i < b; i++) {
      const y = sv.labels[i];
      if (y === -1) continue;
      for (let k = 0; k < c; k++) {
        d[i * c + k] = (factor / sv.count) * (sv.probs[i * c + k] - (k === y ? 1 : 0));
      }
    }
    return this.tp.backend.fromHost(sv.dtype, [b, c], d);
  }

  discard(ctx: MicroBatchContext): void {
    ctx.saved.delete(this);
  }
}
