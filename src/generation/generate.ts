// The model-independent part of Megatron 2021's sample_sequence_batch for one row: extend the context
// one token at a time with sampleNextToken until end-of-document or the length bound, as an async
// iterator of token ids. The model is a callback giving the logits of the last position.

import { generationMaxLength, sampleNextToken, type SamplingOptions } from "./sampling.ts";

/** Logits of the next token after `tokens` (the whole sequence so far; a KV-cache model may look at
 *  only the last one, since each call appends exactly one token to the previous call's sequence). */
export type NextTokenLogits = (tokens: readonly number[]) => Promise<ArrayLike<number>> | ArrayLike<number>;

export interface GenerateOptions extends SamplingOptions {
  /** --out-seq-length */
  outSeqLength: number;
  /** --seq-length: total length bound (min(seq_length - 1, context + out_seq_length)). */
  seqLength: number;
  /** End-of-document id: generation stops when it is drawn (it is not yielded, as Megatron trims it). */
  eod: number;
  /** --seed */
  seed: number;
  /** The row's index in its batch (part of the random address; 0 for a single prompt). */
  row?: number;
}

/** Yield generated token ids after `context` (step i draws with (seed, i, row)). */
export async function* generateTokens(
  context: readonly number[],
  next: NextTokenLogits,
  o: GenerateOptions,
): AsyncGenerator<number> {
  if (context.length === 0) {
    throw new Error("generation needs a non-empty context (Megatron starts from the prompt)");
  }
  if (context.length >= o.seqLength) {
    throw new Error(`context of ${context.length} tokens leaves no room under --seq-length ${o.seqLength}`);
  }
  const maxLen = generationMaxLength(context.length, o.outSeqLength, o.seqLength);
  const tokens = [...context];
  for (let step = 0; tokens.length < maxLen; step++) {
    const t = sampleNextToken(await next(tokens), o, o.seed, step, o.row ?? 0);
    if (t === o.eod) return;
    tokens.push(t);
    yield t;
  }
}

/** All of generateTokens as an array. */
export async function generateAll(
  context: readonly number[],
  next: NextTokenLogits,
  o: GenerateOptions,
): Promise<number[]> {
  const out: number[] = [];
  for await (const t of generateTokens(context, next, o)) out.push(t);
  return out;
}
