// Checkpoint interop and sampling costs on the CPU: reading / writing a torch zip checkpoint holding
// 32 MiB of f32 (unpickle, CRC-32, copies), flattening it, and one sampling step over GPT-2's 50257 logits
// (greedy; top-k 40; top-p 0.9 over the whole vocabulary).
// Run: deno bench -A bench/interop.bench.ts

import { PyDict } from "../src/interop/pickle.ts";
import {
  decodeTorchCheckpoint,
  encodeTorchCheckpoint,
  TorchTensor,
} from "../src/interop/torch_checkpoint.ts";
import { sampleNextToken } from "../src/generation/sampling.ts";

const enc = new PyDict(true);
for (let l = 0; l < 8; l++) {
  const w = new Float32Array(1024 * 1024).map((_, i) => Math.sin(i + l));
  enc.set(`layers.${l}.mlp.dense_h_to_4h.weight`, new TorchTensor("float32", [1024, 1024], w));
}
const root = new PyDict().set(
  "model",
  new PyDict(true).set("language_model", new PyDict(true).set("encoder", enc)),
);
const bytes = encodeTorchCheckpoint(root);

Deno.bench("decode torch zip, 32 MiB f32 (8 tensors)", { group: "ckpt", baseline: true }, () => {
  decodeTorchCheckpoint(bytes, "bench.pt");
});
Deno.bench("encode torch zip, 32 MiB f32 (8 tensors)", { group: "ckpt" }, () => {
  encodeTorchCheckpoint(root);
});

const logits = new Float32Array(50257).map((_, i) => Math.sin(i * 0.61) * 4);
let step = 0;
Deno.bench("sample: greedy, vocab 50257", { group: "sample", baseline: true }, () => {
  sampleNextToken(logits, { greedy: true }, 1, step++);
});
Deno.bench("sample: top-k 40, vocab 50257", { group: "sample" }, () => {
  sampleNextToken(logits, { topK: 40 }, 1, step++);
});
Deno.bench("sample: top-p 0.9, vocab 50257", { group: "sample" }, () => {
  sampleNextToken(logits, { topP: 0.9 }, 1, step++);
});
