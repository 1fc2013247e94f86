// BERT's modules after the transformer (Megatron 2021 bert_model.py / language_model.py): the pooler
// (dense + tanh on one token), the LM head (dense -> GeLU -> LayerNorm -> tied logits + vocab-parallel
// bias), the binary (sentence-order) head and its loss. Dense layers here are Megatron's
// get_linear_layer: plain replicated Linear, N(0, std) weight, zero bias; no dropout in any head.

import type { Activation } from "../backend/backend.ts";
import { createParam, linear, linearGrad, type NormalInit, type TPEnv } from "../parallel/tensor_parallel.ts";
import type { DType } from "../tensor/dtype.ts";
import type { Param } from "../tensor/param.ts";
import { assertDType, shapeStr, type Tensor } from "../tensor/tensor.ts";
import { type MicroBatchContext, takeSaved } from "../transformer/common.ts";
import { replicatedWeight } from "../transformer/tokentype_embedding.ts";
import { gradDTypeOf, TiedLmLogits } from "./lm_logits.ts";

/** get_linear_layer(in, out): replicated y = x W^T + b, W [out, in] ~ N(0, std), b = 0. */
export class DenseLayer {
  readonly weight: Param;
  readonly bias: Param;

  /** `name` without the trailing ".weight" (e.g. "language_model.pooler.dense"). */
  constructor(
    readonly tp: TPEnv,
    name: string,
    readonly inFeatures: number,
    readonly outFeatures: number,
    init: NormalInit,
  ) {
    this.weight = replicatedWeight(tp, `${name}.weight`, outFeatures, inFeatures, init);
    this.bias = createParam(tp, `${name}.bias`, [outFeatures], null, null, true);
  }

  params(): Param[] {
    return [this.weight, this.bias];
  }

  /** x [rows, in] -> y [rows, out] (caller owns); with `addBias` false the bias is left to the caller. */
  forward(x: Tensor, addBias = true): Tensor {
    const be = this.tp.backend, rows = x.size / this.inFeatures;
    const y = be.empty(x.dtype, [rows, this.outFeatures]);
    linear(be, x.view([rows, this.inFeatures]), this.weight.value, addBias ? this.bias.value : null, y);
    return y;
  }

  /** dy [rows, out] -> dx [rows, in] (caller owns); accumulates weight and bias grads. */
  backward(x: Tensor, dy: Tensor): Tensor {
    const be = this.tp.backend, rows = x.size / this.inFeatures;
    const dyv = dy.view([rows, this.outFeatures]);
    be.sumRows(dyv, this.bias.grad, true);
    const dx = be.empty(x.dtype, [rows, this.inFeatures]);
    linearGrad(be, dyv, x.view([rows, this.inFeatures]), this.weight.value, this.weight.grad, dx);
    return dx;
  }
}

// ---- pooler -----------------------------------------------------------------------------------------

export interface PoolerOptions {
  hiddenSize: number;
  /** Normally headInit(seed, initMethodStd, HeadInitKind.pooler). */
  init: NormalInit;
  /** Ends with "."; params `${prefix}dense.weight|bias`. Default "language_model.pooler.". */
  prefix?: string;
}

interface PoolerSaved {
  b: number;
  s: number;
  sequenceIndex: number;
  x: Tensor; // [b, h] the pooled token's hidden state (owned)
  pre: Tensor; // [b, h] dense output before tanh (owned)
}

/** Megatron's Pooler: tanh(dense(hidden[:, sequenceIndex, :])). */
export class Pooler {
  readonly dense: DenseLayer;

  constructor(readonly tp: TPEnv, readonly opts: PoolerOptions) {
    const prefix = opts.prefix ?? "language_model.pooler.";
    this.dense = new DenseLayer(tp, `${prefix}dense`, opts.hiddenSize, opts.hiddenSize, opts.init);
  }

  params(): Param[] {
    return this.dense.params();
  }

