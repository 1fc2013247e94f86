// A GPT's, BERT's or T5's weights as one full (TP = PP = 1) tensor per Megatron 2021 name, read from and
// written to the three checkpoint formats (Hugging Face GPT-2 / BERT folders, Megatron-LM .pt folders,
// this project's safetensors folders) in any (TP, PP) layout (T5: TP only, as Megatron 2021's).
// Which model a checkpoint holds is told by its names (lm_head.dense / binary_head: BERT;
// language_model.decoder: T5). Sharding goes through the weight-name table
// (src/models/weight_names.ts), so convert, merge-checkpoints, generate and evaluate share one reader.
// Tensors keep their element type and bits (f16/bf16 as raw patterns), so conversions are exact.

import { mergeShards, shardOf, weightRule } from "../models/weight_names.ts";
import type { DType, HostArray } from "../tensor/dtype.ts";
import {
  loadCheckpoint,
  type NamedTensor,
  type RankState,
  readTracker,
  saveCheckpoint,
} from "../training/checkpoint.ts";
import {
  bertConfig,
  bertNameMap,
  bertShapeFromConfig,
  gpt2Config,
  gpt2NameMap,
  gpt2ShapeFromConfig,
  hfToMegatron,
  megatronToHf,
  paddedVocabSize,
  readHfFolder,
  type Tensor2,
  toNamedTensors,
  writeHfFolder,
} from "../interop/hf.ts";
import {
  megatronCheckpointFile,
  readMegatronCheckpoint,
  readMegatronTracker,
  writeMegatronCheckpoint,
  writeMegatronTracker,
} from "../interop/megatron_checkpoint.ts";
import type { PyValue, TorchDtypeName } from "../interop/pickle.ts";
import { type TorchArray, TorchTensor } from "../interop/torch_checkpoint.ts";
import { BertWordPieceTokenizer } from "../tokenizer/bert.ts";

export type CheckpointFormat = "hf" | "megatron-pt" | "megatron-deno";
export type ModelKind = "gpt" | "bert" | "t5";
export const CHECKPOINT_FORMATS: readonly CheckpointFormat[] = ["hf", "megatron-pt", "megatron-deno"];

/** What a GPT checkpoint says about its architecture (TP = 1 values). */
export interface GptArch {
  numLayers: number;
  hiddenSize: number;
  numAttentionHeads: number;
  maxPositionEmbeddings: number;
  seqLength: number;
  /** The real vocabulary (tokenizer size); rows past it are padding. */
  vocabSize: number;
  makeVocabSizeDivisibleBy: number;
  layernormEpsilon: number;
  /** "GPT2BPETokenizer", or "NullTokenizer" (ids as text) for small vocabularies; BERT / T5:
   *  "BertWordPieceLowerCase" or "BertWordPieceCase". */
  tokenizerType: string;
  /** The model the weights belong to; absent means "gpt". */
  model?: ModelKind;
  /** MLP inner size (default 4 * hiddenSize). */
  ffnHiddenSize?: number;
  /** Megatron's --apply-residual-connection-post-layernorm (default false; Hugging Face BERT: true). */
  applyResidualConnectionPostLayernorm?: boolean;
  /** false: --no-bias-gelu-fusion, the MLP's erf GeLU (Hugging Face BERT); default true (tanh GeLU). */
  biasGeluFusion?: boolean;
}

/** The model of a set of Megatron names: BERT has lm_head.dense / binary_head, T5 a decoder. */
export function modelOfNames(names: Iterable<string>): ModelKind {
  let kind: ModelKind = "gpt";
  for (const n of names) {
    const m = n.replace(/^model\d+\./, "");
    if (m.startsWith("language_model.decoder.")) return "t5";
    if (m.startsWith("lm_head.dense.") || m.startsWith("binary_head.")) kind = "bert";
  }
  return kind;
}

const modelOf = (a: GptArch): ModelKind => a.model ?? "gpt";

export interface FullTensor {
  dtype: DType;
  shape: number[];
  data: HostArray;
}

/** One full tensor per global Megatron name (no "model<v>." prefix, no tied head copy), in state-dict
 *  order; the word embedding has paddedVocabSize(vocab, divisibleBy, 1) rows. */
export interface FullGpt {
  arch: GptArch;
  tensors: Map<string, FullTensor>;
  /** The source's iteration ("release" for Hugging Face). */
  iteration: number | "release";
  /** megatron-deno sources: the run's arguments and consumed samples, kept when resharding so the
   *  trainer can resume from the result. */
  run?: { args: Record<string, unknown>; consumedTrainSamples: number; consumedValidSamples: number };
}

const WORD = "language_model.embedding.word_embeddings.weight";
const HEAD_COPY = "word_embeddings_for_head.weight";
const GPT2_VOCAB = 50257;

function int(v: unknown, what: string, where: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    throw new Error(`${where}: ${what}: expected a positive integer, found ${JSON.stringify(v)}`);
  }
  return v;
}

/** The real vocabulary of a Megatron run from its tokenizer arguments. A WordPiece vocabulary lives in
 *  its vocab file: without it (and without a size convert recorded, or --vocab-size) BERT / T5 keep
 *  every padded row. */
