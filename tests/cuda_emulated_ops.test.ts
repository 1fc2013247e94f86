// The real kernel library (kernels/*.cu) compiled for the CPU by tests/gpu/emulator (fibers for
// CUDA threads, a column-major reference GEMM for cuBLAS) and driven through the actual
// CudaBackend and Deno FFI, compared op by op with the CPU backend on small shapes. It catches
// kernel logic errors (indexing, reductions, masks, dtype handling) on a GPU-less machine; timing
// and GPU-specific behaviour remain for tests/gpu on real hardware. The full GPU suite can run
// the same way: MEGATRON_DENO_CUDART=<lib> MEGATRON_DENO_CUDA=<lib> MEGATRON_DENO_CUBLAS=<lib>
// deno test -A tests/gpu/ (about 3 minutes here). Skips with one line without a C++ compiler.
import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { createCudaBackend } from "../src/backend/cuda/cuda_backend.ts";
import { selectBackend } from "../src/backend/cuda/select.ts";
import type { DiscoverEnv } from "../ffi/discover.ts";
import type { DType } from "../src/tensor/dtype.ts";
import { buildEmulator } from "./gpu/emulator/build.ts";
import { compare, type Ctx } from "./gpu/harness.ts";
import { circleU32, logU32 } from "../src/rng/philox.ts";
import { GPTModel } from "../src/models/mod.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import type { Backend } from "../src/backend/backend.ts";

const built = await buildEmulator();
const opts = { sanitizeResources: false, sanitizeOps: false };

