// The BERT/T5 modules after the transformer (src/models/bert_heads.ts, t5_head.ts, lm_logits.ts and
// src/transformer/tokentype_embedding.ts): f64 finite-difference gradient checks of each module and of
// the BERT heads wired together (LM + SOP losses), known-answer losses, TP=2 against TP=1 for the
// vocab-parallel pieces, parameter names, and bad input.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { BertLMHead, BinaryHead, Pooler, SopLoss } from "../src/models/bert_heads.ts";
import { MaskedLmLoss, TiedLmLogits } from "../src/models/lm_logits.ts";
import { T5LMHead } from "../src/models/t5_head.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import { type TPEnv, VocabParallelEmbedding } from "../src/parallel/tensor_parallel.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import type { DType } from "../src/tensor/dtype.ts";
import type { Param } from "../src/tensor/param.ts";
import type { Tensor } from "../src/tensor/tensor.ts";
import { type MicroBatchContext, newMicroBatchContext } from "../src/transformer/common.ts";
import { checkGradients, type GradTarget } from "../src/transformer/gradcheck.ts";
import { headInit, HeadInitKind, TokentypeEmbedding } from "../src/transformer/tokentype_embedding.ts";
import { dotF64, lcgNoise } from "./helpers/fd_check.ts";

const be = createCpuBackend({ log: () => {} });
const SEED = 1234, STD = 0.3, H = 8, V = 12, B = 2, S = 5;

function single(dtype: DType = "f64"): TPEnv {
  return {
    backend: be,
    comm: new SingleRankCommunicator(),
    ps: makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    dtype,
  };
}

/** Run fn on every rank of a TP world (one rank: no LocalWorld). */
async function inTP<T>(tp: number, fn: (env: TPEnv) => Promise<T>, dtype: DType = "f64"): Promise<T[]> {
  if (tp === 1) return [await fn(single(dtype))];
  const world = new LocalWorld(be, { tp, pp: 1, dp: 1 }, { timeoutMs: 10_000 });
  return await Promise.all(
    world.states.map((ps, r) => fn({ backend: be, comm: world.communicator(r), ps, dtype })),
  );
}

const ctxOf = (): MicroBatchContext => newMicroBatchContext({ iteration: 3, firstGlobalSample: 5 });
const noise = (n: number, salt: number) => lcgNoise(n, salt * 7919 + 17);
const tensor = (env: TPEnv, shape: number[], v: ArrayLike<number>) => be.fromHost(env.dtype, shape, v);

/** Give zero/one-initialized params generic values so every path is exercised. */
function perturb(ps: Param[]): void {
  for (const [i, p] of ps.entries()) {
    const v = be.toF64(p.value), r = noise(v.length, 300 + i);
    for (let j = 0; j < v.length; j++) v[j] += 0.2 * r[j];
    const t = be.fromHost(p.value.dtype, p.value.shape, v);
    be.copy(t, p.value);
    be.free(t);
  }
}

function zeroGrads(ps: Param[]): void {
  for (const p of ps) be.fill(p.grad, 0);
}

function word(env: TPEnv): VocabParallelEmbedding {
  return new VocabParallelEmbedding(
    env,
    "language_model.embedding.word_embeddings",
    V,
    H,
    headInit(SEED, STD, 0),
  );
}

/** The test's BERT heads (fixed SEED/STD inits); `extra` adds LM-head options as given. */
function bertLmHead(env: TPEnv, extra: { openaiGelu?: boolean } = {}): BertLMHead {
  return new BertLMHead(env, {
    hiddenSize: H,
    vocabSize: V,
    init: headInit(SEED, STD, HeadInitKind.lmHeadDense),
    layernormEpsilon: 1e-5,
    ...extra,
  });
}
const newPooler = (env: TPEnv) =>
  new Pooler(env, { hiddenSize: H, init: headInit(SEED, STD, HeadInitKind.pooler) });
