// Parallel attention, self or cross (Megatron's ParallelAttention with AttnType.self_attn /
// cross_attn). Self: fused QKV (column-parallel, output rows laid out [heads, 3, hn] as in Megatron
// checkpoints). Cross: `query` from the layer input and `key_value` ([heads, 2, hn]) from the encoder
// output, so the query and key lengths may differ. Then the scaled softmax with a causal or padding
// mask, probability dropout, context, and dense (row-parallel, all-reduce in forward; its bias is
// handed back unadded for the layer's bias-dropout-add).

import type { AttentionOperand, FusedAttentionArgs, SoftmaxMask } from "../backend/backend.ts";
import type { ColumnParallelLinear, RowParallelLinear } from "../parallel/tensor_parallel.ts";
import { Purpose } from "../rng/philox.ts";
import type { Param } from "../tensor/param.ts";
import { shapeStr, type Tensor } from "../tensor/tensor.ts";
import {
  attentionDropoutP,
  attnDropoutAddr,
  freeAll,
  inputProjection,
  type MicroBatchContext,
  type ModuleEnv,
  outputProjection,
  ParamKind,
  takeSaved,
} from "./common.ts";

/** Which mask the softmax applies: "causal" (GPT, T5 decoder self-attention) or "padding" (BERT, T5
 *  encoder and cross-attention: a u8 [b, sq, sk] input, 1 = masked, as Megatron's boolean mask). */
export type AttnMaskType = "causal" | "padding";
export type AttnType = "self" | "cross";

export interface AttentionOptions {
  /** Default "self". */
  attnType?: AttnType;
  /** Default "causal". */
  maskType?: AttnMaskType;
}

/** Per-micro-batch inputs besides the hidden state (tensors are the caller's, alive until backward). */
export interface AttentionInputs {
  /** u8 [b, sq, sk], 1 = masked; required with maskType "padding". */
  mask?: Tensor;
  /** Cross-attention: the encoder output [b, sk, h] that keys and values are projected from. */
  encoderOutput?: Tensor;
}

/** Where backward accumulates gradients of inputs other than the hidden state. */
export interface AttentionGrads {
  /** Cross-attention: d encoderOutput [b, sk, h], accumulated (+=). */
  dEncoderOutput?: Tensor;
}

/** A module output whose bias the caller adds (fused into bias-dropout-add); `bias` is not owned. */
export interface BiasedOutput {
  out: Tensor;
  bias: Tensor | null;
}

/** One of q, k, v inside a projection tensor [b, np, len, width]: element offset, row stride, and
 *  stride between (sample, head) matrices. */
interface Part {
  t: Tensor;
  ld: number;
  stride: number;
}

interface AttentionSaved {
  x: Tensor; // layer input [T, h] (not owned)
  enc: Tensor | null; // cross: encoder output [b*sk, h] (not owned)
  qT: Tensor; // self: [b, np, s, 3hn]; cross: [b, np, sq, hn]
  kvT: Tensor | null; // cross: [b, np, sk, 2hn]
  probs: Tensor | null; // [b, np, sq, sk] before dropout (null when fused)
  dropped: Tensor | null; // after dropout (the same tensor when p = 0); kept for dv, as Megatron's bmm does
  fused: FusedAttentionArgs | null; // the backend's fused attention: its arguments, lse owned here
  ctxM: Tensor; // [T, np*hn] merged context
  b: number;
  sq: number;
  sk: number;
}

/** Megatron's padding mask from a [b, s] keep-mask (1 = real token): position pair (i, j) is masked
 *  unless both tokens are real (bert_extended_attention_mask). Returns u8 [b, s, s], 1 = masked. */
export function paddingMaskFromKeep(keep: ArrayLike<number>, b: number, s: number): Uint8Array {
  if (keep.length !== b * s) {
    throw new Error(`paddingMaskFromKeep: keep-mask has ${keep.length} entries, expected b*s = ${b * s}`);
  }
  const out = new Uint8Array(b * s * s);
  for (let n = 0; n < b; n++) {
    for (let i = 0; i < s; i++) {
      const ki = keep[n * s + i] >= 0.5;
      for (let j = 0; j < s; j++) out[(n * s + i) * s + j] = ki && keep[n * s + j] >= 0.5 ? 0 : 1;
    }
  }
  return out;
}

