// Causal self-attention: fused QKV (column-parallel, output rows laid out [heads, 3, hn] as in
// Megatron checkpoints), scaled causal softmax, probability dropout, context, dense (row-parallel,
// all-reduce in forward; its bias is returned unadded for the layer's bias-dropout-add).

import type { ColumnParallelLinear, RowParallelLinear } from "../parallel/tensor_parallel.ts";
import type { Param } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";
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

interface AttentionSaved {
  x: Tensor; // input [T, h] (not owned)
  qkvT: Tensor; // [b, np, s, 3hn]
  probs: Tensor; // [b, np, s, s] before dropout
  dropped: Tensor; // after dropout (the same tensor when p = 0); kept for dv, as Megatron's bmm does
  ctxM: Tensor; // [T, np*hn] merged context
  b: number;
  s: number;
}

export class ParallelAttention {
  /** Fused QKV, column-parallel without an output gather. */
  readonly qkv: ColumnParallelLinear;
  /** Output projection, row-parallel; its bias is left to the layer's bias-dropout-add. */
  readonly dense: RowParallelLinear;
  readonly qkvWeight: Param;
  readonly denseWeight: Param;
  readonly npLocal: number;

  /** `globalLayer` is 0-based over the whole model; `prefix` ends with "self_attention.". */
  constructor(readonly env: ModuleEnv, readonly globalLayer: number, prefix: string) {
    const { cfg, ps } = env;
    const proj = cfg.numAttentionHeads * cfg.kvChannels, h = cfg.hiddenSize;
    this.npLocal = cfg.numAttentionHeads / ps.tpSize;
    // The QKV bias is added in its GEMM (Megatron adds it in F.linear).
    const qkv = { globalLayer, kind: ParamKind.qkv, skipBiasAdd: false };
    this.qkv = inputProjection(env, `${prefix}query_key_value`, h, 3 * proj, qkv);
    this.dense = outputProjection(env, `${prefix}dense`, proj, h, { globalLayer, kind: ParamKind.attnDense });
    this.qkvWeight = this.qkv.weight;
    this.denseWeight = this.dense.weight;
  }

  params(): Param[] {
    return [...this.qkv.params(), ...this.dense.params()];
  }

  /** x [b, s, h] (LayerNorm output) -> dense output [b, s, h] without its bias (caller owns it). */
  async forward(x: Tensor, ctx: MicroBatchContext): Promise<Tensor> {
    const { backend, cfg } = this.env;
    const [b, s, h] = x.shape;
    const hn = cfg.kvChannels, np = this.npLocal, dt = cfg.paramsDtype;
    const T = b * s;
    const x2 = x.view([T, h]);
    const qkv = await this.qkv.forward(x2);
    const qkvT = backend.empty(dt, [b, np, s, 3 * hn]);
    backend.transpose12(qkv.view([b, s, np, 3 * hn]), qkvT);
    backend.free(qkv);
    const scores = backend.empty(dt, [b, np, s, s]);
    const bs = s * 3 * hn;
    backend.gemm({
      transA: false,
      transB: true,
      m: s,
      n: s,
      k: hn,
      a: this.qView(qkvT, 0),
      b: this.qView(qkvT, 1),
      c: scores,
      lda: 3 * hn,
      ldb: 3 * hn,
      batch: b * np,
      strideA: bs,
      strideB: bs,
      strideC: s * s,
    });
    const probs = backend.empty(dt, [b, np, s, s]);
    backend.softmaxFwd(scores, 1 / Math.sqrt(hn), { kind: "causal" }, probs);
    backend.free(scores);
    const pd = this.dropped(probs, ctx, s);
    const ctxT = backend.empty(dt, [b, np, s, hn]);
    backend.gemm({
      transA: false,
      transB: false,
      m: s,
      n: hn,
      k: s,
      a: pd,
      b: this.qView(qkvT, 2),
      c: ctxT,
      ldb: 3 * hn,
      batch: b * np,
      strideA: s * s,
      strideB: bs,
      strideC: s * hn,
    });
    const ctxM = backend.empty(dt, [b, s, np, hn]);
    backend.transpose12(ctxT, ctxM);
    backend.free(ctxT);
    // Row-parallel: partial sums over each rank's heads, all-reduced.
    const out = await this.dense.forward(ctxM.view([T, np * hn]));
    ctx.saved.set(
      this,
      { x: x2, qkvT, probs, dropped: pd, ctxM: ctxM.view([T, np * hn]), b, s } satisfies AttentionSaved,
    );
    return out.view([b, s, h]);
  }

