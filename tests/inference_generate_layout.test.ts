// Generation on (TP, PP) layouts (src/inference/gpt_layout.ts): the checkpoint split onto the ranks of a
// LocalWorld, the cached forward per rank (heads split over TP) and --recompute through the stages'
// GPTModel.forward. Every layout's logits equal one rank's GPTModel (1e-5 of the largest), and greedy
// and seeded sampled tokens equal the TP = PP = 1 run's, in the library and through the CLI; a layout
// the model cannot be split into is one usage line.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { generateAll } from "../src/generation/generate.ts";
import { buildGptModel, KvCacheGpt, modelLogits, nextLogitsFn } from "../src/inference/gpt_runner.ts";
import { LayoutGpt } from "../src/inference/gpt_layout.ts";
import { type FullGpt, readGpt, writeGpt } from "../src/inference/gpt_weights.ts";
import { randomGpt } from "./helpers/random_gpt.ts";
import { errorLine, runScript } from "./helpers/run_cli.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_generate_layout_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const backend = createCpuBackend({ log: () => {} });
const VOCAB = 50, EOD = 49, SEQ = 32, LAYERS = 4, HEADS = 4;

/** A random GPT (init std 0.3: greedy decoding does not settle on one token) written as a TP = 2
 *  checkpoint, so its padded vocabulary (128) differs from what TP = 1 pads to (64). */
function randomCheckpoint(): FullGpt {
  const full = randomGpt(backend, {
    layers: LAYERS,
    heads: HEADS,
    seq: SEQ,
    vocab: VOCAB,
    paddedVocab: 64,
    makeVocabSizeDivisibleBy: 64,
    seed: 11,
    iteration: 3,
  });
  writeGpt("megatron-deno", `${DIR}/ckpt`, full, 2, 2);
  return readGpt("megatron-deno", `${DIR}/ckpt`);
}
const full = randomCheckpoint();
const LAYOUTS: [number, number][] = [[2, 1], [1, 2], [2, 2], [4, 4]];

Deno.test("LayoutGpt: every layout's next-token logits equal one rank's GPTModel, cached and recomputed", async () => {
  const ref = buildGptModel(full, backend);
  const V = ref.cfg.vocabSize;
  const seqs = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], [7, 8, 9]];
  const want = await Promise.all(seqs.map((s) => modelLogits(ref, [s])));
  for (const [tp, pp] of [[1, 1], ...LAYOUTS]) {
    for (const cache of [true, false]) {
      const g = new LayoutGpt(full, backend, { tp, pp, cache });
      // The vocabulary is padded for the layout's TP (Megatron's rule).
      assert.equal(g.paddedVocab, 64 * tp);
      for (const [k, s] of seqs.entries()) {
        // A prompt of 4 fed whole, 3 more at once (new positions attend to cached ones and causally
        // among themselves), then one token at a time; the second sequence is a new prompt (a reset).
        for (const n of k === 0 ? [4, 7, 8, 9, 10, 11] : [s.length]) {
          const got = await g.next(s.slice(0, n));
          const w = want[k].subarray((n - 1) * V, n * V);
          const scale = Math.max(...w.map(Math.abs));
          // The source's 64 rows (its padding rows included); rows added for a larger TP are zero.
          for (let v = 0; v < 64; v++) {
            assert.ok(
              Math.abs(got[v] - w[v]) <= 1e-5 * scale,
              `TP ${tp} PP ${pp} cache ${cache} seq ${k} len ${n} id ${v}: ${got[v]} vs ${w[v]}`,
            );
          }
          for (let v = 64; v < g.paddedVocab; v++) assert.equal(got[v], 0, `padding logit ${v}`);
        }
      }
      g.close();
    }
  }
});

Deno.test("an MLP inner size other than 4h (--ffn-hidden-size) is read from the checkpoint by every runner", async () => {
  // hidden 16, ffn 24: a model built with the default 4h = 64 would refuse these shapes.
  const odd = randomGpt(backend, {
    layers: 2,
    heads: 4,
    seq: SEQ,
    vocab: VOCAB,
    paddedVocab: 64,
    makeVocabSizeDivisibleBy: 64,
    seed: 3,
    ffn: 24,
  });
  const ref = buildGptModel(odd, backend);
  assert.equal(ref.cfg.ffnHiddenSize, 24);
  const V = ref.cfg.vocabSize;
  const s = [3, 1, 4, 1, 5, 9];
  const want = await modelLogits(ref, [s]);
  const last = want.subarray((s.length - 1) * V, s.length * V);
  const scale = Math.max(...last.map(Math.abs));
  const close = (got: Float32Array, what: string) => {
    for (let v = 0; v < 64; v++) assert.ok(Math.abs(got[v] - last[v]) <= 1e-5 * scale, `${what} id ${v}`);
  };
  for (const [tp, pp] of [[1, 1], [2, 2]]) {
    const g = new LayoutGpt(odd, backend, { tp, pp });
    close(await g.next(s), `LayoutGpt TP ${tp} PP ${pp}`);
    g.close();
  }
  const kv = new KvCacheGpt(odd, backend);
  close(s.map((t) => kv.step(t)).at(-1)!, "KvCacheGpt");
  kv.close();
});

