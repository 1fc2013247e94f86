// Megatron-Core's NullTokenizer: text is already a space-separated list of token ids. Used for
// synthetic data and for small-vocabulary tests; the vocabulary is --vocab-size ids plus eod.

import type { Tokenizer } from "./types.ts";

export class NullTokenizer implements Tokenizer {
  readonly type = "NullTokenizer";
  readonly vocabSize: number;
  /** The id after the last regular one, as Megatron-Core's NullTokenizer. */
  readonly eod: number;
  readonly cls = undefined;
  readonly sep = undefined;
  readonly pad = undefined;
  readonly mask = undefined;
  readonly bos = undefined;
  readonly eos = undefined;
  readonly additionalSpecialTokensIds: number[] = [];

  constructor(vocabSizeWithoutEod: number) {
    if (!Number.isInteger(vocabSizeWithoutEod) || vocabSizeWithoutEod < 1) {
      throw new Error(`--vocab-size: NullTokenizer needs a positive integer, found ${vocabSizeWithoutEod}`);
    }
    this.eod = vocabSizeWithoutEod;
    this.vocabSize = vocabSizeWithoutEod + 1;
  }

  tokenize(text: string): number[] {
    const t = text.trim();
    if (t === "") return [];
    return t.split(/\s+/).map((w) => {
      const id = Number(w);
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new Error(`NullTokenizer: expected token ids in 0..${this.vocabSize - 1}, found '${w}'`);
      }
      return id;
    });
  }

  detokenize(ids: ArrayLike<number>): string {
    return Array.from(ids).join(" ");
  }
}
