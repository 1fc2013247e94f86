// One T5 training step (forward, masked-LM loss, backward of one micro-batch) on the CPU backend, for
// the README's scaled-down T5 shape (2+2 layers, hidden 128, encoder 128 / decoder 32 tokens, the
// 30720-id padded WordPiece vocabulary) and the same with a GPT-size 1024 vocabulary (how much the logits
// cost). tokens/s = b * (se + sd) * iterations/s as reported by deno bench.
// Run: deno bench -A bench/t5_step.bench.ts

import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { MaskedLmLoss } from "../src/models/lm_logits.ts";
import { T5Model } from "../src/models/t5.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import { newMicroBatchContext, paddingMaskFromKeep } from "../src/transformer/mod.ts";

const backend = createCpuBackend({ log: () => {} });

function setup(vocab: number, b: number, se: number, sd: number) {
  const comm = new SingleRankCommunicator();
  const ps = makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0);
  const model = new T5Model(
    {
      numLayers: 2,
      hiddenSize: 128,
      numAttentionHeads: 4,
      kvChannels: 32,
      ffnHiddenSize: 384,
      seqLength: se,
      maxPositionEmbeddings: se,
      vocabSize: vocab,
      hiddenDropout: 0.1,
      attentionDropout: 0.1,
      initMethodStd: 0.02,
      paramsDtype: "f32",
      activationsCheckpointMethod: null,
      seed: 1,
    },
    backend,
    ps,
    comm,
  );
  const enc = Int32Array.from({ length: b * se }, (_, i) => 1 + (i * 7919) % (vocab - 1));
  const dec = Int32Array.from({ length: b * sd }, (_, i) => 1 + (i * 104729) % (vocab - 1));
  const inp = {
    textEnc: backend.fromHost("i32", [b, se], enc),
    textDec: backend.fromHost("i32", [b, sd], dec),
    encMask: backend.fromHost("u8", [b, se, se], paddingMaskFromKeep(new Uint8Array(b * se).fill(1), b, se)),
    encDecMask: backend.fromHost("u8", [b, sd, se], new Uint8Array(b * sd * se)),
  };
  const labels = backend.fromHost("i32", [b * sd], dec.map((t) => (t * 3) % vocab));
  const mask = new Float32Array(b * sd).fill(1);
  const tp = { backend, comm, ps, dtype: "f32" as const };
  let iteration = 0;
  return async () => {
    const ctx = newMicroBatchContext({ iteration: iteration++, firstGlobalSample: 0 });
    const logits = await model.forward(inp, ctx);
    const loss = new MaskedLmLoss(tp, model.vocabStart);
    await loss.forward(logits, labels, mask, ctx);
    const d = loss.backward(ctx, 1);
    await model.backward(ctx, d);
    backend.free(d);
  };
}

for (const vocab of [30720, 1024]) {
  const [b, se, sd] = [8, 128, 32];
  const fn = setup(vocab, b, se, sd);
  Deno.bench(`t5 step L=2+2 h=128 b=${b} se=${se} sd=${sd} vocab=${vocab} (${b * (se + sd)} tokens)`, {
    group: "t5",
    baseline: vocab === 30720,
  }, async () => {
    await fn();
  });
}
