// Layout invariance (issue 6, "Must show"): with the same seed, data and flags every (TP, PP, DP)
// layout trains to the same per-iteration losses and the same final weights as one rank, with
// dropout on, with and without activation checkpointing. Final weights are read back from the
// checkpoint each run saves and merged (TP shards concatenated, PP stages / virtual chunks mapped to
// global layer numbers) into full TP=PP=1 tensors. Also: a checkpoint saved with a layout reloads
// into the same layout bit-exactly (resumed losses and weights equal an uninterrupted run).

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { MMapIndexedDatasetBuilder } from "../src/data/indexed_dataset.ts";
import { chunkLayers } from "../src/training/rank.ts";
import { loadCheckpoint } from "../src/training/checkpoint.ts";
import { parseArgs, validateForTraining } from "../src/training/config.ts";
import { pretrainGPT } from "../src/training/train.ts";

const NUM_LAYERS = 8;
const HIDDEN = 32;
const HEADS = 4;

/** A small synthetic corpus (deterministic LCG tokens in 0..510, documents of varying length). */
function writeCorpus(dir: string): string {
  const prefix = `${dir}/synthetic_text_document`;
  const b = new MMapIndexedDatasetBuilder(prefix, "uint16");
  let x = 12345;
  for (let d = 0; d < 60; d++) {
    const n = 20 + (d * 7) % 30;
    const t: number[] = [];
    for (let i = 0; i < n; i++) {
      x = (x * 1103515245 + 12345) % 2147483648;
      t.push(x % 511);
    }
    b.addItem(t);
    b.endDocument();
  }
  b.finalize();
  return prefix;
}

interface Layout {
  tp: number;
  pp: number;
  dp: number;
  /** Layers per virtual pipeline stage (interleaved), or undefined. */
  lpv?: number;
}

const name = (l: Layout) => `(${l.tp},${l.pp},${l.dp})${l.lpv ? ` interleaved ${l.lpv} layer/chunk` : ""}`;

function layoutArgs(l: Layout): string[] {
  return [
    "--tensor-model-parallel-size",
    String(l.tp),
    "--pipeline-model-parallel-size",
    String(l.pp),
    "--data-parallel-size",
    String(l.dp),
    ...(l.lpv ? ["--num-layers-per-virtual-pipeline-stage", String(l.lpv)] : []),
  ];
}

function baseArgs(data: string, iters: number): string[] {
  // NullTokenizer vocab 511 + eod = 512: padded to 512 for every TP <= 4 (multiple of 128 * tp).
  return [
    ...[
      "--num-layers",
      String(NUM_LAYERS),
      "--hidden-size",
      String(HIDDEN),
      "--num-attention-heads",
      String(HEADS),
    ],
    ...["--seq-length", "16", "--max-position-embeddings", "16"],
    ...["--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", String(iters)],
    ...["--lr", "5e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine", "--lr-warmup-iters", "2"],
    ...["--weight-decay", "0.01", "--clip-grad", "1.0"],
    ...[
      "--tokenizer-type",
      "NullTokenizer",
      "--vocab-size",
      "511",
      "--data-path",
      data,
      "--split",
      "80,20,0",
    ],
    ...["--hidden-dropout", "0.1", "--attention-dropout", "0.1", "--seed", "1234"],
    ...["--eval-iters", "2", "--eval-interval", "5", "--log-interval", "1000"],
  ];
}

/** Which dimension a TP-split parameter is split along (null: replicated). */
function partitionDim(paramName: string): 0 | 1 | null {
  if (/word_embeddings|query_key_value|dense_h_to_4h/.test(paramName)) return 0;
  if (/(self_attention\.dense|dense_4h_to_h)\.weight$/.test(paramName)) return 1;
  return null;
}

interface Full {
  shape: number[];
  data: Float64Array;
}

/** Concatenate TP shards along `dim` of a 1-D or 2-D tensor. */
function concat(shards: Full[], dim: 0 | 1): Full {
  const s0 = shards[0].shape;
  if (dim === 0 || s0.length === 1) {
    const data = new Float64Array(shards.reduce((a, s) => a + s.data.length, 0));
    let off = 0;
    for (const s of shards) {
      data.set(s.data, off);
      off += s.data.length;
    }
    return { shape: [s0[0] * shards.length, ...s0.slice(1)], data };
  }
  const [rows, cols] = s0;
  const n = shards.length;
  const data = new Float64Array(rows * cols * n);
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < n; k++) {
      data.set(shards[k].data.subarray(r * cols, (r + 1) * cols), (r * n + k) * cols);
    }
  }
  return { shape: [rows, cols * n], data };
}