const newBinaryHead = (env: TPEnv) =>
  new BinaryHead(env, { hiddenSize: H, init: headInit(SEED, STD, HeadInitKind.binaryHead) });

const LABELS = [3, -1, 7, 0, -1, 11, 5, -1, 2, 9]; // -1 at unmasked positions, as BERT's dataset
const MASK = [1, 0, 1, 1, 0, 1, 1, 0, 1, 1];

function assertClean(res: Awaited<ReturnType<typeof checkGradients>>, what: string): void {
  assert.deepEqual(res.failures, [], `${what}: worst ${res.worst} at ${res.worstAt}`);
  assert.ok(res.checked > 10, `${what}: only ${res.checked} elements checked`);
}

// ---- gradient checks (f64, one rank) ----------------------------------------------------------------

Deno.test("gradcheck: tokentype embedding", async () => {
  const env = single();
  const tt = new TokentypeEmbedding(env, { numTokentypes: 2, hiddenSize: H, init: headInit(SEED, STD, 10) });
  const types = be.fromHost("i32", [B, S], [0, 0, 1, 1, 1, 0, 1, 0, 0, 1]);
  const base = noise(B * S * H, 1), r = noise(B * S * H, 2);
  const run = (backward: boolean) => {
    const ctx = ctxOf(), sum = tensor(env, [B, S, H], base);
    tt.forward(types, sum, ctx);
    const loss = dotF64(be, sum, r);
    if (backward) tt.backward(tensor(env, [B, S, H], r), ctx);
    else tt.discard(ctx);
    be.free(sum);
    return loss;
  };
  zeroGrads(tt.params());
  run(true);
  const res = await checkGradients(
    be,
    [{ name: "tokentype", value: tt.weight.value, grad: tt.weight.grad }],
    () => Promise.resolve(run(false)),
    { samples: 16 },
  );
  assertClean(res, "tokentype");
});

Deno.test("gradcheck: pooler (token 0 and token 2)", async () => {
  const env = single();
  for (const seqIdx of [0, 2]) {
    const pooler = newPooler(env);
    perturb([pooler.dense.bias]);
    const hidden = tensor(env, [B, S, H], noise(B * S * H, 3)), r = noise(B * H, 4);
    let dHidden: Tensor | null = null;
    const run = (backward: boolean) => {
      const ctx = ctxOf();
      const y = pooler.forward(hidden, ctx, seqIdx);
      const loss = dotF64(be, y, r);
      if (backward) {
        dHidden = be.zeros("f64", [B, S, H]);
        pooler.backward(tensor(env, [B, H], r), ctx, dHidden);
      } else pooler.discard(ctx);
      be.free(y);
      return loss;
    };
    zeroGrads(pooler.params());
    run(true);
    const dh = be.toF64(dHidden!);
    // Only the pooled token's rows receive gradient.
    for (let i = 0; i < B * S; i++) {
      if (i % S === seqIdx) continue;
      assert.ok(dh.subarray(i * H, (i + 1) * H).every((v) => v === 0), `row ${i} of dHidden is not zero`);
    }
    const targets: GradTarget[] = [
      { name: "hidden", value: hidden, grad: dh },
      ...pooler.params().map((p) => ({ name: p.name, value: p.value, grad: p.grad })),
    ];
    assertClean(
      await checkGradients(be, targets, () => Promise.resolve(run(false)), { samples: 12 }),
      "pooler",
    );
  }
});

/** BERT LM head -> masked-LM loss; returns the gradcheck result. */
async function lmHeadCheck(openaiGelu: boolean) {
  const env = single();
  const we = word(env);
  const head = bertLmHead(env, { openaiGelu });
  perturb([head.bias, head.dense.bias, head.layernormWeight, head.layernormBias]);
  return await lmHeadLossCheck(env, we, head, [...head.params(), we.weight], LABELS, 5, 10);
}

/** An LM head (hidden + tied word embeddings -> logits) through MaskedLmLoss: the gradients of the
 *  hidden state and of `params` against finite differences. */
