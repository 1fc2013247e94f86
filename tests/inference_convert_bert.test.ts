// BERT through convert's real CLI. The tiny random BertForPreTraining of scripts/interop_bert_fixtures.py
// (every weight random, LayerNorm eps 1e-12) imported into a megatron-deno checkpoint runs through the
// project's own BertModel (post-LN residual, erf GeLU, read from the checkpoint) to transformers' MLM and
// NSP logits (bert_reference_logits.json: two rows, token types, padding; fp32, relative 1e-5); the
// torch-written Megatron .pt with the 2021 structure gives the same logits; round trips are
// byte-identical (ours -> HF -> ours, ours -> .pt at TP 2 PP 2 -> ours, HF -> ours -> HF).

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { bertLogits, buildBertModel } from "../src/inference/bert_runner.ts";
import { type CheckpointFormat, readGpt, readModel } from "../src/inference/gpt_weights.ts";
import { readSafetensors } from "../src/training/safetensors.ts";
import { errorLine, runScript } from "./helpers/run_cli.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const DATA = new URL("./data/interop/", import.meta.url).pathname;
const ref = JSON.parse(Deno.readTextFileSync(`${DATA}bert_reference_logits.json`));
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_convert_bert_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const backend = createCpuBackend({ log: () => {} });

const convert = (...args: string[]) => runScript(CLI, ["convert", ...args]);
const bytes = (d: ArrayBufferView) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength);

function assertClose(got: ArrayLike<number>, want: number[], rel: number, what: string) {
  assert.equal(got.length, want.length, what);
  const scale = Math.max(...want.map(Math.abs));
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
  assert.ok(worst <= rel * scale, `${what}: worst difference ${worst} vs ${rel} x ${scale}`);
}

const keep: number[] = ref.attention_mask.flat();
/** transformers' MLM logits at the real (unpadded) positions. Padded positions are never scored and
 *  differ by design: HF masks only the keys, Megatron's bert_extended_attention_mask also the padded
 *  query rows (which then attend uniformly). */
const wantMlm: number[] = ref.mlm_logits.filter((_: number, i: number) =>
  keep[Math.floor(i / ref.vocab)] === 1
);

/** BertModel's logits of the reference rows: MLM at the real positions, cut to the real vocabulary. */
async function logitsOf(format: CheckpointFormat, path: string) {
  const full = readModel(format, path);
  assert.equal(full.arch.model, "bert");
  const model = buildBertModel(full, backend);
  const { mlm, binary } = await bertLogits(model, ref.input_ids, ref.token_type_ids, ref.attention_mask);
  const V = model.cfg.vocabSize, out: number[] = [];
  keep.forEach((k, i) => {
    if (k === 1) out.push(...mlm.subarray(i * V, i * V + ref.vocab));
  });
  return { mlm: out, binary };
}

/** Every tensor of two safetensors files equal in name, shape, dtype and bytes. */
function sameTensors(a: string, b: string, skip: (name: string) => boolean = () => false) {
  const x = readSafetensors(a).tensors.filter((t) => !skip(t.name));
  const y = new Map(readSafetensors(b).tensors.map((t) => [t.name, t]));
  assert.equal(y.size, x.length, `${b}: ${[...y.keys()]}`);
  for (const t of x) {
    const u = y.get(t.name);
    assert.ok(u, `${b} lacks ${t.name}`);
    assert.equal(u.dtype, t.dtype, t.name);
    assert.deepEqual(u.shape, t.shape, t.name);
    assert.deepEqual(bytes(u.data), bytes(t.data), t.name);
  }
}

Deno.test("convert hf -> megatron-deno (BERT): BertModel's MLM and NSP logits equal transformers' (rel 1e-5)", async () => {
  const r = await convert(
    ...["--from", "hf", "--to", "megatron-deno", "--load", `${DATA}hf_bert_rand`, "--save", `${DIR}/deno`],
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /converted bert hf .* 2 layers, hidden 16, 2 heads, vocab 100, TP 1, PP 1/);
  const full = readModel("megatron-deno", `${DIR}/deno`);
  // The architecture an HF BERT needs is in the checkpoint's args.
  assert.equal(full.arch.applyResidualConnectionPostLayernorm, true);
  assert.equal(full.arch.biasGeluFusion, false);
  assert.equal(full.arch.layernormEpsilon, 1e-12);
  assert.equal(full.arch.ffnHiddenSize, 48);
  const got = await logitsOf("megatron-deno", `${DIR}/deno`);
  assertClose(got.mlm, wantMlm, 1e-5, "mlm");
  assertClose(got.binary, ref.nsp_logits, 1e-5, "nsp");
  // A generator or evaluator that wants a GPT says what it found.
  assert.throws(() => readGpt("megatron-deno", `${DIR}/deno`), /a BERT checkpoint; expected a GPT/);
});

