// A stack of transformer layers (one pipeline stage's share) with activation checkpointing:
// "uniform" stores only the input of every chunk of N layers and recomputes the chunk in backward;
// "block" checkpoints the first N layers individually and runs the rest normally. Recompute uses the
// same context coordinates, so dropout masks (and therefore gradients) are identical.

import type { Param } from "../tensor/param.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { childContext, type MicroBatchContext, type ModuleEnv, takeSaved } from "./common.ts";
import { type LayerGrads, type LayerInputs, type LayerOptions, TransformerLayer } from "./layer.ts";

export interface Chunk {
  start: number; // index into this.layers
  end: number;
  checkpointed: boolean;
}

interface BlockSaved {
  /** inputs[i] = input of layer i (inputs[0] is the caller's); null where recompute drops it. */
  inputs: (Tensor | null)[];
  /** The layers' other inputs (masks, encoder output), reused by recompute. */
  layerInputs: LayerInputs;
}

export class TransformerBlock {
  readonly layers: TransformerLayer[];
  readonly chunks: Chunk[];

  /** `globalLayers`: the global 0-based numbers of this stage's layers, in order. Names use the
   *  stage-local index as Megatron's per-stage state dicts do. `layerOpts`: encoder/decoder layers and
   *  the self-attention mask (default: GPT's causal encoder layers). */
  constructor(
    readonly env: ModuleEnv,
    readonly globalLayers: readonly number[],
    prefix = "language_model.encoder.",
    layerOpts: LayerOptions = {},
  ) {
    this.layers = globalLayers.map((g, i) =>
      new TransformerLayer(env, g, `${prefix}layers.${i}.`, layerOpts)
    );
    this.chunks = planChunks(
      this.layers.length,
      env.cfg.activationsCheckpointMethod,
      env.cfg.activationsCheckpointNumLayers,
    );
  }

  params(): Param[] {
    return this.layers.flatMap((l) => l.params());
  }

  /** x [b, s, h] (caller's, kept alive until backward, as `layerInputs`) -> y [b, s, h] (caller owns). */
  async forward(x: Tensor, ctx: MicroBatchContext, layerInputs: LayerInputs = {}): Promise<Tensor> {
    const { backend } = this.env;
    const inputs: (Tensor | null)[] = new Array(this.layers.length).fill(null);
    let h = x;
    for (const c of this.chunks) {
      const lctx = c.checkpointed ? childContext(ctx) : ctx;
      const chunkIn = h;
      inputs[c.start] = chunkIn;
      for (let i = c.start; i < c.end; i++) {
        const y = await this.layers[i].forward(h, lctx, layerInputs);
        if (i > c.start) {
          if (c.checkpointed) backend.free(h);
          else inputs[i] = h;
        }
        h = y;
      }
      if (c.checkpointed) { for (let i = c.start; i < c.end; i++) this.layers[i].discard(lctx); }
    }
    ctx.saved.set(this, { inputs, layerInputs } satisfies BlockSaved);
    return h;
  }

  /** dy (caller's) -> dx (caller owns). Frees every stored layer input except the block's own input.
   *  Decoder layers add d encoderOutput into `grads.dEncoderOutput`. */
  async backward(dy: Tensor, ctx: MicroBatchContext, grads: LayerGrads = {}): Promise<Tensor> {
    const { backend } = this.env;
    const sv = takeSaved<BlockSaved>(ctx, this, "TransformerBlock.backward");
    let d = dy;
    for (let ci = this.chunks.length - 1; ci >= 0; ci--) {
      const c = this.chunks[ci];
      let lctx = ctx;
      if (c.checkpointed) {
        // Rerun the chunk's forward from its stored input to rebuild the saved activations.
        lctx = childContext(ctx);
        let h = sv.inputs[c.start]!;
        for (let i = c.start; i < c.end; i++) {
          const y = await this.layers[i].forward(h, lctx, sv.layerInputs);
          if (i > c.start) sv.inputs[i] = h;
          h = y;
        }
        backend.free(h); // the chunk output is not needed for backward
      }
      for (let i = c.end - 1; i >= c.start; i--) {
        const dx = await this.layers[i].backward(d, lctx, grads);
        if (d !== dy) backend.free(d);
        d = dx;
        if (i > 0) {
          backend.free(sv.inputs[i]!);
          sv.inputs[i] = null;
        }
      }
    }
    return d;
  }

  discard(ctx: MicroBatchContext): void {
    const sv = ctx.saved.get(this) as BlockSaved | undefined;
    if (!sv) return;
    ctx.saved.delete(this);
    for (const l of this.layers) l.discard(ctx);
    for (let i = 1; i < sv.inputs.length; i++) if (sv.inputs[i]) this.env.backend.free(sv.inputs[i]!);
  }
}

/** Split n layers into chunks per the checkpoint method. */
export function planChunks(n: number, method: null | "uniform" | "block", num: number): Chunk[] {
  const chunks: Chunk[] = [];
  if (method === "uniform") {
    for (let s = 0; s < n; s += num) chunks.push({ start: s, end: Math.min(n, s + num), checkpointed: true });
  } else if (method === "block") {
    for (let i = 0; i < n; i++) chunks.push({ start: i, end: i + 1, checkpointed: i < num });
  } else {
    for (let i = 0; i < n; i++) chunks.push({ start: i, end: i + 1, checkpointed: false });
  }
  return chunks;
}