async function lmHeadLossCheck(
  env: TPEnv,
  we: VocabParallelEmbedding,
  head: BertLMHead | T5LMHead,
  params: Param[],
  labelIds: number[],
  hiddenSalt: number,
  samples: number,
) {
  const loss = new MaskedLmLoss(env, head.vocabStart);
  const hidden = tensor(env, [B, S, H], noise(B * S * H, hiddenSalt));
  const labels = be.fromHost("i32", [B * S], labelIds);
  let dHidden: Tensor | null = null;
  const run = async (backward: boolean) => {
    const ctx = ctxOf();
    const logits = head.forward(hidden, we.weight, ctx);
    const out = await loss.forward(logits, labels, MASK, ctx);
    if (backward) {
      const dLogits = loss.backward(ctx, 1);
      dHidden = await head.backward(dLogits, we.weight, ctx);
      be.free(dLogits);
    } else {
      loss.discard(ctx);
      head.discard(ctx);
    }
    return out.loss;
  };
  zeroGrads(params);
  await run(true);
  const targets: GradTarget[] = [
    { name: "hidden", value: hidden, grad: dHidden! },
    ...params.map((p) => ({ name: p.name, value: p.value, grad: p.grad })),
  ];
  return await checkGradients(be, targets, () => run(false), { samples });
}

Deno.test("gradcheck: BERT LM head (erf GeLU) + masked-LM loss", async () => {
  assertClean(await lmHeadCheck(false), "lm head erf");
});

Deno.test("gradcheck: BERT LM head (--openai-gelu) + masked-LM loss", async () => {
  assertClean(await lmHeadCheck(true), "lm head tanh");
});

Deno.test("gradcheck: binary head + SOP loss (ignore_index -1)", async () => {
  const env = single();
  const head = newBinaryHead(env);
  perturb([head.dense.bias]);
  const sop = new SopLoss(env);
  const pooled = tensor(env, [3, H], noise(3 * H, 6));
  let dPooled: Tensor | null = null;
  const run = (backward: boolean) => {
    const ctx = ctxOf();
    const logits = head.forward(pooled, ctx);
    const out = sop.forward(logits, [1, -1, 0], ctx);
    be.free(logits);
    if (backward) {
      const dl = sop.backward(ctx, 1);
      dPooled = head.backward(dl, ctx);
      be.free(dl);
    } else {
      sop.discard(ctx);
      head.discard(ctx);
    }
    return out.loss;
  };
  zeroGrads(head.params());
  run(true);
  // The ignored sample gets no gradient.
  assert.ok(be.toF64(dPooled!).subarray(H, 2 * H).every((v) => v === 0));
  const targets: GradTarget[] = [
    { name: "pooled", value: pooled, grad: dPooled! },
    ...head.params().map((p) => ({ name: p.name, value: p.value, grad: p.grad })),
  ];
  assertClean(
    await checkGradients(be, targets, () => Promise.resolve(run(false)), { samples: 12 }),
    "binary",
  );
});

Deno.test("gradcheck: T5 LM head + masked-LM loss", async () => {
  const env = single();
  const we = word(env);
  const head = new T5LMHead(env, { hiddenSize: H, vocabSize: V });
  perturb([head.bias]);
  const labels = LABELS.map((l) => (l < 0 ? 0 : l));
  assertClean(await lmHeadLossCheck(env, we, head, [head.bias, we.weight], labels, 7, 12), "t5 head");
});

