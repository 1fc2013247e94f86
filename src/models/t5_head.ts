// Megatron 2021's T5LMHead: logits against the tied (vocab-parallel) word embedding plus a
// vocab-parallel bias `lm_head.bias`; no dense layer or LayerNorm of its own (the decoder's final
// LayerNorm comes before it).

import type { TPEnv } from "../parallel/tensor_parallel.ts";
import type { Param } from "../tensor/param.ts";
import { shapeStr, type Tensor } from "../tensor/tensor.ts";
import { type MicroBatchContext, takeSaved } from "../transformer/common.ts";
import { TiedLmLogits } from "./lm_logits.ts";

export interface T5LMHeadOptions {
  hiddenSize: number;
  /** The padded vocabulary (all TP ranks together). */
  vocabSize: number;
  /** Ends with "."; the bias is `${prefix}bias`. Default "lm_head.". */
  prefix?: string;
}

interface T5HeadSaved {
  hShape: readonly number[];
  x: Tensor; // [T, h] (not owned)
}

export class T5LMHead {
  readonly logits: TiedLmLogits;

  constructor(readonly tp: TPEnv, readonly opts: T5LMHeadOptions) {
    this.logits = new TiedLmLogits(tp, opts.vocabSize, `${opts.prefix ?? "lm_head."}bias`);
  }

  get bias(): Param {
    return this.logits.bias!;
  }
  get vocabStart(): number {
    return this.logits.vocabStart;
  }

  params(): Param[] {
    return [this.bias];
  }

  /** decoder output [b, s, h] (kept alive until backward), tied word embedding shard [V/tp, h] ->
   *  logits [b * s, V/tp] (caller owns; hand them to MaskedLmLoss). */
  forward(hidden: Tensor, word: Param, ctx: MicroBatchContext): Tensor {
    const h = this.opts.hiddenSize;
    if (hidden.shape[hidden.rank - 1] !== h) {
      throw new Error(`T5LMHead.forward: hidden ${shapeStr(hidden.shape)} must end in ${h}`);
    }
    const x = hidden.view([hidden.size / h, h]);
    ctx.saved.set(this, { hShape: hidden.shape, x } satisfies T5HeadSaved);
    return this.logits.forward(x, word);
  }

  /** dLogits [b * s, V/tp] (stays the caller's) -> d hidden shaped like forward's hidden (caller owns). */
  async backward(dLogits: Tensor, word: Param, ctx: MicroBatchContext): Promise<Tensor> {
    const sv = takeSaved<T5HeadSaved>(ctx, this, "T5LMHead.backward");
    const dx = await this.logits.backward(dLogits, sv.x, word);
    return dx.view(sv.hShape);
  }

  discard(ctx: MicroBatchContext): void {
    ctx.saved.delete(this);
  }
}