function vocabOfArgs(
  tokenizer: unknown,
  nullVocab: unknown,
  padded: number,
  where: string,
  model: ModelKind = "gpt",
  realVocab?: unknown,
  wp: { vocabFile?: unknown; vocabExtraIds?: unknown } = {},
): number {
  if (tokenizer === "GPT2BPETokenizer") return GPT2_VOCAB;
  if (tokenizer === "NullTokenizer") return int(nullVocab, "vocab size (NullTokenizer)", where) + 1;
  if (tokenizer === undefined || tokenizer === null) return padded;
  if (model !== "gpt" && typeof tokenizer === "string" && tokenizer.startsWith("BertWordPiece")) {
    // convert records the real vocabulary of a BERT it imported (realVocabSize / real_vocab_size);
    // a trained one names its vocab file, whose tokenizer tells it (as the trainer computed it).
    if (
      typeof realVocab === "number" && Number.isInteger(realVocab) && realVocab > 0 && realVocab <= padded
    ) {
      return realVocab;
    }
    const n = wordPieceVocab(tokenizer, wp);
    return n !== null && n <= padded ? n : padded;
  }
  throw new Error(`${where}: tokenizer ${JSON.stringify(tokenizer)} is not a GPT tokenizer`);
}

/** The vocabulary size of a WordPiece tokenizer built from the run's vocab file (with [BOS]/[EOS] and
 *  --vocab-extra-ids), or null when the file cannot be read. */
function wordPieceVocab(
  tokenizer: string,
  wp: { vocabFile?: unknown; vocabExtraIds?: unknown },
): number | null {
  if (typeof wp.vocabFile !== "string") return null;
  let text: string;
  try {
    text = Deno.readTextFileSync(wp.vocabFile);
  } catch {
    return null;
  }
  const extra = typeof wp.vocabExtraIds === "number" ? wp.vocabExtraIds : 0;
  return new BertWordPieceTokenizer(text, tokenizer === "BertWordPieceLowerCase", {
    vocabFile: wp.vocabFile,
    vocabExtraIds: extra,
  }).vocabSize;
}

// ------------------------------------------------------------------------------------------------
// layouts: global name <-> (pp stage, virtual chunk, local name)

/** Global layer numbers of pipeline stage `p` (chunk `v` of `vp`), Megatron's assignment. */
export function stageLayers(numLayers: number, pp: number, p: number, vp = 1, v = 0): number[] {
  if (numLayers % (pp * vp) !== 0) {
    throw new Error(`--num-layers ${numLayers} is not divisible by pipeline size ${pp} x ${vp} chunks`);
  }
  const per = numLayers / (pp * vp);
  const first = (v * pp + p) * per;
  return Array.from({ length: per }, (_, i) => first + i);
}

const LAYER = /^(language_model\.encoder\.layers\.)(\d+)(\..*)$/;

/** Merge the shards of every rank (indexed [tp][pp][chunk]: local name -> tensor) into full tensors. */
function mergeLayout(
  ranks: Map<string, FullTensor>[][][],
  numLayers: number,
  where: string,
): Map<string, FullTensor> {
  const pp = ranks[0].length, vp = ranks[0][0].length;
  const out = new Map<string, FullTensor>();
  for (let p = 0; p < pp; p++) {
    for (let v = 0; v < vp; v++) {
      const layers = stageLayers(numLayers, pp, p, vp, v);
      for (const [name, t0] of ranks[0][p][v]) {
        if (name === HEAD_COPY) continue; // the tied copy equals the first stage's embedding
        const m = LAYER.exec(name);
        const global = m ? `${m[1]}${layers[Number(m[2])]}${m[3]}` : name;
        if (m && layers[Number(m[2])] === undefined) {
          throw new Error(`${where}: ${name}: stage ${p} has only ${layers.length} layers`);
        }
        const shards = ranks.map((r, k) => {
          const t = r[p][v].get(name);
          if (!t) throw new Error(`${where}: tp rank ${k} of stage ${p} lacks ${name}`);
          return t.data;
        });
        const full = mergeShards(shards as ArrayLike<number>[], t0.shape, weightRule(global).split);
        out.set(global, { dtype: t0.dtype, shape: full.shape, data: castLike(t0.dtype, full.data) });
      }
    }
  }
  if (!out.has(WORD)) throw new Error(`${where}: no ${WORD} (not a GPT, BERT or T5 checkpoint?)`);
  return out;
}

function castLike(dtype: DType, a: ArrayLike<number>): HostArray {
  switch (dtype) {
    case "f32":
      return Float32Array.from(a);
    case "f64":
      return Float64Array.from(a);
    case "f16":
    case "bf16":
      return Uint16Array.from(a);
    case "i32":
      return Int32Array.from(a);
    case "u8":
      return Uint8Array.from(a);
    default:
      throw new Error(`weights: dtype ${dtype} is not a weight type`);
  }
}

