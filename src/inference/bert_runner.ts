// Running a BERT checkpoint without the trainer: a one-rank (TP = PP = 1) BertModel holding the full
// weights of any format (readModel), and its masked-LM and sentence-relationship logits for a batch.
// Used to show that an imported Hugging Face or Megatron BERT computes what transformers computes.

import type { Backend } from "../backend/backend.ts";
import { BertModel } from "../models/bert.ts";
import { makeParallelState, SingleRankCommunicator } from "../parallel/types.ts";
import { paddingMaskFromKeep } from "../transformer/attention.ts";
import { newMicroBatchContext } from "../transformer/common.ts";
import type { FullGpt } from "./gpt_weights.ts";
import { inferenceConfig, loadParams, toF32, withoutInit } from "./model_load.ts";

/** A one-rank BertModel in f32 with `full`'s weights (dropout off); the architecture flags
 *  (post-LN residual, LayerNorm eps, erf or tanh GeLU, binary head) come from the checkpoint. */
export function buildBertModel(full: FullGpt, backend: Backend): BertModel {
  const a = full.arch;
  if ((a.model ?? "gpt") !== "bert") {
    throw new Error(`checkpoint: a ${a.model ?? "gpt"} model, expected BERT`);
  }
  const word = full.tensors.get("language_model.embedding.word_embeddings.weight")!;
  const model = new BertModel(
    inferenceConfig(a, word.shape[0]),
    withoutInit(backend),
    makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    new SingleRankCommunicator(),
    { preProcess: true, postProcess: true, layers: Array.from({ length: a.numLayers }, (_, i) => i) },
    { binaryHead: full.tensors.has("binary_head.weight") },
  );
  const names = new Set(model.params().map((p) => p.name));
  loadParams(model.params(), (n) => full.tensors.get(n), backend);
  for (const n of full.tensors.keys()) {
    if (!names.has(n)) throw new Error(`checkpoint: ${n} has no place in the BERT model`);
  }
  return model;
}

export interface BertLogits {
  /** [rows, s, paddedVocab] masked-LM logits. */
  mlm: Float32Array;
  /** [rows, 2] binary-head logits (empty without the binary head). */
  binary: Float32Array;
}

/** Logits of equal-length rows of token ids with their token types; `keep` (1 = a real token, 0 =
 *  padding) builds Megatron's padding mask (default: every token kept). */
export async function bertLogits(
  model: BertModel,
  rows: readonly (readonly number[])[],
  types: readonly (readonly number[])[],
  keep?: readonly (readonly number[])[],
): Promise<BertLogits> {
  const b = rows.length, s = rows[0].length;
  if (s > model.cfg.maxPositionEmbeddings) {
    throw new Error(
      `sequence of ${s} tokens is longer than max-position-embeddings ${model.cfg.maxPositionEmbeddings}`,
    );
  }
  const be = model.backend;
  const ids = new Int32Array(b * s), tt = new Int32Array(b * s), kp = new Uint8Array(b * s).fill(1);
  rows.forEach((r, i) => {
    if (r.length !== s || types[i]?.length !== s) throw new Error("bertLogits: rows must have equal lengths");
    ids.set(r, i * s);
    tt.set(types[i], i * s);
    if (keep) kp.set(keep[i], i * s);
  });
  const text = be.fromHost("i32", [b, s], ids), typesT = be.fromHost("i32", [b, s], tt);
  const mask = be.fromHost("u8", [b, s, s], paddingMaskFromKeep(kp, b, s));
  const ctx = newMicroBatchContext({ iteration: 0, firstGlobalSample: 0, training: false });
  const outs = await model.forward({ text, types: typesT, mask }, ctx);
  const host = outs.map((t) => {
    const h = be.toHost(t);
    return h instanceof Float32Array ? Float32Array.from(h) : toF32(t.dtype, h as ArrayLike<number>);
  });
  outs.forEach((t) => be.free(t));
  model.discard(ctx);
  [text, typesT, mask].forEach((t) => be.free(t));
  return { mlm: host[0], binary: host[1] ?? new Float32Array(0) };
}
