// The performance kernels' equivalence tests, shared by tests/gpu/perf_kernels.test.ts (a real GPU,
// in test:gpu) and tests/cuda_perf_kernels_emulated.test.ts (the CPU kernel emulator, in CI):
// multi-tensor Adam bit-equal to adamStep + copy per parameter (on the device and on the CPU), the
// optimizer taking that path, and fused (flash) attention against the CPU backend's unfused attention
// (ParallelAttention forward and backward: output, dx, every parameter gradient, d encoderOutput; causal,
// padding with fully masked rows, cross; f32/bf16/f16 with attention dropout), the kept dropout
// elements read off directly and equal to the CPU `dropout`'s, and bad operands.
import assert from "node:assert/strict";
import type { CudaBackend } from "../../src/backend/cuda/cuda_backend.ts";
import type { Backend, RngAddress } from "../../src/backend/backend.ts";
import type { DType } from "../../src/tensor/dtype.ts";
import type { Tensor } from "../../src/tensor/tensor.ts";
import type { Param } from "../../src/tensor/param.ts";
import { createMegatronOptimizer } from "../../src/optimizer/optimizer.ts";
import {
  type AttentionOptions,
  newMicroBatchContext,
  paddingMaskFromKeep,
  ParallelAttention,
  resolveConfig,
} from "../../src/transformer/mod.ts";
import { lcgNoise, singleRankEnv } from "../helpers/fd_check.ts";

const opts = { sanitizeResources: false, sanitizeOps: false };

/** max |a - b| / max |b|, and the index of the worst element. */
function relErr(a: Float64Array, b: Float64Array): { err: number; at: number } {
  assert.equal(a.length, b.length);
  let scale = 0, err = 0, at = -1;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]));
  for (let i = 0; i < b.length; i++) {
    const e = Math.abs(a[i] - b[i]);
    if (!(e <= err)) [err, at] = [e, i];
  }
  return { err: err / (scale || 1), at };
}

interface Case {
  name: string;
  attn: AttentionOptions;
  b: number;
  sq: number;
  sk: number;
  p: number;
  /** Hidden size (2 heads; default 32, so hn = 16 takes the generic kernels; 128: the hn = 64 ones). */
  h?: number;
}
const CASES: Case[] = [
  // sq = 100 spans two 64-row blocks and four 32-key tiles: the causal tile skipping is exercised.
  { name: "self causal", attn: { attnType: "self", maskType: "causal" }, b: 2, sq: 100, sk: 100, p: 0.3 },
  { name: "self causal p=0", attn: { attnType: "self", maskType: "causal" }, b: 1, sq: 70, sk: 70, p: 0 },
  { name: "self padding", attn: { attnType: "self", maskType: "padding" }, b: 2, sq: 45, sk: 45, p: 0.3 },
  { name: "cross padding", attn: { attnType: "cross", maskType: "padding" }, b: 2, sq: 37, sk: 50, p: 0.3 },
  {
    name: "self causal hn=64",
    attn: { attnType: "self", maskType: "causal" },
    b: 1,
    sq: 70,
    sk: 70,
    p: 0.3,
    h: 128,
  },
  {
    name: "cross padding hn=64",
    attn: { attnType: "cross", maskType: "padding" },
    b: 1,
    sq: 33,
    sk: 40,
    p: 0.3,
    h: 128,
  },
];