Deno.test("gradcheck: BERT heads wired as the model does (lm loss + sop loss into one hidden grad)", async () => {
  const env = single();
  const we = word(env);
  const lm = bertLmHead(env), pooler = newPooler(env), bin = newBinaryHead(env);
  const mlm = new MaskedLmLoss(env, lm.vocabStart), sop = new SopLoss(env);
  const all = [we.weight, ...pooler.params(), ...lm.params(), ...bin.params()];
  perturb([lm.bias, lm.dense.bias, lm.layernormWeight, lm.layernormBias, pooler.dense.bias, bin.dense.bias]);
  const hidden = tensor(env, [B, S, H], noise(B * S * H, 8));
  const labels = be.fromHost("i32", [B * S], LABELS);
  let dHidden: Tensor | null = null;
  const run = async (backward: boolean) => {
    const ctx = ctxOf();
    const lmOut = await mlm.forward(lm.forward(hidden, we.weight, ctx), labels, MASK, ctx);
    const pooled = pooler.forward(hidden, ctx);
    const binLogits = bin.forward(pooled, ctx);
    const sopOut = sop.forward(binLogits, [0, 1], ctx);
    be.free(binLogits);
    // Megatron: loss = lm_loss + sop_loss.
    if (backward) {
      const dl = mlm.backward(ctx, 1);
      dHidden = await lm.backward(dl, we.weight, ctx);
      const dsop = sop.backward(ctx, 1);
      const dPooled = bin.backward(dsop, ctx);
      pooler.backward(dPooled, ctx, dHidden);
      for (const t of [dl, dsop, dPooled]) be.free(t);
    } else {
      for (const m of [mlm, sop, bin, pooler, lm]) m.discard(ctx);
    }
    be.free(pooled);
    return lmOut.loss + sopOut.loss;
  };
  zeroGrads(all);
  await run(true);
  const targets: GradTarget[] = [
    { name: "hidden", value: hidden, grad: dHidden! },
    ...all.map((p) => ({ name: p.name, value: p.value, grad: p.grad })),
  ];
  assertClean(await checkGradients(be, targets, () => run(false), { samples: 8 }), "bert heads");
});

// ---- known answers ----------------------------------------------------------------------------------

Deno.test("SOP loss: known value and gradient, -1 ignored", () => {
  const env = single(), ctx = ctxOf();
  const logits = tensor(env, [3, 2], [1, 2, 0, 0, 3, -1]);
  const out = new SopLoss(env).forward(logits, [0, 1, -1], ctx);
  // sample 0: log(e + e^2) - 1 = log(1 + e); sample 1: log 2; mean over the 2 counted samples.
  const want = (Math.log(1 + Math.E) + Math.LN2) / 2;
  assert.ok(Math.abs(out.loss - want) < 1e-15, `${out.loss} vs ${want}`);
  assert.equal(out.samples, 2);
  const sop = new SopLoss(env), c2 = ctxOf();
  sop.forward(logits, [0, 1, -1], c2);
  const d = be.toF64(sop.backward(c2, 1));
  const p0 = Math.E / (Math.E + Math.E ** 2); // softmax of sample 0, class 0
  const want2 = [(p0 - 1) / 2, (1 - p0) / 2, 0.25, -0.25, 0, 0];
  for (let i = 0; i < 6; i++) {
    assert.ok(Math.abs(d[i] - want2[i]) < 1e-15, `d[${i}] = ${d[i]} vs ${want2[i]}`);
  }
});