/** Split full tensors into rank [tp][pp] local-name maps (vocab rows padded for `tp`). */
export function shardLayout(
  full: FullGpt,
  tp: number,
  pp: number,
): { paddedVocab: number; ranks: Map<string, FullTensor>[][] } {
  const { arch } = full;
  const model = modelOf(arch);
  if (model === "t5" && pp !== 1) {
    throw new Error(
      `--target-pipeline-parallel-size ${pp}: T5 has no pipeline parallelism (as Megatron 2021); use TP only`,
    );
  }
  if (arch.numAttentionHeads % tp !== 0) {
    throw new Error(`--target-tensor-parallel-size ${tp}: ${arch.numAttentionHeads} heads are not divisible`);
  }
  const paddedVocab = paddedVocabSize(arch.vocabSize, arch.makeVocabSizeDivisibleBy, tp);
  const word = full.tensors.get(WORD)!;
  const h = word.shape[1];
  const padded: FullTensor = {
    dtype: word.dtype,
    shape: [paddedVocab, h],
    // Padding rows the source has are kept (the trainer's are initialized and enter the softmax), so a
    // reshard to the same padded size changes nothing; new rows are zero.
    data: resize(word.data, paddedVocab * h, word.shape[0] * h),
  };
  // BERT's and T5's LM-head bias has a row per padded vocabulary entry too.
  const bias = full.tensors.get("lm_head.bias");
  const paddedBias: FullTensor | undefined = bias && {
    dtype: bias.dtype,
    shape: [paddedVocab],
    data: resize(bias.data, paddedVocab, bias.shape[0]),
  };
  const vocabRows = (name: string, src: FullTensor) => name === "lm_head.bias" ? paddedBias! : src;
  const ranks: Map<string, FullTensor>[][] = [];
  for (let t = 0; t < tp; t++) {
    ranks.push([]);
    for (let p = 0; p < pp; p++) {
      const layers = stageLayers(arch.numLayers, pp, p);
      const local = new Map<number, number>(layers.map((g, i) => [g, i]));
      const m = new Map<string, FullTensor>();
      const put = (name: string, global: string, src: FullTensor) => {
        const s = shardOf(src.data as ArrayLike<number>, src.shape, weightRule(global).split, t, tp);
        m.set(name, { dtype: src.dtype, shape: s.shape, data: castLike(src.dtype, s.data) });
      };
      for (const [name, src] of full.tensors) {
        const lm = LAYER.exec(name);
        if (lm) {
          const l = local.get(Number(lm[2]));
          if (l !== undefined) put(`${lm[1]}${l}${lm[3]}`, name, src);
        } else if (name.startsWith("language_model.embedding.")) {
          if (p === 0) put(name, name, name === WORD ? padded : src);
        } else if (
          name.startsWith("language_model.encoder.final_layernorm.") ||
          (model === "bert" && /^(language_model\.pooler|lm_head|binary_head)\./.test(name))
        ) {
          if (p === pp - 1) put(name, name, vocabRows(name, src)); // the last stage's post-process modules
        } else if (model === "t5" && /^(language_model\.decoder\.|lm_head\.bias$)/.test(name)) {
          put(name, name, vocabRows(name, src)); // T5 is one stage
        } else {
          throw new Error(`weights: ${name} is not a ${model.toUpperCase()} parameter`);
        }
      }
      if (pp > 1 && p === pp - 1) put(HEAD_COPY, HEAD_COPY, padded);
      ranks[t].push(m);
    }
  }
  return { paddedVocab, ranks };
}

/** Keep the first `keep` elements, zero the rest, length `n` (padding rows are zero, as Megatron's). */
function resize(a: HostArray, n: number, keep: number): HostArray {
  // deno-lint-ignore no-explicit-any
  const out = new (a.constructor as any)(n) as HostArray;
  // deno-lint-ignore no-explicit-any
  (out as any).set((a as any).subarray(0, Math.min(keep, n, a.length)));
  return out;
}

// ------------------------------------------------------------------------------------------------
// readers

function isDir(p: string): boolean {
  try {
    return Deno.statSync(p).isDirectory;
  } catch {
    return false;
  }
}

function readHf(dir: string): FullGpt {
  const folder = readHfFolder(dir);
  const where = `${dir}/config.json`;
  const type = folder.config.model_type;
  if (type === "bert") return readHfBert(dir, folder);
  if (type !== "gpt2") {
    throw new Error(`${where}: model_type ${JSON.stringify(type)}: expected "gpt2" or "bert"`);
  }
  const act = folder.config.activation_function ?? "gelu_new";
  if (act !== "gelu_new" && act !== "gelu_pytorch_tanh") {
    throw new Error(
      `${where}: activation_function ${JSON.stringify(act)}: only the tanh GeLU (gelu_new) is supported`,
    );
  }
  const s = gpt2ShapeFromConfig(folder.config, where);
  const eps = typeof folder.config.layer_norm_epsilon === "number" ? folder.config.layer_norm_epsilon : 1e-5;
  // The hub's own gpt2 files hold GPT2Model's names ("h.0.attn..."); save_pretrained of
  // GPT2LMHeadModel prefixes them with "transformer.".
  const bare = !folder.tensors.some((t) => t.name.startsWith("transformer."));
  const named = folder.tensors.map((t) => ({ ...t, name: bare ? `transformer.${t.name}` : t.name }));
  const hf = new Map<string, Tensor2>(named.map((t) => [t.name, { shape: t.shape, data: t.data }]));
  const dtypes = new Map(named.map((t) => [t.name, t.dtype]));
  const map = gpt2NameMap(s);
  const meg = hfToMegatron(
    map,
    hf,
    { ...s, paddedVocab: paddedVocabSize(s.vocab, 128, 1) },
    `${dir}/model.safetensors`,
  );
  const tensors = new Map<string, FullTensor>();
  for (const e of map) {
    const t = meg.get(e.megatron);
    if (t) tensors.set(e.megatron, { dtype: dtypes.get(e.hf)!, shape: t.shape, data: t.data as HostArray });
  }
  return {
    arch: {
      numLayers: s.numLayers,
      hiddenSize: s.hidden,
      numAttentionHeads: s.heads,
      maxPositionEmbeddings: s.positions,
      seqLength: s.positions,
      vocabSize: s.vocab,
      makeVocabSizeDivisibleBy: 128,
      layernormEpsilon: eps,
      tokenizerType: s.vocab === GPT2_VOCAB ? "GPT2BPETokenizer" : "NullTokenizer",
    },
    tensors,
    iteration: "release",
  };
}