  /** hidden [b, s, h] -> pooled [b, h] (caller owns); hidden need not stay alive. */
  forward(hidden: Tensor, ctx: MicroBatchContext, sequenceIndex = 0): Tensor {
    const be = this.tp.backend, h = this.opts.hiddenSize;
    if (hidden.rank !== 3 || hidden.shape[2] !== h) {
      throw new Error(`Pooler.forward: hidden must be [b, s, ${h}], found ${shapeStr(hidden.shape)}`);
    }
    const [b, s] = hidden.shape;
    if (!Number.isInteger(sequenceIndex) || sequenceIndex < 0 || sequenceIndex >= s) {
      throw new Error(`Pooler.forward: sequence index ${sequenceIndex} outside [0, ${s})`);
    }
    const rows = hidden.view([b * s, h]);
    const x = be.empty(hidden.dtype, [b, h]);
    for (let i = 0; i < b; i++) be.copy(rows.narrow(i * s + sequenceIndex, 1), x.narrow(i, 1));
    const pre = this.dense.forward(x);
    const y = be.empty(hidden.dtype, [b, h]);
    be.activationFwd("tanh", pre, y);
    ctx.saved.set(this, { b, s, sequenceIndex, x, pre } satisfies PoolerSaved);
    return y;
  }

  /** dPooled [b, h] (stays the caller's) is added into dHidden [b, s, h] at the pooled token (the
   *  caller's buffer, e.g. the LM head's d hidden; zeros if nothing else flows there). Accumulates the
   *  dense grads. */
  backward(dPooled: Tensor, ctx: MicroBatchContext, dHidden: Tensor): void {
    const be = this.tp.backend, h = this.opts.hiddenSize;
    const sv = takeSaved<PoolerSaved>(ctx, this, "Pooler.backward");
    if (dHidden.size !== sv.b * sv.s * h) {
      throw new Error(`Pooler.backward: dHidden ${shapeStr(dHidden.shape)} is not [${sv.b}, ${sv.s}, ${h}]`);
    }
    const dPre = be.empty(sv.pre.dtype, [sv.b, h]);
    be.activationBwd("tanh", dPooled.view([sv.b, h]), sv.pre, dPre);
    const dx = this.dense.backward(sv.x, dPre);
    const rows = dHidden.view([sv.b * sv.s, h]);
    for (let i = 0; i < sv.b; i++) {
      const r = rows.narrow(i * sv.s + sv.sequenceIndex, 1);
      be.add(r, dx.narrow(i, 1), r);
    }
    for (const t of [dPre, dx, sv.x, sv.pre]) be.free(t);
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as PoolerSaved | undefined;
    if (sv) { for (const t of [sv.x, sv.pre]) this.tp.backend.free(t); }
    ctx.saved.delete(this);
  }
}

// ---- LM head ----------------------------------------------------------------------------------------

export interface BertLMHeadOptions {
  hiddenSize: number;
  /** The padded vocabulary (all TP ranks together); the bias holds this rank's V / tp entries. */
  vocabSize: number;
  /** The dense layer's init: normally headInit(seed, initMethodStd, HeadInitKind.lmHeadDense). */
  init: NormalInit;
  layernormEpsilon: number;
  /** Megatron's --openai-gelu: the tanh approximation (fused with the dense bias) instead of torch's
   *  exact erf GeLU (the BERT head's default; --onnx-safe's erf_gelu is the same function). */
  openaiGelu?: boolean;
  /** Ends with "."; params `${prefix}bias`, `${prefix}dense.*`, `${prefix}layernorm.*`. Default "lm_head.". */
  prefix?: string;
}

interface LmHeadSaved {
  hShape: readonly number[];
  x: Tensor; // [T, h] input (not owned)
  pre: Tensor; // [T, h] dense output (without bias when openaiGelu)
  act: Tensor; // [T, h] GeLU output
  ln: Tensor; // [T, h] LayerNorm output
  mean: Tensor;
  rstd: Tensor;
}

/** Megatron's BertLMHead: logits = LayerNorm(GeLU(dense(hidden))) E^T + b, vocab-split. */
export class BertLMHead {
  readonly dense: DenseLayer;
  readonly layernormWeight: Param;
  readonly layernormBias: Param;
  readonly logits: TiedLmLogits;
  private readonly gelu: Activation | "bias_gelu_tanh";

  constructor(readonly tp: TPEnv, readonly opts: BertLMHeadOptions) {
    const prefix = opts.prefix ?? "lm_head.";
    const h = opts.hiddenSize;
    this.logits = new TiedLmLogits(tp, opts.vocabSize, `${prefix}bias`);
    this.dense = new DenseLayer(tp, `${prefix}dense`, h, h, opts.init);
    const ones = new Float64Array(h).fill(1);
    this.layernormWeight = createParam(tp, `${prefix}layernorm.weight`, [h], ones, null, true);
    this.layernormBias = createParam(tp, `${prefix}layernorm.bias`, [h], null, null, true);
    this.gelu = opts.openaiGelu ? "bias_gelu_tanh" : "gelu_erf";
  }

