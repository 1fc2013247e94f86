// Start-up memory estimate of a training run: parameters, gradients, optimizer state and activations
// of every rank this process holds (all ranks share one host or one device here), checked against
// the memory available, so a model that cannot fit fails at once with the numbers instead of being
// OOM-killed part-way.
//
// Activations follow Megatron's accounting (Korthikanti et al., "Reducing Activation Recomputation",
// per layer s*b*h*(34 + 5*a*s/h) bytes for 16-bit activations) adapted to what this implementation
// keeps for backward, in elements of the params dtype D, with TP size t, projection p = heads * kv
// and FFN size f:
//   per layer:      4*b*s*h (LN1 out, residual, LN2 out, layer output) + b*s*(4p + 2f)/t (QKV, context,
//                   h->f pre-activation and GeLU output) + k*b*(a/t)*s^2 (softmax output, and the
//                   dropped-out copy when attention dropout > 0: k = 2) + 2 LayerNorm mean/rstd pairs in
//                   f32. Dropout masks are not stored (counter-based RNG regenerates them).
//   recomputed:     only the layer's output (b*s*h) per checkpointed chunk; backward rebuilds one chunk
//                   (uniform: N layers; block: one layer, after the later layers are freed) transiently.
//   first stage:    the embedding output; later stages: the received hidden state.
//   last stage:     final LN output and stats, logits b*s*V/t, cross-entropy stats (3 f32 per token).
//   backward:       a transient workspace of 5*b*s*h + 2*b*(a/t)*s^2 elements.
// The micro-batches in flight come from the rank's real schedule (pipeline/schedules.ts): 1 without
// pipelining, up to p - r for 1F1B, more for interleaving. Parameters: D bytes each; grads f32 (one
// contiguous buffer); fp32 main params with fp16/bf16; Adam moments 2 x f32 (SGD momentum 1 x f32).

import type { Backend } from "../backend/backend.ts";
import type { GPTConfig } from "../models/mod.ts";
import { buildSchedule } from "../pipeline/schedules.ts";
import { DTYPE_BYTES } from "../tensor/dtype.ts";
import { chunkLayers } from "./rank.ts";

/** Layout and batch settings the estimate needs (a subset of Config). */
export interface EstimateLayout {
  tp: number;
  pp: number;
  dp: number;
  vp: number;
  microBatchSize: number;
  /** Micro-batches per step on each DP rank (global batch / (micro * dp)). */
  numMicroBatches: number;
  optimizer: "adam" | "sgd";
}

export interface RankEstimate {
  tp: number;
  pp: number;
  params: number;
  paramBytes: number;
  gradBytes: number;
  optimizerBytes: number;
  activationBytes: number;
  /** Largest number of micro-batches whose activations are stored at once. */
  inFlight: number;
  total: number;
}

export interface MemoryEstimate {
  /** One entry per (tp, pp) position; DP replicas are identical. */
  ranks: RankEstimate[];
  /** Every rank of the process: sum over tp, pp and dp. */
  total: number;
  paramBytes: number;
  gradBytes: number;
  optimizerBytes: number;
  activationBytes: number;
  numRanks: number;
}

interface ChunkShape {
  pre: boolean;
  post: boolean;
  layers: number;
}

function layerParams(m: GPTConfig, t: number): number {
  const h = m.hiddenSize, p = m.numAttentionHeads * kv(m), f = ffn(m);
  return 4 * h + (3 * p * h + 3 * p) / t + (p * h) / t + h + (h * f + f) / t + (f * h) / t + h;
}

function kv(m: GPTConfig): number {
  return m.kvChannels ?? m.hiddenSize / m.numAttentionHeads;
}

function ffn(m: GPTConfig): number {
  return m.ffnHiddenSize ?? 4 * m.hiddenSize;
}

/** Parameter elements of one model chunk (the tied word embedding counted on both ends). */
export function chunkParams(m: GPTConfig, t: number, c: ChunkShape): number {
  const h = m.hiddenSize;
  let n = c.layers * layerParams(m, t);
  if (c.pre) n += (m.vocabSize / t) * h + m.maxPositionEmbeddings * h;
  if (c.post) n += 2 * h + (c.pre ? 0 : (m.vocabSize / t) * h);
  return n;
}

/** Bytes one micro-batch leaves stored in a chunk after its forward, and the transient bytes its
 *  backward adds on top (recompute + workspace). */
function chunkActivations(m: GPTConfig, t: number, b: number, c: ChunkShape) {
  const D = DTYPE_BYTES[m.paramsDtype];
  const s = m.seqLength, h = m.hiddenSize, a = m.numAttentionHeads / t;
  const p = m.numAttentionHeads * kv(m), f = ffn(m);
  const k = m.attentionDropout > 0 ? 2 : 1;
  const fullLayer = D * (4 * b * s * h + (b * s * (4 * p + 2 * f)) / t + k * b * a * s * s) + 4 * 4 * b * s;
  const outOnly = D * b * s * h;
  const n = m.activationsCheckpointNumLayers ?? 1;
  let stored = 0, rebuilt = 0;
  if (m.activationsCheckpointMethod === "uniform") {
    stored = Math.ceil(c.layers / n) * outOnly;
    rebuilt = Math.min(n, c.layers) * fullLayer;
  } else if (m.activationsCheckpointMethod === "block") {
    const ck = Math.min(n, c.layers);
    stored = ck * outOnly + (c.layers - ck) * fullLayer;
    // The checkpointed layers come first, so backward rebuilds them after the later, fully stored
    // layers have been freed: only when every layer is checkpointed does a rebuild add to the peak.
    rebuilt = ck === c.layers && ck > 0 ? fullLayer : 0;
  } else {
    stored = c.layers * fullLayer;
  }
  // The chunk's input: token ids on the first stage, else the received hidden state.
  stored += c.pre ? 4 * b * s + D * b * s * h : D * b * s * h;
  if (c.post) stored += D * b * s * h + 8 * b * s + D * b * s * (m.vocabSize / t) + 3 * 4 * b * s + 8 * b * s;
  const workspace = D * (5 * b * s * h + 2 * b * a * s * s);
  return { stored, transient: rebuilt + workspace };
}

