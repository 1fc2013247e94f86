// Finetuning data readers as Megatron 2021's tasks/ (data_utils.py, race/data.py, glue/mnli.py,
// glue/qqp.py): the same text clean-up, the same [CLS] A [SEP] B [SEP] construction with its trimming
// and padding (including Megatron's quirk of padding the token types with the pad id), RACE's four
// choices per question, and the GLUE column indices, label maps and test-set handling.
// Each problem Megatron would assert on is one line naming file:line.

import { PY_WS, pyInt, pyLines, pyStrip } from "./text.ts";

const WS_RUN = new RegExp(`[${PY_WS}]+`, "g");

/** Megatron's clean_text: newlines to spaces, whitespace runs to one space, " . " -> ". " (3 passes). */
export function cleanText(text: string): string {
  let t = text.replaceAll("\n", " ").replace(WS_RUN, " ");
  for (let i = 0; i < 3; i++) t = t.replaceAll(" . ", ". ");
  return t;
}

export interface SpecialIds {
  cls: number;
  sep: number;
  pad: number;
}

export interface TokensTypesPaddings {
  ids: number[];
  types: number[];
  paddings: number[];
}

/** Megatron's build_tokens_types_paddings_from_ids: [CLS] A [SEP] (B [SEP]), cut to max_seq_length - 1
 *  plus a closing [SEP] when too long, padded to max_seq_length (types padded with the pad id). */
export function buildTokensTypesPaddings(
  a: readonly number[],
  b: readonly number[] | null,
  maxSeqLength: number,
  sp: SpecialIds,
): TokensTypesPaddings {
  let ids = [sp.cls, ...a, sp.sep];
  let types = new Array<number>(ids.length).fill(0);
  let paddings = new Array<number>(ids.length).fill(1);
  if (b !== null) {
    ids.push(...b);
    types.push(...b.map(() => 1));
    paddings.push(...b.map(() => 1));
  }
  let trimmed = false;
  if (ids.length >= maxSeqLength) {
    ids = ids.slice(0, maxSeqLength - 1);
    types = types.slice(0, maxSeqLength - 1);
    paddings = paddings.slice(0, maxSeqLength - 1);
    trimmed = true;
  }
  if (b !== null || trimmed) {
    ids.push(sp.sep);
    types.push(b === null ? 0 : 1);
    paddings.push(1);
  }
  const pad = maxSeqLength - ids.length;
  for (let i = 0; i < pad; i++) {
    ids.push(sp.pad);
    types.push(sp.pad);
    paddings.push(0);
  }
  return { ids, types, paddings };
}

/** One finetuning sample (Megatron's build_sample): for RACE each field has 4 rows, one per choice. */
export interface TaskSample<T> {
  text: T;
  types: T;
  paddingMask: T;
  label: number;
  uid: number;
}

// ------------------------------------------------------------------------------------------------
// RACE

export const RACE_NUM_CHOICES = 4;
export const RACE_MAX_QA_LENGTH = 128;

export interface RaceOptions extends SpecialIds {
  tokenize: (text: string) => number[];
  maxSeqLength: number;
  maxQaLength?: number;
}

/** RACE from one folder (e.g. RACE/train/middle): every *.txt file (in name order; Megatron's glob
 *  order is the file system's), each line one JSON document {article, questions, options, answers}.
 *  Each question gives one sample of 4 rows [CLS] qa [SEP] article [SEP], where qa is the question
 *  with "_" replaced by the option, or question + " " + option, cleaned, at most maxQaLength tokens.
 *  uid counts samples within the folder (as Megatron, it restarts for each folder). */
export function readRaceFolder(dir: string, o: RaceOptions): TaskSample<number[][]>[] {
  let names: string[];
  try {
    names = [...Deno.readDirSync(dir)].filter((e) => e.isFile && e.name.endsWith(".txt")).map((e) => e.name)
      .sort();
  } catch (e) {
    throw new Error(`${dir}: cannot list the RACE folder (${(e as Error).message})`);
  }
  if (names.length === 0) {
    throw new Error(`${dir}: no *.txt files (expected a RACE folder such as RACE/train/middle)`);
  }
  const samples: TaskSample<number[][]>[] = [];
  for (const n of names) {
    const file = `${dir}/${n}`;
    samples.push(...raceSamplesFromText(Deno.readTextFileSync(file), file, o, samples.length));
  }
  return samples;
}