  /** The vocab-parallel bias `lm_head.bias` ([V / tp]). */
  get bias(): Param {
    return this.logits.bias!;
  }
  get vocabStart(): number {
    return this.logits.vocabStart;
  }

  /** In Megatron's module order: lm_head.bias, dense.weight, dense.bias, layernorm.weight, layernorm.bias. */
  params(): Param[] {
    return [this.bias, ...this.dense.params(), this.layernormWeight, this.layernormBias];
  }

  /** hidden [b, s, h] (kept alive until backward) and the tied word embedding shard [V/tp, h] -> logits
   *  [b * s, V/tp] (caller owns; hand them to MaskedLmLoss). */
  forward(hidden: Tensor, word: Param, ctx: MicroBatchContext): Tensor {
    const be = this.tp.backend, h = this.opts.hiddenSize;
    if (hidden.shape[hidden.rank - 1] !== h) {
      throw new Error(`BertLMHead.forward: hidden ${shapeStr(hidden.shape)} must end in ${h}`);
    }
    const T = hidden.size / h, dt = hidden.dtype;
    const x = hidden.view([T, h]);
    const act = be.empty(dt, [T, h]);
    let pre: Tensor;
    if (this.gelu === "bias_gelu_tanh") {
      pre = this.dense.forward(x, false);
      be.biasGeluFwd(pre, this.dense.bias.value, act);
    } else {
      pre = this.dense.forward(x);
      be.activationFwd(this.gelu, pre, act);
    }
    const ln = be.empty(dt, [T, h]);
    const sd = gradDTypeOf(dt);
    const mean = be.empty(sd, [T]), rstd = be.empty(sd, [T]);
    be.layerNormFwd(
      act,
      this.layernormWeight.value,
      this.layernormBias.value,
      this.opts.layernormEpsilon,
      ln,
      mean,
      rstd,
    );
    const logits = this.logits.forward(ln, word);
    ctx.saved.set(this, { hShape: hidden.shape, x, pre, act, ln, mean, rstd } satisfies LmHeadSaved);
    return logits;
  }

  /** dLogits [b * s, V/tp] (stays the caller's) -> d hidden, shaped like forward's hidden (caller owns).
   *  Accumulates every grad of the head and the word embedding's. */
  async backward(dLogits: Tensor, word: Param, ctx: MicroBatchContext): Promise<Tensor> {
    const be = this.tp.backend;
    const sv = takeSaved<LmHeadSaved>(ctx, this, "BertLMHead.backward");
    const dLn = await this.logits.backward(dLogits, sv.ln, word);
    const dAct = be.empty(sv.act.dtype, sv.act.shape);
    be.layerNormBwd(
      dLn,
      sv.act,
      this.layernormWeight.value,
      sv.mean,
      sv.rstd,
      dAct,
      this.layernormWeight.grad,
      this.layernormBias.grad,
      true,
    );
    const dPre = be.empty(sv.pre.dtype, sv.pre.shape);
    if (this.gelu === "bias_gelu_tanh") be.biasGeluBwd(dAct, sv.pre, this.dense.bias.value, dPre);
    else be.activationBwd(this.gelu, dAct, sv.pre, dPre);
    const dx = this.dense.backward(sv.x, dPre);
    for (const t of [dLn, dAct, dPre, sv.pre, sv.act, sv.ln, sv.mean, sv.rstd]) be.free(t);
    return dx.view(sv.hShape);
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as LmHeadSaved | undefined;
    if (sv) { for (const t of [sv.pre, sv.act, sv.ln, sv.mean, sv.rstd]) this.tp.backend.free(t); }
    ctx.saved.delete(this);
  }
}

// ---- binary (sentence-order) head and its loss ------------------------------------------------------

export interface BinaryHeadOptions {
  hiddenSize: number;
  /** Normally headInit(seed, initMethodStd, HeadInitKind.binaryHead). */
  init: NormalInit;
  /** Params `${name}.weight|bias`. Default "binary_head". */
  name?: string;
}

interface BinaryHeadSaved {
  x: Tensor; // pooled [b, h] (not owned)
}

/** Megatron's binary_head = get_linear_layer(h, 2) on the pooled output. */
export class BinaryHead {
  readonly dense: DenseLayer;

