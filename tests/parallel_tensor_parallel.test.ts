// Tensor-parallel building blocks (src/parallel/tensor_parallel.ts) against their definitions, and
// the transformer (built from those classes) against them: init equals concatenated shards, the mappings'
// all-reduce of rank ids (6 / 22 with 8 ranks and TP=4), the vocab-parallel cross-entropy vector,
// f64 gradient checks across TP=2, and the number of all-reduces per layer (2 forward, 2 backward).

import assert from "node:assert/strict";
import type { Backend } from "../src/backend/backend.ts";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import {
  ColumnParallelLinear,
  copyToTensorParallelRegion,
  gatherFromTensorParallelRegion,
  type NormalInit,
  reduceFromTensorParallelRegion,
  RowParallelLinear,
  scatterToTensorParallelRegion,
  type TPEnv,
  vocabParallelCrossEntropy,
  vocabParallelCrossEntropyBackward,
  VocabParallelEmbedding,
} from "../src/parallel/tensor_parallel.ts";
import {
  type Communicator,
  type GroupName,
  makeParallelState,
  type ReduceOp,
  SingleRankCommunicator,
} from "../src/parallel/types.ts";
import type { DType } from "../src/tensor/dtype.ts";
import type { Tensor } from "../src/tensor/tensor.ts";
import { initStream, newMicroBatchContext, ParamKind } from "../src/transformer/common.ts";
import { resolveConfig } from "../src/transformer/config.ts";
import { Embedding } from "../src/transformer/embedding.ts";
import { TransformerLayer } from "../src/transformer/layer.ts";
import { ParallelMLP } from "../src/transformer/mlp.ts";

/** Counts tensor-group all-reduces and delegates everything. */
class CountingComm implements Communicator {
  allReduces = 0;
  constructor(private readonly inner: Communicator) {}
  allReduce(t: Tensor, op: ReduceOp, group: GroupName) {
    if (group === "tensor") this.allReduces++;
    return this.inner.allReduce(t, op, group);
  }
  allGather(s: Tensor, d: Tensor, g: GroupName) {
    return this.inner.allGather(s, d, g);
  }
  reduceScatter(s: Tensor, d: Tensor, g: GroupName) {
    return this.inner.reduceScatter(s, d, g);
  }
  broadcast(t: Tensor, root: number, g: GroupName) {
    return this.inner.broadcast(t, root, g);
  }
  send(t: Tensor, to: number, tag?: string) {
    return this.inner.send(t, to, tag);
  }
  recv(t: Tensor, from: number, tag?: string) {
    return this.inner.recv(t, from, tag);
  }
  barrier(g: GroupName) {
    return this.inner.barrier(g);
  }
}

/** Run fn on every rank of a (tp, dp) world concurrently. */
async function inWorld<T>(
  be: Backend,
  tp: number,
  dp: number,
  dtype: DType,
  fn: (env: TPEnv & { comm: CountingComm }) => Promise<T>,
): Promise<T[]> {
  if (tp * dp === 1) {
    const env = {
      backend: be,
      comm: new CountingComm(new SingleRankCommunicator()),
      ps: makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
      dtype,
    };
    return [await fn(env)];
  }
  const world = new LocalWorld(be, { tp, pp: 1, dp }, { timeoutMs: 10_000 });
  return await Promise.all(
    world.states.map((ps, r) =>
      fn({ backend: be, comm: new CountingComm(world.communicator(r)), ps, dtype })
    ),
  );
}

