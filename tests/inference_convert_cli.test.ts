// convert through the real CLI. The tiny HF GPT-2 fixture (scripts/interop_fixtures.py) converted to a
// megatron-deno checkpoint runs through the project's own GPTModel forward to transformers' logits
// (reference_logits.json, relative 1e-5); converting back to HF, also through a Megatron .pt folder at
// TP = PP = 2, gives byte-identical tensors; the torch-written Megatron .pt reproduces its logits too.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { buildGptModel, modelLogits } from "../src/inference/gpt_runner.ts";
import { readGpt } from "../src/inference/gpt_weights.ts";
import { readSafetensors } from "../src/training/safetensors.ts";
import { errorLine, runScript } from "./helpers/run_cli.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const DATA = new URL("./data/interop/", import.meta.url).pathname;
const ref = JSON.parse(Deno.readTextFileSync(`${DATA}reference_logits.json`));
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_convert_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const backend = createCpuBackend({ log: () => {} });

const convert = (...args: string[]) => runScript(CLI, ["convert", ...args]);

/** Logits of the reference input through GPTModel; the first `vocab` columns of each position. */
async function logitsOf(dir: string, vocab: number, vocabSize?: number): Promise<number[]> {
  const full = readGpt("megatron-deno", dir, vocabSize);
  const model = buildGptModel(full, backend);
  const l = await modelLogits(model, [ref.input_ids]);
  const V = model.cfg.vocabSize, out: number[] = [];
  for (let i = 0; i < ref.input_ids.length; i++) out.push(...l.subarray(i * V, i * V + vocab));
  return out;
}

function assertClose(got: number[], want: number[], rel: number) {
  assert.equal(got.length, want.length);
  const scale = Math.max(...want.map(Math.abs));
  got.forEach((g, i) => assert.ok(Math.abs(g - want[i]) <= rel * scale, `logit ${i}: ${g} vs ${want[i]}`));
}

const bytes = (d: ArrayBufferView) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength);

Deno.test("convert hf -> megatron-deno: GPTModel's logits equal transformers' (rel 1e-5)", async () => {
  const r = await convert(
    "--from",
    "hf",
    "--to",
    "megatron-deno",
    "--load",
    `${DATA}hf_gpt2`,
    "--save",
    `${DIR}/deno`,
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /2 layers, hidden 8, 2 heads, vocab 50, TP 1, PP 1/);
  assertClose(await logitsOf(`${DIR}/deno`, 50), ref.hf_gpt2_logits, 1e-5);
  // Padding rows of the imported vocabulary are zero.
  const word = readSafetensors(`${DIR}/deno/release/mp_rank_00/model.safetensors`).tensors
    .find((t) => t.name === "language_model.embedding.word_embeddings.weight")!;
  assert.deepEqual(word.shape, [128, 8]);
  assert.ok(Array.from(word.data.subarray(50 * 8) as Float32Array).every((x) => x === 0));
});