for (const tp of [1, 2]) {
  Deno.test(`masked-LM loss: known value and dlogits (TP=${tp})`, async () => {
    // 3 tokens, vocabulary 4. Token 0: uniform logits, label 2 -> log 4. Token 1: unmasked (label -1,
    // mask 0). Token 2: logits [ln 3, 0, 0, 0], label 0 -> log 6 - ln 3 = log 2. Loss = (log 4 + log 2) / 2.
    const full = [0, 0, 0, 0, 1, 2, 3, 4, Math.log(3), 0, 0, 0];
    const res = await inTP(tp, async (env) => {
      const per = 4 / tp, start = env.ps.tpRank * per;
      const shard: number[] = [];
      for (let r = 0; r < 3; r++) shard.push(...full.slice(r * 4 + start, r * 4 + start + per));
      const ctx = ctxOf(), loss = new MaskedLmLoss(env, start);
      const out = await loss.forward(
        tensor(env, [3, per], shard),
        be.fromHost("i32", [3], [2, -1, 0]),
        [1, 0, 1],
        ctx,
      );
      return { out, d: be.toF64(loss.backward(ctx, 1)), per };
    });
    const want = 1.5 * Math.LN2;
    const dFull = [1 / 8, 1 / 8, 1 / 8 - 1 / 2, 1 / 8, 0, 0, 0, 0, 0.5 / 2 - 1 / 2, 1 / 12, 1 / 12, 1 / 12];
    for (const [r, { out, d, per }] of res.entries()) {
      assert.ok(Math.abs(out.loss - want) < 1e-15, `rank ${r}: ${out.loss} vs ${want}`);
      assert.equal(out.tokens, 2);
      for (let row = 0; row < 3; row++) {
        for (let j = 0; j < per; j++) {
          const w = dFull[row * 4 + r * per + j];
          assert.ok(
            Math.abs(d[row * per + j] - w) < 1e-15,
            `rank ${r} d[${row}, ${j}] = ${d[row * per + j]} vs ${w}`,
          );
        }
      }
    }
  });
}

// ---- TP=2 against TP=1 ------------------------------------------------------------------------------

interface HeadRun {
  logits: Float64Array;
  loss: number;
  dHidden: Float64Array;
  grads: Map<string, Float64Array>;
  values: Map<string, Float64Array>;
  vocabStart: number;
}

async function runHead(kind: "bert" | "t5", tp: number): Promise<HeadRun[]> {
  const hidden = noise(B * S * H, 9);
  return await inTP(tp, async (env) => {
    const we = word(env);
    const head = kind === "bert" ? bertLmHead(env) : new T5LMHead(env, { hiddenSize: H, vocabSize: V });
    // The bias starts at zero: give it values drawn by global index, so shards are slices.
    const full = noise(V, 10), bias = head.bias;
    const mine = full.slice(head.vocabStart, head.vocabStart + V / tp);
    be.copy(be.fromHost("f64", [V / tp], mine), bias.value);
    const ctx = ctxOf(), loss = new MaskedLmLoss(env, head.vocabStart);
    const x = tensor(env, [B, S, H], hidden);
    const logitsT = head.forward(x, we.weight, ctx);
    const logits = be.toF64(logitsT);
    const out = await loss.forward(logitsT, be.fromHost("i32", [B * S], LABELS), MASK, ctx);
    const dl = loss.backward(ctx, 1);
    const dHidden = be.toF64(await head.backward(dl, we.weight, ctx));
    const ps = [we.weight, ...head.params()];
    return {
      logits,
      loss: out.loss,
      dHidden,
      grads: new Map(ps.map((p) => [p.name, be.toF64(p.grad)])),
      values: new Map(ps.map((p) => [p.name, be.toF64(p.value)])),
      vocabStart: head.vocabStart,
    };
  });
}

/** Row-concatenate [rows, c] shards by columns into [rows, 2c]. */
function catCols(a: Float64Array, b: Float64Array, rows: number): Float64Array {
  const c = a.length / rows, out = new Float64Array(2 * a.length);
  for (let r = 0; r < rows; r++) {
    out.set(a.subarray(r * c, (r + 1) * c), r * 2 * c);
    out.set(b.subarray(r * c, (r + 1) * c), r * 2 * c + c);
  }
  return out;
}

function close(a: Float64Array, b: Float64Array, what: string, tol = 1e-12): void {
  assert.equal(a.length, b.length, `${what}: length`);
  let scale = 0;
  for (const v of b) scale = Math.max(scale, Math.abs(v));
  for (let i = 0; i < a.length; i++) {
    assert.ok(Math.abs(a[i] - b[i]) <= tol * Math.max(1, scale), `${what}[${i}]: ${a[i]} vs ${b[i]}`);
  }
}

