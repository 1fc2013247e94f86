// MLP: h -> ffn (column-parallel) with fused bias + tanh-GeLU, ffn -> h (row-parallel, all-reduce in
// forward; its bias is returned unadded for the layer's bias-dropout-add).

import type { Param } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";
import {
  COLUMN,
  freeAll,
  initStream,
  linearBwd,
  linearFwd,
  makeParam,
  type MicroBatchContext,
  type ModuleEnv,
  ParamKind,
  ROW,
  takeSaved,
} from "./common.ts";

interface MlpSaved {
  x: Tensor; // [T, h] input (not owned)
  pre: Tensor; // [T, ffn_local] before bias + GeLU
  act: Tensor; // [T, ffn_local] after GeLU
}

export class ParallelMLP {
  readonly h4hWeight: Param;
  readonly h4hBias: Param;
  readonly fourhhWeight: Param;
  readonly fourhhBias: Param;

  /** `prefix` ends with "mlp.". */
  constructor(readonly env: ModuleEnv, readonly globalLayer: number, prefix: string) {
    const { cfg } = env;
    const h = cfg.hiddenSize, f = cfg.ffnHiddenSize;
    this.h4hWeight = makeParam(env, `${prefix}dense_h_to_4h.weight`, [f, h], COLUMN, {
      kind: "normal",
      std: cfg.initMethodStd,
      stream: initStream(globalLayer, ParamKind.h4h),
    });
    this.h4hBias = makeParam(env, `${prefix}dense_h_to_4h.bias`, [f], COLUMN, { kind: "const", value: 0 }, {
      noWeightDecay: true,
    });
    this.fourhhWeight = makeParam(env, `${prefix}dense_4h_to_h.weight`, [h, f], ROW, {
      kind: "normal",
      std: cfg.initMethodStd / Math.sqrt(2 * cfg.numLayers),
      stream: initStream(globalLayer, ParamKind.fourhh),
    });
    this.fourhhBias = makeParam(env, `${prefix}dense_4h_to_h.bias`, [h], null, { kind: "const", value: 0 }, {
      noWeightDecay: true,
    });
  }

  params(): Param[] {
    return [this.h4hWeight, this.h4hBias, this.fourhhWeight, this.fourhhBias];
  }

  /** x [b, s, h] -> output [b, s, h] without the 4h->h bias (caller owns it). */
  async forward(x: Tensor, ctx: MicroBatchContext): Promise<Tensor> {
    const { backend, cfg, comm } = this.env;
    const h = cfg.hiddenSize, fl = this.h4hWeight.value.shape[0], dt = cfg.paramsDtype;
    const T = x.size / h;
    const x2 = x.view([T, h]);
    const pre = backend.empty(dt, [T, fl]);
    linearFwd(backend, x2, this.h4hWeight.value, null, pre);
    const act = backend.empty(dt, [T, fl]);
    backend.biasGeluFwd(pre, this.h4hBias.value, act);
    const out = backend.empty(dt, x.shape);
    linearFwd(backend, act, this.fourhhWeight.value, null, out.view([T, h]));
    await comm.allReduce(out, "sum", "tensor");
    ctx.saved.set(this, { x: x2, pre, act } satisfies MlpSaved);
    return out;
  }

  /** dOut [b, s, h] -> dx [b, s, h] (caller owns it); the 4h->h bias grad is the layer's job. */
  async backward(dOut: Tensor, ctx: MicroBatchContext): Promise<Tensor> {
    const { backend, cfg, comm } = this.env;
    const sv = takeSaved<MlpSaved>(ctx, this, "ParallelMLP.backward");
    const h = cfg.hiddenSize, dt = cfg.paramsDtype;
    const T = sv.x.shape[0], fl = sv.pre.shape[1];
    const dAct = backend.empty(dt, [T, fl]);
    linearBwd(backend, dOut.view([T, h]), sv.act, this.fourhhWeight.value, this.fourhhWeight.grad, dAct);
    const dPre = backend.empty(dt, [T, fl]);
    backend.biasGeluBwd(dAct, sv.pre, this.h4hBias.value, dPre);
    backend.sumRows(dPre, this.h4hBias.grad, true);
    freeAll(backend, [dAct, sv.pre, sv.act]);
    const dx = backend.empty(dt, dOut.shape);
    linearBwd(backend, dPre, sv.x, this.h4hWeight.value, this.h4hWeight.grad, dx.view([T, h]));
    backend.free(dPre);
    await comm.allReduce(dx, "sum", "tensor");
    return dx;
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as MlpSaved | undefined;
    if (sv) freeAll(this.env.backend, [sv.pre, sv.act]);
    ctx.saved.delete(this);
  }
}
