// Train/valid/test split of a dataset's items into three contiguous, unshuffled ranges, computed as
// Megatron 2021 does (dataset_utils.get_train_valid_test_split_), including Python's float
// parsing and round-half-to-even, so the same --split gives the same document ranges.

/** Megatron's default --split. */
export const DEFAULT_SPLIT = "969, 30, 1";

// What Python's float() accepts for the values users write (no hex, no empty strings).
const FLOAT_RE = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** Python 3 round(x) for a float: nearest integer, ties to even. */
export function pythonRound(x: number): number {
  const f = Math.floor(x);
  const d = x - f; // exact for doubles
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Parses "949,50,1" or "949/50/1" (or one number) into three weights normalized to sum 1. */
export function parseSplitString(splitString: string, flag = "--split"): [number, number, number] {
  const sep = splitString.includes(",") ? "," : splitString.includes("/") ? "/" : null;
  const parts = sep === null ? [splitString] : splitString.split(sep);
  const values = parts.map((p) => {
    const t = p.trim();
    if (!FLOAT_RE.test(t)) {
      throw new Error(`${flag}: expected numbers separated by ',' or '/', found '${p}' in '${splitString}'`);
    }
    return Number(t);
  });
  while (values.length < 3) values.push(0);
  const three = values.slice(0, 3);
  // Python's sum(): left to right from 0.
  let sum = 0;
  for (const v of three) sum += v;
  if (!(sum > 0)) {
    throw new Error(`${flag}: expected split weights with a positive sum, found '${splitString}'`);
  }
  return [three[0] / sum, three[1] / sum, three[2] / sum];
}

/**
 * Split boundaries [0, a, b, size]: train = [0, a), valid = [a, b), test = [b, size).
 * size is the number of items (GPT) or documents (BERT/T5).
 */
export function getTrainValidTestSplit(splitString: string, size: number): [number, number, number, number] {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new Error(`split: expected a dataset size >= 0, found ${size}`);
  }
  const splits = parseSplitString(splitString);
  const index = [0];
  for (let i = 0; i < 3; i++) index.push(index[i] + pythonRound(splits[i] * size));
  const diff = index[3] - size;
  for (let i = 1; i < 4; i++) index[i] -= diff;
  return [index[0], index[1], index[2], index[3]];
}
