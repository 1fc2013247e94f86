// tools/preprocess_data.py rebuilt: loose JSON lines -> tokenized MMIDIDX datasets, one per JSON key,
// named <output-prefix>_<key>_<document|sentence>.{bin,idx}. Tokenization can run in Deno workers
// (batches of lines, results reassembled in input order, so any worker count gives identical files).
//
// Differences from 2021, on purpose:
// - blank lines are skipped instead of crashing json.loads;
// - a malformed line (bad JSON, a missing key, text the tokenizer rejects) stops the run with
//   `file:line: <error>` and leaves no output files (--skip-invalid counts and skips such lines instead);
// - invalid UTF-8 stops the run with file:line and the byte; --replace-invalid-utf8 decodes it as
//   U+FFFD instead;
// - an input with no documents, or a key with no tokens, is an error rather than an empty dataset;
// - sentence splitting uses Intl.Segmenter (Unicode sentence boundaries) instead of NLTK punkt.

import { parseArgs } from "node:util";
import { bestDtypeForVocab, MMapIndexedDatasetBuilder } from "./indexed_dataset.ts";
import { NullTokenizer, readTokenizerFiles, TOKENIZER_TYPES, tokenizerFromFiles } from "../tokenizer/mod.ts";
import type { TokenizerFiles, TokenizerType } from "../tokenizer/mod.ts";

/** The tokenizer surface preprocessing needs. */
export interface PreprocessTokenizer {
  tokenize(text: string): number[];
  readonly eod?: number;
  readonly vocabSize: number;
}

/** What a worker needs to rebuild the tokenizer (structured-cloneable). */
export interface TokenizerSpec {
  tokenizerType: string;
  vocabFile?: string;
  mergeFile?: string;
  vocabExtraIds?: number;
  /** Ids without eod, for NullTokenizer (text is space-separated ids). */
  vocabSize?: number;
  /**
   * Module URL exporting `buildTokenizer(spec)` to use instead of src/tokenizer (tests use this to
   * inject a tiny tokenizer).
   */
  tokenizerModule?: string;
}

export interface PreprocessOptions extends TokenizerSpec {
  input: string;
  jsonKeys: string[];
  splitSentences: boolean;
  keepNewlines: boolean;
  appendEod: boolean;
  outputPrefix: string;
  datasetImpl: "mmap";
  workers: number;
  logInterval: number;
  skipInvalid: boolean;
  /** Decode invalid UTF-8 as U+FFFD instead of stopping with file:line. */
  replaceInvalidUtf8?: boolean;
}

export interface EncodeOptions {
  jsonKeys: string[];
  splitSentences: boolean;
  keepNewlines: boolean;
  appendEod: boolean;
}

/** Error for bad command-line usage: the CLI prints the message and exits 2. */
export class UsageError extends Error {}

export const PREPROCESS_HELP =
  `usage: deno task preprocess --input FILE --output-prefix PREFIX --tokenizer-type TYPE [options]

Tokenizes loose JSON lines (one JSON object per line; .gz accepted) into Megatron mmap datasets
<output-prefix>_<key>_<document|sentence>.bin/.idx.

  --input FILE             JSON lines file (.gz: gzip-compressed)
  --json-keys KEY [KEY..]  keys to extract (default: text)
  --split-sentences        one item per sentence (Intl.Segmenter), output level "sentence"
  --keep-newlines          keep newlines between sentences (with --split-sentences)
  --tokenizer-type TYPE    GPT2BPETokenizer | BertWordPieceLowerCase | BertWordPieceCase | NullTokenizer
  --vocab-size N           ids without eod, for NullTokenizer (text: space-separated ids)
  --vocab-file FILE        vocabulary file
  --merge-file FILE        BPE merges file (GPT-2)
  --vocab-extra-ids N      extra ids for T5-style sentinels (default 0)
  --append-eod             append the end-of-document token to each document
  --output-prefix PREFIX   output path prefix
  --dataset-impl IMPL      only mmap is supported (default mmap)
  --workers N              tokenizer workers (default 1)
  --log-interval N         documents between progress lines (default 100)
  --skip-invalid           skip (and count) malformed lines instead of stopping
  --replace-invalid-utf8   decode invalid UTF-8 bytes as U+FFFD (default: stop at the first
                           one with file:line)
  -h, --help               show this help

An input with no documents (empty, or only blank lines) is an error. On any error the outputs are
not written (they are built under temporary names and renamed at the end).`;