async function runAttention(be: Backend, dt: "f32" | "bf16" | "f16", c: Case) {
  const h = c.h ?? 32, heads = 2;
  const cfg = resolveConfig({
    numLayers: 2,
    hiddenSize: h,
    numAttentionHeads: heads,
    seqLength: Math.max(c.sq, c.sk),
    maxPositionEmbeddings: 128,
    vocabSize: 16,
    hiddenDropout: 0,
    attentionDropout: c.p,
    initMethodStd: 0.3,
    paramsDtype: dt,
    activationsCheckpointMethod: null,
    seed: 4321,
  });
  const attn = new ParallelAttention(singleRankEnv(cfg, be), 1, "layers.1.self_attention.", c.attn);
  const x = be.fromHost(dt, [c.b, c.sq, h], lcgNoise(c.b * c.sq * h, 11));
  const dOut = be.fromHost(dt, [c.b, c.sq, h], lcgNoise(c.b * c.sq * h, 12));
  const enc = c.attn.attnType === "cross"
    ? be.fromHost(dt, [c.b, c.sk, h], lcgNoise(c.b * c.sk * h, 13))
    : null;
  const dEnc = enc ? be.zeros(dt, enc.shape) : null;
  let mask: Tensor | undefined;
  if (c.attn.maskType === "padding") {
    // Sample 1 pads its last 9 positions (their query rows are fully masked); cross masks keys.
    const m = new Uint8Array(c.b * c.sq * c.sk);
    if (c.attn.attnType === "self") {
      const keep = Array.from(
        { length: c.b * c.sq },
        (_, i) => (i >= c.sq && i % c.sq >= c.sq - 9 ? 0 : 1),
      );
      m.set(paddingMaskFromKeep(keep, c.b, c.sq));
    } else {
      for (let i = 0; i < m.length; i++) m[i] = (i % c.sk) % 5 === 3 || (i % 7 === 0) ? 1 : 0;
    }
    mask = be.fromHost("u8", [c.b, c.sq, c.sk], m);
  }
  // Grad-accumulating params start at zero on both backends.
  for (const p of attn.params()) be.fill(p.grad, 0);
  const ctx = newMicroBatchContext({ iteration: 5, firstGlobalSample: 6 });
  const out = await attn.forward(x, ctx, { mask, encoderOutput: enc ?? undefined });
  const dx = await attn.backward(dOut, ctx, { dEncoderOutput: dEnc ?? undefined });
  const res: Record<string, Float64Array> = { out: be.toF64(out), dx: be.toF64(dx) };
  for (const p of attn.params()) res[`d ${p.name}`] = be.toF64(p.grad);
  if (dEnc) res["d encoderOutput"] = be.toF64(dEnc);
  for (const p of attn.params()) res[`w ${p.name}`] = be.toF64(p.value);
  return res;
}