Deno.test("LayoutGpt: greedy and seeded sampled tokens of every layout equal TP = PP = 1", async () => {
  const prompt = [3, 1, 4, 1, 5];
  const run = (tp: number, pp: number, cache: boolean, greedy: boolean, seed: number) =>
    generateAll(prompt, nextLogitsFn(full, { cache, backend, tp, pp }), {
      greedy,
      temperature: 0.9,
      topK: greedy ? 0 : 8,
      topP: greedy ? 0 : 0.9,
      vocabSize: VOCAB,
      outSeqLength: 20,
      seqLength: SEQ,
      eod: EOD,
      seed,
    });
  for (const greedy of [true, false]) {
    const want = await run(1, 1, true, greedy, 21);
    assert.ok(want.length >= 8 && new Set(want).size > 3, `too short or repetitive: ${want}`);
    for (const [tp, pp] of LAYOUTS) {
      for (const cache of [true, false]) {
        assert.deepEqual(await run(tp, pp, cache, greedy, 21), want, `TP ${tp} PP ${pp} cache ${cache}`);
      }
    }
    if (!greedy) assert.notDeepEqual(await run(2, 2, true, false, 22), want, "another seed, other samples");
  }
});

const generate = (...args: string[]) => runScript(CLI, ["generate-gpt", "--load", `${DIR}/ckpt`, ...args]);
const tokensOf = (path: string) =>
  Deno.readTextFileSync(path).trim().split("\n").map((l) => (JSON.parse(l) as { tokens: number[] }).tokens);

Deno.test("generate-gpt --tensor/--pipeline-model-parallel-size: the TP = PP = 1 tokens, greedy and sampled", async () => {
  Deno.writeTextFileSync(`${DIR}/in.txt`, "3 1 4 1 5\n9 2 6\n");
  const cases: [string, string[]][] = [
    ["greedy", ["--greedy", "--sample-input-file", `${DIR}/in.txt`, "--sample-output-file", `${DIR}/o.txt`]],
    ["sampled", ["--num-samples", "2", "--top_k", "6", "--temperature", "0.8", "--seed", "5"]],
  ];
  for (const [what, args] of cases) {
    let want: number[][] | null = null;
    for (const [tp, pp, extra] of [[1, 1, []], [2, 2, []], [2, 1, ["--recompute"]], [1, 2, []]] as const) {
      const out = `${DIR}/${what}-${tp}${pp}${extra.length}.jsonl`;
      const r = await generate(
        ...args,
        ...["--out-seq-length", "12", "--genfile", out, "--device", "cpu"],
        ...["--tensor-model-parallel-size", `${tp}`, "--pipeline-model-parallel-size", `${pp}`, ...extra],
      );
      assert.equal(r.code, 0, r.stderr);
      const got = tokensOf(out);
      if (want === null) {
        want = got;
        assert.ok(want.every((t) => t.length > 0) && want.length === 2, JSON.stringify(want));
      } else assert.deepEqual(got, want, `${what}: TP ${tp} PP ${pp} ${extra.join(" ")}`);
    }
  }
});

Deno.test("generate-gpt: a layout the model cannot be split into is one usage line (exit 2)", async () => {
  for (
    const [flags, line] of [
      [
        ["--tensor-model-parallel-size", "3"],
        "--tensor-model-parallel-size 3: the model's 4 attention heads are not divisible by it",
      ],
      [
        ["--pipeline-model-parallel-size", "3"],
        "--pipeline-model-parallel-size 3: the model's 4 layers are not divisible by it",
      ],
      [["--tensor-model-parallel-size", "0"], "--tensor-model-parallel-size 0: expected >= 1"],
      [["--device", "tpu"], '--device: expected one of cpu, cuda, auto, found "tpu"'],
    ] as const
  ) {
    const r = await generate("--greedy", "--num-samples", "1", "--device", "cpu", ...flags);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(errorLine(r, "generate-gpt"), line);
  }
});
