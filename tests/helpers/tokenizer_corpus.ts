// Shared inputs of the tokenizer comparison tests (BERT WordPiece, GPT-2 BPE).
import { sotuAddresses } from "../../src/data/corpus.ts";

/** assets/tokenizer/test_corpus.txt. */
export function readTestCorpus(): Promise<string> {
  return Deno.readTextFile(new URL("../../assets/tokenizer/test_corpus.txt", import.meta.url));
}

/** The first 1500 characters of four State of the Union addresses (1790, 1865, 1941, 2009). */
export async function sotuSample(): Promise<string> {
  const all = await sotuAddresses();
  const pick = all.filter((a) => a.year === 1790 || a.year === 1865 || a.year === 1941 || a.year === 2009);
  return pick.map((a) => a.text.slice(0, 1500)).join("\n\n");
}
