// Hugging Face <-> Megatron 2021 weights: the name maps as data, and the layout transforms as pure
// functions on typed arrays (row-major). Folders as transformers' save_pretrained writes them
// (config.json + model.safetensors) are read and written through src/training/safetensors.ts.
//
// GPT-2 (GPT2LMHeadModel): Conv1D weights are [in, out] (Megatron's Linear is [out, in]); c_attn's
// output is [q | k | v] blocks of h each, Megatron's query_key_value rows are per head [np, 3, hn]
// (checkpoint_version >= 2; 0 used [3, np, hn], 1 used [np, hn, 3]); the LM head is tied to wte.
//
// BERT (BertForPreTraining) is post-LN: LN(x + sublayer(x)). That equals Megatron's layer with
// --apply-residual-connection-post-layernorm when each HF LayerNorm moves one slot forward:
// embeddings.LayerNorm = layers.0.input_layernorm, layer.i.attention.output.LayerNorm =
// layers.i.post_attention_layernorm, layer.i.output.LayerNorm = layers.(i+1).input_layernorm (the
// last one = final_layernorm). So the BERT map needs that flag on the Megatron side.

import { type NamedTensor, readSafetensors, writeSafetensors } from "../training/safetensors.ts";
import type { HostArray } from "../tensor/dtype.ts";

/** Any element array (f16/bf16 as Uint16 bit patterns): transforms only move elements. */
export type Elems = HostArray | Int8Array | Int16Array;

function like<T extends Elems>(a: T, n: number): T {
  return new (a.constructor as new (n: number) => T)(n);
}