/** Output prefix of one key's dataset. */
export function outputPrefixFor(outputPrefix: string, key: string, splitSentences: boolean): string {
  return `${outputPrefix}_${key}_${splitSentences ? "sentence" : "document"}`;
}

/** Integer flags and their minimum. */
const INT_FLAGS: Readonly<Record<string, number>> = {
  "--workers": 1,
  "--log-interval": 1,
  "--vocab-extra-ids": 0,
  "--vocab-size": 1,
};

/** A value that looks like a negative number, which argparse also takes as a value, not a flag. */
const NEGATIVE_NUMBER = /^-\.?\d/;

/**
 * Rewrites argv for node:util parseArgs, which rejects any value starting with "-" as "ambiguous":
 * - argparse's nargs="+" for --json-keys: `--json-keys a b` becomes `--json-keys=a --json-keys=b`;
 * - an integer flag takes the next word whatever it is (`--workers -3` becomes `--workers=-3`), so
 *   the value check below names the flag; a missing value is reported here;
 * - other value flags take a following negative-number-like word as their value, as argparse does.
 */
function normalizeArgv(argv: string[], valueFlags: ReadonlySet<string>): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = argv[i + 1];
    if (a === "--json-keys") {
      let k = 0;
      while (i + 1 < argv.length && !argv[i + 1].startsWith("-")) {
        out.push(`--json-keys=${argv[++i]}`);
        k++;
      }
      if (k === 0) out.push(a); // parseArgs reports the missing value
    } else if (a in INT_FLAGS) {
      if (next === undefined || next.startsWith("--")) {
        throw new UsageError(`${a}: missing value (expected an integer >= ${INT_FLAGS[a]})`);
      }
      out.push(`${a}=${next}`);
      i++;
    } else if (valueFlags.has(a) && next !== undefined && NEGATIVE_NUMBER.test(next)) {
      out.push(`${a}=${next}`);
      i++;
    } else {
      out.push(a);
    }
  }
  return out;
}

/** A strict decimal integer (no "", " ", "1e3", "0x10", "2.0"). */
function intFlag(name: string, v: string | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  const min = INT_FLAGS[`--${name}`];
  const n = /^[+-]?\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < min) {
    throw new UsageError(`--${name}: expected an integer >= ${min}, found "${v}"`);
  }
  return n;
}