/** A deterministic pseudo-random f64 vector. */
function rand(n: number, seed: number, scale = 1): Float64Array {
  const out = new Float64Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = ((x / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}

/** Concatenate [rows, cols] shards along dim. */
function cat(shards: Float64Array[], rows: number, cols: number, dim: 0 | 1): Float64Array {
  if (dim === 0) {
    const out = new Float64Array(shards.length * rows * cols);
    shards.forEach((s, k) => out.set(s, k * rows * cols));
    return out;
  }
  const n = shards.length;
  const out = new Float64Array(rows * cols * n);
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < n; k++) out.set(shards[k].subarray(r * cols, (r + 1) * cols), (r * n + k) * cols);
  }
  return out;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const INIT: NormalInit = { seed: 1234, stream: 77, std: 0.02 };

Deno.test("init: TP=1 weights equal the concatenated TP=4 shards (embedding, column, row)", () => {
  const be = createCpuBackend();
  const envOf = (tp: number, r: number): TPEnv => ({
    backend: be,
    comm: new SingleRankCommunicator(),
    ps: makeParallelState({ tp, pp: 1, dp: 1 }, r),
    dtype: "f32",
  });
  const full = envOf(1, 0);
  const ranks = [0, 1, 2, 3].map((r) => envOf(4, r));
  const col1 = new ColumnParallelLinear(full, "c", 12, 16, INIT);
  const cols = ranks.map((e) => new ColumnParallelLinear(e, "c", 12, 16, INIT));
  assert.deepEqual(cat(cols.map((c) => be.toF64(c.weight.value)), 4, 12, 0), be.toF64(col1.weight.value));
  const row1 = new RowParallelLinear(full, "r", 16, 12, INIT);
  const rows = ranks.map((e) => new RowParallelLinear(e, "r", 16, 12, INIT));
  assert.deepEqual(cat(rows.map((c) => be.toF64(c.weight.value)), 12, 4, 1), be.toF64(row1.weight.value));
  const emb1 = new VocabParallelEmbedding(full, "e", 32, 8, INIT);
  const embs = ranks.map((e) => new VocabParallelEmbedding(e, "e", 32, 8, INIT));
  assert.deepEqual(cat(embs.map((c) => be.toF64(c.weight.value)), 8, 8, 0), be.toF64(emb1.weight.value));
  assert.deepEqual(embs.map((e) => e.vocabStart), [0, 8, 16, 24]);
  // Not all zero, and different streams differ.
  assert.ok(be.toF64(col1.weight.value).some((x) => x !== 0));
});

Deno.test("mappings with 8 ranks and TP=4: all-reduce of rank ids gives 6 / 22; scatter/gather", async () => {
  const be = createCpuBackend();
  const out = await inWorld(be, 4, 2, "f32", async (env) => {
    const g = env.ps.globalRank;
    const a = be.fromHost("f32", [3], [g, g, g]);
    await reduceFromTensorParallelRegion.forward(env, a);
    const b = be.fromHost("f32", [2], [g, g]);
    const same = copyToTensorParallelRegion.forward(env, b);
    const fwdCopy = be.toF64(same)[0];
    await copyToTensorParallelRegion.backward(env, b);
    const c = be.fromHost("f32", [1], [g]);
    reduceFromTensorParallelRegion.backward(env, c); // identity
    // scatter/gather over the last dimension of a [2, 8] tensor (value = 10 * row + col).
    const x = be.fromHost(
      "f32",
      [2, 8],
      Array.from({ length: 16 }, (_, i) => 10 * Math.floor(i / 8) + (i % 8)),
    );
    const xs = await scatterToTensorParallelRegion.forward(env, x);
    const xg = await gatherFromTensorParallelRegion.forward(env, xs);
    const dScatter = await scatterToTensorParallelRegion.backward(env, xs); // = all-gather
    const dGather = await gatherFromTensorParallelRegion.backward(env, xg); // = split
    return {
      g,
      a: [...be.toF64(a)],
      fwdCopy,
      b: [...be.toF64(b)],
      c: be.toF64(c)[0],
      xs: [...be.toF64(xs)],
      xg: [...be.toF64(xg)],
      dScatter: [...be.toF64(dScatter)],
      dGather: [...be.toF64(dGather)],
      reduces: env.comm.allReduces,
    };
  });
  for (const o of out) {
    const want = o.g < 4 ? 6 : 22;
    assert.deepEqual(o.a, [want, want, want], `rank ${o.g}: reduce-from forward`);
    assert.equal(o.fwdCopy, o.g, "copy-to forward is the identity");
    assert.deepEqual(o.b, [want, want], `rank ${o.g}: copy-to backward`);
    assert.equal(o.c, o.g, "reduce-from backward is the identity");
    const t = o.g % 4;
    assert.deepEqual(o.xs, [2 * t, 2 * t + 1, 10 + 2 * t, 11 + 2 * t], `rank ${o.g}: scatter slice`);
    const x = Array.from({ length: 16 }, (_, i) => 10 * Math.floor(i / 8) + (i % 8));
    assert.deepEqual(o.xg, x, "gather(scatter(x)) = x");
    assert.deepEqual(o.dScatter, x, "scatter backward gathers");
    assert.deepEqual(o.dGather, o.xs, "gather backward splits");
    assert.equal(o.reduces, 2, "one all-reduce in reduce-from forward, one in copy-to backward");
  }
});

Deno.test("vocab-parallel cross entropy: Megatron-Core's vector (TP=4, DP=2) and gradient vs TP=1", async () => {
  const be = createCpuBackend();
  // Each TP rank's shard: 16 rows of range(0, 8) tiled 4 times (32 columns); targets 0, 2, ..., 30.
  const rows = 16, shard = 32;
  const shardValues = Array.from({ length: rows * shard }, (_, i) => i % 8);
  const targets = Array.from({ length: rows }, (_, i) => 2 * i);
  const out = await inWorld(be, 4, 2, "f32", async (env) => {
    const logits = be.fromHost("f32", [rows, shard], shardValues);
    const tg = be.fromHost("i32", [rows], targets);
    const { loss, saved } = await vocabParallelCrossEntropy(env, logits, tg, env.ps.tpRank * shard);
    const dl = be.fromHost("f32", [rows], new Array(rows).fill(1));
    const d = vocabParallelCrossEntropyBackward(env, saved, dl);
    return { tp: env.ps.tpRank, loss: [...be.toF64(loss)], d: be.toF64(d), reduces: env.comm.allReduces };
  });
  const expected = [10.2309, 8.2309, 6.2309, 4.2309];
  for (const o of out) {
    o.loss.forEach((x, i) => assert.ok(Math.abs(x - expected[i % 4]) < 1e-4, `row ${i}: ${x}`));
    assert.equal(o.reduces, 3, "max, target logit and sum-exp all-reduces");
  }
  // Exact value: log(16 * sum_k e^k) - t % 8 (the target always lies in TP rank 0's shard).
  let s = 0;
  for (let k = 0; k < 8; k++) s += Math.exp(k);
  out[0].loss.forEach((x, i) => assert.ok(Math.abs(x - (Math.log(16 * s) - (2 * i) % 8)) < 1e-5));
  // The shards' gradients concatenated equal the TP=1 gradient over the full 128-column rows.
  const full = new Float64Array(rows * shard * 4);
  for (let r = 0; r < rows; r++) for (let c = 0; c < 128; c++) full[r * 128 + c] = c % 8;
  const [ref] = await inWorld(be, 1, 1, "f32", async (env) => {
    const { saved } = await vocabParallelCrossEntropy(
      env,
      be.fromHost("f32", [rows, 128], full),
      be.fromHost("i32", [rows], targets),
      0,
    );
    return be.toF64(
      vocabParallelCrossEntropyBackward(env, saved, be.fromHost("f32", [rows], new Array(rows).fill(1))),
    );
  });
  const merged = cat(out.slice(0, 4).map((o) => o.d), rows, shard, 1);
  assert.ok(maxAbsDiff(merged, ref) < 1e-7, "dlogits shards = TP=1 dlogits");
});

/** L = sum(Y * R): f64 gradients of a column- or row-parallel layer across TP=2, against the closed
 *  form on the full matrices and central finite differences. */
async function gradCheck(kind: "column" | "row", flag: boolean) {
  const be = createCpuBackend();
  const rows = 5, inF = 6, outF = 8;
  const X = rand(rows * inF, 11);
  const R = rand(rows * outF, 22);
  const B = rand(outF, 33);
  type Layer = ColumnParallelLinear | RowParallelLinear;
  const make = (env: TPEnv): Layer =>
    kind === "column"
      ? new ColumnParallelLinear(env, "l", inF, outF, { ...INIT, std: 0.5 }, { gatherOutput: flag })
      : new RowParallelLinear(env, "l", inF, outF, { ...INIT, std: 0.5 }, { inputIsParallel: flag });
  const res = await inWorld(be, 2, 1, "f64", async (env) => {
    const layer = make(env);
    const t = env.ps.tpRank;
    // Give the bias non-zero values (its shard of B for column-parallel, all of B for row).
    const bias = kind === "column" ? B.subarray(t * outF / 2, (t + 1) * outF / 2) : B;
    be.copy(be.fromHost("f64", [bias.length], bias), layer.bias!.value);
    // The layer's input: full X, or this rank's column slice of X for an input-parallel row layer.
    const xin = kind === "row" && flag
      ? be.fromHost(
        "f64",
        [rows, inF / 2],
        cat([X], rows, inF, 0).filter((_, i) => Math.floor((i % inF) / (inF / 2)) === t),
      )
      : be.fromHost("f64", [rows, inF], X);
    // The output is [rows, outF] replicated, or this rank's [rows, outF / 2] slice (column, not gathered).
    const sliced = kind === "column" && !flag;
    const Rl = sliced ? R.filter((_, i) => Math.floor((i % outF) / (outF / 2)) === t) : R;
    const lossOf = async () => {
      const y = await layer.forward(xin);
      const yv = be.toF64(y);
      be.free(y);
      let l = 0;
      for (let i = 0; i < yv.length; i++) l += yv[i] * Rl[i];
      // Sum over TP ranks when each holds a different slice of Y; replicated Y counts once.
      const lt = be.fromHost("f64", [1], [sliced ? l : (t === 0 ? l : 0)]);
      await env.comm.allReduce(lt, "sum", "tensor");
      return be.toF64(lt)[0];
    };
    await lossOf();
    const dy = be.fromHost("f64", [rows, sliced ? outF / 2 : outF], Rl);
    const dx = await layer.backward(xin, dy);
    // Central differences. A sharded tensor is perturbed on one rank at a time (the others still run
    // the collectives); a replicated one (X, or the row-parallel bias) on every rank at once, since
    // its gradient is the total over ranks.
    const fd = async (x: Tensor, i: number, active: boolean) => {
      const h = 1e-6;
      const v = be.toF64(x);
      const orig = v[i];
      const set = (val: number) => {
        if (!active) return;
        v[i] = val;
        be.copy(be.fromHost("f64", x.shape, v), x);
      };
      set(orig + h);
      const lp = await lossOf();
      set(orig - h);
      const lm = await lossOf();
      set(orig);
      return (lp - lm) / (2 * h);
    };
    const shardedX = kind === "row" && flag;
    const fdW: [number, number][] = [], fdB: [number, number][] = [], fdX: [number, number][] = [];
    for (let who = 0; who < 2; who++) {
      for (const i of [0, 7, layer.weight.value.size - 1]) {
        const v = await fd(layer.weight.value, i, t === who);
        if (t === who) fdW.push([i, v]);
      }
      if (kind === "column") {
        const v = await fd(layer.bias!.value, 1, t === who);
        if (t === who) fdB.push([1, v]);
      }
      if (shardedX) {
        const v = await fd(xin, 4, t === who);
        if (t === who) fdX.push([4, v]);
      }
    }
    if (kind === "row") fdB.push([2, await fd(layer.bias!.value, 2, true)]);
    if (!shardedX) fdX.push([3, await fd(xin, 3, true)]);
    return {
      t,
      W: be.toF64(layer.weight.value),
      dW: be.toF64(layer.weight.grad),
      db: be.toF64(layer.bias!.grad),
      dx: be.toF64(dx),
      fdW,
      fdB,
      fdX,
    };
  });
  // Closed form on the full matrices: dL/dA = R^T X, dL/db = column sums of R, dL/dX = R A.
  const A = kind === "column"
    ? cat(res.map((r) => r.W), outF / 2, inF, 0)
    : cat(res.map((r) => r.W), outF, inF / 2, 1);
  const dA = new Float64Array(outF * inF), db = new Float64Array(outF), dX = new Float64Array(rows * inF);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      db[o] += R[r * outF + o];
      for (let i = 0; i < inF; i++) {
        dA[o * inF + i] += R[r * outF + o] * X[r * inF + i];
        dX[r * inF + i] += R[r * outF + o] * A[o * inF + i];
      }
    }
  }
  const gotA = kind === "column"
    ? cat(res.map((r) => r.dW), outF / 2, inF, 0)
    : cat(res.map((r) => r.dW), outF, inF / 2, 1);
  assert.ok(maxAbsDiff(gotA, dA) < 1e-6, `${kind}: dL/dA`);
  const gotB = kind === "column" ? cat(res.map((r) => r.db), 1, outF / 2, 1) : res[0].db;
  assert.ok(maxAbsDiff(gotB, db) < 1e-6, `${kind}: dL/db`);
  if (kind === "row") assert.deepEqual(res[0].db, res[1].db, "row bias grads replicated");
  const gotX = kind === "row" && flag ? cat(res.map((r) => r.dx), rows, inF / 2, 1) : res[0].dx;
  assert.ok(maxAbsDiff(gotX, dX) < 1e-6, `${kind}: dL/dX`);
  if (!(kind === "row" && flag)) assert.deepEqual(res[0].dx, res[1].dx, "dX replicated over TP");
  for (const r of res) {
    for (const [i, v] of r.fdW) {
      assert.ok(Math.abs(r.dW[i] - v) < 1e-6, `${kind}: FD dA[${i}] on rank ${r.t}`);
    }
    for (const [i, v] of r.fdB) {
      assert.ok(Math.abs(r.db[i] - v) < 1e-6, `${kind}: FD db[${i}] on rank ${r.t}`);
    }
    for (const [i, v] of r.fdX) {
      assert.ok(Math.abs(r.dx[i] - v) < 1e-6, `${kind}: FD dX[${i}] on rank ${r.t}`);
    }
  }
}