/** A BertForPreTraining folder: post-LN, erf GeLU, the config's LayerNorm eps (1e-12), two token types.
 *  Its LayerNorms move one slot forward (src/interop/hf.ts), so it runs as a Megatron BERT with
 *  --apply-residual-connection-post-layernorm and --no-bias-gelu-fusion. */
function readHfBert(dir: string, folder: ReturnType<typeof readHfFolder>): FullGpt {
  const where = `${dir}/config.json`;
  const c = folder.config;
  const s = bertShapeFromConfig(c, where);
  if (c.position_embedding_type !== undefined && c.position_embedding_type !== "absolute") {
    throw new Error(
      `${where}: position_embedding_type ${
        JSON.stringify(c.position_embedding_type)
      }: only "absolute" is supported`,
    );
  }
  if (s.typeVocab !== 2) {
    throw new Error(`${where}: type_vocab_size ${s.typeVocab}: Megatron's BERT has 2 token types`);
  }
  // BertModel's files (the hub's bare names) lack the "bert." prefix and the pre-training heads.
  const bare = !folder.tensors.some((t) => t.name.startsWith("bert."));
  const named = folder.tensors.map((t) => ({
    ...t,
    name: bare && !t.name.startsWith("cls.") ? `bert.${t.name}` : t.name,
  }));
  if (!named.some((t) => t.name.startsWith("cls.predictions."))) {
    throw new Error(
      `${dir}/model.safetensors: no cls.predictions.* tensors; expected a BertForPreTraining (with its MLM and NSP heads)`,
    );
  }
  const hf = new Map<string, Tensor2>(named.map((t) => [t.name, { shape: t.shape, data: t.data }]));
  const dtypes = new Map(named.map((t) => [t.name, t.dtype]));
  const map = bertNameMap(s);
  const meg = hfToMegatron(
    map,
    hf,
    { ...s, paddedVocab: paddedVocabSize(s.vocab, 128, 1) },
    `${dir}/model.safetensors`,
  );
  const tensors = new Map<string, FullTensor>();
  for (const e of map) {
    const t = meg.get(e.megatron);
    if (t && !tensors.has(e.megatron)) {
      tensors.set(e.megatron, { dtype: dtypes.get(e.hf)!, shape: t.shape, data: t.data as HostArray });
    }
  }
  return {
    arch: {
      model: "bert",
      numLayers: s.numLayers,
      hiddenSize: s.hidden,
      numAttentionHeads: s.heads,
      maxPositionEmbeddings: s.positions,
      seqLength: s.positions,
      vocabSize: s.vocab,
      makeVocabSizeDivisibleBy: 128,
      layernormEpsilon: s.layerNormEps,
      tokenizerType: s.vocab === 28996 ? "BertWordPieceCase" : "BertWordPieceLowerCase",
      ffnHiddenSize: s.ffn,
      applyResidualConnectionPostLayernorm: true,
      biasGeluFusion: false,
    },
    tensors: orderTensors(tensors),
    iteration: "release",
  };
}

/** A transformer layer's parameters in Megatron's order, by the short names the runners use. */
export const LAYER_PARAMS = {
  ln1g: "input_layernorm.weight",
  ln1b: "input_layernorm.bias",
  qkvW: "self_attention.query_key_value.weight",
  qkvB: "self_attention.query_key_value.bias",
  denseW: "self_attention.dense.weight",
  denseB: "self_attention.dense.bias",
  ln2g: "post_attention_layernorm.weight",
  ln2b: "post_attention_layernorm.bias",
  h4hW: "mlp.dense_h_to_4h.weight",
  h4hB: "mlp.dense_h_to_4h.bias",
  fhW: "mlp.dense_4h_to_h.weight",
  fhB: "mlp.dense_4h_to_h.bias",
} as const;

/** Layer `l` of a GPT's encoder, each parameter looked up by its full name with `get`. */
export function layerParams<T>(
  l: number,
  get: (name: string) => T,
): { -readonly [K in keyof typeof LAYER_PARAMS]: T } {
  const out = {} as { -readonly [K in keyof typeof LAYER_PARAMS]: T };
  for (const [k, suffix] of Object.entries(LAYER_PARAMS)) {
    out[k as keyof typeof LAYER_PARAMS] = get(`language_model.encoder.layers.${l}.${suffix}`);
  }
  return out;
}

/** Megatron's state-dict order (embedding, encoder layers, final LayerNorm, pooler, heads), so files
 *  written from any source list tensors alike. */