for (const kind of ["bert", "t5"] as const) {
  Deno.test(`${kind} LM head + masked-LM loss: TP=2 shards equal TP=1 (init, logits, loss, grads)`, async () => {
    const [one] = await runHead(kind, 1);
    const two = await runHead(kind, 2);
    const T = B * S;
    close(catCols(two[0].logits, two[1].logits, T), one.logits, "logits");
    for (const [r, t] of two.entries()) {
      assert.ok(Math.abs(t.loss - one.loss) <= 1e-14 * one.loss, `rank ${r} loss ${t.loss} vs ${one.loss}`);
      close(t.dHidden, one.dHidden, `rank ${r} dHidden`);
      for (const [name, g] of t.grads) {
        const full = one.grads.get(name)!, v = t.values.get(name)!, fullV = one.values.get(name)!;
        const split = name.endsWith("word_embeddings.weight") || name.endsWith("lm_head.bias");
        // Vocab-split params ([V, h] rows, [V]) are row slices of TP=1's; the rest are replicated.
        const per = split ? full.length / 2 : full.length, off = split ? r * per : 0;
        close(g, full.slice(off, off + per), `rank ${r} grad ${name}`);
        close(v, fullV.slice(off, off + per), `rank ${r} init ${name}`, 0);
      }
    }
  });
}

// ---- names and bad input ----------------------------------------------------------------------------

Deno.test("parameter names, weight decay and TP flags are Megatron's", () => {
  const env = single("f32");
  const lm = new BertLMHead(env, {
    hiddenSize: H,
    vocabSize: V,
    init: headInit(1, 0.02, 12),
    layernormEpsilon: 1e-12,
  });
  const pooler = new Pooler(env, { hiddenSize: H, init: headInit(1, 0.02, 11) });
  const bin = new BinaryHead(env, { hiddenSize: H, init: headInit(1, 0.02, 13) });
  const tt = new TokentypeEmbedding(env, { numTokentypes: 2, hiddenSize: H, init: headInit(1, 0.02, 10) });
  const t5 = new T5LMHead(env, { hiddenSize: H, vocabSize: V });
  const names = [...lm.params(), ...pooler.params(), ...bin.params(), ...tt.params(), ...t5.params()].map((
    p,
  ) => [
    p.name,
    p.value.shape.join("x"),
    p.noWeightDecay,
    p.tensorParallel?.partitionDim ?? null,
  ]);
  assert.deepEqual(names, [
    ["lm_head.bias", "12", true, 0],
    ["lm_head.dense.weight", "8x8", false, null],
    ["lm_head.dense.bias", "8", true, null],
    ["lm_head.layernorm.weight", "8", true, null],
    ["lm_head.layernorm.bias", "8", true, null],
    ["language_model.pooler.dense.weight", "8x8", false, null],
    ["language_model.pooler.dense.bias", "8", true, null],
    ["binary_head.weight", "2x8", false, null],
    ["binary_head.bias", "2", true, null],
    ["language_model.embedding.tokentype_embeddings.weight", "2x8", false, null],
    ["lm_head.bias", "12", true, 0],
  ]);
  // Init: N(0, std) weights with distinct streams, zero biases, LayerNorm 1 / 0.
  const w = [lm.dense.weight, pooler.dense.weight, bin.dense.weight, tt.weight].map((p) => be.toF64(p.value));
  for (const v of w) {
    const sd = Math.sqrt(v.reduce((a, x) => a + x * x, 0) / v.length);
    assert.ok(sd > 0.01 && sd < 0.03, `std ${sd}`);
  }
  assert.notDeepEqual(w[0].slice(0, 8), w[1].slice(0, 8));
  assert.ok(be.toF64(lm.bias.value).every((x) => x === 0));
  assert.ok(be.toF64(lm.layernormWeight.value).every((x) => x === 1));
});