export class ParallelAttention {
  readonly attnType: AttnType;
  readonly maskType: AttnMaskType;
  /** Self: fused QKV, column-parallel without an output gather (null for cross). */
  readonly qkv: ColumnParallelLinear | null;
  /** Cross: query projection of the layer input and key/value projection of the encoder output. */
  readonly query: ColumnParallelLinear | null;
  readonly keyValue: ColumnParallelLinear | null;
  /** Output projection, row-parallel; its bias is handed back to the layer's bias-dropout-add. */
  readonly dense: RowParallelLinear;
  /** Self: the QKV weight; cross: the query weight. */
  readonly qkvWeight: Param;
  readonly denseWeight: Param;
  readonly npLocal: number;

  /** `globalLayer` is 0-based over the whole model (init and dropout streams); `prefix` ends with
   *  "self_attention." or "inter_attention.". */
  constructor(
    readonly env: ModuleEnv,
    readonly globalLayer: number,
    prefix: string,
    opts: AttentionOptions = {},
  ) {
    const { cfg, ps } = env;
    this.attnType = opts.attnType ?? "self";
    this.maskType = opts.maskType ?? "causal";
    const proj = cfg.numAttentionHeads * cfg.kvChannels, h = cfg.hiddenSize;
    this.npLocal = cfg.numAttentionHeads / ps.tpSize;
    // Input biases are added in their GEMMs (Megatron adds them in F.linear).
    if (this.attnType === "self") {
      const qkv = { globalLayer, kind: ParamKind.qkv, skipBiasAdd: false };
      this.qkv = inputProjection(env, `${prefix}query_key_value`, h, 3 * proj, qkv);
      this.query = this.keyValue = null;
      this.qkvWeight = this.qkv.weight;
    } else {
      this.qkv = null;
      this.query = inputProjection(env, `${prefix}query`, h, proj, {
        globalLayer,
        kind: ParamKind.query,
        skipBiasAdd: false,
      });
      this.keyValue = inputProjection(env, `${prefix}key_value`, h, 2 * proj, {
        globalLayer,
        kind: ParamKind.keyValue,
        skipBiasAdd: false,
      });
      this.qkvWeight = this.query.weight;
    }
    const denseKind = this.attnType === "self" ? ParamKind.attnDense : ParamKind.interDense;
    this.dense = outputProjection(env, `${prefix}dense`, proj, h, { globalLayer, kind: denseKind });
    this.denseWeight = this.dense.weight;
  }

  params(): Param[] {
    const inp = this.qkv ? this.qkv.params() : [...this.query!.params(), ...this.keyValue!.params()];
    return [...inp, ...this.dense.params()];
  }

  /** x [b, s, h] (LayerNorm output) -> dense output [b, s, h] without its bias (caller owns it). */
  async forward(x: Tensor, ctx: MicroBatchContext, inputs: AttentionInputs = {}): Promise<Tensor> {
    return (await this.forwardBias(x, ctx, inputs)).out;
  }