/** [rows, cols] -> [cols, rows] (Conv1D [in, out] <-> Linear [out, in]). */
export function transpose2d<T extends Elems>(a: T, rows: number, cols: number): T {
  if (a.length !== rows * cols) throw new Error(`transpose2d: ${a.length} elements for [${rows}, ${cols}]`);
  const out = like(a, a.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

/** Reorder the rows of a [nRows, cols] matrix (cols = 1 for a bias): out row i = in row perm[i]. */
export function permuteRows<T extends Elems>(a: T, cols: number, perm: readonly number[]): T {
  if (a.length !== perm.length * cols) {
    throw new Error(`permuteRows: ${a.length} elements for ${perm.length} x ${cols}`);
  }
  const out = like(a, a.length);
  for (let i = 0; i < perm.length; i++) {
    // deno-lint-ignore no-explicit-any
    (out as any).set((a as any).subarray(perm[i] * cols, perm[i] * cols + cols), i * cols);
  }
  return out;
}

/** Row order of a QKV matrix of `np` heads x `hn` per head x `splits` (3 for QKV, 2 for KV), as the
 *  index of each (head, split, dim) row in a layout. */
export type QkvLayout = "blocks" | "v0" | "v1" | "v2" | "v3";

function rowIndex(
  layout: QkvLayout,
  np: number,
  hn: number,
  splits: number,
  head: number,
  s: number,
  d: number,
) {
  switch (layout) {
    case "blocks": // HF: [splits, np, hn] (q block, then k, then v)
    case "v0": // Megatron checkpoint_version 0: [3, np, hn]
      return (s * np + head) * hn + d;
    case "v1": // [np, hn, 3]
      return (head * hn + d) * splits + s;
    case "v2":
    case "v3": // [np, 3, hn]
      return (head * splits + s) * hn + d;
  }
}

/** Convert QKV rows (weight [splits*np*hn, cols] or bias with cols = 1) between layouts. */
export function convertQkv<T extends Elems>(
  a: T,
  from: QkvLayout,
  to: QkvLayout,
  np: number,
  hn: number,
  cols: number,
  splits = 3,
): T {
  const perm = new Array<number>(splits * np * hn);
  for (let h = 0; h < np; h++) {
    for (let s = 0; s < splits; s++) {
      for (let d = 0; d < hn; d++) {
        perm[rowIndex(to, np, hn, splits, h, s, d)] = rowIndex(from, np, hn, splits, h, s, d);
      }
    }
  }
  return permuteRows(a, cols, perm);
}

/** Megatron's checkpoint_version (0, 1, 2, 3) as a QKV layout. */
export function qkvLayoutOfVersion(version: number): QkvLayout {
  if (version === 0) return "v0";
  if (version === 1) return "v1";
  if (version === 2 || version === 3) return version === 2 ? "v2" : "v3";
  throw new Error(`checkpoint_version ${version}: expected 0, 1, 2 or 3`);
}

/** Megatron's _vocab_size_with_padding: a multiple of make_vocab_size_divisible_by * TP. */
export function paddedVocabSize(vocab: number, divisibleBy = 128, tp = 1): number {
  const m = divisibleBy * tp;
  return Math.ceil(vocab / m) * m;
}

/** Keep the first `rows` rows (unpad) or append zero rows (pad) of a [n, cols] matrix / bias. */
export function resizeRows<T extends Elems>(a: T, cols: number, rows: number): T {
  const out = like(a, rows * cols);
  // deno-lint-ignore no-explicit-any
  (out as any).set((a as any).subarray(0, Math.min(a.length, rows * cols)));
  return out;
}

// ------------------------------------------------------------------------------------------------
// Name maps (data). Each entry: HF name, Megatron name (flattened model dict), and the transform.

export type Transform =
  | "copy" // same layout
  | "conv1d" // HF Conv1D [in, out] <-> Megatron [out, in]
  | "conv1d_qkv" // Conv1D c_attn [h, 3h] <-> query_key_value [np*3*hn, h]
  | "qkv_bias" // [3h] blocks <-> [np, 3, hn]
  | "vocab" // word embeddings / LM bias: vocab rows padded on the Megatron side
  | "q_part" // BERT query/key/value: one third of query_key_value (weight or bias)
  | "k_part"
  | "v_part";

export interface NameMapEntry {
  hf: string;
  megatron: string;
  transform: Transform;
}

export interface GptShape {
  numLayers: number;
  hidden: number;
  heads: number;
}

/** GPT2LMHeadModel <-> Megatron 2021 GPT (the model dict's flattened names). lm_head is tied. */
export function gpt2NameMap(s: GptShape): NameMapEntry[] {
  const m: NameMapEntry[] = [
    {
      hf: "transformer.wte.weight",
      megatron: "language_model.embedding.word_embeddings.weight",
      transform: "vocab",
    },
    {
      hf: "transformer.wpe.weight",
      megatron: "language_model.embedding.position_embeddings.weight",
      transform: "copy",
    },
  ];
  for (let i = 0; i < s.numLayers; i++) {
    const h = `transformer.h.${i}.`, g = `language_model.encoder.layers.${i}.`;
    m.push(
      { hf: `${h}ln_1.weight`, megatron: `${g}input_layernorm.weight`, transform: "copy" },
      { hf: `${h}ln_1.bias`, megatron: `${g}input_layernorm.bias`, transform: "copy" },
      {
        hf: `${h}attn.c_attn.weight`,
        megatron: `${g}self_attention.query_key_value.weight`,
        transform: "conv1d_qkv",
      },
      {
        hf: `${h}attn.c_attn.bias`,
        megatron: `${g}self_attention.query_key_value.bias`,
        transform: "qkv_bias",
      },
      { hf: `${h}attn.c_proj.weight`, megatron: `${g}self_attention.dense.weight`, transform: "conv1d" },
      { hf: `${h}attn.c_proj.bias`, megatron: `${g}self_attention.dense.bias`, transform: "copy" },
      { hf: `${h}ln_2.weight`, megatron: `${g}post_attention_layernorm.weight`, transform: "copy" },
      { hf: `${h}ln_2.bias`, megatron: `${g}post_attention_layernorm.bias`, transform: "copy" },
      { hf: `${h}mlp.c_fc.weight`, megatron: `${g}mlp.dense_h_to_4h.weight`, transform: "conv1d" },
      { hf: `${h}mlp.c_fc.bias`, megatron: `${g}mlp.dense_h_to_4h.bias`, transform: "copy" },
      { hf: `${h}mlp.c_proj.weight`, megatron: `${g}mlp.dense_4h_to_h.weight`, transform: "conv1d" },
      { hf: `${h}mlp.c_proj.bias`, megatron: `${g}mlp.dense_4h_to_h.bias`, transform: "copy" },
    );
  }
  m.push(
    {
      hf: "transformer.ln_f.weight",
      megatron: "language_model.encoder.final_layernorm.weight",
      transform: "copy",
    },
    {
      hf: "transformer.ln_f.bias",
      megatron: "language_model.encoder.final_layernorm.bias",
      transform: "copy",
    },
  );
  return m;
}

/** BertForPreTraining <-> Megatron 2021 BERT with --apply-residual-connection-post-layernorm (see the
 *  header for the LayerNorm shift). query/key/value map to thirds of query_key_value. */
export function bertNameMap(s: GptShape): NameMapEntry[] {
  const e = "language_model.embedding.";
  const m: NameMapEntry[] = [
    {
      hf: "bert.embeddings.word_embeddings.weight",
      megatron: `${e}word_embeddings.weight`,
      transform: "vocab",
    },
    {
      hf: "bert.embeddings.position_embeddings.weight",
      megatron: `${e}position_embeddings.weight`,
      transform: "copy",
    },
    {
      hf: "bert.embeddings.token_type_embeddings.weight",
      megatron: `${e}tokentype_embeddings.weight`,
      transform: "copy",
    },
  ];
  const ln = (i: number) =>
    i < s.numLayers
      ? `language_model.encoder.layers.${i}.input_layernorm`
      : "language_model.encoder.final_layernorm";
  m.push(
    { hf: "bert.embeddings.LayerNorm.weight", megatron: `${ln(0)}.weight`, transform: "copy" },
    { hf: "bert.embeddings.LayerNorm.bias", megatron: `${ln(0)}.bias`, transform: "copy" },
  );
  for (let i = 0; i < s.numLayers; i++) {
    const h = `bert.encoder.layer.${i}.`, g = `language_model.encoder.layers.${i}.`;
    for (const [part, t] of [["query", "q_part"], ["key", "k_part"], ["value", "v_part"]] as const) {
      m.push(
        {
          hf: `${h}attention.self.${part}.weight`,
          megatron: `${g}self_attention.query_key_value.weight`,
          transform: t,
        },
        {
          hf: `${h}attention.self.${part}.bias`,
          megatron: `${g}self_attention.query_key_value.bias`,
          transform: t,
        },
      );
    }
    m.push(
      {
        hf: `${h}attention.output.dense.weight`,
        megatron: `${g}self_attention.dense.weight`,
        transform: "copy",
      },
      { hf: `${h}attention.output.dense.bias`, megatron: `${g}self_attention.dense.bias`, transform: "copy" },
      {
        hf: `${h}attention.output.LayerNorm.weight`,
        megatron: `${g}post_attention_layernorm.weight`,
        transform: "copy",
      },
      {
        hf: `${h}attention.output.LayerNorm.bias`,
        megatron: `${g}post_attention_layernorm.bias`,
        transform: "copy",
      },
      { hf: `${h}intermediate.dense.weight`, megatron: `${g}mlp.dense_h_to_4h.weight`, transform: "copy" },
      { hf: `${h}intermediate.dense.bias`, megatron: `${g}mlp.dense_h_to_4h.bias`, transform: "copy" },
      { hf: `${h}output.dense.weight`, megatron: `${g}mlp.dense_4h_to_h.weight`, transform: "copy" },
      { hf: `${h}output.dense.bias`, megatron: `${g}mlp.dense_4h_to_h.bias`, transform: "copy" },
      { hf: `${h}output.LayerNorm.weight`, megatron: `${ln(i + 1)}.weight`, transform: "copy" },
      { hf: `${h}output.LayerNorm.bias`, megatron: `${ln(i + 1)}.bias`, transform: "copy" },
    );
  }
  m.push(
    { hf: "bert.pooler.dense.weight", megatron: "language_model.pooler.dense.weight", transform: "copy" },
    { hf: "bert.pooler.dense.bias", megatron: "language_model.pooler.dense.bias", transform: "copy" },
    { hf: "cls.predictions.transform.dense.weight", megatron: "lm_head.dense.weight", transform: "copy" },
    { hf: "cls.predictions.transform.dense.bias", megatron: "lm_head.dense.bias", transform: "copy" },
    {
      hf: "cls.predictions.transform.LayerNorm.weight",
      megatron: "lm_head.layernorm.weight",
      transform: "copy",
    },
    { hf: "cls.predictions.transform.LayerNorm.bias", megatron: "lm_head.layernorm.bias", transform: "copy" },
    { hf: "cls.predictions.bias", megatron: "lm_head.bias", transform: "vocab" },
    { hf: "cls.seq_relationship.weight", megatron: "binary_head.weight", transform: "copy" },
    { hf: "cls.seq_relationship.bias", megatron: "binary_head.bias", transform: "copy" },
  );
  return m;
}

/** HF names that are derived or buffers, not weights: accepted and dropped on import (a tied head is
 *  checked equal to the embedding first). */
export const HF_TIED_OR_BUFFERS: readonly RegExp[] = [
  /^lm_head\.weight$/,
  /^cls\.predictions\.decoder\.(weight|bias)$/,
  /\.attn\.(bias|masked_bias)$/,
  /^bert\.embeddings\.position_ids$/,
];

export interface Tensor2 {
  shape: number[];
  data: Elems;
}

export interface ConvertOptions extends GptShape {
  /** Megatron side: padded vocabulary rows (paddedVocabSize of the HF vocab by default). */
  paddedVocab?: number;
  /** Megatron QKV layout to produce / read (checkpoint_version 3 by default). */
  qkvLayout?: QkvLayout;
}

function need(m: Map<string, Tensor2>, name: string, where: string): Tensor2 {
  const t = m.get(name);
  if (!t) throw new Error(`${where}: missing tensor ${name}`);
  return t;
}

/** HF state dict -> Megatron flattened names. Every HF tensor must be consumed (or be tied/buffer). */
export function hfToMegatron(
  map: readonly NameMapEntry[],
  hf: Map<string, Tensor2>,
  o: ConvertOptions,
  where = "hf",
): Map<string, Tensor2> {
  const out = new Map<string, Tensor2>();
  const used = new Set<string>();
  const h = o.hidden, np = o.heads, hn = h / np;
  const layout = o.qkvLayout ?? "v3";
  const parts = new Map<string, Partial<Record<"q_part" | "k_part" | "v_part", Tensor2>>>();
  for (const e of map) {
    const t = need(hf, e.hf, where);
    used.add(e.hf);
    const cols = t.shape.length === 2 ? t.shape[1] : 1;
    switch (e.transform) {
      case "copy":
        out.set(e.megatron, { shape: [...t.shape], data: t.data.slice() as Elems });
        break;
      case "conv1d":
        out.set(e.megatron, {
          shape: [t.shape[1], t.shape[0]],
          data: transpose2d(t.data, t.shape[0], t.shape[1]),
        });
        break;
      case "conv1d_qkv": {
        const lin = transpose2d(t.data, t.shape[0], t.shape[1]); // [3h, h]
        out.set(e.megatron, {
          shape: [t.shape[1], t.shape[0]],
          data: convertQkv(lin, "blocks", layout, np, hn, h),
        });
        break;
      }
      case "qkv_bias":
        out.set(e.megatron, { shape: [...t.shape], data: convertQkv(t.data, "blocks", layout, np, hn, 1) });
        break;
      case "vocab": {
        const rows = o.paddedVocab ?? paddedVocabSize(t.shape[0]);
        if (rows < t.shape[0]) {
          throw new Error(`${where}: ${e.hf}: padded vocab ${rows} < ${t.shape[0]} rows`);
        }
        out.set(e.megatron, { shape: [rows, ...t.shape.slice(1)], data: resizeRows(t.data, cols, rows) });
        break;
      }
      case "q_part":
      case "k_part":
      case "v_part": {
        const p = parts.get(e.megatron) ?? {};
        p[e.transform] = t;
        parts.set(e.megatron, p);
        if (p.q_part && p.k_part && p.v_part) {
          const n = p.q_part.data.length;
          const blocks = like(p.q_part.data, 3 * n);
          // deno-lint-ignore no-explicit-any
          const b = blocks as any;
          b.set(p.q_part.data, 0), b.set(p.k_part.data, n), b.set(p.v_part.data, 2 * n);
          const c = p.q_part.shape.length === 2 ? p.q_part.shape[1] : 1;
          const shape = p.q_part.shape.length === 2 ? [3 * p.q_part.shape[0], c] : [3 * p.q_part.shape[0]];
          out.set(e.megatron, { shape, data: convertQkv(blocks, "blocks", layout, np, hn, c) });
        }
        break;
      }
    }
  }
  for (const [name, t] of hf) {
    if (used.has(name)) continue;
    if (!HF_TIED_OR_BUFFERS.some((r) => r.test(name))) throw new Error(`${where}: unexpected tensor ${name}`);
    const tiedTo = name === "lm_head.weight"
      ? "transformer.wte.weight"
      : name === "cls.predictions.decoder.weight"
      ? "bert.embeddings.word_embeddings.weight"
      : null;
    if (tiedTo && hf.has(tiedTo)) {
      const a = hf.get(tiedTo)!.data, b = t.data;
      if (a.length !== b.length || a.some((x, i) => x !== b[i])) {
        throw new Error(`${where}: ${name} differs from ${tiedTo}; an untied LM head is not supported`);
      }
    }
  }
  return out;
}

/** Megatron flattened names -> HF state dict (vocab rows cut to `vocab`). */
export function megatronToHf(
  map: readonly NameMapEntry[],
  meg: Map<string, Tensor2>,
  o: ConvertOptions & { vocab: number },
  where = "megatron",
): Map<string, Tensor2> {
  const out = new Map<string, Tensor2>();
  const h = o.hidden, np = o.heads, hn = h / np;
  const layout = o.qkvLayout ?? "v3";
  for (const e of map) {
    const t = need(meg, e.megatron, where);
    const cols = t.shape.length === 2 ? t.shape[1] : 1;
    switch (e.transform) {
      case "copy":
        out.set(e.hf, { shape: [...t.shape], data: t.data.slice() as Elems });
        break;
      case "conv1d":
        out.set(e.hf, { shape: [t.shape[1], t.shape[0]], data: transpose2d(t.data, t.shape[0], t.shape[1]) });
        break;
      case "conv1d_qkv": {
        const blocks = convertQkv(t.data, layout, "blocks", np, hn, h);
        out.set(e.hf, { shape: [t.shape[1], t.shape[0]], data: transpose2d(blocks, t.shape[0], t.shape[1]) });
        break;
      }
      case "qkv_bias":
        out.set(e.hf, { shape: [...t.shape], data: convertQkv(t.data, layout, "blocks", np, hn, 1) });
        break;
      case "vocab":
        if (t.shape[0] < o.vocab) {
          throw new Error(`${where}: ${e.megatron}: ${t.shape[0]} rows < vocab ${o.vocab}`);
        }
        out.set(e.hf, { shape: [o.vocab, ...t.shape.slice(1)], data: resizeRows(t.data, cols, o.vocab) });
        break;
      case "q_part":
      case "k_part":
      case "v_part": {
        const blocks = convertQkv(t.data, layout, "blocks", np, hn, cols);
        const n = blocks.length / 3, k = { q_part: 0, k_part: 1, v_part: 2 }[e.transform];
        const shape = t.shape.length === 2 ? [t.shape[0] / 3, cols] : [t.shape[0] / 3];
        out.set(e.hf, { shape, data: blocks.slice(k * n, (k + 1) * n) as Elems });
        break;
      }
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// folders (config.json + model.safetensors)

export interface HfFolder {
  config: Record<string, unknown>;
  tensors: NamedTensor[];
}

/** Read a save_pretrained folder: config.json and model.safetensors (one file; shards are refused). */
export function readHfFolder(dir: string): HfFolder {
  const cfgPath = `${dir}/config.json`;
  let text: string;
  try {
    text = Deno.readTextFileSync(cfgPath);
  } catch (e) {
    throw new Error(`${cfgPath}: cannot read (${(e as Error).message})`);
  }
  let config: unknown;
  try {
    config = JSON.parse(text);
  } catch (e) {
    throw new Error(`${cfgPath}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof config !== "object" || config === null || Array.isArray(config)) {
    throw new Error(`${cfgPath}: expected a JSON object`);
  }
  const st = `${dir}/model.safetensors`;
  try {
    Deno.statSync(st);
  } catch {
    try {
      Deno.statSync(`${dir}/model.safetensors.index.json`);
      throw new Error(`${dir}: sharded safetensors (model.safetensors.index.json) are not supported`);
    } catch (e) {
      if ((e as Error).message.includes("sharded")) throw e;
    }
    throw new Error(`${st}: missing (expected a save_pretrained folder)`);
  }
  return { config: config as Record<string, unknown>, tensors: readSafetensors(st).tensors };
}

/** Write config.json and model.safetensors into `dir` (created); each file via temp + rename. */
export function writeHfFolder(dir: string, folder: HfFolder): void {
  Deno.mkdirSync(dir, { recursive: true });
  writeSafetensors(`${dir}/model.safetensors`, folder.tensors, { format: "pt" });
  const tmp = `${dir}/config.json.tmp-${Deno.pid}`;
  Deno.writeTextFileSync(tmp, JSON.stringify(folder.config, null, 2) + "\n");
  Deno.renameSync(tmp, `${dir}/config.json`);
}

/** config.json field k as a positive integer, or one line naming the file and the key. */
function positiveIntField(c: Record<string, unknown>, k: string, where: string): number {
  const v = c[k];
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    throw new Error(`${where}: ${k}: expected a positive integer, found ${JSON.stringify(v)}`);
  }
  return v;
}

/** The GPT shape from a GPT-2 config.json (n_layer, n_embd, n_head; n_inner must be 4h or null). */
export function gpt2ShapeFromConfig(c: Record<string, unknown>, where = "config.json"): GptShape & {
  vocab: number;
  positions: number;
} {
  const int = (k: string) => positiveIntField(c, k, where);
  const s = {
    numLayers: int("n_layer"),
    hidden: int("n_embd"),
    heads: int("n_head"),
    vocab: int("vocab_size"),
  };
  if (s.hidden % s.heads !== 0) {
    throw new Error(`${where}: n_embd ${s.hidden} is not divisible by n_head ${s.heads}`);
  }
  if (c.n_inner !== undefined && c.n_inner !== null && c.n_inner !== 4 * s.hidden) {
    throw new Error(`${where}: n_inner ${c.n_inner}: only 4 * n_embd is supported`);
  }
  return { ...s, positions: int("n_positions") };
}

/** The BERT shape from a BertForPreTraining config.json. Note HF's layer_norm_eps (1e-12 by default)
 *  differs from Megatron's 1e-5: the model must use the config's value for equal logits. */
export function bertShapeFromConfig(c: Record<string, unknown>, where = "config.json"): GptShape & {
  vocab: number;
  positions: number;
  typeVocab: number;
  ffn: number;
  layerNormEps: number;
} {
  const int = (k: string) => positiveIntField(c, k, where);
  const s = {
    numLayers: int("num_hidden_layers"),
    hidden: int("hidden_size"),
    heads: int("num_attention_heads"),
    vocab: int("vocab_size"),
    positions: int("max_position_embeddings"),
    typeVocab: int("type_vocab_size"),
    ffn: int("intermediate_size"),
    layerNormEps: typeof c.layer_norm_eps === "number" ? c.layer_norm_eps : 1e-12,
  };
  if (s.hidden % s.heads !== 0) {
    throw new Error(`${where}: hidden_size ${s.hidden} is not divisible by num_attention_heads ${s.heads}`);
  }
  if (c.hidden_act !== undefined && c.hidden_act !== "gelu") {
    throw new Error(`${where}: hidden_act ${JSON.stringify(c.hidden_act)}: only "gelu" (erf) is supported`);
  }
  return s;
}

/** config.json for a GPT2LMHeadModel export of a Megatron GPT (tanh GeLU = gelu_new, LayerNorm eps 1e-5,
 *  tied head). `vocab` is the exported vocabulary (the real one; padded rows are cut). */
export function gpt2Config(s: GptShape & { vocab: number; positions: number }): Record<string, unknown> {
  return {
    architectures: ["GPT2LMHeadModel"],
    model_type: "gpt2",
    vocab_size: s.vocab,
    n_positions: s.positions,
    n_embd: s.hidden,
    n_layer: s.numLayers,
    n_head: s.heads,
    n_inner: null,
    activation_function: "gelu_new",
    layer_norm_epsilon: 1e-5,
    resid_pdrop: 0.1,
    embd_pdrop: 0.1,
    attn_pdrop: 0.1,
    initializer_range: 0.02,
    scale_attn_weights: true,
    tie_word_embeddings: true,
    bos_token_id: 50256,
    eos_token_id: 50256,
  };
}

/** The tensors of a Megatron -> HF conversion as safetensors entries (names sorted, as transformers
 *  writes them), keeping each array's element type. */
export function toNamedTensors(m: Map<string, Tensor2>, dtype: NamedTensor["dtype"] = "f32"): NamedTensor[] {
  return [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([name, t]) => ({
    name,
    dtype,
    shape: t.shape,
    data: t.data as NamedTensor["data"],
  }));
}

/** config.json for a BertForPreTraining export (erf GeLU; `layerNormEps` is the model's own eps). */
export function bertConfig(
  s: GptShape & { vocab: number; positions: number; typeVocab: number; ffn: number; layerNormEps: number },
): Record<string, unknown> {
  return {
    architectures: ["BertForPreTraining"],
    model_type: "bert",
    vocab_size: s.vocab,
    hidden_size: s.hidden,
    num_hidden_layers: s.numLayers,
    num_attention_heads: s.heads,
    intermediate_size: s.ffn,
    hidden_act: "gelu",
    hidden_dropout_prob: 0.1,
    attention_probs_dropout_prob: 0.1,
    max_position_embeddings: s.positions,
    type_vocab_size: s.typeVocab,
    initializer_range: 0.02,
    layer_norm_eps: s.layerNormEps,
    pad_token_id: 0,
    tie_word_embeddings: true,
  };
}