  constructor(readonly tp: TPEnv, opts: BinaryHeadOptions) {
    this.dense = new DenseLayer(tp, opts.name ?? "binary_head", opts.hiddenSize, 2, opts.init);
  }

  params(): Param[] {
    return this.dense.params();
  }

  /** pooled [b, h] (kept alive until backward) -> logits [b, 2] (caller owns). */
  forward(pooled: Tensor, ctx: MicroBatchContext): Tensor {
    ctx.saved.set(this, { x: pooled } satisfies BinaryHeadSaved);
    return this.dense.forward(pooled);
  }

  /** dLogits [b, 2] (stays the caller's) -> d pooled [b, h] (caller owns). */
  backward(dLogits: Tensor, ctx: MicroBatchContext): Tensor {
    const sv = takeSaved<BinaryHeadSaved>(ctx, this, "BinaryHead.backward");
    return this.dense.backward(sv.x, dLogits);
  }

  discard(ctx: MicroBatchContext): void {
    ctx.saved.delete(this);
  }
}

export interface SopLossOutput {
  /** Mean CE over the samples whose label is not -1 (0 when there are none; torch would give NaN). */
  loss: number;
  lossSum: number;
  /** Samples counted (label 0 or 1). */
  samples: number;
}

interface SopSaved {
  probs: Float64Array; // [b, 2] softmax
  labels: Int32Array;
  count: number;
  dtype: DType;
}

/** The sentence-order loss: F.cross_entropy(logits.float(), labels, ignore_index=-1), a mean over the
 *  counted samples. Two classes per sample: computed in f64 on the host (replicated over TP, so no
 *  communication). */
export class SopLoss {
  constructor(readonly tp: TPEnv) {}

  /** logits [b, 2] (not kept), labels [b] (i32 tensor or host ints: 0, 1, or -1 to ignore). */
  forward(logits: Tensor, labels: Tensor | ArrayLike<number>, ctx: MicroBatchContext): SopLossOutput {
    const be = this.tp.backend;
    if (logits.rank !== 2 || logits.shape[1] !== 2) {
      throw new Error(`SopLoss.forward: logits must be [b, 2], found ${shapeStr(logits.shape)}`);
    }
    const b = logits.shape[0];
    let lab: Int32Array;
    if ("dtype" in labels) {
      assertDType("SopLoss.forward", labels, "i32", "labels");
      lab = be.toHost(labels) as Int32Array;
    } else lab = Int32Array.from(labels);
    if (lab.length !== b) throw new Error(`SopLoss.forward: ${lab.length} labels for ${b} samples`);
    const z = be.toF64(logits);
    const probs = new Float64Array(2 * b);
    let lossSum = 0, count = 0;
    for (let i = 0; i < b; i++) {
      const a = z[2 * i], c = z[2 * i + 1], m = Math.max(a, c);
      const lse = m + Math.log(Math.exp(a - m) + Math.exp(c - m));
      probs[2 * i] = Math.exp(a - lse);
      probs[2 * i + 1] = Math.exp(c - lse);
      const y = lab[i];
      if (y === -1) continue;
      if (y !== 0 && y !== 1) throw new Error(`SopLoss.forward: label ${y} of sample ${i} is not 0, 1 or -1`);
      lossSum += lse - z[2 * i + y];
      count++;
    }
    ctx.saved.set(this, { probs, labels: lab, count, dtype: logits.dtype } satisfies SopSaved);
    return { loss: count > 0 ? lossSum / count : 0, lossSum, samples: count };
  }

  /** d(factor * loss)/dlogits [b, 2] in the logits' dtype (caller owns). */
  backward(ctx: MicroBatchContext, factor: number): Tensor {
    const sv = takeSaved<SopSaved>(ctx, this, "SopLoss.backward");
    const b = sv.labels.length, d = new Float64Array(2 * b);
    for (let i = 0; i < b; i++) {
      const y = sv.labels[i];
      if (y === -1 || sv.count === 0) continue;
      for (let k = 0; k < 2; k++) {
        d[2 * i + k] = (factor / sv.count) * (sv.probs[2 * i + k] - (k === y ? 1 : 0));
      }
    }
    return this.tp.backend.fromHost(sv.dtype, [b, 2], d);
  }

  discard(ctx: MicroBatchContext): void {
    ctx.saved.delete(this);
  }
}