  /** x [b, sq, h] -> { out [b, sq, h] without the dense bias (caller owns it), bias (the module's) }. */
  async forwardBias(x: Tensor, ctx: MicroBatchContext, inputs: AttentionInputs = {}): Promise<BiasedOutput> {
    const { backend, cfg } = this.env;
    const [b, sq, h] = x.shape;
    const hn = cfg.kvChannels, np = this.npLocal, dt = cfg.paramsDtype;
    const T = b * sq;
    const x2 = x.view([T, h]);
    let qT: Tensor, kvT: Tensor | null = null, enc: Tensor | null = null, sk: number;
    if (this.qkv) {
      sk = sq;
      const qkv = await this.qkv.forward(x2);
      qT = backend.empty(dt, [b, np, sq, 3 * hn]);
      backend.transpose12(qkv.view([b, sq, np, 3 * hn]), qT);
      backend.free(qkv);
    } else {
      const e = inputs.encoderOutput;
      if (!e || e.rank !== 3 || e.shape[0] !== b || e.shape[2] !== h) {
        throw new Error(
          `ParallelAttention (cross): encoderOutput must be [${b}, sk, ${h}], found ${
            e ? shapeStr(e.shape) : "none"
          }`,
        );
      }
      sk = e.shape[1];
      enc = e.view([b * sk, h]);
      const q = await this.query!.forward(x2);
      qT = backend.empty(dt, [b, np, sq, hn]);
      backend.transpose12(q.view([b, sq, np, hn]), qT);
      backend.free(q);
      const kv = await this.keyValue!.forward(enc);
      kvT = backend.empty(dt, [b, np, sk, 2 * hn]);
      backend.transpose12(kv.view([b, sk, np, 2 * hn]), kvT);
      backend.free(kv);
    }
    const [q, k, v] = this.parts(qT, kvT, sq, sk);
    if (backend.fusedAttentionFwd && backend.fusedAttentionBwd) {
      // No [b, np, sq, sk] tensor: the context is written straight into [b, sq, np, hn].
      const ctxM = backend.empty(dt, [b, sq, np, hn]);
      const op = (p: Part): AttentionOperand => ({
        t: p.t,
        strideB: np * p.stride,
        strideH: p.stride,
        ld: p.ld,
      });
      const p = attentionDropoutP(cfg, ctx);
      const fused: FusedAttentionArgs = {
        b,
        np,
        sq,
        sk,
        hn,
        scale: 1 / Math.sqrt(hn),
        mask: this.softmaxMask(inputs, b, sq, sk),
        dropoutP: p,
        dropoutAddr: p > 0 ? this.dropAddr(ctx, sq, sk) : null,
        q: op(q),
        k: op(k),
        v: op(v),
        out: { t: ctxM, strideB: sq * np * hn, strideH: hn, ld: np * hn },
        lse: backend.empty("f32", [b * np * sq]),
      };
      backend.fusedAttentionFwd(fused);
      const out = await this.dense.forward(ctxM.view([T, np * hn]));
      const saved: AttentionSaved = {
        x: x2,
        enc,
        qT,
        kvT,
        probs: null,
        dropped: null,
        fused,
        ctxM: ctxM.view([T, np * hn]),
        b,
        sq,
        sk,
      };
      ctx.saved.set(this, saved);
      return { out: out.view([b, sq, h]), bias: this.dense.outputBias };
    }
    const scores = backend.empty(dt, [b, np, sq, sk]);
    backend.gemm({
      transA: false,
      transB: true,
      m: sq,
      n: sk,
      k: hn,
      a: q.t,
      b: k.t,
      c: scores,
      lda: q.ld,
      ldb: k.ld,
      batch: b * np,
      strideA: q.stride,
      strideB: k.stride,
      strideC: sq * sk,
    });
    const probs = backend.empty(dt, [b, np, sq, sk]);
    backend.softmaxFwd(scores, 1 / Math.sqrt(hn), this.softmaxMask(inputs, b, sq, sk), probs);
    backend.free(scores);
    const pd = this.dropped(probs, ctx, sq, sk);
    const ctxT = backend.empty(dt, [b, np, sq, hn]);
    backend.gemm({
      transA: false,
      transB: false,
      m: sq,
      n: hn,
      k: sk,
      a: pd,
      b: v.t,
      c: ctxT,
      ldb: v.ld,
      batch: b * np,
      strideA: sq * sk,
      strideB: v.stride,
      strideC: sq * hn,
    });
    const ctxM = backend.empty(dt, [b, sq, np, hn]);
    backend.transpose12(ctxT, ctxM);
    backend.free(ctxT);
    // Row-parallel: partial sums over each rank's heads, all-reduced.
    const out = await this.dense.forward(ctxM.view([T, np * hn]));
    ctx.saved.set(
      this,
      {
        x: x2,
        enc,
        qT,
        kvT,
        probs,
        dropped: pd,
        fused: null,
        ctxM: ctxM.view([T, np * hn]),
        b,
        sq,
        sk,
      } satisfies AttentionSaved,
    );
    return { out: out.view([b, sq, h]), bias: this.dense.outputBias };
  }

