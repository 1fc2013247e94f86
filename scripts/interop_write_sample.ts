// Writes the .pt files scripts/interop_fixtures.py --check-deno loads with torch.load(weights_only=True),
// and the Megatron fixture exported as a GPT-2 folder that it loads with transformers;
// tests/interop_torch_checkpoint.test.ts rebuilds the same bytes and compares them with the committed files.
//   deno run -A scripts/interop_write_sample.ts tests/data/interop

import { PyDict, PyFloat, PyNamespace, PyTorchDtype, type PyValue } from "../src/interop/pickle.ts";
import { encodeTorchCheckpoint, TorchTensor } from "../src/interop/torch_checkpoint.ts";
import { readMegatronCheckpoint } from "../src/interop/megatron_checkpoint.ts";
import { gpt2Config, gpt2NameMap, megatronToHf, toNamedTensors, writeHfFolder } from "../src/interop/hf.ts";

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

/** The torch-written Megatron fixture exported as a transformers GPT-2 folder (vocabulary kept padded:
 *  the fixture has no real vocabulary size). */
export function exportMegatronFixtureToHf(dir: string, out: string): void {
  const c = readMegatronCheckpoint(`${dir}/megatron_gpt_zip.pt`);
  const a = c.args as Record<string, number>;
  const shape = { numLayers: a.num_layers, hidden: a.hidden_size, heads: a.num_attention_heads };
  const meg = new Map(
    [...c.chunks[0]].map(([k, t]) => [k, { shape: t.shape, data: t.data as Float32Array }]),
  );
  const hf = megatronToHf(gpt2NameMap(shape), meg, { ...shape, vocab: a.padded_vocab_size });
  writeHfFolder(out, {
    config: gpt2Config({ ...shape, vocab: a.padded_vocab_size, positions: a.max_position_embeddings }),
    tensors: toNamedTensors(hf),
  });
}

if (import.meta.main) {
  const dir = Deno.args[0] ?? "tests/data/interop";
  Deno.writeFileSync(`${dir}/deno_written.pt`, encodeTorchCheckpoint(sampleCheckpoint()));
  Deno.writeFileSync(`${dir}/deno_written_weights_only.pt`, encodeTorchCheckpoint(sampleWeightsOnly()));
  exportMegatronFixtureToHf(dir, `${dir}/deno_exported_gpt2`);
  console.log(`wrote ${dir}/deno_written.pt, deno_written_weights_only.pt and deno_exported_gpt2/`);
}
