/**
 * GPT-2 byte-level BPE (Megatron's GPT2BPETokenizer): pre-split with the GPT-2 regex, map each piece's
 * UTF-8 bytes to symbols, apply merges in rank order, look the symbols up in encoder.json.
 *
 * Symbols are small integers rather than strings so the merge loop does only numeric map lookups:
 * symbols 0..255 are the bytes, every merge line defines (or reuses) the symbol of its concatenation.
 */
import type { Tokenizer } from "./types.ts";

/**
 * GPT-2's pre-split pattern. `\s` is spelled as the Unicode White_Space property because the original
 * runs on Python's `regex` module, whose `\s` is White_Space (JS `\s` also matches U+FEFF and misses U+0085).
 */
const GPT2_SPLIT_SOURCE = String
  .raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+`;

/** Token string of GPT-2's end-of-document token. */
export const GPT2_EOD_TOKEN = "<|endoftext|>";

/** Pair keys pack two symbol ids; symbols stay below 2^21 so keys stay exact doubles. */
const PAIR_SHIFT = 2 ** 21;

/** Default bound on the per-instance piece -> ids cache before it is cleared. */
const DEFAULT_CACHE_SIZE = 1 << 16;

/** Rescanning all pairs per merge is fastest for short pieces; long ones (minified code, runs) use a heap. */
const DEFAULT_HEAP_THRESHOLD = 96;

/** Heap keys pack (rank, position); positions stay below 2^31 and ranks below 2^21, so keys are exact. */
const POS_SHIFT = 2 ** 31;

/** GPT-2's reversible byte -> printable character table (index = byte value). */
export function bytesToUnicode(): string[] {
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCharCode(printable ? b : 256 + extra++);
  }
  return table;
}

export interface Gpt2SourceNames {
  /** Shown in error messages for the vocab (encoder.json) text. */
  vocabFile?: string;
  /** Shown in error messages for the merges (vocab.bpe / merges.txt) text. */
  mergeFile?: string;
  /** Bound on the BPE cache (entries); 0 disables caching. */
  cacheSize?: number;
  /** Pieces with more bytes than this use the O(n log n) heap merge instead of rescanning (tests lower it). */
  heapThreshold?: number;
}

/** Parses encoder.json text into token -> id, with one-line errors naming the file. */
export function parseEncoderJson(text: string, file = "<vocab>"): Map<string, number> {
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    const msg = e instanceof Error ? e.message.split("\n")[0] : String(e);
    throw new Error(
      `${file}: expected a JSON object mapping tokens to ids (encoder.json), found invalid JSON (${msg})`,
    );
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    const found = obj === null ? "null" : Array.isArray(obj) ? "an array" : typeof obj;
    throw new Error(`${file}: expected a JSON object mapping tokens to ids (encoder.json), found ${found}`);
  }
  const map = new Map<string, number>();
  for (const [tok, id] of Object.entries(obj as Record<string, unknown>)) {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
      throw new Error(
        `${file}: expected a non-negative integer id for token ${JSON.stringify(tok)}, found ${
          JSON.stringify(id)
        }`,
      );
    }
    map.set(tok, id);
  }
  if (map.size === 0) {
    throw new Error(`${file}: expected a JSON object mapping tokens to ids, found an empty object`);
  }
  return map;
}

/**
 * Parses merges text (vocab.bpe / merges.txt): the first line is a "#version" header and is dropped, as
 * is the trailing empty line; every other line must be two space-separated symbols.
 */
export function parseMerges(text: string, file = "<merges>"): Array<[string, string]> {
  const lines = text.split("\n");
  let start = 0;
  if (lines.length > 0 && lines[0].startsWith("#")) start = 1;
  let end = lines.length;
  while (end > start && lines[end - 1].trim() === "") end--;
  const merges: Array<[string, string]> = [];
  for (let i = start; i < end; i++) {
    const parts = lines[i].trim().split(/[ \t\r]+/);
    if (parts.length !== 2 || parts[0] === "") {
      throw new Error(
        `${file}:${i + 1}: expected a merge line "<left> <right>" (two space-separated symbols), found ${
          JSON.stringify(lines[i].slice(0, 80))
        }`,
      );
    }
    merges.push([parts[0], parts[1]]);
  }
  if (merges.length === 0) {
    throw new Error(`${file}: expected BPE merge lines after the "#version" header, found none`);
  }
  return merges;
}

export class GPT2BPETokenizer implements Tokenizer {
  readonly type = "GPT2BPETokenizer";
  readonly vocabSize: number;
  readonly eod: number;
  readonly cls = undefined;
  readonly sep = undefined;
  readonly pad = undefined;
  readonly mask = undefined;
  readonly bos = undefined;
  readonly eos = undefined;
  readonly additionalSpecialTokensIds: number[] = [];
  /** token string -> id, as in encoder.json. */
  readonly encoder: ReadonlyMap<string, number>;

  readonly #split: RegExp;
  /** (left symbol * PAIR_SHIFT + right symbol) -> merge rank. */
  readonly #pairRank: Map<number, number>;
  /** merge rank -> left / right / merged symbol. */
  readonly #mergeLeft: Int32Array;
  readonly #mergeRight: Int32Array;
  readonly #mergeOut: Int32Array;
  /** symbol -> token id (0 when the symbol's string is not in the vocab, as Megatron's callers assume). */
  readonly #symToken: Int32Array;
  /** token id -> its bytes, for decoding. */
  readonly #tokenBytes: Array<Uint8Array | undefined>;
  readonly #cache = new Map<string, number[]>();
  readonly #cacheSize: number;
  readonly #heapThreshold: number;
  readonly #utf8 = new TextEncoder();
  readonly #decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  #scratch = new Uint8Array(256);

  constructor(encoder: Map<string, number>, merges: Array<[string, string]>, names: Gpt2SourceNames = {}) {
    const vocabFile = names.vocabFile ?? "<vocab>";
    this.encoder = encoder;
    this.vocabSize = encoder.size;
    const eod = encoder.get(GPT2_EOD_TOKEN);
    if (eod === undefined) {
      throw new Error(
        `${vocabFile}: expected the end-of-document token ${GPT2_EOD_TOKEN} in the vocab, found none`,
      );
    }
    this.eod = eod;
    this.#cacheSize = names.cacheSize ?? DEFAULT_CACHE_SIZE;
    this.#heapThreshold = names.heapThreshold ?? DEFAULT_HEAP_THRESHOLD;
    this.#split = new RegExp(GPT2_SPLIT_SOURCE, "gu");

    const byteChars = bytesToUnicode();
    const symOf = new Map<string, number>();
    const symStr: string[] = [];
    for (let b = 0; b < 256; b++) {
      symOf.set(byteChars[b], b);
      symStr.push(byteChars[b]);
    }
    const intern = (s: string): number => {
      let id = symOf.get(s);
      if (id === undefined) {
        id = symStr.length;
        symOf.set(s, id);
        symStr.push(s);
      }
      return id;
    };
    const n = merges.length;
    this.#mergeLeft = new Int32Array(n);
    this.#mergeRight = new Int32Array(n);
    this.#mergeOut = new Int32Array(n);
    this.#pairRank = new Map();
    for (let r = 0; r < n; r++) {
      const [a, b] = merges[r];
      const la = intern(a), rb = intern(b), out = intern(a + b);
      if (symStr.length >= PAIR_SHIFT) {
        throw new Error(`${names.mergeFile ?? "<merges>"}: too many merge symbols`);
      }
      const key = la * PAIR_SHIFT + rb;
      // A repeated pair takes its last rank, as GPT-2's dict(zip(merges, range(n))) does.
      this.#pairRank.set(key, r);
      this.#mergeLeft[r] = la;
      this.#mergeRight[r] = rb;
      this.#mergeOut[r] = out;
    }
    this.#symToken = new Int32Array(symStr.length);
    for (let s = 0; s < symStr.length; s++) this.#symToken[s] = encoder.get(symStr[s]) ?? 0;

    const charByte = new Map<string, number>();
    for (let b = 0; b < 256; b++) charByte.set(byteChars[b], b);
    let maxId = 0;
    for (const id of encoder.values()) if (id > maxId) maxId = id;
    this.#tokenBytes = new Array(maxId + 1);
    for (const [tok, id] of encoder) {
      const bytes: number[] = [];
      for (const ch of tok) {
        const b = charByte.get(ch);
        if (b !== undefined) bytes.push(b);
        else for (const x of this.#utf8.encode(ch)) bytes.push(x); // not a byte-level char: keep its UTF-8
      }
      this.#tokenBytes[id] = Uint8Array.from(bytes);
    }
  }

  /** Builds from the text of encoder.json and vocab.bpe (synchronous, for workers that already hold the files). */
  static fromFiles(vocabJsonText: string, mergesText: string, names: Gpt2SourceNames = {}): GPT2BPETokenizer {
    const encoder = parseEncoderJson(vocabJsonText, names.vocabFile);
    const merges = parseMerges(mergesText, names.mergeFile);
    return new GPT2BPETokenizer(encoder, merges, names);
  }

  /** Builds from an already-parsed encoder object (e.g. a JSON module import) and the merges text. */
  static fromEncoderObject(
    encoder: Record<string, number>,
    mergesText: string,
    names: Gpt2SourceNames = {},
  ): GPT2BPETokenizer {
    const map = new Map<string, number>();
    for (const k in encoder) map.set(k, encoder[k]);
    return new GPT2BPETokenizer(map, parseMerges(mergesText, names.mergeFile), names);
  }

  tokenize(text: string): number[] {
    const out: number[] = [];
    const re = this.#split;
    re.lastIndex = 0;
    let m: RegExpExecArray | null;
    while ((m = re.exec(text)) !== null) {
      const piece = m[0];
      let ids = this.#cache.get(piece);
      if (ids === undefined) {
        ids = this.#encodePiece(piece);
        if (this.#cacheSize > 0) {
          if (this.#cache.size >= this.#cacheSize) this.#cache.clear();
          this.#cache.set(piece, ids);
        }
      }
      for (let i = 0; i < ids.length; i++) out.push(ids[i]);
    }
    return out;
  }

  /** BPE of one pre-split piece. */
  #encodePiece(piece: string): number[] {
    let syms: number[];
    const len = piece.length;
    let ascii = true;
    for (let i = 0; i < len; i++) {
      if (piece.charCodeAt(i) >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) {
      syms = new Array(len);
      for (let i = 0; i < len; i++) syms[i] = piece.charCodeAt(i);
    } else {
      if (this.#scratch.length < len * 3) this.#scratch = new Uint8Array(len * 3);
      const { written } = this.#utf8.encodeInto(piece, this.#scratch);
      syms = Array.from(this.#scratch.subarray(0, written));
    }
    return syms.length > this.#heapThreshold ? this.#mergeHeap(syms) : this.#mergeScan(syms);
  }

  /** GPT-2's bpe(): repeatedly take the lowest-ranked adjacent pair and merge all its occurrences. */
  #mergeScan(syms: number[]): number[] {
    let n = syms.length;
    const pairRank = this.#pairRank;
    while (n >= 2) {
      let best = -1;
      for (let i = 0; i + 1 < n; i++) {
        const r = pairRank.get(syms[i] * PAIR_SHIFT + syms[i + 1]);
        if (r !== undefined && (best < 0 || r < best)) best = r;
      }
      if (best < 0) break;
      const a = this.#mergeLeft[best], b = this.#mergeRight[best], merged = this.#mergeOut[best];
      // Merge every occurrence of the pair, left to right without overlap.
      let w = 0;
      for (let i = 0; i < n;) {
        if (i + 1 < n && syms[i] === a && syms[i + 1] === b) {
          syms[w++] = merged;
          i += 2;
        } else {
          syms[w++] = syms[i++];
        }
      }
      n = w;
    }
    const ids: number[] = new Array(n);
    for (let i = 0; i < n; i++) ids[i] = this.#symToken[syms[i]];
    return ids;
  }

  /**
   * Same result as #mergeScan in O(n log n): a min-heap of (rank, position) over a linked list of symbols.
   * All occurrences of the lowest rank are merged left to right before the pairs they create are queued,
   * which is exactly GPT-2's "merge every occurrence of the best bigram" step.
   */
  #mergeHeap(input: number[]): number[] {
    const n = input.length;
    const sym = Int32Array.from(input);
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const pairRank = this.#pairRank;
    const left = this.#mergeLeft, right = this.#mergeRight, out = this.#mergeOut;
    const heap: number[] = [];
    const push = (key: number) => {
      let i = heap.length;
      heap.push(key);
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (heap[p] <= key) break;
        heap[i] = heap[p];
        i = p;
      }
      heap[i] = key;
    };
    const pop = (): number => {
      const top = heap[0];
      const last = heap.pop()!;
      const len = heap.length;
      if (len > 0) {
        let i = 0;
        for (;;) {
          let c = 2 * i + 1;
          if (c >= len) break;
          if (c + 1 < len && heap[c + 1] < heap[c]) c++;
          if (heap[c] >= last) break;
          heap[i] = heap[c];
          i = c;
        }
        heap[i] = last;
      }
      return top;
    };
    const queuePair = (pos: number) => {
      if (pos < 0 || sym[pos] < 0) return;
      const nx = next[pos];
      if (nx < 0) return;
      const r = pairRank.get(sym[pos] * PAIR_SHIFT + sym[nx]);
      if (r !== undefined) push(r * POS_SHIFT + pos);
    };
    for (let i = 0; i + 1 < n; i++) queuePair(i);
    const created: number[] = [];
    while (heap.length > 0) {
      const rank = Math.floor(heap[0] / POS_SHIFT);
      const a = left[rank], b = right[rank], m = out[rank];
      // One GPT-2 step: every still-valid occurrence of this rank's pair, in position order.
      while (heap.length > 0 && Math.floor(heap[0] / POS_SHIFT) === rank) {
        const pos = pop() - rank * POS_SHIFT;
        const nx = next[pos];
        if (sym[pos] !== a || nx < 0 || sym[nx] !== b) continue; // stale: a neighbour was merged away
        sym[pos] = m;
        sym[nx] = -1;
        const nn = next[nx];
        next[pos] = nn;
        if (nn >= 0) prev[nn] = pos;
        created.push(prev[pos], pos);
      }
      for (const p of created) queuePair(p);
      created.length = 0;
    }
    const ids: number[] = [];
    for (let i = 0; i >= 0; i = next[i]) ids.push(this.#symToken[sym[i]]);
    return ids;
  }

  detokenize(ids: ArrayLike<number>): string {
    const parts: Uint8Array[] = new Array(ids.length);
    let total = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      const bytes = Number.isInteger(id) && id >= 0 ? this.#tokenBytes[id] : undefined;
      if (bytes === undefined) {
        throw new Error(
          `GPT2BPETokenizer.detokenize: expected a vocab id at position ${i}, found ${id} (vocab has ${this.vocabSize} tokens)`,
        );
      }
      parts[i] = bytes;
      total += bytes.length;
    }
    const buf = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      buf.set(p, off);
      off += p.length;
    }
    return this.#decoder.decode(buf);
  }
}