Deno.test("convert: hf -> megatron-deno -> hf, and via megatron-pt at TP 2 PP 2, are byte-identical", async () => {
  if (!Deno.statSync(`${DIR}/deno`).isDirectory) throw new Error("first test did not run");
  const orig = new Map(readSafetensors(`${DATA}hf_gpt2/model.safetensors`).tensors.map((t) => [t.name, t]));
  const paths: [string, string[]][] = [
    ["hf1", ["--from", "megatron-deno", "--to", "hf", "--load", `${DIR}/deno`]],
  ];
  let r = await convert(
    ...["--from", "megatron-deno", "--to", "megatron-pt", "--load", `${DIR}/deno`, "--save", `${DIR}/pt22`],
    ...["--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "2"],
  );
  assert.equal(r.code, 0, r.stderr);
  assert.ok(Deno.statSync(`${DIR}/pt22/release/mp_rank_01_001/model_optim_rng.pt`).isFile);
  paths.push(["hf2", ["--from", "megatron-pt", "--to", "hf", "--load", `${DIR}/pt22`]]);
  for (const [name, args] of paths) {
    r = await convert(...args, "--save", `${DIR}/${name}`);
    assert.equal(r.code, 0, r.stderr);
    const back = readSafetensors(`${DIR}/${name}/model.safetensors`).tensors;
    assert.equal(back.length, orig.size, name); // every weight, no extras (lm_head is tied)
    for (const t of back) {
      const o = orig.get(t.name);
      assert.ok(o, `${name}: unexpected ${t.name}`);
      assert.equal(t.dtype, o.dtype);
      assert.deepEqual(t.shape, o.shape);
      assert.deepEqual(bytes(t.data), bytes(o.data), `${name}: ${t.name}`);
    }
    const cfg = JSON.parse(Deno.readTextFileSync(`${DIR}/${name}/config.json`));
    assert.deepEqual(
      [cfg.model_type, cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_positions],
      ["gpt2", 50, 2, 8, 2, 16],
    );
  }
});

Deno.test("convert megatron-pt (torch-written .pt) -> megatron-deno: transformers' logits of it", async () => {
  // The fixture says GPT2BPETokenizer but has 128 rows: the real vocabulary is given.
  const r = await convert(
    ...["--from", "megatron-pt", "--to", "megatron-deno", "--load", `${DATA}megatron_gpt_zip.pt`],
    ...["--save", `${DIR}/fromPt`, "--vocab-size", "128"],
  );
  assert.equal(r.code, 0, r.stderr);
  assertClose(await logitsOf(`${DIR}/fromPt`, 128, 128), ref.megatron_gpt_logits, 1e-5);
  const meta = JSON.parse(Deno.readTextFileSync(`${DIR}/fromPt/iter_0005000/mp_rank_00/meta.json`));
  assert.equal(meta.iteration, 5000);
});

Deno.test("convert: bad input is one line, exit 1 or 2, nothing written", async () => {
  let r = await convert("--from", "onnx", "--to", "hf", "--load", DIR, "--save", `${DIR}/x`);
  assert.equal(r.code, 2);
  assert.equal(
    errorLine(r, "convert"),
    '--from: expected one of hf, megatron-pt, megatron-deno, found "onnx"',
  );
  r = await convert("--from", "hf", "--to", "hf", "--load", DIR);
  assert.equal(r.code, 2);
  assert.equal(errorLine(r, "convert"), "--save: required");
  r = await convert("--from", "hf", "--to", "megatron-deno", "--load", `${DIR}/none`, "--save", `${DIR}/x`);
  assert.equal(r.code, 1);
  assert.equal(errorLine(r, "convert"), `--load ${DIR}/none: not found`);
  // A BERT whose activation the model does not have.
  Deno.mkdirSync(`${DIR}/relu`);
  Deno.copyFileSync(`${DATA}hf_bert/model.safetensors`, `${DIR}/relu/model.safetensors`);
  const cfg = JSON.parse(Deno.readTextFileSync(`${DATA}hf_bert/config.json`));
  Deno.writeTextFileSync(`${DIR}/relu/config.json`, JSON.stringify({ ...cfg, hidden_act: "relu" }));
  r = await convert("--from", "hf", "--to", "megatron-deno", "--load", `${DIR}/relu`, "--save", `${DIR}/x`);
  assert.equal(r.code, 1);
  assert.equal(
    errorLine(r, "convert"),
    `${DIR}/relu/config.json: hidden_act "relu": only "gelu" (erf) is supported`,
  );
  r = await convert(
    "--from",
    "megatron-pt",
    "--to",
    "hf",
    "--load",
    `${DATA}megatron_gpt_zip.pt`,
    "--save",
    `${DIR}/x`,
  );
  assert.equal(r.code, 1);
  assert.equal(
    errorLine(r, "convert"),
    `${DATA}megatron_gpt_zip.pt: vocabulary 50257 is larger than the 128 embedding rows (give the real one with --vocab-size)`,
  );
  Deno.mkdirSync(`${DIR}/full`);
  Deno.writeTextFileSync(`${DIR}/full/keep.txt`, "x");
  r = await convert(
    "--from",
    "hf",
    "--to",
    "megatron-deno",
    "--load",
    `${DATA}hf_gpt2`,
    "--save",
    `${DIR}/full`,
  );
  assert.equal(r.code, 1);
  assert.equal(errorLine(r, "convert"), `--save ${DIR}/full: folder is not empty`);
  r = await convert(
    ...["--from", "hf", "--to", "hf", "--load", `${DATA}hf_gpt2`, "--save", `${DIR}/x`],
    ...["--target-tensor-parallel-size", "2"],
  );
  assert.equal(r.code, 1);
  assert.equal(errorLine(r, "convert"), "--to hf: a Hugging Face folder has one shard; use TP = PP = 1");
  assert.deepEqual([...Deno.readDirSync(DIR)].map((e) => e.name).filter((n) => n.startsWith("x")), []);
});

Deno.test("convert hf: the hub's GPT2Model names (no transformer. prefix) import the same", async () => {
  const src = readSafetensors(`${DATA}hf_gpt2/model.safetensors`).tensors;
  Deno.mkdirSync(`${DIR}/bare`);
  Deno.copyFileSync(`${DATA}hf_gpt2/config.json`, `${DIR}/bare/config.json`);
  const { writeSafetensors } = await import("../src/training/safetensors.ts");
  writeSafetensors(
    `${DIR}/bare/model.safetensors`,
    src.map((t) => ({ ...t, name: t.name.replace(/^transformer\./, "") })),
  );
  const a = readGpt("hf", `${DIR}/bare`), b = readGpt("hf", `${DATA}hf_gpt2`);
  assert.deepEqual([...a.tensors.keys()], [...b.tensors.keys()]);
  for (const [n, t] of a.tensors) assert.deepEqual(bytes(t.data), bytes(b.tensors.get(n)!.data), n);
});