function orderTensors(m: Map<string, FullTensor>): Map<string, FullTensor> {
  const rank = (n: string) => {
    const l = /^language_model\.(encoder|decoder)\.layers\.(\d+)\.(.*)$/.exec(n);
    if (n.startsWith("language_model.embedding.")) {
      return [0, ["word", "position", "tokentype"].findIndex((k) => n.includes(`.${k}_`)), 0, ""] as const;
    }
    if (l) {
      const sub = (Object.values(LAYER_PARAMS) as string[]).indexOf(l[3]);
      return [l[1] === "encoder" ? 1 : 3, Number(l[2]), sub, l[3]] as const;
    }
    if (n.startsWith("language_model.encoder.final_layernorm.")) {
      return [2, n.endsWith("weight") ? 0 : 1, 0, ""] as const;
    }
    const rest = [
      "language_model.pooler.dense.weight",
      "language_model.pooler.dense.bias",
      "lm_head.bias",
      "lm_head.dense.weight",
      "lm_head.dense.bias",
      "lm_head.layernorm.weight",
      "lm_head.layernorm.bias",
      "binary_head.weight",
      "binary_head.bias",
    ].indexOf(n);
    return [5, rest, 0, n] as const;
  };
  const cmp = (a: string, b: string) => {
    const x = rank(a), y = rank(b);
    for (let i = 0; i < 3; i++) if (x[i] !== y[i]) return (x[i] as number) - (y[i] as number);
    return x[3] < y[3] ? -1 : x[3] > y[3] ? 1 : 0;
  };
  return new Map([...m].sort(([a], [b]) => cmp(a, b)));
}

const FROM_TORCH: Partial<Record<TorchDtypeName, DType>> = {
  float32: "f32",
  float64: "f64",
  float16: "f16",
  bfloat16: "bf16",
};
const TO_TORCH: Partial<Record<DType, TorchDtypeName>> = {
  f32: "float32",
  f64: "float64",
  f16: "float16",
  bf16: "bfloat16",
};

function readMegatronPt(path: string, vocabOverride?: number): FullGpt {
  const single = !isDir(path);
  const iteration = single ? 0 : readMegatronTracker(path);
  const first = single ? path : findPt(path, iteration);
  const ck0 = readMegatronCheckpoint(first);
  const a = ck0.args ?? {};
  const where = first;
  // Checkpoints before 2020 call TP model_parallel_size.
  const tp = single ? 1 : (a.tensor_model_parallel_size ?? a.model_parallel_size ?? 1) as number;
  const pp = single ? 1 : (a.pipeline_model_parallel_size as number) ?? 1;
  const numLayers = int(a.num_layers, "args.num_layers", where);
  const ranks: Map<string, FullTensor>[][][] = [];
  for (let t = 0; t < tp; t++) {
    ranks.push([]);
    for (let p = 0; p < pp; p++) {
      const file = single ? path : megatronCheckpointFile(path, iteration, t, p, pp);
      const ck = t === 0 && p === 0 ? ck0 : readMegatronCheckpoint(file);
      ranks[t].push(ck.chunks.map((c) => {
        const m = new Map<string, FullTensor>();
        for (const [name, x] of c) {
          const dtype = FROM_TORCH[x.dtype];
          if (!dtype) throw new Error(`${file}: ${name}: dtype ${x.dtype} is not a weight type`);
          m.set(name, { dtype, shape: x.shape, data: x.data as HostArray });
        }
        return m;
      }));
    }
  }
  const tensors = mergeLayout(ranks, numLayers, path);
  const padded = tensors.get(WORD)!.shape[0];
  const model = modelOfNames(tensors.keys());
  // Older args have no tokenizer_type; Megatron's only GPT vocabulary then was GPT-2's (and BERT's
  // was WordPiece, lower case).
  const tokenizer = a.tokenizer_type ??
    (model !== "gpt" ? "BertWordPieceLowerCase" : padded >= GPT2_VOCAB ? "GPT2BPETokenizer" : undefined);
  const vocab = vocabOverride ??
    vocabOfArgs(tokenizer, a.vocab_size, padded, where, model, a.real_vocab_size, {
      vocabFile: a.vocab_file,
      vocabExtraIds: a.vocab_extra_ids,
    });
  // --no-bias-gelu-fusion stores bias_gelu_fusion = False; then --openai-gelu would pick an unfused
  // tanh GeLU, which the MLP does not have.
  const fusion = a.bias_gelu_fusion !== false;
  if (!fusion && (a.openai_gelu === true)) {
    throw new Error(
      `${where}: args: openai_gelu without bias_gelu_fusion (unfused tanh GeLU) is not supported`,
    );
  }
  return {
    arch: {
      model,
      ...(typeof a.ffn_hidden_size === "number" ? { ffnHiddenSize: a.ffn_hidden_size } : {}),
      applyResidualConnectionPostLayernorm: a.apply_residual_connection_post_layernorm === true,
      biasGeluFusion: fusion,
      numLayers,
      hiddenSize: int(a.hidden_size, "args.hidden_size", where),
      numAttentionHeads: int(a.num_attention_heads, "args.num_attention_heads", where),
      maxPositionEmbeddings: int(a.max_position_embeddings, "args.max_position_embeddings", where),
      seqLength: typeof a.seq_length === "number" ? a.seq_length : (a.max_position_embeddings as number),
      vocabSize: vocab,
      makeVocabSizeDivisibleBy: typeof a.make_vocab_size_divisible_by === "number"
        ? a.make_vocab_size_divisible_by
        : 128,
      layernormEpsilon: typeof a.layernorm_epsilon === "number" ? a.layernorm_epsilon : 1e-5,
      tokenizerType: typeof tokenizer === "string" ? tokenizer : "NullTokenizer",
    },
    tensors,
    // A release folder stays one (its files say iteration 0).
    iteration: iteration === "release" ? "release" : ck0.iteration ?? iteration,
  };
}

