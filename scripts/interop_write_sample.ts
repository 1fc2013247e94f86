// Writes the .pt files scripts/interop_fixtures.py --check-deno loads with torch.load(weights_only=True);
// tests/interop_torch_checkpoint.test.ts rebuilds the same bytes and compares them with the committed files.
//   deno run -A scripts/interop_write_sample.ts tests/data/interop

import { PyDict, PyFloat, PyNamespace, PyTorchDtype, type PyValue } from "../src/interop/pickle.ts";
import { encodeTorchCheckpoint, TorchTensor } from "../src/interop/torch_checkpoint.ts";

function model(): PyDict {
  const w = new Float32Array(6 * 4).map((_, i) => (i - 7) / 8);
  const layers = new PyDict(true)
    .set(
      "layers.0.input_layernorm.weight",
      new TorchTensor("float32", [4], Float32Array.from([1, 0.5, -2, 3.25])),
    )
    .set(
      "layers.0.self_attention.query_key_value.bias",
      new TorchTensor("float16", [3], Uint16Array.from([0x3c00, 0xc000, 0x3555])),
    )
    .set("final_layernorm.weight", new TorchTensor("bfloat16", [2], Uint16Array.from([0x3f80, 0x4049])));
  const embedding = new PyDict(true).set(
    "word_embeddings",
    new PyDict(true).set("weight", new TorchTensor("float32", [6, 4], w)),
  );
  return new PyDict(true).set(
    "language_model",
    new PyDict(true).set("embedding", embedding).set("encoder", layers),
  );
}

/** A Megatron 2021 checkpoint dict (args Namespace, checkpoint_version 3.0, iteration, model). */
export function sampleCheckpoint(): PyValue {
  const args = new PyNamespace(
    new Map<string, PyValue>([
      ["num_layers", 1],
      ["hidden_size", 4],
      ["params_dtype", new PyTorchDtype("float16")],
      ["lr", 1.5e-4],
      ["data_path", ["a_text_document"]],
    ]),
  );
  return new PyDict()
    .set("args", args)
    .set("checkpoint_version", new PyFloat(3))
    .set("iteration", 42)
    .set("model", model())
    .set("positions", new TorchTensor("int64", [3], BigInt64Array.from([0n, -5n, 1n << 40n])));
}

/** The same without args: loads with plain torch.load(weights_only=True). */
export function sampleWeightsOnly(): PyValue {
  return new PyDict().set("checkpoint_version", new PyFloat(3)).set("iteration", 42).set("model", model());
}

if (import.meta.main) {
  const dir = Deno.args[0] ?? "tests/data/interop";
  Deno.writeFileSync(`${dir}/deno_written.pt`, encodeTorchCheckpoint(sampleCheckpoint()));
  Deno.writeFileSync(`${dir}/deno_written_weights_only.pt`, encodeTorchCheckpoint(sampleWeightsOnly()));
  console.log(`wrote ${dir}/deno_written.pt and deno_written_weights_only.pt`);
}
