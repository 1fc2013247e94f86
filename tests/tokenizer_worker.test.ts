// Tokenizer files read once on the main thread and posted to a worker give the same ids there
// (the synchronous tokenizerFromFiles path preprocessing workers use).
import assert from "node:assert/strict";
import { readTokenizerFiles, tokenizerFromFiles, type TokenizerType } from "../src/tokenizer/mod.ts";

const corpusText = await Deno.readTextFile(new URL("../assets/tokenizer/test_corpus.txt", import.meta.url));

Deno.test("tokenizer: files posted to a worker build an identical tokenizer (GPT-2 and BERT)", async () => {
  const modUrl = new URL("../src/tokenizer/mod.ts", import.meta.url).href;
  const code = `import { tokenizerFromFiles } from ${JSON.stringify(modUrl)};
self.onmessage = (e) => {
  const t = tokenizerFromFiles(e.data.files);
  self.postMessage({ ids: t.tokenize(e.data.text), vocabSize: t.vocabSize });
};`;
  const url = URL.createObjectURL(new Blob([code], { type: "application/typescript" }));
  const worker = new Worker(url, { type: "module" });
  try {
    for (const type of ["GPT2BPETokenizer", "BertWordPieceLowerCase"] as TokenizerType[]) {
      const files = await readTokenizerFiles({ tokenizerType: type, vocabExtraIds: 2 });
      const local = tokenizerFromFiles(files);
      const reply = new Promise<{ ids: number[]; vocabSize: number }>((resolve, reject) => {
        worker.onmessage = (e) => resolve(e.data);
        worker.onerror = (e) => reject(new Error(e.message));
      });
      worker.postMessage({ files, text: corpusText });
      const got = await reply;
      assert.equal(got.vocabSize, local.vocabSize);
      assert.deepEqual(got.ids, local.tokenize(corpusText));
      assert.ok(got.ids.length > 500);
    }
  } finally {
    worker.terminate();
    URL.revokeObjectURL(url);
  }
});