/** Registers the tests; `cuda` must offer fused attention (setFusedAttention(true)). */
export function registerPerfKernelTests(cuda: CudaBackend, cpu: Backend, prefix: string): void {
  // Relative tolerances against the unfused CPU path: f32 differs only in summation order; half
  // types round scores, probabilities and dropped probabilities to the dtype on the unfused path
  // (the fused kernel keeps them in f32).
  const TOL: Record<string, number> = { f32: 2e-5, bf16: 4e-2, f16: 6e-3 };

  for (const dt of ["f32", "bf16", "f16"] as const) {
    Deno.test(
      { name: `${prefix}fused attention ${dt}: outputs and gradients equal the unfused CPU path`, ...opts },
      async () => {
        for (const c of CASES) {
          const ref = await runAttention(cpu, dt, c);
          const got = await runAttention(cuda, dt, c);
          for (const k of Object.keys(ref)) {
            if (k.startsWith("w ")) {
              assert.deepEqual([...got[k]], [...ref[k]], `${c.name} ${dt}: same initial ${k}`);
              continue;
            }
            const { err, at } = relErr(got[k], ref[k]);
            assert.ok(
              err <= TOL[dt],
              `${c.name} ${dt} ${k}: relative error ${err.toExponential(2)} > ${TOL[dt]} at ${at} (${
                got[k][at]
              } vs ${ref[k][at]})`,
            );
          }
        }
      },
    );
  }

  Deno.test(
    { name: prefix + "fused attention: the dropout keeps exactly the CPU dropout's elements", ...opts },
    () => {
      // q = 0 makes every probability 1/sk; v = identity (sk = hn) puts probability (i, j) after
      // dropout into out[i, j]: the kept pattern is read off the output.
      const b = 2, np = 3, sq = 20, hn = 16, sk = hn, p = 0.4;
      // A TP-like address: this rank's heads inside a larger per-sample row, at a non-zero base.
      const addr: RngAddress = {
        seed: 99,
        stream: 0x51,
        iteration: 17,
        base: 12345,
        rowStride: 3 * np * sq * sk,
        rowLen: np * sq * sk,
      };
      const ones = cpu.fromHost("f32", [b, np, sq, sk], new Float64Array(b * np * sq * sk).fill(1));
      const dropped = cpu.empty("f32", ones.shape);
      cpu.dropout(ones, p, addr, dropped);
      const ref = cpu.toF64(dropped);
      for (const dt of ["f32", "bf16", "f16"] as DType[]) {
        const q = cuda.zeros(dt, [b, np, sq, hn]);
        const eye = new Float64Array(b * np * sk * hn);
        for (let z = 0; z < b * np; z++) for (let j = 0; j < sk; j++) eye[(z * sk + j) * hn + j] = 1;
        const v = cuda.fromHost(dt, [b, np, sk, hn], eye);
        const out = cuda.empty(dt, [b, np, sq, hn]), lse = cuda.empty("f32", [b * np * sq]);
        const op = (t: Tensor, len: number) => ({ t, strideB: np * len * hn, strideH: len * hn, ld: hn });
        cuda.fusedAttentionFwd!({
          b,
          np,
          sq,
          sk,
          hn,
          scale: 0.25,
          mask: { kind: "none" },
          dropoutP: p,
          dropoutAddr: addr,
          q: op(q, sq),
          k: op(q, sk),
          v: op(v, sk),
          out: op(out, sq),
          lse,
        });
        const got = cuda.toF64(out);
        let kept = 0;
        for (let i = 0; i < ref.length; i++) {
          assert.equal(
            got[i] !== 0,
            ref[i] !== 0,
            `${dt}: element ${i} kept ${got[i] !== 0} vs CPU ${ref[i] !== 0}`,
          );
          if (ref[i] !== 0) kept++;
        }
        assert.ok(
          kept > 0.5 * ref.length && kept < 0.7 * ref.length,
          `${kept} of ${ref.length} kept at p = ${p}`,
        );
        for (const t of [q, v, out, lse]) cuda.free(t);
      }
    },
  );

  Deno.test(
    { name: prefix + "adamStepMulti equals adamStep + copy per parameter, bit for bit", ...opts },
    () => {
      // 70000 elements span two 65536-element chunks; grads f32 and bf16; model copies bf16/f16/none.
      const specs: [number, "f32" | "bf16", "bf16" | "f16" | null][] = [
        [70000, "f32", "bf16"],
        [33, "f32", "bf16"],
        [1, "bf16", "bf16"],
        [500, "bf16", "f16"],
        [257, "f32", null],
        [0, "f32", "bf16"],
      ];
      const args = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 1 };
      const make = (be: Backend, salt: number) =>
        specs.map(([n, gd, od], k) => ({
          param: be.fromHost("f32", [n], lcgNoise(n, salt + 10 * k)),
          // The CPU's adamStep takes f32 grads: the bf16 values, converted exactly.
          grad: be === cpu
            ? be.fromHost("f32", [n], cpu.toF64(cpu.fromHost(gd, [n], lcgNoise(n, salt + 10 * k + 1))))
            : be.fromHost(gd, [n], lcgNoise(n, salt + 10 * k + 1)),
          m: be.fromHost("f32", [n], lcgNoise(n, salt + 10 * k + 2).map((x) => 0.1 * x)),
          v: be.fromHost("f32", [n], lcgNoise(n, salt + 10 * k + 3).map((x) => 0.01 * x * x)),
          copyTo: od ? be.zeros(od, [n]) : null,
        }));
      const dump = (be: Backend, ts: ReturnType<typeof make>) =>
        ts.flatMap((t) => [t.param, t.m, t.v, ...(t.copyTo ? [t.copyTo] : [])].map((x) => [...be.toHost(x)]));
      for (const salt of [1, 2]) { // the second salt: new tensors, so a new table is uploaded
        const multi = make(cuda, salt), single = make(cuda, salt), host = make(cpu, salt);
        for (const step of [1, 2, 3]) {
          cuda.adamStepMulti!(multi, { ...args, step });
          for (const [i, t] of single.entries()) {
            cuda.adamStep(t.param, t.grad, t.m, t.v, { ...args, step });
            if (t.copyTo) cuda.copy(t.param, t.copyTo);
            const h = host[i];
            cpu.adamStep(h.param, h.grad, h.m, h.v, { ...args, step });
            if (h.copyTo) cpu.copy(h.param, h.copyTo);
          }
          const got = dump(cuda, multi);
          assert.deepEqual(
            got,
            dump(cuda, single),
            `salt ${salt} step ${step}: multi vs per-tensor (device)`,
          );
          assert.deepEqual(got, dump(cpu, host), `salt ${salt} step ${step}: multi vs the CPU`);
        }
        // Steady state: one launch per (grad dtype, copy dtype) pair, the table is not uploaded again.
        cuda.startProfiling();
        cuda.adamStepMulti!(multi, { ...args, step: 4 });
        const row = cuda.stopProfiling().ops.find((o) => o.op === "adamStepMulti");
        assert.deepEqual([row?.calls, row?.launches], [1, 4]);
        for (const t of [...multi, ...single]) {
          for (const x of [t.param, t.grad, t.m, t.v, t.copyTo]) if (x) cuda.free(x);
        }
      }
    },
  );

  Deno.test(
    { name: prefix + "optimizer: adamStepMulti path equals the per-parameter path, bit for bit", ...opts },
    async () => {
      // The same backend with adamStepMulti hidden takes the optimizer's per-parameter loop.
      const perParam = Object.create(cuda, { adamStepMulti: { value: undefined } }) as Backend;
      const run = async (be: Backend, profile: boolean) => {
        const mk = (
          name: string,
          dtype: "bf16" | "f32",
          n: number,
          k: number,
          noWeightDecay = false,
        ): Param => ({
          name,
          value: be.fromHost(dtype, [n], lcgNoise(n, k)),
          grad: be.zeros("f32", [n]),
          main: null,
          noWeightDecay,
          tensorParallel: null,
          shared: false,
        });
        const params = [mk("w", "bf16", 300, 1), mk("b", "bf16", 17, 2, true), mk("f", "f32", 40, 3)];
        const opt = createMegatronOptimizer(be, params, {
          lr: 0.01,
          globalBatchSize: 4,
          trainIters: 10,
          lrWarmupIters: 1,
          bf16: true,
          clipGrad: 1,
          weightDecay: 0.1,
        });
        if (profile) cuda.startProfiling();
        for (let it = 0; it < 3; it++) {
          for (const [i, p] of params.entries()) {
            be.copy(be.fromHost("f32", p.grad.shape, lcgNoise(p.grad.size, 100 * it + i)), p.grad);
          }
          await opt.step(4);
        }
        const ops = profile ? cuda.stopProfiling().ops.map((o) => o.op) : [];
        return { vals: params.map((p) => [...be.toHost(p.value)]), ops };
      };
      const multi = await run(cuda, true);
      assert.ok(multi.ops.includes("adamStepMulti") && !multi.ops.includes("adamStep"), multi.ops.join(" "));
      assert.deepEqual(multi.vals, (await run(perParam, false)).vals);
    },
  );

  Deno.test({ name: prefix + "fused attention: bad operands fail with one line", ...opts }, () => {
    const t = cuda.zeros("f32", [2, 2, 4, 8]), lse = cuda.empty("f32", [2 * 2 * 4]);
    const op = { t, strideB: 64, strideH: 32, ld: 8 };
    const base = {
      b: 2,
      np: 2,
      sq: 4,
      sk: 4,
      hn: 8,
      scale: 1,
      mask: { kind: "causal" } as const,
      dropoutP: 0,
      dropoutAddr: null,
      q: op,
      k: op,
      v: op,
      out: op,
      lse,
    };
    assert.throws(
      () => cuda.fusedAttentionFwd!({ ...base, k: { ...op, ld: 9 } }),
      (e: Error) =>
        e.message ===
          "cuda fusedAttention: k [2, 2, 4, 8] with strides (64, 32, 9) reaches element 130 of a 128-element tensor",
    );
    assert.throws(
      () => cuda.fusedAttentionFwd!({ ...base, hn: 200 }),
      (e: Error) => e.message === "cuda fusedAttention: head dim 200 exceeds the kernel's 128",
    );
    assert.throws(
      () => cuda.fusedAttentionFwd!({ ...base, dropoutP: 0.1 }),
      (e: Error) => e.message === "cuda fusedAttention: dropoutP 0.1 needs a dropoutAddr",
    );
    cuda.free(t);
    cuda.free(lse);
  });
}
