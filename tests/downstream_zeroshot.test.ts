// Zero-shot evaluation (Megatron 2021 tasks/zeroshot_gpt) on tiny inputs whose answers are worked out
// by hand in the comments: windows, summed NLL, perplexities, LAMBADA accuracy, the detokenizer.

import assert from "node:assert/strict";
import {
  countOriginalTokens,
  detokenizerForPath,
  evaluateLambada,
  evaluateWikitext,
  lambadaWindow,
  lmWindows,
  type LogitsProvider,
  perplexity,
  prepareWikitext,
  readLambada,
  wikitextDetokenizer,
} from "../src/downstream/zeroshot.ts";
import { formatE4, pyFloatStr } from "../src/downstream/text.ts";

function throwsWith(fn: () => unknown, text: string) {
  assert.throws(fn, (e: Error) => {
    assert.ok(e.message.includes(text), `expected "${text}" in: ${e.message}`);
    return true;
  });
}

const close = (a: number, b: number, rel = 1e-12) =>
  assert.ok(Math.abs(a - b) <= rel * Math.abs(b), `${a} vs ${b}`);

/** Vocab 4: at position 0 uniform (NLL ln 4); later, logit ln 3 on (input + 1) % 4, so the NLL of
 *  that target is ln 2 (3 / 6) and of any other ln 6. */
const toyLm: LogitsProvider = {
  vocabSize: 4,
  forward(rows) {
    return rows.map((r) => {
      const out = new Float64Array(r.length * 4);
      for (let i = 1; i < r.length; i++) out[i * 4 + ((r[i] + 1) % 4)] = Math.log(3);
      return out;
    });
  },
};

Deno.test("WikiText windows and summed NLL: non-overlapping and overlapping, by hand", async () => {
  // Pairs (input -> target): 0>1 1>2 2>3 3>0 0>2 2>3 3>1 1>2; "hit" = target is input + 1.
  const tokens = [0, 1, 2, 3, 0, 2, 3, 1, 2];
  const ln2 = Math.log(2), ln4 = Math.log(4), ln6 = Math.log(6);
  // seq 4, no overlap: 8 targets -> 2 windows [0..4], [4..8], all targets scored.
  // W0: pos0 ln4, pairs 1-3 hits. W1: pos0 (pair 4) ln4, pair 5 hit, 6 miss, 7 hit.
  const w = lmWindows(tokens, 4, 9);
  assert.equal(w.length, 2);
  assert.deepEqual([...w[1].tokens], [0, 2, 3, 1, 2]);
  assert.deepEqual([...w[1].lossMask], [1, 1, 1, 1]);
  const r = await evaluateWikitext({ tokens, numOriginalTokens: 6 }, { seqLen: 4, padId: 9 }, toyLm);
  close(r.totalLoss, 2 * ln4 + 5 * ln2 + ln6);
  // seq 4, overlap 2: targets max(8 - 2, 0) = 6 -> ceil(6/2) + 1 = 4 windows at 0, 2, 4, 6; later
  // windows score their last 2 targets: W1 pairs 4 (pos2 miss), 5 (hit); W2 pairs 6 (miss), 7 (hit);
  // W3 = [3, 1, 2] + 2 pads: its two real targets are at positions 0, 1, masked as not last-2.
  const wo = lmWindows(tokens, 4, 9, 2);
  assert.equal(wo.length, 4);
  assert.deepEqual([...wo[1].lossMask], [0, 0, 1, 1]);
  assert.deepEqual([...wo[3].tokens], [3, 1, 2, 9, 9]);
  assert.deepEqual([...wo[3].lossMask], [0, 0, 0, 0]);
  const ro = await evaluateWikitext(
    { tokens, numOriginalTokens: 6 },
    { seqLen: 4, padId: 9, overlappingEval: 2, batchSize: 3 },
    toyLm,
  );
  close(ro.totalLoss, ln4 + 5 * ln2 + 2 * ln6);
  assert.equal(ro.windows, 4);
  // Perplexities: val_loss = total / (9 - 1); token ratio (9 - 1) / (6 - 1) = 1.6.
  close(ro.valLoss, (ln4 + 5 * ln2 + 2 * ln6) / 8);
  close(ro.ppl, Math.exp((ln4 + 5 * ln2 + 2 * ln6) / 8));
  close(ro.adjustedPpl, Math.exp(((ln4 + 5 * ln2 + 2 * ln6) / 8) * 1.6));
  assert.equal(ro.tokenRatio, 1.6);
  // Short input: one window with the tail padded and masked.
  const one = lmWindows([5, 6, 7], 4, 0);
  assert.deepEqual(one.map((x) => [...x.lossMask]), [[1, 1, 0, 0]]);
});

