// Megatron 2021 checkpoint files: layout names, tracker, loading torch-written checkpoints of
// checkpoint_version 3, 1 and 0 (older names and QKV orders made by torch in the fixture script) to
// the same 2021 names and rows, and a write/read round trip of the nested model dict.

import assert from "node:assert/strict";
import {
  buildMegatronCheckpoint,
  megatronCheckpointFile,
  megatronNesting,
  readMegatronCheckpoint,
  readMegatronTracker,
  writeMegatronCheckpoint,
  writeMegatronTracker,
} from "../src/interop/megatron_checkpoint.ts";
import { type PyDict, PyTorchDtype } from "../src/interop/pickle.ts";
import { readTorchCheckpoint, TorchTensor } from "../src/interop/torch_checkpoint.ts";

const DATA = new URL("./data/interop/", import.meta.url).pathname;

function throwsWith(fn: () => unknown, text: string) {
  assert.throws(fn, (e: Error) => {
    assert.ok(e.message.includes(text), `expected "${text}" in: ${e.message}`);
    return true;
  });
}

Deno.test("Megatron layout: file names, tracker, nesting", () => {
  assert.equal(megatronCheckpointFile("/c", 100, 1), "/c/iter_0000100/mp_rank_01/model_optim_rng.pt");
  assert.equal(
    megatronCheckpointFile("/c", 100, 1, 2, 4),
    "/c/iter_0000100/mp_rank_01_002/model_optim_rng.pt",
  );
  assert.equal(megatronCheckpointFile("/c", "release", 0), "/c/release/mp_rank_00/model_optim_rng.pt");
  assert.deepEqual(megatronNesting("language_model.embedding.word_embeddings.weight"), [
    "language_model",
    "embedding",
    "word_embeddings",
    "weight",
  ]);
  assert.deepEqual(megatronNesting("language_model.encoder.layers.3.mlp.dense_h_to_4h.bias"), [
    "language_model",
    "encoder",
    "layers.3.mlp.dense_h_to_4h.bias",
  ]);
  assert.deepEqual(megatronNesting("lm_head.dense.weight"), ["lm_head", "dense.weight"]);
  const dir = Deno.makeTempDirSync();
  throwsWith(() => readMegatronTracker(dir), `${dir}/latest_checkpointed_iteration.txt: cannot read`);
  writeMegatronTracker(dir, 2000);
  assert.equal(readMegatronTracker(dir), 2000);
  writeMegatronTracker(dir, "release");
  assert.equal(readMegatronTracker(dir), "release");
  Deno.writeTextFileSync(`${dir}/latest_checkpointed_iteration.txt`, "latest\n");
  throwsWith(() => readMegatronTracker(dir), 'expected an iteration > 0 or "release", found "latest"');
  Deno.removeSync(dir, { recursive: true });
});

Deno.test("checkpoint_version 0 and 1 (older names, QKV orders) load to the version-3 tensors", () => {
  const v3 = readMegatronCheckpoint(`${DATA}megatron_gpt_zip.pt`);
  assert.equal(v3.version, 3);
  assert.equal(v3.iteration, 5000);
  assert.equal(v3.args?.params_dtype, "torch.float16");
  assert.equal(v3.chunks.length, 1);
  for (const f of ["megatron_gpt_v0.pt", "megatron_gpt_v1.pt"]) {
    const old = readMegatronCheckpoint(`${DATA}${f}`);
    assert.equal(old.version, f.includes("v0") ? 0 : 1);
    assert.deepEqual([...old.chunks[0].keys()].sort(), [...v3.chunks[0].keys()].sort(), f);
    for (const [k, t] of v3.chunks[0]) assert.deepEqual(old.chunks[0].get(k)!.data, t.data, `${f}: ${k}`);
  }
  // The raw rows really differ (the fix-up did something).
  const raw = readTorchCheckpoint(`${DATA}megatron_gpt_v0.pt`) as PyDict;
  const enc = (raw.get("model") as PyDict).get("language_model") as PyDict;
  const rawQkv = (enc.get("transformer") as PyDict).get(
    "layers.0.attention.query_key_value.weight",
  ) as TorchTensor;
  const fixed = v3.chunks[0].get("language_model.encoder.layers.0.self_attention.query_key_value.weight")!;
  assert.notDeepEqual(rawQkv.data, fixed.data);
});

Deno.test("Megatron checkpoint write/read round trip (nested 2021 dict, checkpoint_version 3.0)", () => {
  const src = readMegatronCheckpoint(`${DATA}megatron_gpt_zip.pt`);
  const dir = Deno.makeTempDirSync();
  const file = megatronCheckpointFile(dir, 7, 0);
  writeMegatronCheckpoint(file, {
    args: {
      num_layers: 2,
      hidden_size: 8,
      num_attention_heads: 2,
      params_dtype: new PyTorchDtype("float32"),
    },
    iteration: 7,
    chunks: src.chunks,
  });
  const back = readMegatronCheckpoint(file);
  assert.deepEqual([back.version, back.iteration], [3, 7]);
  assert.equal(back.args?.params_dtype, "torch.float32");
  assert.deepEqual([...back.chunks[0].keys()], [...src.chunks[0].keys()]);
  for (const [k, t] of src.chunks[0]) assert.deepEqual(back.chunks[0].get(k)!.data, t.data, k);
  // The nesting is Megatron's: model -> language_model -> embedding -> word_embeddings -> weight.
  const d = buildMegatronCheckpoint({ args: {}, iteration: 1, chunks: src.chunks });
  const emb = ((d.get("model") as PyDict).get("language_model") as PyDict).get("embedding") as PyDict;
  assert.ok((emb.get("word_embeddings") as PyDict).get("weight") instanceof TorchTensor);
  // Two chunks become model0 / model1.
  const two = buildMegatronCheckpoint({ args: {}, iteration: 1, chunks: [src.chunks[0], src.chunks[0]] });
  assert.deepEqual([...two.map.keys()], ["args", "checkpoint_version", "iteration", "model0", "model1"]);
  assert.deepEqual([...Deno.readDirSync(`${dir}/iter_0000007/mp_rank_00`)].map((e) => e.name), [
    "model_optim_rng.pt",
  ]);
  Deno.removeSync(dir, { recursive: true });
});