/** Merge a checkpoint saved with layout `l` into full tensors named as a TP=PP=1 model. */
function mergeCheckpoint(dir: string, l: Layout): Map<string, Full> {
  const vp = l.lpv ? NUM_LAYERS / l.pp / l.lpv : 1;
  const shardsByName = new Map<string, Full[]>();
  for (let p = 0; p < l.pp; p++) {
    for (let t = 0; t < l.tp; t++) {
      const ck = loadCheckpoint(dir, { tp: t, pp: p }, { loadOptim: false, ppSize: l.pp });
      for (const nt of ck.model) {
        let n = nt.name;
        let v = 0;
        const pre = /^model(\d+)\.(.*)$/.exec(n);
        if (vp > 1) {
          assert.ok(pre, `${n}: expected a model<v>. prefix with ${vp} chunks`);
          v = Number(pre[1]);
          n = pre[2];
        }
        const layer = /^(language_model\.encoder\.layers\.)(\d+)\.(.*)$/.exec(n);
        if (layer) {
          const g = chunkLayers(NUM_LAYERS, l.pp, vp, p, v)[Number(layer[2])];
          n = `${layer[1]}${g}.${layer[3]}`;
        }
        const data = Float64Array.from(nt.data as ArrayLike<number>);
        const list = shardsByName.get(n) ?? [];
        list[t] = { shape: nt.shape, data };
        shardsByName.set(n, list);
      }
    }
  }
  const out = new Map<string, Full>();
  for (const [n, shards] of shardsByName) {
    const dim = partitionDim(n);
    if (dim !== null) out.set(n, concat(shards, dim));
    else {
      for (const s of shards) assert.deepEqual(s.data, shards[0].data, `${n}: TP replicas differ`);
      out.set(n, shards[0]);
    }
  }
  // The last stage's copy of the tied embedding must equal the first stage's after every step.
  const head = out.get("word_embeddings_for_head.weight");
  if (head) {
    const emb = out.get("language_model.embedding.word_embeddings.weight")!;
    assert.deepEqual(head.data, emb.data, "tied embedding copies differ between first and last stage");
    out.delete("word_embeddings_for_head.weight");
  }
  return out;
}

interface RunOut {
  losses: number[];
  /** Validation losses (forward-only schedule, dropout off) at iterations 5 and 10. */
  valid: number[];
  weights: Map<string, Full>;
}

async function train(data: string, l: Layout, extra: string[], iters = 10): Promise<RunOut> {
  const save = Deno.makeTempDirSync({ prefix: "layout_ckpt_" });
  try {
    const cfg = validateForTraining(
      parseArgs([...baseArgs(data, iters), ...layoutArgs(l), ...extra, "--save", save]),
    );
    const r = await pretrainGPT(cfg, { backend: createCpuBackend(), log: () => {} });
    return {
      losses: r.history.map((h) => h.loss),
      valid: r.validation.map((v) => v.loss),
      weights: mergeCheckpoint(save, l),
    };
  } finally {
    Deno.removeSync(save, { recursive: true });
  }
}

function assertClose(a: number, b: number, rel: number, what: string): void {
  const tol = rel * Math.max(Math.abs(a), Math.abs(b));
  assert.ok(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b} (|diff| ${Math.abs(a - b)} > ${tol})`);
}

/** Is element i of a query_key_value.bias ([heads, 3, head_dim] flattened) a key bias? */
function isKeyBias(paramName: string, i: number): boolean {
  const hn = HIDDEN / HEADS;
  return paramName.endsWith("query_key_value.bias") && Math.floor((i % (3 * hn)) / hn) === 1;
}

/** Losses relative 1e-5; weights: each tensor within 1e-5 relative L2 distance (elementwise checks
 *  would flag the few elements whose gradient is pure rounding noise that Adam scales up to step
 *  size). The key bias is excluded: its gradient is exactly zero in exact arithmetic (adding one
 *  constant to every score of a softmax row changes nothing), so it only ever holds such noise, which
 *  differs with any change of summation order; it must stay at noise level in both runs. */
function assertSameRun(got: RunOut, ref: RunOut, what: string): number {
  assert.equal(got.losses.length, ref.losses.length);
  got.losses.forEach((x, i) => assertClose(x, ref.losses[i], 1e-5, `${what}: loss at iteration ${i + 1}`));
  assert.equal(got.valid.length, 2, `${what}: validation runs`);
  got.valid.forEach((x, i) => assertClose(x, ref.valid[i], 1e-5, `${what}: validation loss ${i}`));
  assert.deepEqual(
    [...got.weights.keys()].sort(),
    [...ref.weights.keys()].sort(),
    `${what}: parameter names`,
  );
  let worst = 0;
  for (const [n, w] of ref.weights) {
    const g = got.weights.get(n)!;
    assert.deepEqual(g.shape, w.shape, `${what}: ${n} shape`);
    let d2 = 0, w2 = 0;
    for (let i = 0; i < w.data.length; i++) {
      if (isKeyBias(n, i)) {
        assert.ok(
          Math.abs(g.data[i]) < 1e-5 && Math.abs(w.data[i]) < 1e-5,
          `${what}: ${n}[${i}] (key bias) moved`,
        );
        continue;
      }
      d2 += (g.data[i] - w.data[i]) ** 2;
      w2 += w.data[i] ** 2;
    }
    const rel = Math.sqrt(d2 / w2);
    worst = Math.max(worst, rel);
    assert.ok(rel <= 1e-5, `${what}: ${n} differs from one rank's by ${rel.toExponential(2)} (relative L2)`);
  }
  if (Deno.env.get("LAYOUT_VERBOSE")) {
    console.log(`${what}: worst relative L2 weight difference ${worst.toExponential(2)}`);
  }
  return worst;
}