const PREPROCESS_OPTIONS = {
  input: { type: "string" },
  "json-keys": { type: "string", multiple: true },
  "split-sentences": { type: "boolean" },
  "keep-newlines": { type: "boolean" },
  "tokenizer-type": { type: "string" },
  "vocab-file": { type: "string" },
  "merge-file": { type: "string" },
  "vocab-extra-ids": { type: "string" },
  "vocab-size": { type: "string" },
  "append-eod": { type: "boolean" },
  "output-prefix": { type: "string" },
  "dataset-impl": { type: "string" },
  workers: { type: "string" },
  "log-interval": { type: "string" },
  "skip-invalid": { type: "boolean" },
  "replace-invalid-utf8": { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

const VALUE_FLAGS: ReadonlySet<string> = new Set(
  Object.entries(PREPROCESS_OPTIONS).filter(([, o]) => o.type === "string").map(([k]) => `--${k}`),
);

/** Parses preprocess_data flags. Returns null for --help; throws UsageError on bad usage. */
export function parsePreprocessArgs(argv: string[]): PreprocessOptions | null {
  let values;
  try {
    ({ values } = parseArgs({
      args: normalizeArgv(argv, VALUE_FLAGS),
      strict: true,
      allowPositionals: false,
      options: PREPROCESS_OPTIONS,
    }));
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`preprocess: ${(e as Error).message.split("\n")[0]}`);
  }
  if (values.help) return null;
  for (const req of ["input", "output-prefix", "tokenizer-type"] as const) {
    if (values[req] === undefined) throw new UsageError(`preprocess: the flag --${req} is required`);
  }
  const ttype = values["tokenizer-type"]!;
  if (!(TOKENIZER_TYPES as readonly string[]).includes(ttype) && ttype !== "NullTokenizer") {
    throw new UsageError(
      `--tokenizer-type: expected one of ${
        [...TOKENIZER_TYPES, "NullTokenizer"].join(", ")
      }, found "${ttype}"`,
    );
  }
  if ((ttype === "NullTokenizer") !== (values["vocab-size"] !== undefined)) {
    throw new UsageError(
      ttype === "NullTokenizer"
        ? "--tokenizer-type NullTokenizer needs --vocab-size"
        : `--vocab-size applies only to --tokenizer-type NullTokenizer, found ${ttype}`,
    );
  }
  const impl = values["dataset-impl"] ?? "mmap";
  if (impl !== "mmap") {
    throw new UsageError(
      `--dataset-impl: expected mmap, found "${impl}" (lazy/cached are legacy formats GPT training cannot read)`,
    );
  }
  const keys = values["json-keys"] ?? ["text"];
  if (keys.length === 0) throw new UsageError(`--json-keys: expected at least one key, found none`);
  return {
    input: values.input!,
    jsonKeys: keys,
    splitSentences: values["split-sentences"] ?? false,
    keepNewlines: values["keep-newlines"] ?? false,
    tokenizerType: values["tokenizer-type"]!,
    vocabFile: values["vocab-file"],
    mergeFile: values["merge-file"],
    vocabExtraIds: intFlag("vocab-extra-ids", values["vocab-extra-ids"], 0),
    ...(values["vocab-size"] !== undefined
      ? { vocabSize: intFlag("vocab-size", values["vocab-size"], 0) }
      : {}),
    appendEod: values["append-eod"] ?? false,
    outputPrefix: values["output-prefix"]!,
    datasetImpl: "mmap",
    workers: intFlag("workers", values.workers, 1),
    logInterval: intFlag("log-interval", values["log-interval"], 100),
    skipInvalid: values["skip-invalid"] ?? false,
    replaceInvalidUtf8: values["replace-invalid-utf8"] ?? false,
  };
}

/**
 * How a worker rebuilds the tokenizer: from file texts the main thread already read (no re-reading,
 * no npm import per worker), or from an injected module.
 */
export type TokenizerSource =
  | { kind: "files"; files: TokenizerFiles }
  | { kind: "module"; url: string; spec: TokenizerSpec }
  | { kind: "null"; vocabSize: number };

function buildArgs(spec: TokenizerSpec) {
  return {
    tokenizerType: spec.tokenizerType as TokenizerType,
    vocabFile: spec.vocabFile,
    mergeFile: spec.mergeFile,
    vocabExtraIds: spec.vocabExtraIds,
  };
}

/** Where the tokenizer comes from: src/tokenizer's files (read here, once) or an injected module. */
export async function tokenizerSourceFor(spec: TokenizerSpec): Promise<TokenizerSource> {
  if (spec.tokenizerModule !== undefined) return { kind: "module", url: spec.tokenizerModule, spec };
  if (spec.tokenizerType === "NullTokenizer") {
    if (spec.vocabSize === undefined) throw new Error("--tokenizer-type NullTokenizer needs --vocab-size");
    return { kind: "null", vocabSize: spec.vocabSize };
  }
  return { kind: "files", files: await readTokenizerFiles(buildArgs(spec)) };
}

/** Builds a tokenizer from a source (used by workers). */
export async function tokenizerFromSource(source: TokenizerSource): Promise<PreprocessTokenizer> {
  if (source.kind === "files") return tokenizerFromFiles(source.files);
  if (source.kind === "null") return new NullTokenizer(source.vocabSize);
  const mod = await import(source.url);
  return await mod.buildTokenizer(buildArgs(source.spec)) as PreprocessTokenizer;
}

/** The tokenizer's eod id, or null when it has none (BERT's getter throws). */
function eodOf(tok: PreprocessTokenizer): number | null {
  try {
    return typeof tok.eod === "number" ? tok.eod : null;
  } catch {
    return null;
  }
}

/** Splits text into sentences. Trailing whitespace is dropped; with keepNewlines, newlines are kept. */
export function splitSentences(text: string, keepNewlines: boolean, segmenter: Intl.Segmenter): string[] {
  const out: string[] = [];
  for (const { segment } of segmenter.segment(text)) {
    const s = keepNewlines ? segment.replace(/^[^\S\n]+|[^\S\n]+$/g, "") : segment.trim();
    if (s.trim().length > 0) out.push(s);
  }
  return out;
}

/** One key's tokens for a batch: flat tokens, the size of each item, and items per document. */
export interface KeyBatch {
  tokens: Int32Array;
  itemSizes: Int32Array;
  docItems: Int32Array;
}

export interface BatchResult {
  /** Per JSON key, in jsonKeys order. */
  keys: KeyBatch[];
  /** Documents (non-blank valid lines) in the batch. */
  documents: number;
  /** Characters of text tokenized. */
  chars: number;
  /** Malformed lines: 1-based line number and the error. */
  invalid: { line: number; message: string }[];
}

/** Tokenizes a batch of input lines starting at 1-based line `firstLine`. */
export function encodeBatch(
  lines: string[],
  firstLine: number,
  tok: PreprocessTokenizer,
  opts: EncodeOptions,
  segmenter: Intl.Segmenter,
): BatchResult {
  const nk = opts.jsonKeys.length;
  const tokens: number[][] = Array.from({ length: nk }, () => []);
  const itemSizes: number[][] = Array.from({ length: nk }, () => []);
  const docItems: number[][] = Array.from({ length: nk }, () => []);
  const invalid: { line: number; message: string }[] = [];
  let documents = 0;
  let chars = 0;
  const eod = opts.appendEod ? eodOf(tok) : null;
  lines.forEach((line, li) => {
    if (line.trim().length === 0) return;
    let texts: string[];
    try {
      const obj = JSON.parse(line);
      texts = opts.jsonKeys.map((k) => {
        const v = obj?.[k];
        if (typeof v !== "string") {
          throw new Error(
            `expected key "${k}" with a string value, found ${v === undefined ? "no such key" : typeof v}`,
          );
        }
        return v;
      });
    } catch (e) {
      invalid.push({ line: firstLine + li, message: (e as Error).message.split("\n")[0] });
      return;
    }
    // Tokenize every key before keeping any, so a line the tokenizer rejects (e.g. NullTokenizer
    // given a non-id) is an invalid line with its number, like bad JSON.
    let perKey: number[][][];
    try {
      perKey = texts.map((text) => {
        const sentences = opts.splitSentences ? splitSentences(text, opts.keepNewlines, segmenter) : [text];
        const ids: number[][] = [];
        for (const s of sentences) {
          const t = tok.tokenize(s);
          if (t.length > 0) ids.push(t);
        }
        if (ids.length > 0 && opts.appendEod) ids[ids.length - 1].push(eod!);
        return ids;
      });
    } catch (e) {
      invalid.push({ line: firstLine + li, message: (e as Error).message.split("\n")[0] });
      return;
    }
    documents++;
    for (let k = 0; k < nk; k++) {
      chars += texts[k].length;
      const ids = perKey[k];
      for (const t of ids) {
        itemSizes[k].push(t.length);
        for (const x of t) tokens[k].push(x);
      }
      // Empty documents get no end_document() call, as in Megatron.
      docItems[k].push(ids.length);
    }
  });
  return {
    keys: tokens.map((t, k) => ({
      tokens: Int32Array.from(t),
      itemSizes: Int32Array.from(itemSizes[k]),
      docItems: Int32Array.from(docItems[k]),
    })),
    documents,
    chars,
    invalid,
  };
}

/** Messages between the main thread and preprocess_worker.ts. */
export type WorkerRequest =
  | { type: "init"; source: TokenizerSource; encode: EncodeOptions }
  | { type: "batch"; lines: string[]; firstLine: number };
export type WorkerResponse =
  | { type: "ready"; info: TokenizerInfo }
  | { type: "result"; result: BatchResult }
  | { type: "error"; message: string };

/** What the main thread needs to know about the tokenizer (dtype choice, --append-eod check). */
export interface TokenizerInfo {
  vocabSize: number;
  eod: number | null;
}

export function tokenizerInfo(tok: PreprocessTokenizer): TokenizerInfo {
  return { vocabSize: tok.vocabSize, eod: eodOf(tok) };
}

interface Encoder {
  /** The tokenizer as seen by the encoder (a worker's copy, or the in-process one). */
  info: TokenizerInfo;
  encode(lines: string[], firstLine: number): Promise<BatchResult>;
  close(): void;
}

function inProcessEncoder(tok: PreprocessTokenizer, opts: EncodeOptions): Encoder {
  const seg = new Intl.Segmenter("en", { granularity: "sentence" });
  return {
    info: tokenizerInfo(tok),
    encode: (lines, firstLine) => Promise.resolve(encodeBatch(lines, firstLine, tok, opts, seg)),
    close() {},
  };
}

/** N module workers; batches go round-robin and each worker answers its batches in order. */
async function workerPoolEncoder(n: number, source: TokenizerSource, opts: EncodeOptions): Promise<Encoder> {
  const workers: Worker[] = [];
  const queues: { resolve: (r: BatchResult) => void; reject: (e: Error) => void }[][] = [];
  const ready: Promise<TokenizerInfo>[] = [];
  const failAll = (w: number, e: Error) => {
    for (const q of queues[w].splice(0)) q.reject(e);
  };
  for (let w = 0; w < n; w++) {
    const worker = new Worker(new URL("./preprocess_worker.ts", import.meta.url), { type: "module" });
    workers.push(worker);
    queues.push([]);
    ready.push(
      new Promise<TokenizerInfo>((resolve, reject) => {
        worker.onmessage = (ev: MessageEvent<WorkerResponse>) => {
          const msg = ev.data;
          if (msg.type === "ready") resolve(msg.info);
          else if (msg.type === "result") queues[w].shift()?.resolve(msg.result);
          else {
            const err = new Error(msg.message);
            reject(err);
            failAll(w, err);
          }
        };
        worker.onerror = (ev: ErrorEvent) => {
          ev.preventDefault();
          const err = new Error(`preprocess worker ${w}: ${ev.message}`);
          reject(err);
          failAll(w, err);
        };
      }),
    );
    worker.postMessage({ type: "init", source, encode: opts } satisfies WorkerRequest);
  }
  let info: TokenizerInfo;
  try {
    info = (await Promise.all(ready))[0];
  } catch (e) {
    for (const w of workers) w.terminate();
    throw e;
  }
  let next = 0;
  return {
    info,
    encode(lines, firstLine) {
      const w = next;
      next = (next + 1) % n;
      return new Promise((resolve, reject) => {
        queues[w].push({ resolve, reject });
        workers[w].postMessage({ type: "batch", lines, firstLine } satisfies WorkerRequest);
      });
    },
    close() {
      for (const w of workers) w.terminate();
    },
  };
}

/**
 * Offset of the first byte that does not start a valid UTF-8 sequence (WHATWG rules: no overlongs,
 * surrogates or values above U+10FFFF), or -1. Only run on a line the strict decoder rejected.
 */
export function firstInvalidUtf8(b: Uint8Array): number {
  let i = 0;
  while (i < b.length) {
    const c = b[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    let n: number, lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) n = 1;
    else if (c >= 0xe0 && c <= 0xef) {
      n = 2;
      if (c === 0xe0) lo = 0xa0;
      if (c === 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 3;
      if (c === 0xf0) lo = 0x90;
      if (c === 0xf4) hi = 0x8f;
    } else return i;
    for (let k = 1; k <= n; k++) {
      const x = b[i + k];
      if (x === undefined || x < (k === 1 ? lo : 0x80) || x > (k === 1 ? hi : 0xbf)) return i;
    }
    i += n + 1;
  }
  return -1;
}

function concatBytes(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  let n = 0;
  for (const p of parts) n += p.byteLength;
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

/**
 * Yields the lines of a (possibly gzipped) file with a running count of file bytes consumed. Lines are
 * split on bytes and decoded one by one, so invalid UTF-8 is reported as file:line (or, with
 * `replaceInvalid`, decoded as U+FFFD).
 */
async function* readLines(
  path: string,
  progress: { bytes: number },
  replaceInvalid: boolean,
): AsyncGenerator<string> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw new Error(`${path}: cannot open input: ${(e as Error).message}`);
  }
  const counter = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, ctl) {
      progress.bytes += chunk.byteLength;
      ctl.enqueue(chunk);
    },
  });
  let bytes: ReadableStream<Uint8Array> = file.readable.pipeThrough(counter);
  const gz = path.endsWith(".gz");
  if (gz) {
    bytes = bytes.pipeThrough(
      new DecompressionStream("gzip") as unknown as TransformStream<Uint8Array, Uint8Array>,
    );
  }
  // ignoreBOM: a BOM is stripped by hand at the start of the file only, as a stream decoder would.
  const decoder = new TextDecoder("utf-8", { fatal: !replaceInvalid, ignoreBOM: true });
  let lineNo = 0; // lines yielded so far
  let streamOffset = 0; // offset of the next region in the (decompressed) byte stream
  // Decodes a run of whole lines (newline-separated, no final newline) in one call: a newline byte is
  // never part of a multi-byte sequence, so this equals decoding line by line. Only when it fails are
  // the lines decoded one by one, to name the bad one.
  const decodeRegion = (region: Uint8Array): string[] => {
    let base = streamOffset;
    streamOffset += region.byteLength + 1;
    if (base === 0 && region[0] === 0xef && region[1] === 0xbb && region[2] === 0xbf) {
      region = region.subarray(3);
      base = 3;
    }
    try {
      return decoder.decode(region).split("\n");
    } catch {
      let start = 0;
      for (let line = lineNo + 1;; line++) {
        let end = region.indexOf(10, start);
        if (end < 0) end = region.byteLength;
        const bytes = region.subarray(start, end);
        const i = firstInvalidUtf8(bytes);
        if (i >= 0) {
          const bad = Array.from(bytes.subarray(i, i + 4), (b) => b.toString(16).padStart(2, "0")).join(" ");
          throw new Error(
            `${path}:${line}: invalid UTF-8 at byte ${i + 1} of the line (${bad}` +
              `${gz ? "" : `; file offset ${base + start + i}`}); ` +
              `pass --replace-invalid-utf8 to decode it as U+FFFD`,
          );
        }
        if (end === region.byteLength) throw new Error(`${path}: invalid UTF-8 after line ${lineNo}`);
        start = end + 1;
      }
    }
  };
  const reader = bytes.getReader();
  let pending: Uint8Array[] = [];
  let finished = false;
  try {
    while (true) {
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await reader.read();
      } catch (e) {
        throw new Error(`${path}: cannot read input: ${(e as Error).message.split("\n")[0]}`);
      }
      if (r.done) {
        finished = true;
        break;
      }
      const chunk = r.value;
      const last = chunk.lastIndexOf(10);
      if (last < 0) {
        // Copy: a stream may reuse its chunk buffers.
        pending.push(chunk.slice());
        continue;
      }
      pending.push(chunk.subarray(0, last));
      const lines = decodeRegion(concatBytes(pending));
      pending = last + 1 < chunk.byteLength ? [chunk.slice(last + 1)] : [];
      for (const line of lines) {
        lineNo++;
        yield line;
      }
    }
  } finally {
    // Abandoned early (an error downstream): cancel so the file is closed.
    if (!finished) await reader.cancel().catch(() => {});
  }
  if (pending.length > 0) {
    const tail = concatBytes(pending);
    if (tail.byteLength > 0) yield decodeRegion(tail)[0];
  }
}

