// Hugging Face <-> Megatron 2021 weights: the transforms on hand-made examples, exact round trips, and
// the conversion of tiny transformers models against the same conversion done with torch ops in
// scripts/interop_fixtures.py (tests/data/interop/hf_*_megatron.safetensors).

import assert from "node:assert/strict";
import {
  bertConfig,
  bertNameMap,
  bertShapeFromConfig,
  convertQkv,
  gpt2NameMap,
  gpt2ShapeFromConfig,
  hfToMegatron,
  megatronToHf,
  paddedVocabSize,
  type QkvLayout,
  readHfFolder,
  resizeRows,
  type Tensor2,
  transpose2d,
  writeHfFolder,
} from "../src/interop/hf.ts";
import { readSafetensors } from "../src/training/safetensors.ts";
import { exportMegatronFixtureToHf } from "../scripts/interop_write_sample.ts";

const DATA = new URL("./data/interop/", import.meta.url).pathname;

function throwsWith(fn: () => unknown, text: string) {
  assert.throws(fn, (e: Error) => {
    assert.ok(e.message.includes(text), `expected "${text}" in: ${e.message}`);
    return true;
  });
}

function asMap(dir: string): Map<string, Tensor2> {
  return new Map(readHfFolder(dir).tensors.map((t) => [t.name, { shape: t.shape, data: t.data }]));
}

Deno.test("transpose2d and resizeRows: hand examples", () => {
  assert.deepEqual(
    transpose2d(Float32Array.from([1, 2, 3, 4, 5, 6]), 2, 3),
    Float32Array.from([1, 4, 2, 5, 3, 6]),
  );
  assert.deepEqual(resizeRows(Uint16Array.from([1, 2, 3, 4]), 2, 3), Uint16Array.from([1, 2, 3, 4, 0, 0]));
  assert.deepEqual(resizeRows(Uint16Array.from([1, 2, 3, 4, 0, 0]), 2, 1), Uint16Array.from([1, 2]));
  assert.equal(paddedVocabSize(50257), 50304);
  assert.equal(paddedVocabSize(50257, 128, 2), 50432);
  assert.equal(paddedVocabSize(30522), 30592);
});

Deno.test("convertQkv: Megatron checkpoint_version 0/1/2/3 orders on labelled rows", () => {
  // Label each row 100*head + 10*split + dim in the HF block order [split, head, dim] (np 2, hn 2).
  const np = 2, hn = 2;
  const blocks: number[] = [];
  for (let s = 0; s < 3; s++) {
    for (let h = 0; h < np; h++) for (let d = 0; d < hn; d++) blocks.push(100 * h + 10 * s + d);
  }
  const a = Float64Array.from(blocks);
  // v3 (and v2): per head [q0 q1 k0 k1 v0 v1].
  assert.deepEqual([...convertQkv(a, "blocks", "v3", np, hn, 1)], [
    0,
    1,
    10,
    11,
    20,
    21,
    100,
    101,
    110,
    111,
    120,
    121,
  ]);
  // v1: per head, per dim, [q k v].
  assert.deepEqual([...convertQkv(a, "blocks", "v1", np, hn, 1)], [
    0,
    10,
    20,
    1,
    11,
    21,
    100,
    110,
    120,
    101,
    111,
    121,
  ]);
  // v0 is the block order itself.
  assert.deepEqual([...convertQkv(a, "blocks", "v0", np, hn, 1)], blocks);
  // Megatron's fix-up: v1 -> v3 is view [np, hn, 3, cols] -> transpose(1, 2).
  const v1 = convertQkv(a, "blocks", "v1", np, hn, 1);
  assert.deepEqual(convertQkv(v1, "v1", "v3", np, hn, 1), convertQkv(a, "blocks", "v3", np, hn, 1));
  // Every pair of layouts round-trips exactly on a weight with several columns.
  const w = Float32Array.from({ length: 3 * 3 * 4 * 5 }, (_, i) => i * 0.25 - 7);
  const layouts: QkvLayout[] = ["blocks", "v0", "v1", "v2", "v3"];
  for (const f of layouts) {
    for (const t of layouts) {
      assert.deepEqual(convertQkv(convertQkv(w, f, t, 3, 4, 5), t, f, 3, 4, 5), w, `${f}->${t}`);
    }
  }
  // KV (2 splits) as Megatron's key_value.
  const kv = Float32Array.from([0, 1, 2, 3]); // blocks: k h0, k h1, v h0, v h1 (hn 1)
  assert.deepEqual([...convertQkv(kv, "blocks", "v3", 2, 1, 1, 2)], [0, 2, 1, 3]);
});

Deno.test("HF GPT-2 -> Megatron: equals the torch-computed conversion exactly, and back to HF bit for bit", () => {
  const folder = readHfFolder(`${DATA}hf_gpt2`);
  const shape = gpt2ShapeFromConfig(folder.config);
  assert.deepEqual(shape, { numLayers: 2, hidden: 8, heads: 2, vocab: 50, positions: 16 });
  const hf = asMap(`${DATA}hf_gpt2`);
  const map = gpt2NameMap(shape);
  const meg = hfToMegatron(map, hf, shape);
  const want = readSafetensors(`${DATA}hf_gpt2_megatron.safetensors`).tensors;
  assert.deepEqual([...meg.keys()].sort(), want.map((t) => t.name).sort());
  for (const t of want) {
    assert.deepEqual(meg.get(t.name)!.shape, t.shape, t.name);
    assert.deepEqual(meg.get(t.name)!.data, t.data, t.name);
  }
  const back = megatronToHf(map, meg, { ...shape, vocab: shape.vocab });
  assert.deepEqual([...back.keys()].sort(), [...hf.keys()].sort());
  for (const [k, t] of hf) assert.deepEqual(back.get(k), { shape: t.shape, data: t.data }, k);
  // Through an older checkpoint_version layout and back.
  const v1 = hfToMegatron(map, hf, { ...shape, qkvLayout: "v1" });
  const again = megatronToHf(map, v1, { ...shape, vocab: 50, qkvLayout: "v1" });
  for (const [k, t] of hf) assert.deepEqual(again.get(k)!.data, t.data, k);
});