/** Peak activation bytes of stage r over its schedule, and the most micro-batches in flight. */
function stageActivations(m: GPTConfig, lay: EstimateLayout, r: number, chunks: ChunkShape[]) {
  const per = chunks.map((c) => chunkActivations(m, lay.tp, lay.microBatchSize, c));
  const ops = buildSchedule({ p: lay.pp, r, m: lay.numMicroBatches, v: lay.vp });
  let live = 0, peak = 0, inFlight = 0, maxInFlight = 0;
  for (const op of ops) {
    if (op.op === "forward") {
      live += per[op.chunk].stored;
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      peak = Math.max(peak, live);
    } else if (op.op === "backward") {
      peak = Math.max(peak, live + per[op.chunk].transient);
      live -= per[op.chunk].stored;
      inFlight--;
    }
  }
  return { bytes: peak, inFlight: maxInFlight };
}

/** Estimate the memory of every rank of a (tp, pp, dp) run held by this process. */
export function estimateMemory(m: GPTConfig, lay: EstimateLayout): MemoryEstimate {
  const D = DTYPE_BYTES[m.paramsDtype];
  const half = m.paramsDtype === "f16" || m.paramsDtype === "bf16";
  const ranks: RankEstimate[] = [];
  for (let pp = 0; pp < lay.pp; pp++) {
    const chunks: ChunkShape[] = [];
    for (let v = 0; v < lay.vp; v++) {
      chunks.push({
        pre: pp === 0 && v === 0,
        post: pp === lay.pp - 1 && v === lay.vp - 1,
        layers: chunkLayers(m.numLayers, lay.pp, lay.vp, pp, v).length,
      });
    }
    const params = chunks.reduce((s, c) => s + chunkParams(m, lay.tp, c), 0);
    const act = stageActivations(m, lay, pp, chunks);
    for (let tp = 0; tp < lay.tp; tp++) {
      const paramBytes = params * D;
      const gradBytes = params * 4;
      const optimizerBytes = params * 4 * (lay.optimizer === "adam" ? 2 : 1) + (half ? params * 4 : 0);
      ranks.push({
        tp,
        pp,
        params,
        paramBytes,
        gradBytes,
        optimizerBytes,
        activationBytes: act.bytes,
        inFlight: act.inFlight,
        total: paramBytes + gradBytes + optimizerBytes + act.bytes,
      });
    }
  }
  const sum = (f: (r: RankEstimate) => number) => lay.dp * ranks.reduce((s, r) => s + f(r), 0);
  return {
    ranks,
    total: sum((r) => r.total),
    paramBytes: sum((r) => r.paramBytes),
    gradBytes: sum((r) => r.gradBytes),
    optimizerBytes: sum((r) => r.optimizerBytes),
    activationBytes: sum((r) => r.activationBytes),
    numRanks: ranks.length * lay.dp,
  };
}

/** "1.50 GiB" style, binary units. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(2)} ${units[i]}`;
}

/** The short form printed in the model line. */
export function describeEstimate(e: MemoryEstimate): string {
  const maxRank = Math.max(...e.ranks.map((r) => r.total));
  return `memory estimate ${formatBytes(e.total)}` +
    (e.numRanks > 1 ? ` for ${e.numRanks} ranks (at most ${formatBytes(maxRank)} per rank)` : "") +
    ` (params ${formatBytes(e.paramBytes)}, grads ${formatBytes(e.gradBytes)}, ` +
    `optimizer ${formatBytes(e.optimizerBytes)}, activations ${formatBytes(e.activationBytes)})`;
}

/** MemAvailable of /proc/meminfo in bytes, or null where there is no such file. */
export function hostMemAvailable(meminfo?: string): number | null {
  let text = meminfo;
  if (text === undefined) {
    try {
      text = Deno.readTextFileSync("/proc/meminfo");
    } catch {
      return null;
    }
  }
  const m = /^MemAvailable:\s+(\d+)\s+kB$/m.exec(text);
  return m ? Number(m[1]) * 1024 : null;
}

/** Memory the run can use: the device's free memory when the backend has its own, else the host's. */
export function availableMemory(backend: Backend): { bytes: number; what: string } | null {
  if (backend.deviceMemory) {
    return { bytes: backend.deviceMemory().free, what: `free ${backend.name} device memory` };
  }
  const b = hostMemAvailable();
  return b === null ? null : { bytes: b, what: "available host memory (MemAvailable in /proc/meminfo)" };
}

/** One line when the estimate exceeds what is available, else null. `perRank`: this process holds one
 *  rank (one process per rank), so the largest rank's share is what must fit. */
export function checkFits(
  e: MemoryEstimate,
  avail: { bytes: number; what: string } | null,
  perRank = false,
): string | null {
  const need = perRank ? Math.max(...e.ranks.map((r) => r.total)) : e.total;
  if (avail === null || need <= avail.bytes) return null;
  return `the model does not fit: ${describeEstimate(e)} exceeds the ${
    formatBytes(avail.bytes)
  } of ${avail.what}`;
}
