// LayerNorm over the hidden dimension (weight 1, bias 0 at init; replicated over TP).

import type { Param } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { gradDType } from "./config.ts";
import { freeAll, makeParam, type MicroBatchContext, type ModuleEnv, takeSaved } from "./common.ts";

interface LnSaved {
  x: Tensor; // [rows, h] (not owned)
  mean: Tensor;
  rstd: Tensor;
}

export class LayerNorm {
  readonly weight: Param;
  readonly bias: Param;

  /** `prefix` ends with "." (e.g. "language_model.encoder.final_layernorm."). */
  constructor(readonly env: ModuleEnv, prefix: string) {
    const h = env.cfg.hiddenSize;
    const opts = { noWeightDecay: true };
    this.weight = makeParam(env, `${prefix}weight`, [h], { kind: "const", value: 1 }, opts);
    this.bias = makeParam(env, `${prefix}bias`, [h], { kind: "const", value: 0 }, opts);
  }

  params(): Param[] {
    return [this.weight, this.bias];
  }

  /** x [..., h] -> y of the same shape (caller owns y; x must stay alive until backward). */
  forward(x: Tensor, ctx: MicroBatchContext): Tensor {
    const { backend, cfg } = this.env;
    const h = cfg.hiddenSize;
    const rows = x.size / h;
    const sd = gradDType(cfg.paramsDtype);
    const x2 = x.view([rows, h]);
    const y = backend.empty(x.dtype, x.shape);
    const mean = backend.empty(sd, [rows]);
    const rstd = backend.empty(sd, [rows]);
    backend.layerNormFwd(
      x2,
      this.weight.value,
      this.bias.value,
      cfg.layernormEpsilon,
      y.view([rows, h]),
      mean,
      rstd,
    );
    ctx.saved.set(this, { x: x2, mean, rstd } satisfies LnSaved);
    return y;
  }

  /** dy -> dx (caller owns dx); accumulates weight/bias grads. */
  backward(dy: Tensor, ctx: MicroBatchContext): Tensor {
    const { backend } = this.env;
    const sv = takeSaved<LnSaved>(ctx, this, "LayerNorm.backward");
    const dx = backend.empty(dy.dtype, dy.shape);
    backend.layerNormBwd(
      dy.view(sv.x.shape),
      sv.x,
      this.weight.value,
      sv.mean,
      sv.rstd,
      dx.view(sv.x.shape),
      this.weight.grad,
      this.bias.grad,
      true,
    );
    freeAll(backend, [sv.mean, sv.rstd]);
    return dx;
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as LnSaved | undefined;
    if (sv) freeAll(this.env.backend, [sv.mean, sv.rstd]);
    ctx.saved.delete(this);
  }
}