if ("skip" in built) {
  console.log(`cuda emulated ops: skipped — ${built.skip}`);
} else {
  const lib = built.path;
  const vars: Record<string, string> = {
    MEGATRON_DENO_CUDART: lib,
    MEGATRON_DENO_CUDA: lib,
    MEGATRON_DENO_CUBLAS: lib,
  };
  const env: DiscoverEnv = { get: (n) => vars[n], sitePackages: [], pythonSitePackages: () => [] };
  const ctx: Ctx = {
    cuda: await createCudaBackend({ env }),
    cpu: createCpuBackend({ log: () => {} }),
    rows: [],
  };
  const D: DType[] = ["f32", "bf16", "f16"];
  let seed = 77;

  Deno.test({ name: "emulated kernels: elementwise, casts, transpose12, sumRows", ...opts }, () => {
    for (const d of D) {
      compare(ctx, "copy", `${d}->bf16`, seed++, (m, r) => {
        const y = m.out("bf16", [33]);
        m.be.copy(m.inp(d, [33], r.array(33, -3, 3)), y);
        return [y];
      }, 0);
      compare(ctx, "add", `${d}+f32->${d}`, seed++, (m, r) => {
        const z = m.out(d, [40]);
        m.be.add(m.inp(d, [40], r.array(40)), m.inp("f32", [40], r.array(40)), z, 0.5, 2);
        return [z];
      });
      compare(ctx, "scale+fill", d, seed++, (m, r) => {
        const y = m.out(d, [40]), f = m.out(d, [7]);
        m.be.scale(m.inp(d, [40], r.array(40)), 3, y);
        m.be.fill(f, -1.5);
        return [y, f];
      });
      compare(ctx, "transpose12", d, seed++, (m, r) => {
        const y = m.out(d, [2, 4, 3, 5]);
        m.be.transpose12(m.inp(d, [2, 3, 4, 5], r.array(120)), y);
        return [y];
      }, 0);
      compare(ctx, "sumRows (+=)", `${d}->f32`, seed++, (m, r) => {
        const y = m.inp("f32", [37], r.array(37));
        m.be.sumRows(m.inp(d, [70, 37], r.array(70 * 37)), y, true);
        return [y];
      });
    }
  });

  Deno.test({ name: "emulated kernels: layerNorm, bias-GeLU, softmax (all masks)", ...opts }, () => {
    for (const d of D) {
      compare(ctx, "layerNorm fwd+bwd", d, seed++, (m, r) => {
        const [rows, h] = [6, 80];
        const x = m.inp(d, [rows, h], r.array(rows * h, -2, 2));
        const g = m.inp(d, [h], r.array(h, 0.5, 1.5)), b = m.inp(d, [h], r.array(h));
        const y = m.out(d, [rows, h]), mean = m.out("f32", [rows]), rstd = m.out("f32", [rows]);
        m.be.layerNormFwd(x, g, b, 1e-5, y, mean, rstd);
        const dx = m.out(d, [rows, h]), dg = m.out("f32", [h]), db = m.out("f32", [h]);
        m.be.layerNormBwd(m.inp(d, [rows, h], r.array(rows * h)), x, g, mean, rstd, dx, dg, db, false);
        return [y, mean, rstd, dx, dg, db];
      });
      compare(ctx, "biasGelu fwd+bwd", d, seed++, (m, r) => {
        const x = m.inp(d, [5, 24], r.array(120, -4, 4)), b = m.inp(d, [24], r.array(24));
        const y = m.out(d, [5, 24]), dx = m.out(d, [5, 24]);
        m.be.biasGeluFwd(x, b, y);
        m.be.biasGeluBwd(m.inp(d, [5, 24], r.array(120)), x, b, dx);
        return [y, dx];
      });
      for (const kind of ["tanh", "gelu_erf"] as const) {
        compare(ctx, `activation ${kind} fwd+bwd`, d, seed++, (m, r) => {
          const x = m.inp(d, [5, 24], r.array(120, -5, 5));
          const y = m.out(d, [5, 24]), dx = m.out(d, [5, 24]);
          m.be.activationFwd(kind, x, y);
          m.be.activationBwd(kind, m.inp(d, [5, 24], r.array(120)), x, dx);
          return [y, dx];
        });
      }
      for (const kind of ["none", "causal", "padding"] as const) {
        compare(ctx, `softmax ${kind} fwd+bwd`, d, seed++, (m, r) => {
          const [b, np, sq, sk] = [2, 2, 3, 45];
          const n = b * np * sq * sk;
          const x = m.inp(d, [b, np, sq, sk], r.array(n, -6, 6));
          const mask = kind === "padding"
            ? { kind, mask: m.inp("u8", [b, sq, sk], r.ints(b * sq * sk, 0, 2)) }
            : { kind };
          const p = m.out(d, [b, np, sq, sk]), dx = m.out(d, [b, np, sq, sk]);
          m.be.softmaxFwd(x, 0.5, mask, p);
          m.be.softmaxBwd(m.inp(d, [b, np, sq, sk], r.array(n)), p, 0.5, dx);
          return [p, dx];
        });
      }
    }
  });

  Deno.test({ name: "emulated kernels: dropout masks bit-identical, bias-dropout-add", ...opts }, () => {
    const addr = { seed: 5, stream: 0x300002, iteration: 11, base: 2 ** 35 + 7, rowStride: 1000, rowLen: 30 };
    for (const d of D) {
      compare(ctx, "dropout p=0.3", d, seed++, (m, r) => {
        const y = m.out(d, [4, 30]);
        m.be.dropout(m.inp(d, [4, 30], r.array(120, 0.5, 1.5)), 0.3, addr, y);
        return [y];
      }, 0);
      compare(ctx, "biasDropoutAdd p=0.3", `${d}+f32`, seed++, (m, r) => {
        const out = m.out("f32", [4, 30]);
        m.be.biasDropoutAdd(
          m.inp(d, [4, 30], r.array(120)),
          m.inp(d, [30], r.array(30)),
          m.inp("f32", [4, 30], r.array(120)),
          0.3,
          addr,
          out,
        );
        return [out];
      }, 1e-6);
    }
  });

  Deno.test({ name: "emulated kernels: normalInit bit-equal to the CPU's initialization", ...opts }, () => {
    // The f64 log and sine/cosine of init_normal.cuh against philox.ts, on the edge inputs (k = 0:
    // the e = -1 branch; powers of two; the sqrt(2) and pi/4 fold boundaries; quadrant edges).
    const emu = Deno.dlopen(lib, {
      emu_log_u32: { parameters: ["u32"], result: "f64" },
      emu_circle_u32: { parameters: ["u32", "i32"], result: "f64" },
    });
    const edges = [
      0,
      1,
      2,
      3,
      4,
      5,
      6,
      0xb504f333,
      0x5a827999,
      0x5a82799a,
      0x1fffffff,
      0x20000000,
      0x20000001,
    ];
    for (let b = 0; b < 32; b++) edges.push((2 ** b) >>> 0, (2 ** b - 1) >>> 0, (2 ** b + 1) >>> 0);
    for (const q of [0, 1, 2, 3]) {
      edges.push(q * 0x40000000, q * 0x40000000 + 0x3fffffff, q * 0x40000000 + 0x20000000);
    }
    let s = 99;
    for (let i = 0; i < 20000; i++) edges.push(s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
    for (const k of edges) {
      assert.equal(emu.symbols.emu_log_u32(k), logU32(k), `log ${k}`);
      assert.equal(emu.symbols.emu_circle_u32(k, 1), circleU32(k, true), `sin ${k}`);
      assert.equal(emu.symbols.emu_circle_u32(k, 0), circleU32(k, false), `cos ${k}`);
    }
    emu.close();
    // Whole tensors: strided rows, counters above 2^32, every dtype including f64.
    const addr = {
      seed: 1234,
      stream: 0x100012,
      iteration: 0,
      base: 2 ** 33 + 3,
      rowStride: 1000,
      rowLen: 77,
    };
    for (const d of [...D, "f64"] as DType[]) {
      const a = ctx.cuda.empty(d, [13, 77]), b = ctx.cpu.empty(d, [13, 77]);
      ctx.cuda.normalInit(a, 0.02 / Math.sqrt(48), addr);
      ctx.cpu.normalInit(b, 0.02 / Math.sqrt(48), addr);
      assert.deepEqual(ctx.cuda.toHost(a), ctx.cpu.toHost(b), d);
      ctx.cuda.free(a);
      ctx.cpu.free(b);
    }
    // A bf16 GPT built on each backend: every weight and f32 master copy has the same bits.
    const build = (be: Backend) =>
      new GPTModel(
        {
          numLayers: 2,
          hiddenSize: 32,
          numAttentionHeads: 4,
          seqLength: 16,
          maxPositionEmbeddings: 16,
          vocabSize: 96,
          hiddenDropout: 0.1,
          attentionDropout: 0.1,
          initMethodStd: 0.02,
          paramsDtype: "bf16",
          activationsCheckpointMethod: null,
          seed: 1234,
        },
        be,
        makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
        new SingleRankCommunicator(),
      );
    const onGpu = build(ctx.cuda).params(), onCpu = build(ctx.cpu).params();
    assert.equal(onGpu.length, onCpu.length);
    for (const [i, p] of onGpu.entries()) {
      assert.deepEqual(ctx.cuda.toHost(p.value), ctx.cpu.toHost(onCpu[i].value), p.name);
      assert.deepEqual(ctx.cuda.toHost(p.main!), ctx.cpu.toHost(onCpu[i].main!), `${p.name} (main)`);
    }
  });

  Deno.test({ name: "emulated kernels: embedding, cross-entropy, optimizers, reductions", ...opts }, () => {
    for (const d of D) {
      compare(ctx, "embedding fwd+bwd", `i64/${d}`, seed++, (m, r) => {
        const ids = m.inp("i64", [9], r.ints(9, 8, 30));
        const out = m.out(d, [9, 6]);
        m.be.embeddingFwd(ids, m.inp(d, [12, 6], r.array(72)), out, 10);
        const dt = m.inp("f32", [12, 6], r.array(72));
        m.be.embeddingBwd(ids, m.inp(d, [9, 6], r.array(54)), dt, 10);
        return [out, dt];
      });
      compare(ctx, "cross-entropy", `i32/${d}`, seed++, (m, r) => {
        const [rows, V] = [5, 77];
        const logits = m.inp(d, [rows, V], r.array(rows * V, -5, 5)),
          t = m.inp("i32", [rows], r.ints(rows, 50, 160));
        const mx = m.out("f32", [rows]),
          tl = m.out("f32", [rows]),
          se = m.out("f32", [rows]),
          loss = m.out("f32", [rows]);
        m.be.ceStats(logits, t, 60, mx, tl);
        m.be.ceSumExp(logits, mx, se);
        m.be.ceLoss(mx, se, tl, loss);
        const dl = m.out(d, [rows, V]);
        m.be.ceBwd(logits, t, 60, mx, se, m.inp("f32", [rows], r.array(rows, 0.2, 1)), dl);
        return [mx, tl, se, loss, dl];
      }, d === "f32" ? 1e-5 : undefined);
      compare(ctx, "sumSquares+countZeros+nonFinite", d, seed++, (m, r) => {
        const data = r.array(1000);
        data[999] = Infinity;
        data[5] = data[17] = 0;
        const s = m.out("f64", [1]), f = m.inp("f32", [1], [0]), f2 = m.inp("f32", [1], [0]);
        const z = m.out("f64", [1]);
        m.be.sumSquares(m.inp(d, [999], data.subarray(0, 999)), s, false);
        m.be.countZeros(m.inp(d, [1000], data), z, false);
        m.be.nonFinite(m.inp(d, [1000], data), f);
        m.be.nonFinite(m.inp(d, [999], data.subarray(0, 999)), f2);
        return [s, z, f, f2];
      }, 1e-13);
    }
    compare(ctx, "adam x2 + sgd x2", "f32", seed++, (m, r) => {
      const p = m.inp("f32", [50], r.array(50)), mm = m.out("f32", [50]), v = m.out("f32", [50]);
      m.be.fill(mm, 0);
      m.be.fill(v, 0);
      const q = m.inp("f32", [50], r.array(50)), buf = m.out("f32", [50]);
      for (let step = 1; step <= 2; step++) {
        m.be.adamStep(p, m.inp("f32", [50], r.array(50)), mm, v, {
          lr: 0.01,
          beta1: 0.9,
          beta2: 0.99,
          eps: 1e-8,
          weightDecay: 0.1,
          step,
        });
        m.be.sgdStep(q, m.inp("f32", [50], r.array(50)), buf, {
          lr: 0.1,
          momentum: 0.9,
          weightDecay: 0.01,
          firstStep: step === 1,
        });
      }
      return [p, mm, v, q, buf];
    }, 0); // every step is rounded in the reference's order: bit-identical
    assert.ok(ctx.rows.every((r) => r.ok));
  });

  Deno.test({
    name: "emulated kernels: sumSquares of 1.2e7 elements within 1e-12 of f64, agrees with CPU",
    ...opts,
  }, () => {
    // A gradient-like spread (magnitudes over 6 decades) where an in-order f32 sum loses ~1e-3.
    const n = 12_000_017;
    const xs = new Float32Array(n);
    let st = 12345;
    for (let i = 0; i < n; i++) {
      st = (Math.imul(st, 1664525) + 1013904223) >>> 0;
      xs[i] = ((st >>> 8) / 16777216 - 0.5) * 10 ** -((st & 7) * 0.8);
    }
    let sum = 0, comp = 0; // Neumaier over the exact f64 squares
    for (let i = 0; i < n; i++) {
      const v = xs[i] * xs[i], t = sum + v;
      comp += Math.abs(sum) >= v ? (sum - t) + v : (v - t) + sum;
      sum = t;
    }
    const ref = sum + comp;
    const x = ctx.cuda.fromHost("f32", [n], xs), out = ctx.cuda.zeros("f64", [1]);
    const xc = ctx.cpu.fromHost("f32", [n], xs), oc = ctx.cpu.zeros("f64", [1]);
    try {
      ctx.cuda.sumSquares(x, out, false);
      const gpu = ctx.cuda.toF64(out)[0];
      ctx.cuda.sumSquares(x, out, false);
      assert.ok(Object.is(ctx.cuda.toF64(out)[0], gpu), "not the same bits twice");
      ctx.cpu.sumSquares(xc, oc, false);
      const cpu = ctx.cpu.toF64(oc)[0];
      assert.ok(Math.abs(gpu - ref) <= 1e-12 * ref, `cuda ${gpu} vs f64 ${ref}`);
      assert.ok(Math.abs(cpu - ref) <= 1e-12 * ref, `cpu ${cpu} vs f64 ${ref}`);
      assert.ok(Math.abs(gpu - cpu) <= 1e-12 * ref, `cuda ${gpu} vs cpu ${cpu}`);
    } finally {
      ctx.cuda.free(x);
      ctx.cuda.free(out);
    }
  });

  Deno.test({ name: "emulated kernels: long reductions at GPT-345M / GPT-3 sizes vs f64", ...opts }, () => {
    // Row kernels: each of B threads sums ceil(n / B) terms in f32, then a log2(B)-level f32 tree, so
    // |error| <= (ceil(n / B) + log2 B) u sum|terms| (B = 512 for rows of >= 512).
    const U = 2 ** -24, c = ctx.cuda;
    const bound = (n: number) => (Math.ceil(n / 512) + 9) * U;
    let st = 99;
    const rnd = () => (st = (Math.imul(st, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    const normal = (sd: number, mean = 0) =>
      mean + sd * Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(6.283185 * rnd());
    const made: ReturnType<typeof c.empty>[] = [];
    const up = (shape: number[], d: ArrayLike<number>) => {
      const t = c.fromHost("f32", shape, d);
      made.push(t);
      return t;
    };
    const out = (shape: number[]) => {
      const t = c.zeros("f32", shape);
      made.push(t);
      return t;
    };
    try {
      // Cross-entropy sum of exps over the 50304-token vocabulary.
      const V = 50304, R = 2, L = Float32Array.from({ length: R * V }, (_, i) => normal(i < V ? 1 : 4));
      const mx = out([R]), tl = out([R]), se = out([R]);
      const tg = c.fromHost("i32", [R], [3, 5]);
      made.push(tg);
      c.ceStats(up([R, V], L), tg, 0, mx, tl);
      c.ceSumExp(up([R, V], L), mx, se);
      const M = c.toF64(mx), S = c.toF64(se);
      for (let r = 0; r < R; r++) {
        let s = 0;
        for (let j = 0; j < V; j++) s += Math.fround(Math.exp(Math.fround(L[r * V + j] - M[r])));
        const e = Math.abs(S[r] - s) / s;
        assert.ok(e <= bound(V) + U, `ce sum of exps row ${r}: rel ${e}`);
      }
      // LayerNorm statistics over h = 12288.
      const h = 12288, X = Float32Array.from({ length: 2 * h }, (_, i) => normal(2, i < h ? 1.5 : -20));
      const mean = out([2]), rstd = out([2]), y = out([2, h]);
      const ones = up([h], new Float32Array(h).fill(1));
      c.layerNormFwd(up([2, h], X), ones, out([h]), 1e-5, y, mean, rstd);
      const Mn = c.toF64(mean), Rs = c.toF64(rstd);
      for (let r = 0; r < 2; r++) {
        let sm = 0, mag = 0;
        for (let j = 0; j < h; j++) {
          sm += X[r * h + j];
          mag += Math.abs(X[r * h + j]);
        }
        const mu = sm / h;
        let q = 0;
        for (let j = 0; j < h; j++) q += (X[r * h + j] - mu) ** 2;
        const rs = 1 / Math.sqrt(q / h + 1e-5);
        assert.ok(
          Math.abs(Mn[r] - mu) <= (bound(h) + U) * mag / h,
          `layernorm mean row ${r}: ${Mn[r]} vs ${mu}`,
        );
        // The mean's error enters every deviation; the variance sum has the same bound.
        const e = Math.abs(Rs[r] - rs) / rs;
        assert.ok(
          e <= bound(h) + 2 * U + (bound(h) + U) * (mag / h) * rs,
          `layernorm rstd row ${r}: rel ${e}`,
        );
      }
      // Softmax denominators over 2048 keys (causal rows near the end of a 2048 sequence).
      const sk = 2048, sq = 4, Sc = Float32Array.from({ length: sq * sk }, () => normal(4));
      const probs = out([1, 1, sq, sk]);
      c.softmaxFwd(up([1, 1, sq, sk], Sc), 0.125, { kind: "causal" }, probs);
      const P = c.toF64(probs);
      let worst = 0;
      for (let i = 0; i < sq; i++) {
        const end = i + sk - sq + 1, o = i * sk;
        let m = -Infinity;
        for (let j = 0; j < end; j++) m = Math.max(m, Math.fround(0.125 * Sc[o + j]));
        let den = 0;
        for (let j = 0; j < end; j++) den += Math.exp(Math.fround(0.125 * Sc[o + j]) - m);
        for (let j = 0; j < end; j++) {
          const p = Math.exp(Math.fround(0.125 * Sc[o + j]) - m) / den;
          worst = Math.max(worst, Math.abs(P[o + j] - p) / p);
        }
      }
      assert.ok(worst <= bound(sk) + 4 * U, `softmax: worst rel ${worst}`);
      // Column sums over the 16384 tokens of a micro-batch (bias gradients): f32 partials of 16 rows
      // per thread, 8-row block sums, then 128 slices in order: <= (16 + 8 + 128) u sum|x|.
      const T = 16384, H = 64, G = Float32Array.from({ length: T * H }, () => normal(1e-3, 2e-4));
      const col = out([H]);
      c.sumRows(up([T, H], G), col, false);
      const Cs = c.toF64(col);
      for (let j = 0; j < H; j++) {
        let sm = 0, mag = 0;
        for (let r = 0; r < T; r++) {
          sm += G[r * H + j];
          mag += Math.abs(G[r * H + j]);
        }
        assert.ok(Math.abs(Cs[j] - sm) <= 152 * U * mag, `sumRows column ${j}: ${Cs[j]} vs ${sm}`);
      }
    } finally {
      for (const t of made) c.free(t);
    }
  });

  Deno.test({
    name: "selectBackend: one process per GPU takes GPU localRank % visible GPUs (Megatron's rank % count)",
    ...opts,
  }, async () => {
    // The emulator shows MEGATRON_DENO_EMU_DEVICES devices; cudaSetDevice refuses any other ordinal.
    Deno.env.set("MEGATRON_DENO_EMU_DEVICES", "2");
    try {
      const made: Backend[] = [];
      const pick = async (o: { localRank?: number; device?: number }) => {
        const { backend, note } = await selectBackend("cuda", { env, ...o });
        made.push(backend);
        return note.replace(/ \(.*/, "");
      };
      assert.equal(await pick({}), "device: cuda:0");
      assert.equal(await pick({ localRank: 1 }), "device: cuda:1");
      // Four processes on a node that shows each of them 2 GPUs: ranks 2 and 3 wrap around.
      assert.equal(await pick({ localRank: 3 }), "device: cuda:1");
      assert.equal(await pick({ localRank: 3, device: 0 }), "device: cuda:0");
      await assert.rejects(
        createCudaBackend({ env, device: 2 }),
        /cuda: device 2 requested but 2 device\(s\) visible/,
      );
      for (const b of made) (b as { dispose?: () => void }).dispose?.();
    } finally {
      Deno.env.delete("MEGATRON_DENO_EMU_DEVICES");
    }
  });
}