Deno.test("f64 gradient check across TP=2: column-parallel (gathered output)", () =>
  gradCheck("column", true));
Deno.test("f64 gradient check across TP=2: column-parallel (parallel output)", () =>
  gradCheck("column", false));
Deno.test("f64 gradient check across TP=2: row-parallel (scattered input)", () => gradCheck("row", false));
Deno.test("f64 gradient check across TP=2: row-parallel (parallel input)", () => gradCheck("row", true));

function gptCfg(tpSize: number) {
  return resolveConfig({
    numLayers: 2,
    hiddenSize: 16,
    numAttentionHeads: 4,
    seqLength: 4,
    maxPositionEmbeddings: 4,
    vocabSize: 64,
    hiddenDropout: 0,
    attentionDropout: 0,
    initMethodStd: 0.02,
    layernormEpsilon: 1e-5,
    paramsDtype: "f32",
    activationsCheckpointMethod: null,
    activationsCheckpointNumLayers: 1,
    seed: 1234,
  }, tpSize);
}

Deno.test("transformer MLP agrees with ColumnParallelLinear -> GeLU -> RowParallelLinear at TP=2", async () => {
  const be = createCpuBackend();
  const h = 16, f = 64, T = 8;
  const X = rand(T * h, 5);
  const DY = rand(T * h, 6);
  const res = await inWorld(be, 2, 1, "f32", async (env) => {
    const cfg = gptCfg(env.ps.tpSize);
    const mlp = new ParallelMLP({ cfg, backend: be, ps: env.ps, comm: env.comm }, 1, "mlp.");
    // Same init as the transformer: same streams, same global-coordinate indexing.
    const col = new ColumnParallelLinear(env, "mlp.dense_h_to_4h", h, f, {
      seed: cfg.seed,
      stream: initStream(1, ParamKind.h4h),
      std: cfg.initMethodStd,
    }, { gatherOutput: false, skipBiasAdd: true });
    const row = new RowParallelLinear(env, "mlp.dense_4h_to_h", f, h, {
      seed: cfg.seed,
      stream: initStream(1, ParamKind.fourhh),
      std: cfg.initMethodStd / Math.sqrt(2 * cfg.numLayers),
    }, { inputIsParallel: true, skipBiasAdd: true });
    assert.deepEqual(be.toF64(col.weight.value), be.toF64(mlp.h4hWeight.value), "h->4h init");
    assert.deepEqual(be.toF64(row.weight.value), be.toF64(mlp.fourhhWeight.value), "4h->h init");
    const x = be.fromHost("f32", [1, T, h], X);
    const dy = be.fromHost("f32", [1, T, h], DY);
    // Transformer module.
    const ctx = newMicroBatchContext({ iteration: 0, firstGlobalSample: 0 });
    const c0 = env.comm.allReduces;
    const y1 = await mlp.forward(x, ctx);
    const fwd1 = env.comm.allReduces - c0;
    const dx1 = await mlp.backward(dy, ctx);
    const bwd1 = env.comm.allReduces - c0 - fwd1;
    // Reference blocks.
    const c1 = env.comm.allReduces;
    const x2 = x.view([T, h]);
    const pre = await col.forward(x2);
    const act = be.empty("f32", pre.shape);
    be.biasGeluFwd(pre, col.bias!.value, act);
    const y2 = await row.forward(act);
    const fwd2 = env.comm.allReduces - c1;
    const dAct = await row.backward(act, dy.view([T, h]));
    const dPre = be.empty("f32", pre.shape);
    be.biasGeluBwd(dAct, pre, col.bias!.value, dPre);
    const dx2 = await col.backward(x2, dPre);
    const bwd2 = env.comm.allReduces - c1 - fwd2;
    return {
      counts: [fwd1, bwd1, fwd2, bwd2],
      y: [be.toF64(y1), be.toF64(y2)],
      dx: [be.toF64(dx1), be.toF64(dx2)],
      g: [
        [be.toF64(mlp.h4hWeight.grad), be.toF64(col.weight.grad)],
        [be.toF64(mlp.h4hBias.grad), be.toF64(col.bias!.grad)],
        [be.toF64(mlp.fourhhWeight.grad), be.toF64(row.weight.grad)],
      ],
    };
  });
  for (const r of res) {
    assert.deepEqual(r.counts, [1, 1, 1, 1], "one all-reduce forward and one backward for each");
    assert.ok(maxAbsDiff(r.y[0], r.y[1]) < 1e-6, "forward");
    assert.ok(maxAbsDiff(r.dx[0], r.dx[1]) < 1e-6, "dx");
    for (const [a, b] of r.g) assert.ok(maxAbsDiff(a, b) < 1e-6, "param grads");
  }
});

