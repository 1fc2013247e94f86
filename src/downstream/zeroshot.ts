// Zero-shot GPT evaluation as Megatron 2021's tasks/zeroshot_gpt (datasets.py, detokenizer.py,
// evaluate.py): WikiText-103 perplexity over sliding windows with the word-level token-ratio
// adjustment, and LAMBADA last-word accuracy (every label token must be the argmax). The model is a
// `LogitsProvider` callback, so these are pure functions of its logits.

import { formatE4, pyFloatStr, pyLines, pySplitWhitespace, pyStrip } from "./text.ts";

// ------------------------------------------------------------------------------------------------
// detokenizers (applied to the raw file before BPE; chosen by a substring of the file path)

/** Megatron's ptb_detokenizer. */
export function ptbDetokenizer(s: string): string {
  return s
    .replaceAll(" '", "'")
    .replaceAll(" \n", "\n")
    .replaceAll("\n ", "\n")
    .replaceAll(" n't", "n't")
    .replaceAll(" N ", "1 ")
    .replaceAll("$ 1", "$1")
    .replaceAll("# 1", "#1");
}

// Python's re \s for str patterns.
const S = "[\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/** Megatron's wikitext_detokenizer, rule for rule in its order. */
export function wikitextDetokenizer(s: string): string {
  // contractions
  s = s.replaceAll("s '", "s'");
  // Megatron's pattern is literally "/' [0-9]/" (slashes included) and its replacement is literal.
  s = s.replace(/\/' [0-9]\//g, "/'[0-9]/");
  // number separators
  s = s.replaceAll(" @-@ ", "-").replaceAll(" @,@ ", ",").replaceAll(" @.@ ", ".");
  // punctuation
  s = s.replaceAll(" : ", ": ").replaceAll(" ; ", "; ").replaceAll(" . ", ". ");
  s = s.replaceAll(" ! ", "! ").replaceAll(" ? ", "? ").replaceAll(" , ", ", ");
  // double brackets: strip spaces just inside (), [], {}, "", ''
  s = s.replace(new RegExp(`\\(${S}*([^\\)]*?)${S}*\\)`, "g"), "($1)");
  s = s.replace(new RegExp(`\\[${S}*([^\\]]*?)${S}*\\]`, "g"), "[$1]");
  s = s.replace(new RegExp(`\\{${S}*([^}]*?)${S}*\\}`, "g"), "{$1}");
  s = s.replace(new RegExp(`"${S}*([^"]*?)${S}*"`, "g"), '"$1"');
  s = s.replace(new RegExp(`'${S}*([^']*?)${S}*'`, "g"), "'$1'");
  // miscellaneous
  s = s.replaceAll("= = = =", "====").replaceAll("= = =", "===").replaceAll("= =", "==");
  s = s.replaceAll(" \u00b0 ", "\u00b0");
  s = s.replaceAll(" \n", "\n").replaceAll("\n ", "\n");
  s = s.replaceAll(" N ", " 1 ");
  s = s.replaceAll(" 's", "'s");
  return s;
}

/** Megatron's lambada_detokenizer (identity). */
export function lambadaDetokenizer(s: string): string {
  return s;
}

/** Megatron's get_detokenizer: the first of "ptb", "wiki", "lambada" contained in the path. */
export function detokenizerForPath(path: string): (s: string) => string {
  if (path.includes("ptb")) return ptbDetokenizer;
  if (path.includes("wiki")) return wikitextDetokenizer;
  if (path.includes("lambada")) return lambadaDetokenizer;
  throw new Error(
    `${path}: cannot choose a detokenizer: the path must contain "ptb", "wiki" or "lambada" (as Megatron requires)`,
  );
}

// ------------------------------------------------------------------------------------------------
// the model interface

/** What the evaluation needs from a model: logits for a batch of token rows. */
export interface LogitsProvider {
  /** Columns per position in the returned logits (the padded vocabulary, as Megatron scores it). */
  readonly vocabSize: number;
  /** For each input row of `seqLen` token ids, its logits [seqLen * vocabSize] row-major. */
  forward(rows: Int32Array[]): Promise<ArrayLike<number>[]> | ArrayLike<number>[];
}

/** One model input as Megatron's datasets produce it: seqLen + 1 tokens (inputs are [0, seqLen),
 *  labels [1, seqLen]) and a 0/1 mask over the seqLen labels. */
export interface EvalWindow {
  tokens: Int32Array;
  lossMask: Uint8Array;
}

function logSoftmaxAt(row: ArrayLike<number>, off: number, v: number, target: number): number {
  let m = -Infinity;
  for (let j = 0; j < v; j++) if (row[off + j] > m) m = row[off + j];
  let s = 0;
  for (let j = 0; j < v; j++) s += Math.exp(row[off + j] - m);
  return row[off + target] - m - Math.log(s);
}

function argmaxAt(row: ArrayLike<number>, off: number, v: number): number {
  let b = 0;
  for (let j = 1; j < v; j++) if (row[off + j] > row[off + b]) b = j;
  return b;
}

async function runWindows(
  windows: readonly EvalWindow[],
  provider: LogitsProvider,
  batchSize: number,
  each: (w: EvalWindow, logits: ArrayLike<number>, seqLen: number) => void,
): Promise<void> {
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new Error(`batch size ${batchSize}: expected >= 1`);
  }
  for (let b = 0; b < windows.length; b += batchSize) {
    const batch = windows.slice(b, b + batchSize);
    const rows = batch.map((w) => w.tokens.subarray(0, w.tokens.length - 1));
    const out = await provider.forward(rows);
    if (out.length !== rows.length) {
      throw new Error(`logits provider returned ${out.length} rows for ${rows.length}`);
    }
    batch.forEach((w, i) => {
      const seqLen = rows[i].length;
      if (out[i].length !== seqLen * provider.vocabSize) {
        throw new Error(
          `logits provider returned ${out[i].length} values for ${seqLen} positions x ${provider.vocabSize}`,
        );
      }
      each(w, out[i], seqLen);
    });
  }
}