Deno.test("HF BERT -> Megatron (post-LN shift): equals the torch-computed conversion, and back exactly", () => {
  const folder = readHfFolder(`${DATA}hf_bert`);
  const shape = bertShapeFromConfig(folder.config);
  assert.equal(shape.layerNormEps, 1e-12);
  const hf = asMap(`${DATA}hf_bert`);
  const map = bertNameMap(shape);
  const meg = hfToMegatron(map, hf, shape);
  const want = readSafetensors(`${DATA}hf_bert_megatron.safetensors`).tensors;
  assert.deepEqual([...meg.keys()].sort(), want.map((t) => t.name).sort());
  for (const t of want) assert.deepEqual(meg.get(t.name), { shape: t.shape, data: t.data }, t.name);
  const back = megatronToHf(map, meg, { ...shape, vocab: shape.vocab });
  assert.deepEqual([...back.keys()].sort(), [...hf.keys()].sort());
  for (const [k, t] of hf) assert.deepEqual(back.get(k), { shape: t.shape, data: t.data }, k);
  // The export config describes the same model.
  assert.deepEqual(bertShapeFromConfig(bertConfig(shape)), shape);
  for (const k of ["vocab_size", "hidden_size", "intermediate_size", "layer_norm_eps", "type_vocab_size"]) {
    assert.equal(bertConfig(shape)[k], folder.config[k], k);
  }
});

Deno.test("HF folders: write/read round trip; tied head checked; bad input named", () => {
  const dir = Deno.makeTempDirSync();
  const src = readHfFolder(`${DATA}hf_gpt2`);
  writeHfFolder(`${dir}/out`, src);
  const again = readHfFolder(`${dir}/out`);
  assert.deepEqual(again.config, src.config);
  assert.deepEqual(again.tensors, src.tensors);
  assert.deepEqual([...Deno.readDirSync(`${dir}/out`)].map((e) => e.name).sort(), [
    "config.json",
    "model.safetensors",
  ]);
  const shape = gpt2ShapeFromConfig(src.config);
  const hf = asMap(`${DATA}hf_gpt2`);
  // An lm_head equal to wte is accepted (dropped); a different one is refused.
  const wte = hf.get("transformer.wte.weight")!;
  hf.set("lm_head.weight", { shape: wte.shape, data: wte.data.slice() });
  hfToMegatron(gpt2NameMap(shape), hf, shape);
  const untied = wte.data.slice() as Float32Array;
  untied[3] += 1;
  hf.set("lm_head.weight", { shape: wte.shape, data: untied });
  throwsWith(() => hfToMegatron(gpt2NameMap(shape), hf, shape, "gpt2"), "gpt2: lm_head.weight differs from");
  hf.delete("lm_head.weight");
  hf.set("transformer.h.0.attn.extra", { shape: [1], data: new Float32Array(1) });
  throwsWith(
    () => hfToMegatron(gpt2NameMap(shape), hf, shape, "gpt2"),
    "gpt2: unexpected tensor transformer.h.0.attn.extra",
  );
  hf.delete("transformer.h.0.attn.extra");
  hf.delete("transformer.ln_f.bias");
  throwsWith(
    () => hfToMegatron(gpt2NameMap(shape), hf, shape, "gpt2"),
    "gpt2: missing tensor transformer.ln_f.bias",
  );
  Deno.writeTextFileSync(`${dir}/out/config.json`, "{ nope");
  throwsWith(() => readHfFolder(`${dir}/out`), `${dir}/out/config.json: not valid JSON`);
  throwsWith(() => readHfFolder(`${dir}/none`), `${dir}/none/config.json: cannot read`);
  throwsWith(
    () => gpt2ShapeFromConfig({ ...src.config, n_head: 3 }, "c.json"),
    "c.json: n_embd 8 is not divisible by n_head 3",
  );
  throwsWith(
    () => gpt2ShapeFromConfig({ ...src.config, n_layer: "2" }, "c.json"),
    "c.json: n_layer: expected a positive integer",
  );
  Deno.removeSync(dir, { recursive: true });
});

Deno.test("Megatron -> HF GPT-2 export: bytes equal the folder transformers loaded with the reference logits", () => {
  const check = JSON.parse(Deno.readTextFileSync(`${DATA}deno_written_check.json`)).deno_exported_gpt2;
  // scripts/interop_fixtures.py --check-deno: GPT2LMHeadModel.from_pretrained on this folder.
  assert.ok(
    check.max_abs_diff <= 1e-5 * check.max_abs,
    `transformers saw logits off by ${check.max_abs_diff}`,
  );
  const dir = Deno.makeTempDirSync();
  exportMegatronFixtureToHf(DATA.replace(/\/$/, ""), `${dir}/gpt2`);
  for (const f of ["config.json", "model.safetensors"]) {
    assert.deepEqual(
      Deno.readFileSync(`${dir}/gpt2/${f}`),
      Deno.readFileSync(`${DATA}deno_exported_gpt2/${f}`),
      f,
    );
  }
  Deno.removeSync(dir, { recursive: true });
});
