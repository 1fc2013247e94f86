/** The tokenizer surface shared by GPT-2 BPE and BERT WordPiece (Megatron's AbstractTokenizer). */
export interface Tokenizer {
  /** Megatron's `--tokenizer-type` name. */
  readonly type: string;
  /** Unpadded vocabulary size, including appended special tokens. */
  readonly vocabSize: number;
  tokenize(text: string): number[];
  detokenize(ids: ArrayLike<number>): string;
  /** GPT-2: id of <|endoftext|>. BERT: the getter throws. */
  readonly eod: number;
  readonly cls: number | undefined;
  readonly sep: number | undefined;
  readonly pad: number | undefined;
  readonly mask: number | undefined;
  readonly bos: number | undefined;
  readonly eos: number | undefined;
  readonly additionalSpecialTokensIds: number[];
}

/** The tokenizer types Megatron's `--tokenizer-type` accepts. */
export type TokenizerType = "GPT2BPETokenizer" | "BertWordPieceLowerCase" | "BertWordPieceCase";