// ------------------------------------------------------------------------------------------------
// WikiText-103 (loss metric)

/** Megatron's num_original_tokens: len(raw.strip().split(" ")) on the raw word-level file. */
export function countOriginalTokens(raw: string): number {
  return pyStrip(raw).split(" ").length;
}

/** Megatron's _LMDataset: windows of seqLen + 1 tokens every `overlappingEval` tokens (default
 *  seqLen: no overlap); windows after the first score only their last `overlappingEval` targets;
 *  the tail is padded with `padId` (eod) and masked. */
export function lmWindows(
  tokens: readonly number[],
  seqLen: number,
  padId: number,
  overlappingEval?: number,
) {
  if (!Number.isInteger(seqLen) || seqLen < 1) throw new Error(`--seq-length ${seqLen}: expected >= 1`);
  const ov = Math.max(1, overlappingEval ?? seqLen);
  const totalTargets = tokens.length - 1;
  const targets = Math.max(totalTargets - ov, 0);
  const count = Math.max(Math.ceil(targets / ov) + 1, 1);
  const windows: EvalWindow[] = [];
  for (let idx = 0; idx < count; idx++) {
    const start = idx * ov;
    const slice = tokens.slice(start, start + seqLen + 1);
    const t = new Int32Array(seqLen + 1).fill(padId);
    t.set(slice);
    const mask = new Uint8Array(seqLen);
    for (let i = 0; i < seqLen; i++) mask[i] = i + 1 < slice.length ? 1 : 0;
    if (ov !== seqLen && idx !== 0) mask.fill(0, 0, Math.max(0, seqLen - ov));
    windows.push({ tokens: t, lossMask: mask });
  }
  return windows;
}

export interface PerplexityResult {
  /** Sum of token NLL over the scored targets. */
  totalLoss: number;
  numTokenizedTokens: number;
  numOriginalTokens: number;
  valLoss: number;
  ppl: number;
  adjustedPpl: number;
  tokenRatio: number;
  /** Megatron's printed line (without the dashes around it). */
  line: string;
}

/** Megatron's evaluate_and_print_results for the loss metric. */
export function perplexity(
  totalLoss: number,
  numTokenizedTokens: number,
  numOriginalTokens: number,
  task = "WIKITEXT103",
): PerplexityResult {
  const valLoss = totalLoss / (numTokenizedTokens - 1);
  const ppl = Math.exp(Math.min(20, valLoss));
  const tokenRatio = (numTokenizedTokens - 1) / (numOriginalTokens - 1);
  const adjustedPpl = Math.exp(Math.min(20, valLoss * tokenRatio));
  const line = ` validation results on ${task} | avg loss: ${formatE4(valLoss)} | ppl: ${formatE4(ppl)} | ` +
    `adjusted ppl: ${formatE4(adjustedPpl)} | token ratio: ${pyFloatStr(tokenRatio)} |`;
  return { totalLoss, numTokenizedTokens, numOriginalTokens, valLoss, ppl, adjustedPpl, tokenRatio, line };
}

export interface WikitextOptions {
  /** --seq-length */
  seqLen: number;
  /** --overlapping-eval (Megatron's default 32; undefined here means no overlap, as None does). */
  overlappingEval?: number;
  /** eod id: padding. */
  padId: number;
  /** Rows per provider call (Megatron's --micro-batch-size). */
  batchSize?: number;
}

/** Prepare WikiText from the raw file text: Megatron counts original tokens, detokenizes (rule chosen
 *  by `path`), then tokenizes. */
export function prepareWikitext(raw: string, path: string, tokenize: (text: string) => number[]) {
  const numOriginalTokens = countOriginalTokens(raw);
  const tokens = tokenize(detokenizerForPath(path)(raw));
  if (tokens.length < 2) throw new Error(`${path}: fewer than 2 tokens after tokenization; nothing to score`);
  return { tokens, numOriginalTokens, numTokenizedTokens: tokens.length };
}