const LAYOUTS: Layout[] = [
  { tp: 2, pp: 1, dp: 1 },
  { tp: 1, pp: 2, dp: 1 },
  { tp: 1, pp: 1, dp: 2 },
  { tp: 2, pp: 2, dp: 2 },
  { tp: 1, pp: 4, dp: 1 }, // 1F1B over 4 stages
  { tp: 1, pp: 4, dp: 1, lpv: 1 }, // 4 stages x 2 chunks of 1 layer
  { tp: 1, pp: 2, dp: 1, lpv: 2 }, // 2 stages x 2 chunks of 2 layers
  { tp: 4, pp: 1, dp: 1 },
];

const MODES: { label: string; args: string[] }[] = [
  { label: "no recompute", args: [] },
  { label: "recompute uniform", args: ["--activations-checkpoint-method", "uniform"] },
  { label: "recompute block", args: ["--activations-checkpoint-method", "block"] },
];

for (const mode of MODES) {
  Deno.test(`layout invariance, 10 iterations with dropout, ${mode.label}`, async (t) => {
    const dir = Deno.makeTempDirSync({ prefix: "layout_data_" });
    try {
      const data = writeCorpus(dir);
      const ref = await train(data, { tp: 1, pp: 1, dp: 1 }, mode.args);
      // The run must actually learn something, or equal weights would prove little.
      assert.ok(ref.losses.every(Number.isFinite));
      assert.ok(ref.losses[9] < ref.losses[0], `loss did not decrease: ${ref.losses}`);
      for (const l of LAYOUTS) {
        await t.step(name(l), async () => {
          assertSameRun(await train(data, l, mode.args), ref, name(l));
        });
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

// Half precision: TP changes which partial sums get rounded to bf16/fp16, so only closeness is
// expected (bf16 keeps 8 significant bits); this shows the mixed-precision paths (f32 main params and
// grads, loss scaling for fp16, overflow and grad norm over the model group) work in every layout.
for (const [flag, rel] of [["--bf16", 1e-3], ["--fp16", 1e-4]] as const) {
  Deno.test(`${flag}: layouts track one rank's losses (relative ${rel})`, async () => {
    const dir = Deno.makeTempDirSync({ prefix: "layout_half_" });
    try {
      const data = writeCorpus(dir);
      const ref = await train(data, { tp: 1, pp: 1, dp: 1 }, [flag]);
      for (const l of [{ tp: 2, pp: 2, dp: 2 }, { tp: 1, pp: 2, dp: 1, lpv: 2 }, { tp: 4, pp: 1, dp: 1 }]) {
        const got = await train(data, l, [flag]);
        got.losses.forEach((x, i) =>
          assertClose(x, ref.losses[i], rel, `${flag} ${name(l)}: iteration ${i + 1}`)
        );
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

Deno.test("checkpoint saved with a layout reloads into the same layout bit-exactly", async (t) => {
  const dir = Deno.makeTempDirSync({ prefix: "layout_resume_" });
  try {
    const data = writeCorpus(dir);
    const layouts: Layout[] = [{ tp: 2, pp: 2, dp: 1 }, { tp: 1, pp: 2, dp: 1, lpv: 2 }, {
      tp: 1,
      pp: 2,
      dp: 2,
    }];
    for (const l of layouts) {
      await t.step(name(l), async () => {
        const full = await train(data, l, []);
        const save = `${dir}/ckpt_${l.tp}_${l.pp}_${l.dp}_${l.lpv ?? 0}`;
        const be = createCpuBackend();
        const args = [...baseArgs(data, 10), ...layoutArgs(l)];
        // First half: stop at iteration 4 (saves), then a fresh run loads and finishes.
        const first = await pretrainGPT(
          validateForTraining(parseArgs([...args, "--save", save, "--exit-interval", "4"])),
          { backend: be, log: () => {} },
        );
        assert.equal(first.exitReason, "exit-interval");
        const second = await pretrainGPT(
          validateForTraining(parseArgs([...args, "--save", save, "--load", save])),
          { backend: be, log: () => {} },
        );
        const losses = [...first.history, ...second.history].map((h) => h.loss);
        assert.deepEqual(losses, full.losses, `${name(l)}: resumed losses differ from an uninterrupted run`);
        const resumed = mergeCheckpoint(save, l);
        for (const [n, w] of full.weights) {
          assert.deepEqual(resumed.get(n)!.data, w.data, `${name(l)}: ${n} differs after resume`);
        }
      });
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