function findPt(root: string, iteration: number | "release"): string {
  const one = megatronCheckpointFile(root, iteration, 0, 0, 1);
  try {
    Deno.statSync(one);
    return one;
  } catch {
    return megatronCheckpointFile(root, iteration, 0, 0, 2);
  }
}

function readDeno(dir: string, vocabOverride?: number): FullGpt {
  const tracker = readTracker(dir);
  if (tracker === null) {
    throw new Error(`${dir}/latest_checkpointed_iteration.txt: not found; not a megatron-deno checkpoint`);
  }
  const iteration = tracker.release ? "release" as const : tracker.iteration;
  const r0 = loadCheckpoint(dir, { tp: 0, pp: 0 }, { iteration, loadOptim: false });
  const { tpSize, ppSize } = r0.sizes;
  const a = r0.meta.args;
  const where = `${r0.dir}/meta.json`;
  const vp = typeof a.virtualPipelineModelParallelSize === "number" ? a.virtualPipelineModelParallelSize : 1;
  const ranks: Map<string, FullTensor>[][][] = [];
  for (let t = 0; t < tpSize; t++) {
    ranks.push([]);
    for (let p = 0; p < ppSize; p++) {
      const r = t === 0 && p === 0
        ? r0
        : loadCheckpoint(dir, { tp: t, pp: p }, { iteration, loadOptim: false, ppSize });
      const chunks = Array.from({ length: vp }, () => new Map<string, FullTensor>());
      for (const x of r.model) {
        const m = /^model(\d+)\.(.*)$/.exec(x.name);
        chunks[m && vp > 1 ? Number(m[1]) : 0].set(m && vp > 1 ? m[2] : x.name, x);
      }
      ranks[t].push(chunks);
    }
  }
  const numLayers = int(a.numLayers, "args.numLayers", where);
  const tensors = mergeLayout(ranks, numLayers, dir);
  const padded = tensors.get(WORD)!.shape[0];
  const model = modelOfNames(tensors.keys());
  return {
    arch: {
      model,
      ...(typeof a.ffnHiddenSize === "number" ? { ffnHiddenSize: a.ffnHiddenSize } : {}),
      applyResidualConnectionPostLayernorm: a.applyResidualConnectionPostLayernorm === true,
      biasGeluFusion: a.noBiasGeluFusion !== true,
      numLayers,
      hiddenSize: int(a.hiddenSize, "args.hiddenSize", where),
      numAttentionHeads: int(a.numAttentionHeads, "args.numAttentionHeads", where),
      maxPositionEmbeddings: int(a.maxPositionEmbeddings, "args.maxPositionEmbeddings", where),
      seqLength: int(a.seqLength ?? a.maxPositionEmbeddings, "args.seqLength", where),
      vocabSize: vocabOverride ??
        vocabOfArgs(a.tokenizerType, a.vocabSize, padded, where, model, a.realVocabSize, a),
      makeVocabSizeDivisibleBy: typeof a.makeVocabSizeDivisibleBy === "number"
        ? a.makeVocabSizeDivisibleBy
        : 128,
      layernormEpsilon: typeof a.layernormEpsilon === "number" ? a.layernormEpsilon : 1e-5,
      tokenizerType: typeof a.tokenizerType === "string" ? a.tokenizerType : "NullTokenizer",
    },
    tensors,
    iteration,
    run: {
      args: a,
      consumedTrainSamples: r0.meta.consumedTrainSamples,
      consumedValidSamples: r0.meta.consumedValidSamples,
    },
  };
}

/** Read a GPT checkpoint of any format and layout into full tensors (one line when it holds another
 *  model). `vocabSize` overrides the real vocabulary when the checkpoint cannot tell it. */
export function readGpt(format: CheckpointFormat, path: string, vocabSize?: number): FullGpt {
  const full = readModel(format, path, vocabSize);
  const model = modelOf(full.arch);
  if (model !== "gpt") throw new Error(`--load ${path}: a ${model.toUpperCase()} checkpoint; expected a GPT`);
  return full;
}

/** Read a GPT, BERT or T5 checkpoint of any format and layout into full tensors. */
export function readModel(format: CheckpointFormat, path: string, vocabSize?: number): FullGpt {
  try {
    Deno.statSync(path);
  } catch {
    throw new Error(`--load ${path}: not found`);
  }
  const full = format === "hf"
    ? readHf(path)
    : format === "megatron-pt"
    ? readMegatronPt(path, vocabSize)
    : readDeno(path, vocabSize);
  if (vocabSize !== undefined) full.arch.vocabSize = vocabSize;
  const rows = full.tensors.get(WORD)!.shape[0];
  if (full.arch.vocabSize > rows) {
    throw new Error(
      `${path}: vocabulary ${full.arch.vocabSize} is larger than the ${rows} embedding rows (give the real one with --vocab-size)`,
    );
  }
  return full;
}