Deno.test("perplexity: the min(20, .) clamp and Megatron's printed line", () => {
  const p = perplexity(8 * 30, 9, 6);
  assert.equal(p.ppl, Math.exp(20));
  assert.equal(p.adjustedPpl, Math.exp(20));
  const q = perplexity(Math.log(2) * 8, 9, 6);
  assert.equal(
    q.line,
    " validation results on WIKITEXT103 | avg loss: 6.9315E-01 | ppl: 2.0000E+00 | adjusted ppl: 3.0314E+00 | token ratio: 1.6 |",
  );
  assert.equal(formatE4(0.0001234567), "1.2346E-04");
  assert.equal(formatE4(123456.789), "1.2346E+05");
  assert.equal(pyFloatStr(1 / 3), "0.3333333333333333");
  assert.equal(pyFloatStr(2), "2.0");
  assert.equal(pyFloatStr(1.5e-5), "1.5e-05");
});

Deno.test("wikitext detokenizer: Megatron's rules in order", () => {
  const raw =
    ' = = Early life = = \n The city \'s 1 @,@ 000 @-@ year @.@ 5 history ( see below ) was " great " , he said . \n';
  assert.equal(
    wikitextDetokenizer(raw),
    ' == Early life ==\nThe city\'s 1,000-year.5 history (see below) was "great", he said.\n',
  );
  // Rule order matters: "s '" first joins "dogs' toys", then the quote rule strips inside '...'.
  assert.equal(
    wikitextDetokenizer(
      "the dogs ' toys /' 5/ at 5 \u00b0 C ; N of them : [ a ] { b } ' c ' ? ok ! = = = = T = = = \n",
    ),
    "the dogs'toys /'[0-9]/ at 5\u00b0C; 1 of them: [a] {b} 'c'? ok! ==== T ===\n",
  );
  assert.equal(countOriginalTokens(" a  b c \n"), 4); // split(" ") keeps the empty string between 2 spaces
  assert.equal(detokenizerForPath("/data/wikitext-103/wiki.test.tokens"), wikitextDetokenizer);
  throwsWith(() => detokenizerForPath("/data/valid.txt"), "/data/valid.txt: cannot choose a detokenizer");
  // prepareWikitext counts on the raw text, tokenizes the detokenized text.
  const seen: string[] = [];
  const prep = prepareWikitext("a , b", "wiki.txt", (t) => (seen.push(t), [1, 2, 3]));
  assert.deepEqual(seen, ["a, b"]);
  assert.deepEqual([prep.numOriginalTokens, prep.numTokenizedTokens], [3, 3]);
});

// Toy tokenizer: every letter a-z is its own id (0-25), everything else is dropped; eod/pad = 26.
const letters = (t: string) => [...t].flatMap((c) => (c >= "a" && c <= "z" ? [c.charCodeAt(0) - 97] : []));
/** Predicts (input + 1) mod 26 everywhere (vocab 27). */
const nextLetter: LogitsProvider = {
  vocabSize: 27,
  forward: (rows) =>
    rows.map((r) => {
      const out = new Float32Array(r.length * 27);
      r.forEach((t, i) => (out[i * 27 + ((t + 1) % 26)] = 1));
      return out;
    }),
};

const LAMBADA = [
  '{"text": "x yza"}', // strict: ctx x, label y z a: x>y y>z z>a all right. default: label a after z: right
  '{"text": "m abc"}', // strict: m>n != a: wrong. default: label c after b: right
  '{"text": "yz x yz"}', // strict: last word's last occurrence at 5: ctx "yz x", label y z: x>y, y>z right
  '{"text": "q abd"}', // strict: q>r != a wrong; default: b>c != d wrong
].join("\n") + "\n";

Deno.test("LAMBADA: default and --strict-lambada labels, every-token-correct accuracy, by hand", async () => {
  const plain = readLambada(LAMBADA, "lambada.jsonl", letters);
  assert.deepEqual(plain[0], { context: [23, 24, 25], label: [0] });
  const strict = readLambada(LAMBADA, "lambada.jsonl", letters, true);
  assert.deepEqual(strict[2], { context: [24, 25, 23], label: [24, 25] });
  const w = lambadaWindow(strict[0], 6, 26);
  assert.deepEqual([...w.tokens], [23, 24, 25, 0, 26, 26, 26]);
  assert.deepEqual([...w.lossMask], [1, 1, 1, 0, 0, 0]);
  const a = await evaluateLambada(plain, { seqLen: 6, padId: 26 }, nextLetter);
  assert.deepEqual([a.correct, a.total, a.accuracy], [3, 4, 0.75]);
  const b = await evaluateLambada(strict, { seqLen: 6, padId: 26, batchSize: 2 }, nextLetter);
  assert.deepEqual([b.correct, b.total, b.accuracy], [2, 4, 0.5]);
  assert.equal(
    b.line,
    " validation results on LAMBADA | number correct: 2.0000E+00 | total examples: 4.0000E+00 | avg accuracy: 5.0000E-01",
  );
  throwsWith(
    () => readLambada('{"text": "a b"}\n{"txt": 1}\n', "l.jsonl", letters),
    'l.jsonl:2: expected a string field "text"',
  );
  throwsWith(() => readLambada("{oops\n", "l.jsonl", letters), "l.jsonl:1: not a JSON object");
  await assert.rejects(
    () => evaluateLambada(plain, { seqLen: 2, padId: 26, file: "l.jsonl" }, nextLetter),
    /l\.jsonl sample 1: 4 tokens exceed --seq-length 2 \+ 1/,
  );
});