Deno.test("convert: the torch-written Megatron BERT .pt (2021 structure) gives transformers' logits", async () => {
  const direct = await logitsOf("megatron-pt", `${DATA}megatron_bert`);
  assertClose(direct.mlm, wantMlm, 1e-5, "mlm (.pt)");
  assertClose(direct.binary, ref.nsp_logits, 1e-5, "nsp (.pt)");
  const r = await convert(
    ...["--from", "megatron-pt", "--to", "megatron-deno", "--load", `${DATA}megatron_bert`],
    ...["--save", `${DIR}/from_pt`, "--target-tensor-parallel-size", "2"],
  );
  assert.equal(r.code, 0, r.stderr);
  const got = await logitsOf("megatron-deno", `${DIR}/from_pt`);
  assertClose(got.mlm, wantMlm, 1e-5, "mlm (.pt -> deno TP 2)");
  assertClose(got.binary, ref.nsp_logits, 1e-5, "nsp (.pt -> deno TP 2)");
});

Deno.test("convert (BERT): hf -> ours -> hf, ours -> hf -> ours, ours -> .pt (TP 2, PP 2) -> ours are byte-identical", async () => {
  if (!Deno.statSync(`${DIR}/deno`).isDirectory) throw new Error("the first test did not run");
  const deno = `${DIR}/deno/release/mp_rank_00/model.safetensors`;
  const steps: [string, string, string, string[]][] = [
    ["megatron-deno", `${DIR}/deno`, "hf", `${DIR}/hf1`],
    ["hf", `${DIR}/hf1`, "megatron-deno", `${DIR}/deno2`],
    ["megatron-deno", `${DIR}/deno`, "megatron-pt", `${DIR}/pt22`],
    ["megatron-pt", `${DIR}/pt22`, "megatron-deno", `${DIR}/deno3`],
    ["megatron-pt", `${DIR}/pt22`, "hf", `${DIR}/hf2`],
  ].map(([from, load, to, save]) => [from, load, to, [save]]);
  for (const [from, load, to, [save]] of steps) {
    const layout = save.endsWith("pt22")
      ? ["--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "2"]
      : [];
    const r = await convert("--from", from, "--to", to, "--load", load, "--save", save, ...layout);
    assert.equal(r.code, 0, `${from} -> ${to}: ${r.stderr}`);
  }
  assert.ok(Deno.statSync(`${DIR}/pt22/release/mp_rank_01_001/model_optim_rng.pt`).isFile);
  // HF -> ours -> HF: every weight of the original folder (the tied decoder copy aside).
  const tied = (n: string) => n === "cls.predictions.decoder.weight" || n === "cls.predictions.decoder.bias";
  for (const hf of ["hf1", "hf2"]) {
    sameTensors(`${DATA}hf_bert_rand/model.safetensors`, `${DIR}/${hf}/model.safetensors`, tied);
    const cfg = JSON.parse(Deno.readTextFileSync(`${DIR}/${hf}/config.json`));
    const orig = JSON.parse(Deno.readTextFileSync(`${DATA}hf_bert_rand/config.json`));
    for (
      const k of ["vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "layer_norm_eps"]
    ) {
      assert.equal(cfg[k], orig[k], `${hf} config ${k}`);
    }
  }
  // ours -> HF -> ours and ours -> .pt (TP 2, PP 2) -> ours.
  sameTensors(deno, `${DIR}/deno2/release/mp_rank_00/model.safetensors`);
  sameTensors(deno, `${DIR}/deno3/release/mp_rank_00/model.safetensors`);
});

Deno.test("convert (BERT): a pre-LN BERT is refused by --to hf with one line, nothing written", async () => {
  // The Megatron .pt fixture's args edited to Megatron's default (pre-LN) through a megatron-deno copy.
  const src = `${DIR}/preln`;
  let r = await convert(
    ...["--from", "megatron-pt", "--to", "megatron-deno", "--load", `${DATA}megatron_bert`, "--save", src],
  );
  assert.equal(r.code, 0, r.stderr);
  const meta = `${src}/release/mp_rank_00/meta.json`;
  const j = JSON.parse(Deno.readTextFileSync(meta));
  j.args.applyResidualConnectionPostLayernorm = false;
  Deno.writeTextFileSync(meta, JSON.stringify(j));
  r = await convert("--from", "megatron-deno", "--to", "hf", "--load", src, "--save", `${DIR}/preln_hf`);
  assert.equal(r.code, 1);
  assert.match(
    errorLine(r, "convert"),
    /^--to hf: this BERT keeps the residual at the LayerNorm input \(Megatron's default\); .* only --apply-residual-connection-post-layernorm models convert$/,
  );
  assert.throws(() => Deno.statSync(`${DIR}/preln_hf`));
  assert.deepEqual([...Deno.readDirSync(DIR)].filter((e) => e.name.includes(".tmp-")), []);
});