/** Guess a checkpoint's format from its files (config.json: hf; meta.json: megatron-deno; .pt: megatron-pt). */
export function detectFormat(path: string): CheckpointFormat | null {
  const has = (p: string) => {
    try {
      Deno.statSync(p);
      return true;
    } catch {
      return false;
    }
  };
  if (!isDir(path)) return path.endsWith(".pt") ? "megatron-pt" : null;
  if (has(`${path}/config.json`)) return "hf";
  let it: string;
  try {
    it = Deno.readTextFileSync(`${path}/latest_checkpointed_iteration.txt`).trim();
  } catch {
    return null;
  }
  const iterDir = `${path}/${it === "release" ? "release" : `iter_${it.padStart(7, "0")}`}`;
  for (const r of ["mp_rank_00", "mp_rank_00_000"]) {
    if (has(`${iterDir}/${r}/meta.json`)) return "megatron-deno";
    if (has(`${iterDir}/${r}/model_optim_rng.pt`)) return "megatron-pt";
  }
  return null;
}

// ------------------------------------------------------------------------------------------------
// writers (everything goes to DST.tmp-<pid> first and is renamed into place at the end)

/** The trainer's arguments (camelCase) for a checkpoint of `full` in layout (tp, pp). */
export function denoArgs(
  full: FullGpt,
  tp: number,
  pp: number,
  paddedVocab: number,
): Record<string, unknown> {
  const a = full.arch;
  return {
    ...full.run?.args,
    numLayers: a.numLayers,
    hiddenSize: a.hiddenSize,
    numAttentionHeads: a.numAttentionHeads,
    maxPositionEmbeddings: a.maxPositionEmbeddings,
    seqLength: a.seqLength,
    makeVocabSizeDivisibleBy: a.makeVocabSizeDivisibleBy,
    paddedVocabSize: paddedVocab,
    tokenizerType: a.tokenizerType,
    ...(a.tokenizerType === "NullTokenizer" ? { vocabSize: a.vocabSize - 1 } : {}),
    layernormEpsilon: a.layernormEpsilon,
    ...modelArgs(full, (k) => k),
    tensorModelParallelSize: tp,
    pipelineModelParallelSize: pp,
    // Written without virtual chunks.
    virtualPipelineModelParallelSize: null,
  };
}

/** The architecture flags beyond GPT's, under `key`'s spelling of the camelCase name (a .pt's args are
 *  snake_case; Megatron stores --no-bias-gelu-fusion as bias_gelu_fusion and --bert-no-binary-head as
 *  bert_binary_head). Written only when they differ from the defaults or for BERT / T5. */
function modelArgs(full: FullGpt, key: (camel: string) => string, pt = false): Record<string, unknown> {
  const a = full.arch, out: Record<string, unknown> = {};
  if (a.ffnHiddenSize !== undefined) out[key("ffnHiddenSize")] = a.ffnHiddenSize;
  if (modelOf(a) === "gpt" && !a.applyResidualConnectionPostLayernorm && a.biasGeluFusion !== false) {
    return out;
  }
  out[key("applyResidualConnectionPostLayernorm")] = a.applyResidualConnectionPostLayernorm === true;
  if (pt) out.bias_gelu_fusion = a.biasGeluFusion !== false;
  else out.noBiasGeluFusion = a.biasGeluFusion === false;
  // Not a Megatron flag: the vocabulary size a WordPiece tokenizer's file would tell, kept so an
  // imported BERT goes back to Hugging Face with its own vocabulary (the trainer ignores it).
  out[key("realVocabSize")] = a.vocabSize;
  if (modelOf(a) === "bert") {
    const binary = full.tensors.has("binary_head.weight");
    if (pt) out.bert_binary_head = binary;
    else out.bertNoBinaryHead = !binary;
  }
  return out;
}

function writeDeno(dir: string, full: FullGpt, tp: number, pp: number): void {
  const { paddedVocab, ranks } = shardLayout(full, tp, pp);
  const args = denoArgs(full, tp, pp, paddedVocab);
  const iteration = full.iteration;
  const states: RankState[] = [];
  ranks.forEach((row, t) =>
    row.forEach((m, p) =>
      states.push({
        tp: t,
        pp: p,
        model: [...m].map(([name, x]): NamedTensor => ({ name, ...x })),
        meta: {
          args,
          iteration: iteration === "release" ? 0 : iteration,
          consumedTrainSamples: full.run?.consumedTrainSamples ?? 0,
          consumedValidSamples: full.run?.consumedValidSamples ?? 0,
        },
      })
    )
  );
  Deno.mkdirSync(dir, { recursive: true });
  saveCheckpoint({ saveDir: dir, iteration, ranks: states, tpSize: tp, ppSize: pp });
}

function writeMegatronPt(dir: string, full: FullGpt, tp: number, pp: number): void {
  const { paddedVocab, ranks } = shardLayout(full, tp, pp);
  const a = full.arch;
  const args = {
    num_layers: a.numLayers,
    hidden_size: a.hiddenSize,
    num_attention_heads: a.numAttentionHeads,
    kv_channels: a.hiddenSize / a.numAttentionHeads,
    ffn_hidden_size: a.ffnHiddenSize ?? 4 * a.hiddenSize,
    max_position_embeddings: a.maxPositionEmbeddings,
    seq_length: a.seqLength,
    make_vocab_size_divisible_by: a.makeVocabSizeDivisibleBy,
    padded_vocab_size: paddedVocab,
    tokenizer_type: a.tokenizerType,
    ...(a.tokenizerType === "NullTokenizer" ? { vocab_size: a.vocabSize - 1 } : {}),
    layernorm_epsilon: a.layernormEpsilon,
    ...modelArgs(full, (k) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), true) as Record<
      string,
      PyValue
    >,
    tensor_model_parallel_size: tp,
    pipeline_model_parallel_size: pp,
  };
  const iteration = full.iteration;
  ranks.forEach((row, t) =>
    row.forEach((m, p) => {
      const chunk = new Map<string, TorchTensor>();
      for (const [name, x] of m) {
        const dt = TO_TORCH[x.dtype];
        if (!dt) throw new Error(`megatron-pt: ${name}: dtype ${x.dtype} cannot be written`);
        chunk.set(name, new TorchTensor(dt, x.shape, x.data as TorchArray));
      }
      writeMegatronCheckpoint(megatronCheckpointFile(dir, iteration, t, p, pp), {
        args,
        iteration: iteration === "release" ? 0 : iteration,
        chunks: [chunk],
      });
    })
  );
  writeMegatronTracker(dir, iteration);
}

