// A random GPT's full weights for inference tests: a GPTModel's initial parameters as a FullGpt
// (megatron-deno names, f32). A large init std keeps greedy decoding from settling on one token.
import type { Backend } from "../../src/backend/backend.ts";
import type { FullGpt } from "../../src/inference/gpt_weights.ts";
import { GPTModel } from "../../src/models/gpt.ts";
import { makeParallelState, SingleRankCommunicator } from "../../src/parallel/types.ts";

export interface RandomGptShape {
  layers: number;
  heads: number;
  /** Sequence length and position embeddings. */
  seq: number;
  /** The real vocabulary (the checkpoint's args). */
  vocab: number;
  /** Rows of the word embedding the model is built with (the padded vocabulary). */
  paddedVocab: number;
  makeVocabSizeDivisibleBy: number;
  seed: number;
  hidden?: number;
  /** MLP inner size (default 4 * hidden). */
  ffn?: number;
  iteration?: number;
}

export function randomGpt(backend: Backend, s: RandomGptShape): FullGpt {
  const hidden = s.hidden ?? 16;
  const m = new GPTModel(
    {
      numLayers: s.layers,
      hiddenSize: hidden,
      numAttentionHeads: s.heads,
      ffnHiddenSize: s.ffn,
      seqLength: s.seq,
      maxPositionEmbeddings: s.seq,
      vocabSize: s.paddedVocab,
      hiddenDropout: 0,
      attentionDropout: 0,
      initMethodStd: 0.3,
      paramsDtype: "f32",
      activationsCheckpointMethod: null,
      seed: s.seed,
    },
    backend,
    makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    new SingleRankCommunicator(),
  );
  return {
    arch: {
      numLayers: s.layers,
      hiddenSize: hidden,
      numAttentionHeads: s.heads,
      ...(s.ffn ? { ffnHiddenSize: s.ffn } : {}),
      maxPositionEmbeddings: s.seq,
      seqLength: s.seq,
      vocabSize: s.vocab,
      makeVocabSizeDivisibleBy: s.makeVocabSizeDivisibleBy,
      layernormEpsilon: 1e-5,
      tokenizerType: "NullTokenizer",
    },
    tensors: new Map(
      m.params().map((p) => [p.name, {
        dtype: "f32" as const,
        shape: [...p.value.shape],
        data: Float32Array.from(backend.toHost(p.value) as Float32Array),
      }]),
    ),
    iteration: s.iteration ?? 1,
  };
}