  /** dOut [b, sq, h] (grad of the dense output before its bias) -> dx [b, sq, h] (caller owns it);
   *  accumulates every grad of this module, the dense bias's included, and for cross-attention adds
   *  d encoderOutput into `grads.dEncoderOutput`. */
  async backward(dOut: Tensor, ctx: MicroBatchContext, grads: AttentionGrads = {}): Promise<Tensor> {
    const { backend, cfg } = this.env;
    const sv = takeSaved<AttentionSaved>(ctx, this, "ParallelAttention.backward");
    const { b, sq, sk } = sv;
    if (this.keyValue && !grads.dEncoderOutput) {
      throw new Error("ParallelAttention.backward (cross): needs grads.dEncoderOutput to accumulate into");
    }
    const hn = cfg.kvChannels, np = this.npLocal, dt = cfg.paramsDtype, h = cfg.hiddenSize;
    const T = b * sq;
    const dctxM = await this.dense.backward(sv.ctxM, dOut.view([T, h]));
    if (sv.fused) {
      const dqT = backend.empty(dt, sv.qT.shape);
      const dkvT = sv.kvT ? backend.empty(dt, sv.kvT.shape) : null;
      const [dq, dk, dv] = this.parts(dqT, dkvT, sq, sk);
      backend.fusedAttentionBwd!(sv.fused, { dOut: dctxM, dq: dq.t, dk: dk.t, dv: dv.t });
      freeAll(backend, [dctxM, sv.fused.lse, sv.qT, sv.kvT, sv.ctxM]);
      return await this.inputGrads(dqT, dkvT, sv, grads);
    }
    const dctx = backend.empty(dt, [b, np, sq, hn]);
    backend.transpose12(dctxM.view([b, sq, np, hn]), dctx);
    backend.free(dctxM);
    const dqT = backend.empty(dt, sv.qT.shape);
    const dkvT = sv.kvT ? backend.empty(dt, sv.kvT.shape) : null;
    const [q, k, v] = this.parts(sv.qT, sv.kvT, sq, sk);
    const [dq, dk, dv] = this.parts(dqT, dkvT, sq, sk);
    // dv = dropout(probs)^T @ dctx
    const pd = sv.dropped!;
    backend.gemm({
      transA: true,
      transB: false,
      m: sk,
      n: hn,
      k: sq,
      a: pd,
      b: dctx,
      c: dv.t,
      ldc: dv.ld,
      batch: b * np,
      strideA: sq * sk,
      strideB: sq * hn,
      strideC: dv.stride,
    });
    if (pd !== sv.probs) backend.free(pd);
    // d(dropped probs) = dctx @ v^T
    const dprobs = backend.empty(dt, [b, np, sq, sk]);
    backend.gemm({
      transA: false,
      transB: true,
      m: sq,
      n: sk,
      k: hn,
      a: dctx,
      b: v.t,
      c: dprobs,
      ldb: v.ld,
      batch: b * np,
      strideA: sq * hn,
      strideB: v.stride,
      strideC: sq * sk,
    });
    backend.free(dctx);
    const p = attentionDropoutP(cfg, ctx);
    if (p > 0) backend.dropout(dprobs, p, this.dropAddr(ctx, sq, sk), dprobs);
    const dscores = backend.empty(dt, [b, np, sq, sk]);
    backend.softmaxBwd(dprobs, sv.probs!, 1 / Math.sqrt(hn), dscores);
    freeAll(backend, [dprobs, sv.probs]);
    // dq = dscores @ k ; dk = dscores^T @ q
    backend.gemm({
      transA: false,
      transB: false,
      m: sq,
      n: hn,
      k: sk,
      a: dscores,
      b: k.t,
      c: dq.t,
      batch: b * np,
      lda: sk,
      ldb: k.ld,
      ldc: dq.ld,
      strideA: sq * sk,
      strideB: k.stride,
      strideC: dq.stride,
    });
    backend.gemm({
      transA: true,
      transB: false,
      m: sk,
      n: hn,
      k: sq,
      a: dscores,
      b: q.t,
      c: dk.t,
      batch: b * np,
      lda: sk,
      ldb: q.ld,
      ldc: dk.ld,
      strideA: sq * sk,
      strideB: q.stride,
      strideC: dk.stride,
    });
    freeAll(backend, [dscores, sv.qT, sv.kvT, sv.ctxM]);
    return await this.inputGrads(dqT, dkvT, sv, grads);
  }

