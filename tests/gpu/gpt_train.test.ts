// A tiny GPT trained 20 steps (AdamW, dropout on) on CUDA and on the CPU reference from the same
// initialization: the per-step losses must agree (dropout masks and init are addressed by global
// coordinates, so both runs see the same randomness).
import assert from "node:assert/strict";
import type { Backend } from "../../src/backend/backend.ts";
import { GPTModel, type LossOutput } from "../../src/models/mod.ts";
import { makeParallelState, SingleRankCommunicator } from "../../src/parallel/types.ts";
import type { ParamsDType } from "../../src/models/mod.ts";
import type { Tensor } from "../../src/tensor/tensor.ts";
import type { CudaBackend } from "../../src/backend/cuda/cuda_backend.ts";
import { printTable, type Row, setup } from "./harness.ts";

const ctx = await setup(false); // ops.test.ts prints the skip line
const opts = { sanitizeResources: false, sanitizeOps: false };

interface TrainResult {
  losses: number[];
  /** cudaMalloc calls after step 3 and at the end (CUDA only): equal in steady state. */
  mallocs: [number, number] | null;
}

async function train(be: Backend, paramsDtype: ParamsDType, steps: number): Promise<TrainResult> {
  const stats = (be as Partial<CudaBackend>).memoryStats?.bind(be);
  let mallocsAt3 = -1;
  const ps = makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0);
  const model = new GPTModel(
    {
      numLayers: 2,
      hiddenSize: 64,
      numAttentionHeads: 4,
      seqLength: 32,
      maxPositionEmbeddings: 32,
      vocabSize: 128,
      hiddenDropout: 0.1,
      attentionDropout: 0.1,
      initMethodStd: 0.02,
      paramsDtype,
      activationsCheckpointMethod: null,
      seed: 1234,
    },
    be,
    ps,
    new SingleRankCommunicator(),
  );
  const params = model.params();
  const state = params.map((p) => {
    const master = p.main ?? p.value;
    return { m: be.zeros("f32", master.shape), v: be.zeros("f32", master.shape) };
  });
  const [b, s] = [4, 32];
  const losses: number[] = [];
  let x = 99;
  for (let it = 1; it <= steps; it++) {
    const tok = new Int32Array(b * s), lab = new Int32Array(b * s), mask = new Float32Array(b * s).fill(1);
    for (let i = 0; i < b * s; i++) {
      x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
      tok[i] = (x >>> 9) % 16; // a small, learnable token distribution
      lab[i] = (tok[i] * 7 + 3) % 128;
    }
    const tensors: Tensor[] = [
      be.fromHost("i32", [b, s], tok),
      be.fromHost("i32", [b, s], lab),
      be.fromHost("f32", [b, s], mask),
    ];
    model.zeroGrads();
    const mctx = model.newContext({ iteration: it, firstGlobalSample: (it - 1) * b });
    const out = await model.forward(
      { tokens: tensors[0], labels: tensors[1], lossMask: tensors[2] },
      mctx,
    ) as LossOutput;
    await model.backward(mctx, 1);
    losses.push(out.loss);
    params.forEach((p, i) => {
      const master = p.main ?? p.value;
      be.adamStep(master, p.grad, state[i].m, state[i].v, {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weightDecay: p.noWeightDecay ? 0 : 0.01,
        step: it,
      });
      if (p.main) be.copy(p.main, p.value);
    });
    for (const t of tensors) be.free(t);
    if (it === 3 && stats) mallocsAt3 = stats().deviceMallocs;
  }
  be.synchronize();
  return { losses, mallocs: stats ? [mallocsAt3, stats().deviceMallocs] : null };
}

if (ctx) {
  const rows: Row[] = [];
  // f32: same math, different reduction order; small drift over 20 optimizer steps. bf16: the
  // model's activations are rounded to 8 bits, so 1-ulp differences propagate through training.
  for (const [dt, bound] of [["f32", 1e-4], ["bf16", 3e-2]] as const) {
    Deno.test({ name: `gpu: tiny GPT 20 steps, ${dt} params, CUDA vs CPU losses`, ...opts }, async () => {
      const rc = await train(ctx.cuda, dt, 20), rr = await train(ctx.cpu, dt, 20);
      const lc = rc.losses, lr = rr.losses;
      // Step 1 runs the same initialization through one forward: only reduction order differs.
      const first = Math.abs(lc[0] - lr[0]) / Math.abs(lr[0]);
      rows.push({
        op: "GPT step-1 loss",
        dtype: dt,
        relErr: first,
        bound: dt === "f32" ? 1e-5 : 1e-2,
        ok: true,
      });
      assert.ok(first <= (dt === "f32" ? 1e-5 : 1e-2), `step-1 loss differs: cuda ${lc[0]} cpu ${lr[0]}`);
      if (rc.mallocs) {
        assert.equal(
          rc.mallocs[1],
          rc.mallocs[0],
          `cudaMalloc calls grew after step 3: ${rc.mallocs.join(" -> ")}`,
        );
      }
      let worst = 0;
      for (let i = 0; i < lr.length; i++) worst = Math.max(worst, Math.abs(lc[i] - lr[i]) / Math.abs(lr[i]));
      rows.push({
        op: `GPT 20 steps (loss ${lr[0].toFixed(3)} -> ${lr[19].toFixed(3)})`,
        dtype: dt,
        relErr: worst,
        bound,
        ok: worst <= bound,
      });
      assert.ok(lr[19] < lr[0], `CPU loss did not decrease: ${lr[0]} -> ${lr[19]}`);
      assert.ok(
        worst <= bound,
        `losses differ by ${worst} (cuda ${lc.map((v) => v.toFixed(4))} cpu ${lr.map((v) => v.toFixed(4))})`,
      );
    });
  }
  Deno.test({ name: "gpu: GPT summary", ...opts }, () => {
    printTable("test:gpu GPT: per-step loss, max |cuda-cpu| / |cpu|", rows);
  });
}