Deno.test("bad input: one line naming what was expected", async () => {
  const env = single();
  const tt = new TokentypeEmbedding(env, { numTokentypes: 2, hiddenSize: H, init: headInit(1, 0.02, 10) });
  assert.throws(
    () => tt.forward(be.fromHost("i32", [1, 3], [0, 2, 1]), be.zeros("f64", [1, 3, H]), ctxOf()),
    { message: "TokentypeEmbedding.forward: token type 2 at position 1 is outside [0, 2)" },
  );
  await inTP(2, (e) => {
    assert.throws(
      () => new T5LMHead(e, { hiddenSize: H, vocabSize: 13 }),
      { message: "TiedLmLogits: vocabulary size 13 is not divisible by tensor-parallel size 2" },
    );
    return Promise.resolve();
  });
  const sop = new SopLoss(env);
  assert.throws(
    () => sop.forward(tensor(env, [2, 2], [0, 0, 0, 0]), [0, 2], ctxOf()),
    { message: "SopLoss.forward: label 2 of sample 1 is not 0, 1 or -1" },
  );
  const p = new Pooler(env, { hiddenSize: H, init: headInit(1, 0.02, 11) });
  assert.throws(() => p.forward(be.zeros("f64", [2, 3, H]), ctxOf(), 3), {
    message: "Pooler.forward: sequence index 3 outside [0, 3)",
  });
  assert.ok(TiedLmLogits);
});

Deno.test("f32 and bf16 BERT heads (+ tokentype) follow the f64 result (dtype plumbing: half activations, f32 grads)", async () => {
  const runAt = async (dtype: DType) => {
    const env = single(dtype);
    const we = word(env);
    const lm = bertLmHead(env), pooler = newPooler(env), bin = newBinaryHead(env);
    const tt = new TokentypeEmbedding(env, {
      numTokentypes: 2,
      hiddenSize: H,
      init: headInit(SEED, STD, 10),
    });
    const ctx = ctxOf();
    const hidden = tensor(env, [B, S, H], noise(B * S * H, 11));
    tt.forward(be.fromHost("i32", [B, S], [0, 0, 0, 1, 1, 0, 0, 1, 1, 1]), hidden, ctx);
    const mlm = new MaskedLmLoss(env, lm.vocabStart), sop = new SopLoss(env);
    const lmOut = await mlm.forward(
      lm.forward(hidden, we.weight, ctx),
      be.fromHost("i32", [B * S], LABELS),
      MASK,
      ctx,
    );
    const pooled = pooler.forward(hidden, ctx);
    const bl = bin.forward(pooled, ctx);
    const sopOut = sop.forward(bl, [1, 0], ctx);
    const dl = mlm.backward(ctx, 1);
    const dHidden = await lm.backward(dl, we.weight, ctx);
    const ds = sop.backward(ctx, 1);
    pooler.backward(bin.backward(ds, ctx), ctx, dHidden);
    tt.backward(dHidden, ctx);
    const ps = [we.weight, ...lm.params(), ...pooler.params(), ...bin.params(), ...tt.params()];
    return { loss: lmOut.loss + sopOut.loss, grads: ps.map((p) => be.toF64(p.grad)), dh: be.toF64(dHidden) };
  };
  const ref = await runAt("f64");
  for (const [dtype, tol] of [["f32", 1e-5], ["bf16", 3e-2]] as const) {
    const r = await runAt(dtype);
    assert.ok(Math.abs(r.loss - ref.loss) <= tol * ref.loss, `${dtype} loss ${r.loss} vs ${ref.loss}`);
    for (const [i, g] of r.grads.entries()) {
      let num = 0, den = 0;
      for (let j = 0; j < g.length; j++) {
        num += (g[j] - ref.grads[i][j]) ** 2;
        den += ref.grads[i][j] ** 2;
      }
      assert.ok(
        Math.sqrt(num / Math.max(den, 1e-30)) <= 4 * tol,
        `${dtype} grad ${i}: rel L2 ${Math.sqrt(num / den)}`,
      );
    }
  }
});