/** The summed NLL over every window's masked targets, then Megatron's perplexities. */
export async function evaluateWikitext(
  data: { tokens: readonly number[]; numOriginalTokens: number },
  o: WikitextOptions,
  provider: LogitsProvider,
): Promise<PerplexityResult & { windows: number }> {
  const windows = lmWindows(data.tokens, o.seqLen, o.padId, o.overlappingEval);
  let total = 0;
  await runWindows(windows, provider, o.batchSize ?? 1, (w, logits, seqLen) => {
    for (let i = 0; i < seqLen; i++) {
      if (w.lossMask[i]) {
        total -= logSoftmaxAt(logits, i * provider.vocabSize, provider.vocabSize, w.tokens[i + 1]);
      }
    }
  });
  return { ...perplexity(total, data.tokens.length, data.numOriginalTokens), windows: windows.length };
}

// ------------------------------------------------------------------------------------------------
// LAMBADA (accuracy metric)

export interface LambadaSample {
  context: number[];
  label: number[];
}

/** Read LAMBADA JSON lines ({"text": ...} per line). Default: label = the last BPE token; with
 *  `strict` (--strict-lambada): label = tokenize(" " + last whitespace word), context = tokenize of the
 *  text before that word's last occurrence, stripped. Errors name file:line. */
export function readLambada(
  text: string,
  file: string,
  tokenize: (text: string) => number[],
  strict = false,
): LambadaSample[] {
  const out: LambadaSample[] = [];
  pyLines(text).forEach((line, i) => {
    const where = `${file}:${i + 1}`;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (e) {
      throw new Error(`${where}: not a JSON object (${(e as Error).message})`);
    }
    const t = (obj as { text?: unknown })?.text;
    if (typeof t !== "string") throw new Error(`${where}: expected a string field "text"`);
    if (!strict) {
      const tokens = tokenize(t);
      if (tokens.length === 0) throw new Error(`${where}: "text" tokenizes to nothing`);
      out.push({ context: tokens.slice(0, -1), label: [tokens[tokens.length - 1]] });
      return;
    }
    const words = pySplitWhitespace(t);
    if (words.length === 0) throw new Error(`${where}: "text" has no words`);
    const last = words[words.length - 1];
    const start = t.lastIndexOf(last);
    out.push({ context: tokenize(pyStrip(t.slice(0, start))), label: tokenize(" " + last) });
  });
  return out;
}

/** Megatron's _LambadaDataset item: context + label padded to seqLen + 1, the mask on the label. */
export function lambadaWindow(
  s: LambadaSample,
  seqLen: number,
  padId: number,
  where = "LAMBADA",
): EvalWindow {
  const n = s.context.length + s.label.length;
  if (n > seqLen + 1) {
    throw new Error(`${where}: ${n} tokens exceed --seq-length ${seqLen} + 1 (Megatron does not truncate)`);
  }
  const tokens = new Int32Array(seqLen + 1).fill(padId);
  tokens.set(s.context);
  tokens.set(s.label, s.context.length);
  const mask = new Uint8Array(seqLen);
  // pad_mask [0]*len(context) + [1]*len(label) + [0]*pad, then drop the first entry.
  for (let j = 0; j < s.label.length; j++) {
    const pos = s.context.length + j - 1;
    if (pos >= 0) mask[pos] = 1;
  }
  return { tokens, lossMask: mask };
}

export interface AccuracyResult {
  correct: number;
  total: number;
  accuracy: number;
  line: string;
}

/** A sample counts only when the argmax equals the label at every masked position. */
export async function evaluateLambada(
  samples: readonly LambadaSample[],
  o: { seqLen: number; padId: number; batchSize?: number; file?: string },
  provider: LogitsProvider,
): Promise<AccuracyResult> {
  const windows = samples.map((s, i) =>
    lambadaWindow(s, o.seqLen, o.padId, `${o.file ?? "LAMBADA"} sample ${i + 1}`)
  );
  let correct = 0;
  await runWindows(windows, provider, o.batchSize ?? 1, (w, logits, seqLen) => {
    let ok = true;
    for (let i = 0; i < seqLen && ok; i++) {
      if (w.lossMask[i] && argmaxAt(logits, i * provider.vocabSize, provider.vocabSize) !== w.tokens[i + 1]) {
        ok = false;
      }
    }
    if (ok) correct++;
  });
  return accuracy(correct, samples.length);
}

/** Megatron's evaluate_and_print_results for the accuracy metric. */
export function accuracy(correct: number, total: number, task = "LAMBADA"): AccuracyResult {
  const acc = correct / total;
  const line = ` validation results on ${task} | number correct: ${formatE4(correct)} | ` +
    `total examples: ${formatE4(total)} | avg accuracy: ${formatE4(acc)}`;
  return { correct, total, accuracy: acc, line };
}
