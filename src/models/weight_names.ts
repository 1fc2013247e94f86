// Megatron's parameter names <-> this code's modules, with how each tensor is split over tensor
// parallelism. Checkpoints save and load through a WeightTable (one per rank) instead of matching
// names inline, and importers/mergers use the same rules to slice a full tensor into this rank's
// shard or to concatenate shards back (Megatron's per-rank state dicts hold shards).
//
// Names are Megatron 2021's state-dict keys (GPT, BERT, T5 share the language_model.* part); layer
// numbers are stage-local, and with virtual pipeline chunks each name is prefixed "model<v>.".

import { COLUMN_SPLIT, ROW_SPLIT } from "../parallel/tensor_parallel.ts";
import type { Param, TensorParallelInfo } from "../tensor/param.ts";

/** How one family of Megatron names maps onto modules. */
export interface WeightRule {
  /** Matches the name without the "model<v>." chunk prefix. */
  readonly pattern: RegExp;
  /** The module and tensor it loads into (documentation and error messages). */
  readonly module: string;
  /** TP split of the full tensor (rows = 0: column-parallel / vocab-parallel; 1: row-parallel), or
   *  null when every TP rank holds the whole tensor. */
  readonly split: TensorParallelInfo | null;
}

const L = String.raw`^(?:language_model\.(?:encoder|decoder)\.)layers\.\d+\.`;

/** Every Megatron 2021 parameter family megatron-deno builds (GPT today; BERT and T5 names included
 *  so their modules are checked against the same table). */
export const WEIGHT_RULES: readonly WeightRule[] = [
  rule(`^language_model\\.embedding\\.word_embeddings\\.weight$`, "Embedding.wordEmbeddings", COLUMN_SPLIT),
  rule(`^language_model\\.embedding\\.position_embeddings\\.weight$`, "Embedding.positionEmbeddings", null),
  rule(`^language_model\\.embedding\\.tokentype_embeddings\\.weight$`, "tokentype embedding", null),
  rule(`^word_embeddings_for_head\\.weight$`, "GPTModel.wordEmbeddingsForHead (tied copy)", COLUMN_SPLIT),
  rule(`${L}(input|post_attention|post_inter_attention)_layernorm\\.(weight|bias)$`, "LayerNorm", null),
  rule(`${L}self_attention\\.query_key_value\\.(weight|bias)$`, "ParallelAttention.qkv", COLUMN_SPLIT),
  rule(`${L}inter_attention\\.query\\.(weight|bias)$`, "ParallelAttention.query", COLUMN_SPLIT),
  rule(`${L}inter_attention\\.key_value\\.(weight|bias)$`, "ParallelAttention.keyValue", COLUMN_SPLIT),
  rule(`${L}(self|inter)_attention\\.dense\\.weight$`, "ParallelAttention.dense", ROW_SPLIT),
  rule(`${L}(self|inter)_attention\\.dense\\.bias$`, "ParallelAttention.dense bias", null),
  rule(`${L}mlp\\.dense_h_to_4h\\.(weight|bias)$`, "ParallelMLP.denseH4h", COLUMN_SPLIT),
  rule(`${L}mlp\\.dense_4h_to_h\\.weight$`, "ParallelMLP.dense4hH", ROW_SPLIT),
  rule(`${L}mlp\\.dense_4h_to_h\\.bias$`, "ParallelMLP.dense4hH bias", null),
  rule(`^language_model\\.(encoder|decoder)\\.final_layernorm\\.(weight|bias)$`, "final LayerNorm", null),
  rule(`^language_model\\.pooler\\.dense\\.(weight|bias)$`, "BERT/T5 pooler", null),
  rule(`^lm_head\\.dense\\.(weight|bias)$`, "BERT LM head dense", null),
  rule(`^lm_head\\.layernorm\\.(weight|bias)$`, "BERT LM head LayerNorm", null),
  rule(`^lm_head\\.bias$`, "LM head vocab-parallel bias", COLUMN_SPLIT),
  rule(`^binary_head\\.(weight|bias)$`, "BERT binary head", null),
  rule(`^(classification|multichoice)_head\\.(weight|bias)$`, "finetuning head (replicated)", null),
];

function rule(pattern: string, module: string, split: TensorParallelInfo | null): WeightRule {
  return { pattern: new RegExp(pattern), module, split };
}

/** The name without its "model<v>." virtual-chunk prefix. */
export function stripChunkPrefix(name: string): string {
  return name.replace(/^model\d+\./, "");
}

/** The rule for a Megatron name; throws one line when no rule knows it. */
export function weightRule(name: string): WeightRule {
  const n = stripChunkPrefix(name);
  const r = WEIGHT_RULES.find((x) => x.pattern.test(n));
  if (!r) throw new Error(`weight names: no rule for parameter ${name} (src/models/weight_names.ts)`);
  return r;
}