function writeHf(dir: string, full: FullGpt, tp: number, pp: number): void {
  if (tp !== 1 || pp !== 1) throw new Error(`--to hf: a Hugging Face folder has one shard; use TP = PP = 1`);
  const a = full.arch;
  if (modelOf(a) === "t5") {
    throw new Error(
      `--to hf: Megatron's T5 (learned positions, LayerNorm) has no Hugging Face T5 equivalent`,
    );
  }
  if (modelOf(a) === "bert") return writeHfBert(dir, full);
  const shape = { numLayers: a.numLayers, hidden: a.hiddenSize, heads: a.numAttentionHeads };
  const meg = new Map<string, Tensor2>(
    [...full.tensors].map(([n, t]) => [n, { shape: t.shape, data: t.data }]),
  );
  const dtype = full.tensors.get(WORD)!.dtype;
  const hf = megatronToHf(gpt2NameMap(shape), meg, { ...shape, vocab: a.vocabSize });
  const config = gpt2Config({ ...shape, vocab: a.vocabSize, positions: a.maxPositionEmbeddings });
  config.layer_norm_epsilon = a.layernormEpsilon;
  writeHfFolder(dir, { config, tensors: toNamedTensors(hf, dtype) });
}

/** A BertForPreTraining folder. Only a BERT that HF's post-LN, erf-GeLU layer computes exactly can go:
 *  --apply-residual-connection-post-layernorm, --no-bias-gelu-fusion, with the binary head. */
function writeHfBert(dir: string, full: FullGpt): void {
  const a = full.arch;
  if (!a.applyResidualConnectionPostLayernorm) {
    throw new Error(
      `--to hf: this BERT keeps the residual at the LayerNorm input (Megatron's default); Hugging Face's BertModel is post-LN, so only --apply-residual-connection-post-layernorm models convert`,
    );
  }
  if (a.biasGeluFusion !== false) {
    throw new Error(
      `--to hf: this BERT's MLP uses the fused tanh GeLU; Hugging Face's BERT uses one GeLU for the MLP and the LM head (erf), so only --no-bias-gelu-fusion models convert`,
    );
  }
  if (!full.tensors.has("binary_head.weight")) {
    throw new Error(
      `--to hf: this BERT has no binary head (--bert-no-binary-head); BertForPreTraining needs one`,
    );
  }
  const shape = { numLayers: a.numLayers, hidden: a.hiddenSize, heads: a.numAttentionHeads };
  const meg = new Map<string, Tensor2>(
    [...full.tensors].map(([n, t]) => [n, { shape: t.shape, data: t.data }]),
  );
  const dtype = full.tensors.get(WORD)!.dtype;
  const hf = megatronToHf(bertNameMap(shape), meg, { ...shape, vocab: a.vocabSize });
  const types = full.tensors.get("language_model.embedding.tokentype_embeddings.weight");
  const config = bertConfig({
    ...shape,
    vocab: a.vocabSize,
    positions: a.maxPositionEmbeddings,
    typeVocab: types?.shape[0] ?? 2,
    ffn: a.ffnHiddenSize ?? 4 * a.hiddenSize,
    layerNormEps: a.layernormEpsilon,
  });
  writeHfFolder(dir, { config, tensors: toNamedTensors(hf, dtype) });
}

/** Write `full` as a checkpoint of `format` in layout (tp, pp) at `dst`, which must not exist or be an
 *  empty folder; files are written under `dst.tmp-<pid>` and renamed into place when complete. */
export function writeGpt(format: CheckpointFormat, dst: string, full: FullGpt, tp = 1, pp = 1): void {
  let existing = false;
  try {
    existing = Deno.statSync(dst).isDirectory;
    if (!existing) throw new Error(`--save ${dst}: exists and is not a folder`);
    if ([...Deno.readDirSync(dst)].length > 0) throw new Error(`--save ${dst}: folder is not empty`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const tmp = `${dst.replace(/\/+$/, "")}.tmp-${Deno.pid}`;
  try {
    Deno.removeSync(tmp, { recursive: true }); // left by an earlier run of this pid
  } catch { /* none */ }
  try {
    if (format === "hf") writeHf(tmp, full, tp, pp);
    else if (format === "megatron-pt") writeMegatronPt(tmp, full, tp, pp);
    else writeDeno(tmp, full, tp, pp);
    if (existing) Deno.removeSync(dst);
    Deno.renameSync(tmp, dst);
  } catch (e) {
    try {
      Deno.removeSync(tmp, { recursive: true });
    } catch { /* nothing was written */ }
    throw e;
  }
}