/** The samples of one RACE file's text; `firstUid` continues the folder's count. */
export function raceSamplesFromText(
  text: string,
  file: string,
  o: RaceOptions,
  firstUid = 0,
): TaskSample<number[][]>[] {
  const maxQa = o.maxQaLength ?? RACE_MAX_QA_LENGTH;
  const out: TaskSample<number[][]>[] = [];
  pyLines(text).forEach((line, li) => {
    const where = `${file}:${li + 1}`;
    let d: Record<string, unknown>;
    try {
      d = JSON.parse(line);
    } catch (e) {
      throw new Error(`${where}: not a JSON document (${(e as Error).message})`);
    }
    const { article, questions, options, answers } = d as Record<string, unknown>;
    if (typeof article !== "string") throw new Error(`${where}: "article" must be a string`);
    if (!Array.isArray(questions) || !Array.isArray(options) || !Array.isArray(answers)) {
      throw new Error(`${where}: "questions", "options" and "answers" must be lists`);
    }
    if (questions.length !== answers.length || questions.length !== options.length) {
      throw new Error(
        `${where}: ${questions.length} questions, ${options.length} option lists and ${answers.length} answers (must be equal)`,
      );
    }
    const contextIds = o.tokenize(cleanText(article));
    questions.forEach((q, qi) => {
      const ans = answers[qi];
      const label = typeof ans === "string" && ans.length === 1 ? ans.charCodeAt(0) - 65 : -1;
      if (label < 0 || label >= RACE_NUM_CHOICES) {
        throw new Error(`${where}: question ${qi + 1}: answer ${JSON.stringify(ans)}, expected A, B, C or D`);
      }
      const opts = options[qi];
      if (
        !Array.isArray(opts) || opts.length !== RACE_NUM_CHOICES || !opts.every((x) => typeof x === "string")
      ) {
        throw new Error(`${where}: question ${qi + 1}: expected ${RACE_NUM_CHOICES} option strings`);
      }
      if (typeof q !== "string") throw new Error(`${where}: question ${qi + 1} is not a string`);
      const text: number[][] = [], types: number[][] = [], pads: number[][] = [];
      for (const choice of opts as string[]) {
        const qa = cleanText(q.includes("_") ? q.replaceAll("_", choice) : `${q} ${choice}`);
        const qaIds = o.tokenize(qa).slice(0, maxQa);
        const s = buildTokensTypesPaddings(qaIds, contextIds, o.maxSeqLength, o);
        text.push(s.ids), types.push(s.types), pads.push(s.paddings);
      }
      out.push({ text, types, paddingMask: pads, label, uid: firstUid + out.length });
    });
  });
  return out;
}

// ------------------------------------------------------------------------------------------------
// GLUE

/** A GLUE row before tokenization (Megatron's process_samples_from_single_path output). */
export interface GlueRaw {
  textA: string;
  textB: string;
  label: number;
  uid: number;
}

export const MNLI_LABELS: Readonly<Record<string, number>> = { contradiction: 0, entailment: 1, neutral: 2 };
export const QQP_LABELS: readonly number[] = [0, 1];

function rowsOf(text: string): string[][] {
  // Megatron: line.strip().split('\t').
  return pyLines(text).map((l) => pyStrip(l).split("\t"));
}

/** MNLI TSV (train/dev_matched/dev_mismatched/test): the header decides test (10 columns) or labelled;
 *  sentence1/2 are columns 8/9, uid column 0, the label the last column; test rows get `testLabel`. */