Deno.test("a transformer layer communicates like Megatron: 2 all-reduces forward, 2 backward (TP=2)", async () => {
  const be = createCpuBackend();
  const h = 16, s = 4;
  const res = await inWorld(be, 2, 1, "f32", async (env) => {
    const cfg = gptCfg(env.ps.tpSize);
    const layer = new TransformerLayer({ cfg, backend: be, ps: env.ps, comm: env.comm }, 0, "layers.0.");
    const x = be.fromHost("f32", [1, s, h], rand(s * h, 9));
    const ctx = newMicroBatchContext({ iteration: 0, firstGlobalSample: 0 });
    const y = await layer.forward(x, ctx);
    const fwd = env.comm.allReduces;
    await layer.backward(be.fromHost("f32", [1, s, h], rand(s * h, 10)), ctx);
    be.free(y);
    return [fwd, env.comm.allReduces - fwd];
  });
  for (const r of res) assert.deepEqual(r, [2, 2]);
});

Deno.test("vocab-parallel embedding at TP=4: lookup and table gradient equal TP=1", async () => {
  const be = createCpuBackend();
  const V = 32, h = 8;
  const ids = [0, 5, 31, 8, 8, 17, 24, 7];
  const DOUT = rand(ids.length * h, 3);
  const run = (tp: number) =>
    inWorld(be, tp, 1, "f64", async (env) => {
      const emb = new VocabParallelEmbedding(env, "e", V, h, INIT);
      const idT = be.fromHost("i32", [ids.length], ids);
      const out = await emb.forward(idT);
      emb.backward(idT, be.fromHost("f64", [ids.length, h], DOUT));
      return { out: be.toF64(out), grad: be.toF64(emb.weight.grad), reduces: env.comm.allReduces };
    });
  const [ref] = await run(1);
  const shards = await run(4);
  for (const s of shards) {
    assert.deepEqual(s.out, ref.out, "replicated lookup equals TP=1");
    assert.equal(s.reduces, 1, "one all-reduce in forward, none in backward");
  }
  assert.deepEqual(cat(shards.map((s) => s.grad), V / 4, h, 0), ref.grad);
});

