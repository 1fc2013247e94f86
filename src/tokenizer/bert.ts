/**
 * BERT WordPiece (Megatron's BertWordPieceLowerCase / BertWordPieceCase): Google BERT's BasicTokenizer
 * (clean text, split CJK characters, optional lowercase + accent strip, split punctuation) followed by
 * greedy longest-match-first WordPiece with the "##" continuation prefix.
 */
import type { Tokenizer } from "./types.ts";

/** Words longer than this many characters become [UNK] (BERT's max_input_chars_per_word). */
const MAX_WORD_CHARS = 200;

const CONTROL = /\p{C}/u;
const SPACE_SEPARATOR = /\p{Zs}/u;
const PUNCT = /\p{P}/u;
const MARK_NONSPACING = /\p{Mn}/gu;
const WHITESPACE_RUN = /\p{White_Space}+/u;

/** Parses vocab.txt: one token per line, stripped; the line number (0-based) is the id; duplicates keep the last. */
export function parseBertVocab(
  text: string,
  file = "<vocab>",
): { vocab: Map<string, number>; tokens: string[] } {
  const lines = text.split("\n");
  // A final newline ends the last token; it does not add an empty one.
  if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  if (lines.length === 0) {
    throw new Error(`${file}: expected a BERT vocab.txt with one token per line, found an empty file`);
  }
  const vocab = new Map<string, number>();
  const tokens: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const tok = lines[i].trim();
    vocab.set(tok, i);
    tokens.push(tok);
  }
  return { vocab, tokens };
}

function isCjk(cp: number): boolean {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) || (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

/** BERT counts every non-alphanumeric printable ASCII character as punctuation, plus Unicode P*. */
function isPunctuation(ch: string, cp: number): boolean {
  if (
    (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126)
  ) {
    return true;
  }
  return cp >= 0x80 && PUNCT.test(ch);
}

/** Splits text into words the way BERT's BasicTokenizer does. */
export function bertBasicTokenize(text: string, lowerCase: boolean): string[] {
  // Clean: drop NUL, U+FFFD and control characters; map whitespace to a space; pad CJK characters.
  let cleaned = "";
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (ch === " " || ch === "\t" || ch === "\n" || ch === "\r") {
      cleaned += " ";
    } else if (cp === 0 || cp === 0xfffd || CONTROL.test(ch)) {
      continue;
    } else if (SPACE_SEPARATOR.test(ch)) {
      cleaned += " ";
    } else if (isCjk(cp)) {
      cleaned += " " + ch + " ";
    } else {
      cleaned += ch;
    }
  }
  const out: string[] = [];
  for (let word of cleaned.split(WHITESPACE_RUN)) {
    if (word === "") continue;
    if (lowerCase) word = word.toLowerCase().normalize("NFD").replace(MARK_NONSPACING, "");
    let cur = "";
    for (const ch of word) {
      if (isPunctuation(ch, ch.codePointAt(0)!)) {
        if (cur !== "") out.push(cur);
        out.push(ch);
        cur = "";
      } else {
        cur += ch;
      }
    }
    if (cur !== "") out.push(cur);
  }
  return out;
}

export interface BertSourceNames {
  /** Shown in error messages for the vocab text. */
  vocabFile?: string;
  /** Number of `<extra_id_i>` tokens to append (`--vocab-extra-ids`). */
  vocabExtraIds?: number;
}

export class BertWordPieceTokenizer implements Tokenizer {
  readonly type: "BertWordPieceLowerCase" | "BertWordPieceCase";
  readonly lowerCase: boolean;
  readonly cls: number;
  readonly sep: number;
  readonly pad: number;
  readonly mask: number;
  readonly bos: number;
  readonly eos: number;
  readonly additionalSpecialTokensIds: number[];
  readonly unk: number;
  /** token -> id, including the appended [BOS]/[EOS]/<extra_id_i>. */
  readonly vocab: ReadonlyMap<string, number>;
  readonly #idToToken: Map<number, string>;

