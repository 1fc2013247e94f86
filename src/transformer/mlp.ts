// MLP: h -> ffn (column-parallel) with fused bias + tanh-GeLU, ffn -> h (row-parallel, all-reduce in
// forward; its bias is returned unadded for the layer's bias-dropout-add). With biasGeluFusion off
// (Megatron's --no-bias-gelu-fusion) the h -> ffn layer adds its bias and torch's erf GeLU follows.

import type { ColumnParallelLinear, RowParallelLinear } from "../parallel/tensor_parallel.ts";
import type { Param } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";
import type { BiasedOutput } from "./attention.ts";
import {
  freeAll,
  inputProjection,
  type MicroBatchContext,
  type ModuleEnv,
  outputProjection,
  ParamKind,
  takeSaved,
} from "./common.ts";

interface MlpSaved {
  x: Tensor; // [T, h] input (not owned)
  pre: Tensor; // [T, ffn_local] before GeLU (without the bias when fused)
  act: Tensor; // [T, ffn_local] after GeLU
}

export class ParallelMLP {
  /** h -> ffn; its bias is added inside the fused bias-GeLU (or by the layer itself when unfused). */
  readonly denseH4h: ColumnParallelLinear;
  /** ffn -> h; its bias is left to the layer's bias-dropout-add. */
  readonly dense4hH: RowParallelLinear;
  readonly h4hWeight: Param;
  readonly h4hBias: Param;
  readonly fourhhWeight: Param;

  /** `prefix` ends with "mlp.". */
  constructor(readonly env: ModuleEnv, readonly globalLayer: number, prefix: string) {
    const h = env.cfg.hiddenSize, f = env.cfg.ffnHiddenSize;
    const h4h = { globalLayer, kind: ParamKind.h4h, skipBiasAdd: env.cfg.biasGeluFusion };
    this.denseH4h = inputProjection(env, `${prefix}dense_h_to_4h`, h, f, h4h);
    this.dense4hH = outputProjection(env, `${prefix}dense_4h_to_h`, f, h, {
      globalLayer,
      kind: ParamKind.fourhh,
    });
    this.h4hWeight = this.denseH4h.weight;
    this.h4hBias = this.denseH4h.bias!;
    this.fourhhWeight = this.dense4hH.weight;
  }

  params(): Param[] {
    return [...this.denseH4h.params(), ...this.dense4hH.params()];
  }

  /** x [b, s, h] -> output [b, s, h] without the 4h->h bias (caller owns it). */
  async forward(x: Tensor, ctx: MicroBatchContext): Promise<Tensor> {
    return (await this.forwardBias(x, ctx)).out;
  }

  /** x [b, s, h] -> { out [b, s, h] without the 4h->h bias (caller owns it), that bias (not owned) }. */
  async forwardBias(x: Tensor, ctx: MicroBatchContext): Promise<BiasedOutput> {
    const { backend, cfg } = this.env;
    const h = cfg.hiddenSize;
    const x2 = x.view([x.size / h, h]);
    const pre = await this.denseH4h.forward(x2);
    const act = backend.empty(cfg.paramsDtype, pre.shape);
    if (cfg.biasGeluFusion) backend.biasGeluFwd(pre, this.h4hBias.value, act);
    else backend.activationFwd("gelu_erf", pre, act);
    const out = await this.dense4hH.forward(act);
    ctx.saved.set(this, { x: x2, pre, act } satisfies MlpSaved);
    return { out: out.view(x.shape), bias: this.dense4hH.outputBias };
  }

  /** dOut [b, s, h] -> dx [b, s, h] (caller owns it); accumulates every grad of this module. */
  async backward(dOut: Tensor, ctx: MicroBatchContext): Promise<Tensor> {
    const { backend, cfg } = this.env;
    const sv = takeSaved<MlpSaved>(ctx, this, "ParallelMLP.backward");
    const dAct = await this.dense4hH.backward(sv.act, dOut.view([sv.x.shape[0], cfg.hiddenSize]));
    const dPre = backend.empty(cfg.paramsDtype, sv.pre.shape);
    if (cfg.biasGeluFusion) backend.biasGeluBwd(dAct, sv.pre, this.h4hBias.value, dPre);
    else backend.activationBwd("gelu_erf", dAct, sv.pre, dPre);
    freeAll(backend, [dAct, sv.pre, sv.act]);
    const dx = await this.denseH4h.backward(sv.x, dPre, true);
    return dx.view(dOut.shape);
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as MlpSaved | undefined;
    if (sv) freeAll(this.env.backend, [sv.pre, sv.act]);
    ctx.saved.delete(this);
  }
}
