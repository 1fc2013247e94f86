// Building a model whose weights come from a checkpoint: the model config an architecture implies,
// a backend that skips the random init the weights overwrite, and copying named full tensors in.
import type { Backend } from "../backend/backend.ts";
import { bf16BitsToF32, f16BitsToF32 } from "../tensor/dtype.ts";
import type { Tensor } from "../tensor/tensor.ts";
import type { TransformerConfig } from "../transformer/config.ts";
import type { FullTensor, GptArch } from "./gpt_weights.ts";

/** Host values of `dtype` (half precision as bits) as f32, widened exactly. */
export function toF32(dtype: string, a: ArrayLike<number>): Float32Array {
  if (dtype === "f16") return Float32Array.from(a, f16BitsToF32);
  if (dtype === "bf16") return Float32Array.from(a, bf16BitsToF32);
  return Float32Array.from(a);
}

/** A full tensor's values as f32 (the data itself when it already is f32). */
export function fullTensorF32(t: FullTensor): Float32Array {
  return t.data instanceof Float32Array ? t.data : toF32(t.dtype, t.data as ArrayLike<number>);
}

/** The f32, dropout-free model config of `a` with `vocabRows` embedding rows (the padded vocabulary). */
export function inferenceConfig(a: GptArch, vocabRows: number): TransformerConfig {
  return {
    numLayers: a.numLayers,
    hiddenSize: a.hiddenSize,
    numAttentionHeads: a.numAttentionHeads,
    ffnHiddenSize: a.ffnHiddenSize,
    seqLength: a.maxPositionEmbeddings,
    maxPositionEmbeddings: a.maxPositionEmbeddings,
    vocabSize: vocabRows,
    hiddenDropout: 0,
    attentionDropout: 0,
    layernormEpsilon: a.layernormEpsilon,
    applyResidualConnectionPostLayernorm: a.applyResidualConnectionPostLayernorm,
    biasGeluFusion: a.biasGeluFusion,
    paramsDtype: "f32",
    // Initialization is overwritten by the checkpoint; these only satisfy the config.
    initMethodStd: 0.02,
    activationsCheckpointMethod: null,
    seed: 1234,
  };
}

/** `backend` whose normalInit leaves zeros: for building a model whose parameters are overwritten from a
 *  checkpoint right after, so the constructor's initialization (Philox normals for every weight, seconds
 *  per 100M parameters on the CPU) is not paid for. Every other op is the backend's own, bound to it. */
export function withoutInit(backend: Backend): Backend {
  // Keyed by the method itself, so a method replaced later (CUDA profiling's wrappers) is bound anew.
  const bound = new WeakMap<object, unknown>();
  return new Proxy(backend, {
    get(target, prop) {
      if (prop === "normalInit") return (out: Tensor) => target.fill(out, 0);
      const v = Reflect.get(target, prop, target);
      if (typeof v !== "function") return v;
      let f = bound.get(v);
      if (f === undefined) bound.set(v, f = v.bind(target));
      return f;
    },
  });
}

/** Copies each parameter's tensor from `get` (by name) into the model; a missing name or another shape
 *  is one line (`where` says which rank, when it matters). */
export function loadParams(
  params: Iterable<{ name: string; value: Tensor }>,
  get: (name: string) => FullTensor | undefined,
  backend: Backend,
  where = "",
): void {
  for (const p of params) {
    const t = get(p.name);
    if (!t) throw new Error(`checkpoint: missing parameter ${p.name}${where}`);
    if (t.shape.join(",") !== p.value.shape.join(",")) {
      throw new Error(`checkpoint: ${p.name} is [${t.shape}], the model expects [${p.value.shape}]`);
    }
    const tmp = backend.fromHost("f32", t.shape, fullTensorF32(t));
    backend.copy(tmp, p.value);
    backend.free(tmp);
  }
}