  constructor(vocabText: string, lowerCase: boolean, names: BertSourceNames = {}) {
    const file = names.vocabFile ?? "<vocab>";
    this.lowerCase = lowerCase;
    this.type = lowerCase ? "BertWordPieceLowerCase" : "BertWordPieceCase";
    const { vocab } = parseBertVocab(vocabText, file);
    const need = (tok: string): number => {
      const id = vocab.get(tok);
      if (id === undefined) {
        throw new Error(`${file}: expected the special token ${tok} in the BERT vocab, found none`);
      }
      return id;
    };
    this.cls = need("[CLS]");
    this.sep = need("[SEP]");
    this.pad = need("[PAD]");
    this.mask = need("[MASK]");
    this.unk = need("[UNK]");
    const add = (tok: string): number => {
      let id = vocab.get(tok);
      if (id === undefined) {
        id = vocab.size;
        vocab.set(tok, id);
      }
      return id;
    };
    this.bos = add("[BOS]");
    this.eos = add("[EOS]");
    const extra = names.vocabExtraIds ?? 0;
    if (!Number.isInteger(extra) || extra < 0) {
      throw new Error(`--vocab-extra-ids: expected a non-negative integer, found ${extra}`);
    }
    this.additionalSpecialTokensIds = [];
    for (let i = 0; i < extra; i++) this.additionalSpecialTokensIds.push(add(`<extra_id_${i}>`));
    this.vocab = vocab;
    this.#idToToken = new Map();
    for (const [tok, id] of vocab) this.#idToToken.set(id, tok);
  }

  /** Synchronous constructor from vocab.txt text (for workers that already hold the file). */
  static fromFiles(
    vocabText: string,
    lowerCase: boolean,
    names: BertSourceNames = {},
  ): BertWordPieceTokenizer {
    return new BertWordPieceTokenizer(vocabText, lowerCase, names);
  }

  get vocabSize(): number {
    return this.vocab.size;
  }

  get eod(): number {
    throw new Error("BertWordPiece tokenizers have no eod");
  }

  /** Word -> WordPiece ids (greedy longest match; the whole word is [UNK] if any part has no match). */
  #wordPiece(word: string, out: number[]): void {
    const chars = Array.from(word);
    if (chars.length > MAX_WORD_CHARS) {
      out.push(this.unk);
      return;
    }
    const start0 = out.length;
    let start = 0;
    while (start < chars.length) {
      let end = chars.length;
      let found = -1;
      while (start < end) {
        const sub = (start > 0 ? "##" : "") + chars.slice(start, end).join("");
        const id = this.vocab.get(sub);
        if (id !== undefined) {
          found = id;
          break;
        }
        end--;
      }
      if (found < 0) {
        out.length = start0;
        out.push(this.unk);
        return;
      }
      out.push(found);
      start = end;
    }
  }

  /** Text -> word-piece strings (for inspection and tests). */
  tokenizeToStrings(text: string): string[] {
    return this.tokenize(text).map((id) => this.#idToToken.get(id)!);
  }

  tokenize(text: string): number[] {
    const out: number[] = [];
    for (const word of bertBasicTokenize(text, this.lowerCase)) this.#wordPiece(word, out);
    return out;
  }

  /** Ids -> text: tokens joined by spaces with "##" continuations glued back. */
  detokenize(ids: ArrayLike<number>): string {
    const toks: string[] = new Array(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const tok = this.#idToToken.get(ids[i]);
      if (tok === undefined) {
        throw new Error(
          `${this.type}.detokenize: expected a vocab id at position ${i}, found ${
            ids[i]
          } (vocab has ${this.vocabSize} tokens)`,
        );
      }
      toks[i] = tok;
    }
    return toks.join(" ").replaceAll(" ##", "").trim();
  }
}
