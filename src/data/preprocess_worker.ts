// Worker side of preprocess: builds its own tokenizer once, then tokenizes batches of lines in the
// order they arrive (the main thread relies on that order).

import { encodeBatch, tokenizerFromSource, tokenizerInfo } from "./preprocess.ts";
import type { EncodeOptions, PreprocessTokenizer, WorkerRequest, WorkerResponse } from "./preprocess.ts";

interface WorkerScope {
  onmessage: ((ev: MessageEvent<WorkerRequest>) => void) | null;
  postMessage(msg: WorkerResponse, transfer?: Transferable[]): void;
}

function serve(scope: WorkerScope): void {
  const segmenter = new Intl.Segmenter("en", { granularity: "sentence" });
  let tok: PreprocessTokenizer | null = null;
  let encode: EncodeOptions | null = null;
  // Batches that arrive while the tokenizer is still loading wait on this chain, in order.
  let chain: Promise<void> = Promise.resolve();
  scope.onmessage = (ev) => {
    const msg = ev.data;
    chain = chain.then(async () => {
      try {
        if (msg.type === "init") {
          tok = await tokenizerFromSource(msg.source);
          encode = msg.encode;
          scope.postMessage({ type: "ready", info: tokenizerInfo(tok) });
        } else {
          const result = encodeBatch(msg.lines, msg.firstLine, tok!, encode!, segmenter);
          const transfer = result.keys.flatMap((
            k,
          ) => [k.tokens.buffer, k.itemSizes.buffer, k.docItems.buffer] as ArrayBuffer[]);
          scope.postMessage({ type: "result", result }, transfer);
        }
      } catch (e) {
        scope.postMessage({ type: "error", message: `preprocess worker: ${(e as Error).message}` });
      }
    });
  };
}

serve(self as unknown as WorkerScope);
