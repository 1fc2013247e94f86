// Shared by the T5 training tests: a tiny WordPiece vocabulary file and a sentence-level indexed
// dataset over it (documents of sentences, as preprocess --split-sentences writes), deterministic.
import { MMapIndexedDatasetBuilder } from "../../src/data/indexed_dataset.ts";

const SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
const WORDS = Array.from({ length: 48 }, (_, i) => `w${i}`);
const PIECES = ["##s", "##ed", "##ing", "##ly"];

/** Writes `<dir>/vocab.txt` and `<dir>/t5_text_sentence.{bin,idx}`; returns their paths. The vocab
 *  has 57 tokens ([PAD] = 0); with [BOS]/[EOS] and `--vocab-extra-ids 8` it is 67, padded to 128 per TP. */
export function writeTinyT5Data(dir: string, docs = 48): { vocabFile: string; prefix: string } {
  const vocab = [...SPECIAL, ...WORDS, ...PIECES];
  const vocabFile = `${dir}/vocab.txt`;
  Deno.writeTextFileSync(vocabFile, vocab.join("\n") + "\n");
  const first = SPECIAL.length, piece = first + WORDS.length;
  const prefix = `${dir}/t5_text_sentence`;
  const b = new MMapIndexedDatasetBuilder(prefix, "uint16");
  let x = 2024;
  const rnd = (n: number) => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return (x >>> 8) % n;
  };
  for (let d = 0; d < docs; d++) {
    const sentences = 2 + rnd(4);
    for (let s = 0; s < sentences; s++) {
      const n = 4 + rnd(9);
      const t: number[] = [];
      // A word, sometimes followed by a "##" piece (whole-word masking joins them).
      for (let i = 0; i < n; i++) {
        t.push(i > 0 && rnd(5) === 0 ? piece + rnd(PIECES.length) : first + rnd(WORDS.length));
      }
      b.addItem(t);
    }
    b.endDocument();
  }
  b.finalize();
  return { vocabFile, prefix };
}
