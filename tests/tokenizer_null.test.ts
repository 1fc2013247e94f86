// NullTokenizer (Megatron-Core's): pre-tokenized ids, vocabulary = --vocab-size ids plus eod.
import assert from "node:assert/strict";
import { buildTokenizer } from "../src/tokenizer/mod.ts";

Deno.test("NullTokenizer: ids in, ids out, eod after the last id", async () => {
  const t = await buildTokenizer({ tokenizerType: "NullTokenizer", vocabSize: 100 });
  assert.equal(t.vocabSize, 101);
  assert.equal(t.eod, 100);
  assert.deepEqual(t.tokenize(" 3 14  15\n92 100"), [3, 14, 15, 92, 100]);
  assert.equal(t.detokenize([1, 2, 3]), "1 2 3");
  assert.deepEqual(t.tokenize(""), []);
  assert.throws(() => t.tokenize("1 x"), /NullTokenizer: expected token ids in 0\.\.100, found 'x'/);
  assert.throws(() => t.tokenize("101"), /found '101'/);
  await assert.rejects(
    () => buildTokenizer({ tokenizerType: "NullTokenizer" }),
    /--tokenizer-type NullTokenizer needs --vocab-size/,
  );
});
