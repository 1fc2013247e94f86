// Shared by the CLI tests: a tiny loose-JSON corpus preprocessed by the real tasks/preprocess_data.ts.
import assert from "node:assert/strict";

/**
 * Writes `docs` (one text per line) to `<dir>/c.jsonl`, preprocesses it with NullTokenizer
 * (--append-eod) and returns the dataset prefix `<dir>/c_text_document`.
 */
export async function preprocessTinyCorpus(dir: string, docs: string[], vocabSize: number): Promise<string> {
  const lines = docs.map((text) => JSON.stringify({ text }));
  Deno.writeTextFileSync(`${dir}/c.jsonl`, lines.join("\n") + "\n");
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../../tasks/preprocess_data.ts", import.meta.url).pathname,
      ...["--input", `${dir}/c.jsonl`, "--output-prefix", `${dir}/c`, "--append-eod"],
      ...["--tokenizer-type", "NullTokenizer", "--vocab-size", String(vocabSize)],
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return `${dir}/c_text_document`;
}