/** This rank's shard of a full tensor (row-major, 1-D or 2-D), per the split. */
export function shardOf(
  full: ArrayLike<number>,
  fullShape: readonly number[],
  split: TensorParallelInfo | null,
  tpRank: number,
  tpSize: number,
): { shape: number[]; data: Float64Array } {
  if (!split || tpSize === 1) return { shape: [...fullShape], data: Float64Array.from(full) };
  const dim = fullShape.length === 1 ? 0 : split.partitionDim;
  if (fullShape[dim] % tpSize !== 0) {
    throw new Error(`weight names: dimension ${dim} of [${fullShape}] is not divisible by TP ${tpSize}`);
  }
  if (dim === 0) {
    const n = full.length / tpSize;
    const data = Float64Array.from({ length: n }, (_, i) => full[tpRank * n + i]);
    return { shape: [fullShape[0] / tpSize, ...fullShape.slice(1)], data };
  }
  const [rows, cols] = fullShape, nc = cols / tpSize;
  const data = new Float64Array(rows * nc);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < nc; c++) data[r * nc + c] = full[r * cols + tpRank * nc + c];
  }
  return { shape: [rows, nc], data };
}

/** The full tensor from every TP rank's shard (in TP rank order); inverse of shardOf. */
export function mergeShards(
  shards: readonly ArrayLike<number>[],
  shardShape: readonly number[],
  split: TensorParallelInfo | null,
): { shape: number[]; data: Float64Array } {
  if (!split || shards.length === 1) return { shape: [...shardShape], data: Float64Array.from(shards[0]) };
  const n = shards.length;
  const dim = shardShape.length === 1 ? 0 : split.partitionDim;
  if (dim === 0) {
    const data = new Float64Array(shards.reduce((a, s) => a + s.length, 0));
    shards.forEach((s, k) => data.set(Float64Array.from(s), k * s.length));
    return { shape: [shardShape[0] * n, ...shardShape.slice(1)], data };
  }
  const [rows, cols] = shardShape;
  const data = new Float64Array(rows * cols * n);
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < n; k++) {
      for (let c = 0; c < cols; c++) data[(r * n + k) * cols + c] = shards[k][r * cols + c];
    }
  }
  return { shape: [rows, cols * n], data };
}

/** One checkpoint tensor of a rank: its stored name, the Param it loads into, and its rule. */
export interface WeightEntry {
  /** Name in model.safetensors (with "model<v>." under virtual pipeline chunks). */
  readonly name: string;
  /** The same tensor in a TP = PP = 1 model: stage-local layer numbers made global, no prefix
   *  (null for the last stage's tied-embedding copy, which a single-stage model does not have). */
  readonly globalName: string | null;
  readonly param: Param;
  readonly rule: WeightRule;
}

/** A rank's parameters under Megatron's names, in state-dict order. */
export class WeightTable {
  readonly entries: readonly WeightEntry[];
  private readonly byName: Map<string, WeightEntry>;

  /** `chunks`: the rank's model chunks in virtual-chunk order, each with its global layer numbers. */
  constructor(chunks: readonly { params(): Param[]; layers: readonly number[] }[]) {
    const vp = chunks.length;
    const entries: WeightEntry[] = [];
    chunks.forEach((c, v) => {
      for (const p of c.params()) {
        const rule = weightRule(p.name);
        const same = (a: TensorParallelInfo | null, b: TensorParallelInfo | null) =>
          a === null ? b === null : b !== null && a.partitionDim === b.partitionDim && a.stride === b.stride;
        if (!same(rule.split, p.tensorParallel)) {
          throw new Error(
            `weight names: ${p.name} is built ${describe(p.tensorParallel)} but the table says ${
              describe(rule.split)
            } (${rule.module})`,
          );
        }
        const local = /^(.*\.layers\.)(\d+)(\..*)$/.exec(p.name);
        const globalName = p.name === "word_embeddings_for_head.weight"
          ? null
          : local
          ? `${local[1]}${c.layers[Number(local[2])]}${local[3]}`
          : p.name;
        entries.push({ name: (vp > 1 ? `model${v}.` : "") + p.name, globalName, param: p, rule });
      }
    });
    this.entries = entries;
    this.byName = new Map(entries.map((e) => [e.name, e]));
    if (this.byName.size !== entries.length) throw new Error("weight names: two parameters share a name");
  }

  get(name: string): WeightEntry | undefined {
    return this.byName.get(name);
  }
}

function describe(s: TensorParallelInfo | null): string {
  return s === null ? "replicated" : `split along dimension ${s.partitionDim}`;
}