export function readMnli(text: string, file: string, testLabel = "contradiction"): GlueRaw[] {
  if (!(testLabel in MNLI_LABELS)) {
    throw new Error(`MNLI test label ${JSON.stringify(testLabel)} is not a label`);
  }
  const rows = rowsOf(text);
  if (rows.length === 0) throw new Error(`${file}: empty (expected a header line)`);
  const isTest = rows[0].length === 10;
  const out: GlueRaw[] = [];
  for (let i = 1; i < rows.length; i++) {
    const row = rows[i], where = `${file}:${i + 1}`;
    if (row.length < 10) throw new Error(`${where}: ${row.length} columns, expected at least 10`);
    const textA = cleanText(pyStrip(row[8])), textB = cleanText(pyStrip(row[9]));
    const uid = pyInt(row[0]);
    const label = isTest ? testLabel : pyStrip(row[row.length - 1]);
    if (textA.length === 0 || textB.length === 0) throw new Error(`${where}: empty sentence1 or sentence2`);
    if (!(label in MNLI_LABELS)) {
      throw new Error(
        `${where}: label ${JSON.stringify(label)}, expected contradiction, entailment or neutral`,
      );
    }
    if (uid === null || uid < 0) {
      throw new Error(`${where}: column 1 ${JSON.stringify(row[0])} is not an index >= 0`);
    }
    out.push({ textA, textB, label: MNLI_LABELS[label], uid });
  }
  return out;
}

/** QQP TSV: a 3-column header means test (id, question1, question2; label `testLabel`), else 6 columns
 *  (id, qid1, qid2, question1, question2, is_duplicate). Labelled rows without 6 columns or with an
 *  empty question are skipped with a warning, as Megatron does. */
export function readQqp(
  text: string,
  file: string,
  testLabel = 0,
): { samples: GlueRaw[]; warnings: string[] } {
  if (!QQP_LABELS.includes(testLabel)) throw new Error(`QQP test label ${testLabel} is not 0 or 1`);
  const rows = rowsOf(text);
  if (rows.length === 0) throw new Error(`${file}: empty (expected a header line)`);
  const isTest = rows[0].length === 3;
  if (!isTest && rows[0].length !== 6) {
    throw new Error(`${file}:1: header has ${rows[0].length} columns, expected 6 (train/dev) or 3 (test)`);
  }
  const samples: GlueRaw[] = [], warnings: string[] = [];
  for (let i = 1; i < rows.length; i++) {
    const row = rows[i], where = `${file}:${i + 1}`;
    let uid: number | null, textA: string, textB: string, label: number;
    if (isTest) {
      if (row.length !== 3) throw new Error(`${where}: ${row.length} columns, expected 3`);
      uid = pyInt(row[0]);
      textA = cleanText(pyStrip(row[1]));
      textB = cleanText(pyStrip(row[2]));
      label = testLabel;
      if (textA.length === 0 || textB.length === 0) throw new Error(`${where}: empty question`);
    } else {
      if (row.length !== 6) {
        warnings.push(`${where}: ${row.length} columns, skipped`);
        continue;
      }
      uid = pyInt(row[0]);
      textA = cleanText(pyStrip(row[3]));
      textB = cleanText(pyStrip(row[4]));
      const l = pyInt(row[5]);
      if (l === null) throw new Error(`${where}: label ${JSON.stringify(row[5])} is not an integer`);
      label = l;
      if (textA.length === 0) {
        warnings.push(`${where}: empty question1, skipped`);
        continue;
      }
      if (textB.length === 0) {
        warnings.push(`${where}: empty question2, skipped`);
        continue;
      }
    }
    if (!QQP_LABELS.includes(label)) throw new Error(`${where}: label ${label}, expected 0 or 1`);
    if (uid === null || uid < 0) {
      throw new Error(`${where}: id ${JSON.stringify(row[0])} is not an index >= 0`);
    }
    samples.push({ textA, textB, label, uid });
  }
  return { samples, warnings };
}

/** GLUEAbstractDataset.__getitem__: tokenize both texts and build the padded sample. */
export function glueSample(
  raw: GlueRaw,
  tokenize: (text: string) => number[],
  maxSeqLength: number,
  sp: SpecialIds,
): TaskSample<number[]> {
  const s = buildTokensTypesPaddings(tokenize(raw.textA), tokenize(raw.textB), maxSeqLength, sp);
  return { text: s.ids, types: s.types, paddingMask: s.paddings, label: raw.label, uid: raw.uid };
}