export interface PreprocessResult {
  /** Output dataset prefixes, in jsonKeys order. */
  prefixes: string[];
  documents: number;
  skippedInvalid: number;
  /** Bytes of input file read (compressed size for .gz). */
  inputBytes: number;
  seconds: number;
}

export interface RunOptions {
  /** Plain log lines (non-TTY progress and the summary). */
  log?: (line: string) => void;
  /** Draw a progress bar by writing to this stream (e.g. Deno.stderr on a TTY). */
  progressBar?: { writeSync(b: Uint8Array): number };
  /** Stops the run between lines (e.g. on SIGINT): the temporary outputs are removed, nothing is renamed. */
  signal?: AbortSignal;
}

const BATCH_LINES = 256;
const BATCH_CHARS = 1 << 20;

function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return "--:--";
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
}

function abortError(signal: AbortSignal): Error {
  const why = signal.reason instanceof Error ? signal.reason.message : String(signal.reason ?? "aborted");
  return new Error(`preprocess: ${why}; no output written`);
}

/**
 * Runs preprocessing. All outputs are written under temporary names and renamed only when the whole
 * input succeeded; on error nothing is left behind and the error's message is one line.
 */
export async function preprocess(opts: PreprocessOptions, run: RunOptions = {}): Promise<PreprocessResult> {
  const log = run.log ?? (() => {});
  const t0 = performance.now();
  const encodeOpts: EncodeOptions = {
    jsonKeys: opts.jsonKeys,
    splitSentences: opts.splitSentences,
    keepNewlines: opts.keepNewlines,
    appendEod: opts.appendEod,
  };
  let totalBytes = 0;
  try {
    totalBytes = (await Deno.stat(opts.input)).size;
  } catch (e) {
    throw new Error(`${opts.input}: cannot open input: ${(e as Error).message}`);
  }
  const source = await tokenizerSourceFor(opts);
  // With workers, this thread never tokenizes: a worker reports the vocab size and eod.
  const encoder = opts.workers > 1
    ? await workerPoolEncoder(opts.workers, source, encodeOpts)
    : inProcessEncoder(await tokenizerFromSource(source), encodeOpts);
  if (opts.appendEod && encoder.info.eod === null) {
    encoder.close();
    throw new Error(`--append-eod: tokenizer ${opts.tokenizerType} has no end-of-document token`);
  }
  const dtype = bestDtypeForVocab(encoder.info.vocabSize);
  const prefixes = opts.jsonKeys.map((k) => outputPrefixFor(opts.outputPrefix, k, opts.splitSentences));
  const builders: MMapIndexedDatasetBuilder[] = [];
  const progress = { bytes: 0 };
  let documents = 0;
  let skipped = 0;
  let nextLog = opts.logInterval;
  let lastBar = 0;
  const enc = new TextEncoder();
  const report = (final: boolean) => {
    const secs = (performance.now() - t0) / 1000;
    const mbs = progress.bytes / 1e6 / Math.max(secs, 1e-9);
    if (run.progressBar) {
      const now = performance.now();
      if (!final && now - lastBar < 100) return;
      lastBar = now;
      const frac = totalBytes > 0 ? Math.min(1, progress.bytes / totalBytes) : 1;
      const width = 30;
      const filled = Math.round(frac * width);
      const eta = frac > 0 ? secs * (1 - frac) / frac : Infinity;
      const bar = `\r[${"#".repeat(filled)}${".".repeat(width - filled)}] ${(frac * 100).toFixed(1)}% ` +
        `${documents} docs ${mbs.toFixed(2)} MB/s ETA ${fmtTime(eta)}  `;
      run.progressBar.writeSync(enc.encode(final ? bar + "\n" : bar));
    } else if (!final && documents >= nextLog) {
      while (nextLog <= documents) nextLog += opts.logInterval;
      log(
        `processed ${documents} documents (${(documents / secs).toFixed(1)} docs/s, ${mbs.toFixed(2)} MB/s)`,
      );
    }
  };
  const consume = (r: BatchResult) => {
    if (r.invalid.length > 0) {
      if (!opts.skipInvalid) {
        const bad = r.invalid[0];
        throw new Error(`${opts.input}:${bad.line}: ${bad.message}`);
      }
      skipped += r.invalid.length;
    }
    for (let k = 0; k < builders.length; k++) {
      const kb = r.keys[k];
      let item = 0;
      let off = 0;
      for (let d = 0; d < kb.docItems.length; d++) {
        const count = kb.docItems[d];
        if (count === 0) continue;
        for (let j = 0; j < count; j++, item++) {
          const size = kb.itemSizes[item];
          builders[k].addItem(kb.tokens.subarray(off, off + size));
          off += size;
        }
        builders[k].endDocument();
      }
    }
    documents += r.documents;
    report(false);
  };

  const inflight: Promise<BatchResult>[] = [];
  try {
    for (const p of prefixes) builders.push(new MMapIndexedDatasetBuilder(p, dtype));
    const maxInflight = Math.max(2, 2 * opts.workers);
    let batch: string[] = [];
    let batchChars = 0;
    let firstLine = 1;
    let lineNo = 0;
    const dispatch = async () => {
      inflight.push(encoder.encode(batch, firstLine));
      firstLine = lineNo + 1;
      batch = [];
      batchChars = 0;
      while (inflight.length >= maxInflight) consume(await inflight.shift()!);
    };
    for await (const line of readLines(opts.input, progress, opts.replaceInvalidUtf8 ?? false)) {
      if (run.signal?.aborted) throw abortError(run.signal);
      lineNo++;
      batch.push(line);
      batchChars += line.length;
      if (batch.length >= BATCH_LINES || batchChars >= BATCH_CHARS) await dispatch();
    }
    if (batch.length > 0) await dispatch();
    while (inflight.length > 0) consume(await inflight.shift()!);
    if (run.signal?.aborted) throw abortError(run.signal);
    // An empty dataset would only fail later, in training, far from its cause.
    if (documents === 0) {
      throw new Error(
        skipped > 0
          ? `${opts.input}: no valid documents (${skipped} invalid lines skipped); no output written`
          : `${opts.input}: no documents (the input is empty or has only blank lines); no output written`,
      );
    }
    builders.forEach((b, k) => {
      if (b.sizes.length === 0) {
        throw new Error(
          `${opts.input}: key "${opts.jsonKeys[k]}" has no tokens in any of the ${documents} documents ` +
            `(all empty); no output written`,
        );
      }
    });
    for (const b of builders) b.prepare();
    for (const b of builders) b.commit();
  } catch (e) {
    // Batches still in flight may fail too once the workers are stopped; nobody awaits them now.
    for (const p of inflight) p.catch(() => {});
    for (const b of builders) b.abort();
    throw e;
  } finally {
    encoder.close();
  }
  report(true);
  const seconds = (performance.now() - t0) / 1000;
  log(
    `done: ${documents} documents, ${(progress.bytes / 1e6).toFixed(2)} MB in ${seconds.toFixed(2)} s` +
      (opts.skipInvalid ? `, ${skipped} invalid lines skipped` : "") + ` -> ${prefixes.join(", ")}`,
  );
  return { prefixes, documents, skippedInvalid: skipped, inputBytes: progress.bytes, seconds };
}