  /** dOut [b, s, h] (grad of the dense output before its bias) -> dx [b, s, h] (caller owns it);
   *  accumulates every grad of this module, the dense bias's included. */
  async backward(dOut: Tensor, ctx: MicroBatchContext): Promise<Tensor> {
    const { backend, cfg } = this.env;
    const sv = takeSaved<AttentionSaved>(ctx, this, "ParallelAttention.backward");
    const { b, s } = sv;
    const hn = cfg.kvChannels, np = this.npLocal, dt = cfg.paramsDtype, h = cfg.hiddenSize;
    const T = b * s;
    const bs = s * 3 * hn;
    const dctxM = await this.dense.backward(sv.ctxM, dOut.view([T, h]));
    const dctx = backend.empty(dt, [b, np, s, hn]);
    backend.transpose12(dctxM.view([b, s, np, hn]), dctx);
    backend.free(dctxM);
    const dqkvT = backend.empty(dt, [b, np, s, 3 * hn]);
    // dv = dropout(probs)^T @ dctx
    const pd = sv.dropped;
    backend.gemm({
      transA: true,
      transB: false,
      m: s,
      n: hn,
      k: s,
      a: pd,
      b: dctx,
      c: this.qView(dqkvT, 2),
      ldc: 3 * hn,
      batch: b * np,
      strideA: s * s,
      strideB: s * hn,
      strideC: bs,
    });
    if (pd !== sv.probs) backend.free(pd);
    // d(dropped probs) = dctx @ v^T
    const dprobs = backend.empty(dt, [b, np, s, s]);
    backend.gemm({
      transA: false,
      transB: true,
      m: s,
      n: s,
      k: hn,
      a: dctx,
      b: this.qView(sv.qkvT, 2),
      c: dprobs,
      ldb: 3 * hn,
      batch: b * np,
      strideA: s * hn,
      strideB: bs,
      strideC: s * s,
    });
    backend.free(dctx);
    if (attentionDropoutP(cfg, ctx) > 0) {
      backend.dropout(
        dprobs,
        attentionDropoutP(cfg, ctx),
        attnDropoutAddr(cfg, this.env.ps, ctx, this.globalLayer, s),
        dprobs,
      );
    }
    const dscores = backend.empty(dt, [b, np, s, s]);
    backend.softmaxBwd(dprobs, sv.probs, 1 / Math.sqrt(hn), dscores);
    freeAll(backend, [dprobs, sv.probs]);
    const common = {
      batch: b * np,
      lda: s,
      ldb: 3 * hn,
      ldc: 3 * hn,
      strideA: s * s,
      strideB: bs,
      strideC: bs,
    };
    // dq = dscores @ k ; dk = dscores^T @ q
    backend.gemm({
      transA: false,
      transB: false,
      m: s,
      n: hn,
      k: s,
      a: dscores,
      b: this.qView(sv.qkvT, 1),
      c: this.qView(dqkvT, 0),
      ...common,
    });
    backend.gemm({
      transA: true,
      transB: false,
      m: s,
      n: hn,
      k: s,
      a: dscores,
      b: this.qView(sv.qkvT, 0),
      c: this.qView(dqkvT, 1),
      ...common,
    });
    freeAll(backend, [dscores, sv.qkvT, sv.ctxM]);
    const dqkv = backend.empty(dt, [T, np * 3 * hn]);
    backend.transpose12(dqkvT, dqkv.view([b, s, np, 3 * hn]));
    backend.free(dqkvT);
    // Column-parallel input grad: summed over ranks (copy_to backward).
    const dx = await this.qkv.backward(sv.x, dqkv, true);
    return dx.view([b, s, h]);
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as AttentionSaved | undefined;
    if (sv) {
      freeAll(this.env.backend, [sv.qkvT, sv.probs, sv.dropped !== sv.probs ? sv.dropped : null, sv.ctxM]);
    }
    ctx.saved.delete(this);
  }

  /** q (0), k (1) or v (2) of every head: a view starting at that part's first element. */
  private qView(qkvT: Tensor, part: number): Tensor {
    const off = part * this.env.cfg.kvChannels;
    return qkvT.flat(off, qkvT.size - off);
  }

  /** Probabilities after attention dropout (the same tensor when p = 0). */
  private dropped(probs: Tensor, ctx: MicroBatchContext, s: number): Tensor {
    const { backend, cfg, ps } = this.env;
    const p = attentionDropoutP(cfg, ctx);
    if (p === 0) return probs;
    const out = backend.empty(probs.dtype, probs.shape);
    backend.dropout(probs, p, attnDropoutAddr(cfg, ps, ctx, this.globalLayer, s), out);
    return out;
  }
}
