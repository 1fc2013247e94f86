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
const WHITESPACE_CHAR = /^\p{White_Space}$/u;

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

const NON_ASCII = /[^ -~\t\n\r]/; // anything beyond printable ASCII (controls are gone by now)

/** BERT's text cleaning for one character: drop NUL, U+FFFD and controls; whitespace -> " "; pad CJK. */
function cleanChar(ch: string): string {
  if (ch === "\t" || ch === "\n" || ch === "\r") return " ";
  const cp = ch.codePointAt(0)!;
  if (cp === 0 || cp === 0xfffd || CONTROL.test(ch)) return "";
  if (SPACE_SEPARATOR.test(ch)) return " ";
  if (isCjk(cp)) return " " + ch + " ";
  return ch;
}

/**
 * Clean text, CJK split and whitespace split: the words BasicTokenizer then lowercases and punct-splits.
 * One pass over the UTF-16 units; runs of printable ASCII are sliced, not copied char by char.
 */
export function bertWhitespaceWords(text: string): string[] {
  const words: string[] = [];
  let cur = "";
  let start = -1;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c > 0x20 && c < 0x7f) {
      if (start < 0) start = i;
      continue;
    }
    if (start >= 0) {
      cur += text.slice(start, i);
      start = -1;
    }
    if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) {
      if (cur !== "") words.push(cur);
      cur = "";
      continue;
    }
    if (c < 0x80) continue; // ASCII control characters are dropped
    const cp = text.codePointAt(i)!;
    const ch = String.fromCodePoint(cp);
    if (cp > 0xffff) i++;
    const r = cleanChar(ch);
    if (r === "") continue;
    if (r !== ch || WHITESPACE_CHAR.test(ch)) {
      // A space, a CJK character (its own word), or other White_Space such as U+2028.
      if (cur !== "") words.push(cur);
      cur = "";
      if (r !== " " && !WHITESPACE_CHAR.test(ch)) words.push(ch);
      continue;
    }
    cur += ch;
  }
  if (start >= 0) cur += text.slice(start);
  if (cur !== "") words.push(cur);
  return words;
}

/** One whitespace-separated word -> BasicTokenizer tokens (optional lowercase + accent strip, punct split). */
export function bertSplitWord(word: string, lowerCase: boolean, out: string[] = []): string[] {
  if (lowerCase) {
    word = word.toLowerCase();
    // NFD + dropping Mn is the identity on ASCII.
    if (NON_ASCII.test(word)) word = word.normalize("NFD").replace(MARK_NONSPACING, "");
  }
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
  return out;
}

/** Splits text into words the way BERT's BasicTokenizer does. */
export function bertBasicTokenize(text: string, lowerCase: boolean): string[] {
  const out: string[] = [];
  for (const word of bertWhitespaceWords(text)) bertSplitWord(word, lowerCase, out);
  return out;
}

export interface BertSourceNames {
  /** Shown in error messages for the vocab text. */
  vocabFile?: string;
  /** Number of `<extra_id_i>` tokens to append (`--vocab-extra-ids`). */
  vocabExtraIds?: number;
  /** Bound on the per-word cache (entries); 0 disables caching. */
  cacheSize?: number;
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
  /** whitespace-separated word -> ids; bounded, cleared when full. */
  readonly #cache = new Map<string, number[]>();
  readonly #cacheSize: number;

  constructor(vocabText: string, lowerCase: boolean, names: BertSourceNames = {}) {
    const file = names.vocabFile ?? "<vocab>";
    this.lowerCase = lowerCase;
    this.#cacheSize = names.cacheSize ?? 1 << 16;
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
    const pieces: string[] = [];
    for (const word of bertWhitespaceWords(text)) {
      let ids = this.#cache.get(word);
      if (ids === undefined) {
        ids = [];
        pieces.length = 0;
        for (const p of bertSplitWord(word, this.lowerCase, pieces)) this.#wordPiece(p, ids);
        if (this.#cacheSize > 0) {
          if (this.#cache.size >= this.#cacheSize) this.#cache.clear();
          this.#cache.set(word, ids);
        }
      }
      for (let i = 0; i < ids.length; i++) out.push(ids[i]);
    }
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
