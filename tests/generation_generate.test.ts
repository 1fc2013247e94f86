// The generation driver over a toy model: greedy equals a hand-written greedy loop, stops at eod (not
// yielded) and at min(seq_length - 1, context + out_seq_length), sampling is reproducible per seed.

import assert from "node:assert/strict";
import { generateAll, generateTokens, type NextTokenLogits } from "../src/generation/generate.ts";
import { argmax } from "../src/generation/sampling.ts";

/** Vocab 10 (eod 9): favours (3 * last + len) % 10. */
const toy: NextTokenLogits = (tokens) => {
  const out = new Float32Array(10).fill(0);
  out[(3 * tokens[tokens.length - 1] + tokens.length) % 10] = 2;
  out[(tokens[0] + 1) % 10] = 1;
  return out;
};

Deno.test("greedy generation equals an independent greedy loop; eod and length bounds", async () => {
  const ctx = [1, 2];
  // Hand loop: argmax of the toy logits, appended, until 9 or 2 + 6 tokens.
  const want: number[] = [];
  const seq = [...ctx];
  while (seq.length < 8) {
    const t = argmax(toy(seq) as Float32Array);
    if (t === 9) break;
    seq.push(t);
    want.push(t);
  }
  const got = await generateAll(ctx, toy, { greedy: true, outSeqLength: 6, seqLength: 100, eod: 9, seed: 1 });
  assert.deepEqual(got, want);
  // [1, 2]: (3*2+2)%10 = 8; [1,2,8]: (24+3)%10 = 7; [..7]: (21+4)%10 = 5; [..5]: (15+5)%10 = 0; [..0]: 6;
  // [..6]: (18+7)%10 = 5.
  assert.deepEqual(got, [8, 7, 5, 0, 6, 5]);
  // seq_length bound: min(5 - 1, 2 + 6) = 4 tokens in all, so 2 generated.
  assert.deepEqual(
    await generateAll(ctx, toy, { greedy: true, outSeqLength: 6, seqLength: 5, eod: 9, seed: 1 }),
    [8, 7],
  );
  // eod stops and is not yielded: with eod 0 the 4th token ends it.
  assert.deepEqual(
    await generateAll(ctx, toy, { greedy: true, outSeqLength: 6, seqLength: 100, eod: 0, seed: 1 }),
    [8, 7, 5],
  );
  // Streaming: the iterator can be stopped early.
  const first: number[] = [];
  for await (
    const t of generateTokens(ctx, toy, { greedy: true, outSeqLength: 6, seqLength: 100, eod: 9, seed: 1 })
  ) {
    first.push(t);
    if (first.length === 2) break;
  }
  assert.deepEqual(first, [8, 7]);
  await assert.rejects(
    () => generateAll([1, 2, 3], toy, { outSeqLength: 1, seqLength: 3, eod: 9, seed: 1 }),
    /no room under --seq-length 3/,
  );
});

Deno.test("sampled generation is reproducible for a seed and changes with it", async () => {
  const o = { topK: 3, temperature: 2, outSeqLength: 20, seqLength: 100, eod: 99, seed: 5 };
  const a = await generateAll([4], toy, o);
  const b = await generateAll([4], toy, o);
  const c = await generateAll([4], toy, { ...o, seed: 6 });
  assert.equal(a.length, 20);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
});