Deno.test("transformer TP shards at TP=2 equal the reference classes' shards (QKV, dense, word embeddings)", async () => {
  const be = createCpuBackend();
  await inWorld(be, 2, 1, "f32", (env) => {
    const cfg = gptCfg(env.ps.tpSize);
    const menv = { cfg, backend: be, ps: env.ps, comm: env.comm };
    const layer = new TransformerLayer(menv, 1, "layers.1.");
    const emb = new Embedding(menv);
    const h = cfg.hiddenSize, std = cfg.initMethodStd, seed = cfg.seed;
    const qkv = new ColumnParallelLinear(env, "qkv", h, 3 * h, {
      seed,
      std,
      stream: initStream(1, ParamKind.qkv),
    });
    const dense = new RowParallelLinear(env, "dense", h, h, {
      seed,
      std: std / Math.sqrt(2 * cfg.numLayers),
      stream: initStream(1, ParamKind.attnDense),
    });
    const word = new VocabParallelEmbedding(env, "word", cfg.vocabSize, h, {
      seed,
      std,
      stream: initStream(-1, ParamKind.wordEmbeddings),
    });
    const att = layer.selfAttention;
    assert.deepEqual(be.toF64(att.qkvWeight.value), be.toF64(qkv.weight.value), "query_key_value shard");
    assert.deepEqual(be.toF64(att.denseWeight.value), be.toF64(dense.weight.value), "attention dense shard");
    assert.deepEqual(be.toF64(emb.wordEmbeddings.value), be.toF64(word.weight.value), "word embedding shard");
    assert.equal(emb.vocabStart, word.vocabStart);
    return Promise.resolve();
  });
});

Deno.test("bf16 layers: f32 master copies equal the initial values; f32 grads", () => {
  const be = createCpuBackend();
  const env: TPEnv = {
    backend: be,
    comm: new SingleRankCommunicator(),
    ps: makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    dtype: "bf16",
  };
  const col = new ColumnParallelLinear(env, "c", 8, 8, INIT);
  assert.equal(col.weight.value.dtype, "bf16");
  assert.equal(col.weight.grad.dtype, "f32");
  assert.equal(col.weight.main?.dtype, "f32");
  const f32 = new ColumnParallelLinear({ ...env, dtype: "f32" }, "c", 8, 8, INIT);
  assert.deepEqual(be.toF64(col.weight.main!), be.toF64(f32.weight.value));
  assert.equal(f32.weight.main, null);
});
