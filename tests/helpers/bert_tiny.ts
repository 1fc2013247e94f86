// Shared by the BERT tests: a tiny WordPiece vocab.txt (specials, 60 words, 30 "##" pieces) and a
// synthetic sentence-level indexed dataset over it (deterministic LCG ids, documents of 2-6
// sentences), so BERT runs end to end without the 30522-token bert-base vocabulary.

import { MMapIndexedDatasetBuilder } from "../../src/data/indexed_dataset.ts";

/** Writes `<dir>/vocab.txt`; returns its path. Ids: 0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP], 4 [MASK],
 *  5..64 words w0..w59, 65..94 pieces ##p0..##p29. */
export function writeTinyVocab(dir: string): string {
  const lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
  for (let i = 0; i < 60; i++) lines.push(`w${i}`);
  for (let i = 0; i < 30; i++) lines.push(`##p${i}`);
  const path = `${dir}/vocab.txt`;
  Deno.writeTextFileSync(path, lines.join("\n") + "\n");
  return path;
}

/** Writes `<dir>/bert_text_sentence.{idx,bin}`: `docs` documents of 2-6 sentences, 3-9 tokens each. */
export function writeTinySentences(dir: string, docs = 40, seed = 4321): string {
  const prefix = `${dir}/bert_text_sentence`;
  const b = new MMapIndexedDatasetBuilder(prefix, "uint16");
  let x = seed;
  const next = () => (x = (x * 1103515245 + 12345) % 2147483648);
  for (let d = 0; d < docs; d++) {
    const sentences = 2 + (d * 3) % 5;
    for (let s = 0; s < sentences; s++) {
      const t: number[] = [];
      const n = 3 + (next() >> 8) % 7;
      for (let i = 0; i < n; i++) {
        // Mostly word starts, some continuation pieces (never first in a sentence).
        const piece = i > 0 && (next() >> 8) % 4 === 0;
        t.push(piece ? 65 + (next() >> 8) % 30 : 5 + (next() >> 8) % 60);
      }
      b.addItem(t);
    }
    b.endDocument();
  }
  b.finalize();
  return prefix;
}