  /** From the grads of the transposed projections (freed here) to dx, accumulating the input
   *  projections' weight grads and, for cross-attention, d encoderOutput. */
  private async inputGrads(
    dqT: Tensor,
    dkvT: Tensor | null,
    sv: AttentionSaved,
    grads: AttentionGrads,
  ): Promise<Tensor> {
    const { backend, cfg } = this.env;
    const { b, sq, sk } = sv;
    const hn = cfg.kvChannels, np = this.npLocal, dt = cfg.paramsDtype, h = cfg.hiddenSize;
    const T = b * sq;
    let dx: Tensor;
    if (this.qkv) {
      const dqkv = backend.empty(dt, [T, np * 3 * hn]);
      backend.transpose12(dqT, dqkv.view([b, sq, np, 3 * hn]));
      backend.free(dqT);
      // Column-parallel input grad: summed over ranks (copy_to backward).
      dx = await this.qkv.backward(sv.x, dqkv, true);
    } else {
      const dqm = backend.empty(dt, [T, np * hn]);
      backend.transpose12(dqT, dqm.view([b, sq, np, hn]));
      backend.free(dqT);
      dx = await this.query!.backward(sv.x, dqm, true);
      const dkvm = backend.empty(dt, [b * sk, np * 2 * hn]);
      backend.transpose12(dkvT!, dkvm.view([b, sk, np, 2 * hn]));
      backend.free(dkvT!);
      const dEnc = await this.keyValue!.backward(sv.enc!, dkvm, true);
      const acc = grads.dEncoderOutput!.view([b * sk, h]);
      backend.add(acc, dEnc, acc);
      backend.free(dEnc);
    }
    return dx.view([b, sq, h]);
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as AttentionSaved | undefined;
    if (sv) {
      freeAll(this.env.backend, [
        sv.qT,
        sv.kvT,
        sv.probs,
        sv.dropped !== sv.probs ? sv.dropped : null,
        sv.fused?.lse,
        sv.ctxM,
      ]);
    }
    ctx.saved.delete(this);
  }

  /** q, k, v of every head as views starting at each part's first element. */
  private parts(qT: Tensor, kvT: Tensor | null, sq: number, sk: number): [Part, Part, Part] {
    const hn = this.env.cfg.kvChannels;
    const at = (t: Tensor, off: number, ld: number, len: number): Part => ({
      t: t.flat(off, t.size - off),
      ld,
      stride: len * ld,
    });
    if (!kvT) return [at(qT, 0, 3 * hn, sq), at(qT, hn, 3 * hn, sq), at(qT, 2 * hn, 3 * hn, sq)];
    return [at(qT, 0, hn, sq), at(kvT, 0, 2 * hn, sk), at(kvT, hn, 2 * hn, sk)];
  }

  private softmaxMask(inputs: AttentionInputs, b: number, sq: number, sk: number): SoftmaxMask {
    if (this.maskType === "causal") return { kind: "causal" };
    const m = inputs.mask;
    if (!m || m.dtype !== "u8" || m.size !== b * sq * sk) {
      throw new Error(
        `ParallelAttention: the padding mask must be u8 [${b}, ${sq}, ${sk}] (1 = masked), found ${
          m ? `${m.dtype} ${shapeStr(m.shape)}` : "none"
        }`,
      );
    }
    return { kind: "padding", mask: m };
  }

  private dropAddr(ctx: MicroBatchContext, sq: number, sk: number) {
    const purpose = this.attnType === "self" ? Purpose.attentionDropout : Purpose.crossAttentionDropout;
    return attnDropoutAddr(this.env.cfg, this.env.ps, ctx, this.globalLayer, sq, sk, purpose);
  }

  /** Probabilities after attention dropout (the same tensor when p = 0). */
  private dropped(probs: Tensor, ctx: MicroBatchContext, sq: number, sk: number): Tensor {
    const { backend, cfg } = this.env;
    const p = attentionDropoutP(cfg, ctx);
    if (p === 0) return probs;
    const out = backend.empty(probs.dtype, probs.shape);
    backend.dropout(probs, p, this.dropAddr(ctx, sq, sk), out);
    return out;
  }
}
