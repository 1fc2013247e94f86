// Every CUDA op against the CPU reference in f32/f16/bf16 on fresh random inputs (outputs
// poisoned with NaN first), dropout masks bit-identical. Without CUDA: one skip line, exit 0.
import assert from "node:assert/strict";
import type { SoftmaxMask } from "../../src/backend/backend.ts";
import type { DType } from "../../src/tensor/dtype.ts";
import { BOUND, compare, compareToF64, printTable, roundTo, setup } from "./harness.ts";

const ctx = await setup();
const FLOATS: DType[] = ["f32", "f16", "bf16"];
const opts = { sanitizeResources: false, sanitizeOps: false };

if (ctx) {
  let seed = 1000;
  const next = () => seed++;

  Deno.test({ name: "gpu: copy / fill / scale / add (all dtype combinations)", ...opts }, () => {
    for (const a of FLOATS) {
      for (const b of FLOATS) {
        compare(ctx, "copy", `${a}->${b}`, next(), (m, r) => {
          const x = m.inp(a, [37, 29], r.array(37 * 29, -3, 3));
          const y = m.out(b, [37, 29]);
          m.be.copy(x, y);
          return [y];
        }, 0); // conversions are exact or RNE on both sides
        compare(ctx, "scale", `${a}->${b}`, next(), (m, r) => {
          const x = m.inp(a, [1000], r.array(1000));
          const y = m.out(b, [1000]);
          m.be.scale(x, -0.37, y);
          return [y];
        }, BOUND[b]);
        for (const o of FLOATS) {
          compare(ctx, "add", `${a}+${b}->${o}`, next(), (m, r) => {
            const x = m.inp(a, [513], r.array(513)), y = m.inp(b, [513], r.array(513));
            const z = m.out(o, [513]);
            m.be.add(x, y, z, 0.5, -1.25);
            return [z];
          }, BOUND[o]);
        }
      }
      compare(ctx, "fill", a, next(), (m) => {
        const y = m.out(a, [4097]);
        m.be.fill(y, 0.1);
        return [y];
      }, 0);
    }
  });

  Deno.test({ name: "gpu: normalInit bit-equal to the CPU initialization", ...opts }, () => {
    const addr = {
      seed: 1234,
      stream: 0x100032,
      iteration: 0,
      base: 2 ** 33 + 1,
      rowStride: 4096,
      rowLen: 1000,
    };
    for (const d of [...FLOATS, "f64"] as DType[]) {
      compare(ctx, "normalInit", d, next(), (m) => {
        // f64 has no fill kernel: poison it through fromHost.
        const w = d === "f64"
          ? m.inp(d, [300, 1000], new Float64Array(300000).fill(NaN))
          : m.out(d, [300, 1000]);
        m.be.normalInit(w, 0.02 / Math.sqrt(48), addr);
        return [w];
      }, 0);
    }
  });

  Deno.test({ name: "gpu: transpose12 / sumRows", ...opts }, () => {
    for (const d of [...FLOATS, "i32"] as DType[]) {
      compare(ctx, "transpose12", d, next(), (m, r) => {
        const x = m.inp(d, [2, 5, 3, 7], r.ints(210, -100, 100));
        const y = m.out(d, [2, 3, 5, 7]);
        m.be.transpose12(x, y);
        return [y];
      }, 0);
    }
    for (const d of FLOATS) {
      for (const o of ["f32", d] as DType[]) {
        for (const acc of [false, true]) {
          // Against the exact (f64) column sums: the GPU's f32 partial sums err far less than
          // f32's 1e-5; a half output is one rounding of the sum (2 half-ulps with the f32 error).
          const [R, C] = [300, 67];
          compareToF64(ctx, `sumRows${acc ? " (+=)" : ""}`, `${d}->${o}`, next(), (m, r) => {
            const x = m.inp(d, [R, C], r.array(R * C));
            const y = acc ? m.inp(o, [C], r.array(C)) : m.out(o, [C]);
            m.be.sumRows(x, y, acc);
            return [y];
          }, (r) => {
            const x = roundTo(d, r.array(R * C));
            const y = acc ? roundTo(o, r.array(C)) : new Float64Array(C);
            for (let i = 0; i < R * C; i++) y[i % C] += x[i];
            return [y];
          }, BOUND[o]);
        }
      }
    }
  });

  Deno.test({ name: "gpu: gemm (transposes, leading dims, batched, f32 C for half inputs)", ...opts }, () => {
    for (const d of FLOATS) {
      for (const c of d === "f32" ? ["f32"] as DType[] : [d, "f32"] as DType[]) {
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            const [M, N, K] = [33, 17, 70];
            compare(ctx, `gemm ${transA ? "T" : "N"}${transB ? "T" : "N"}`, `${d}->${c}`, next(), (m, r) => {
              const a = m.inp(d, [M * K], r.array(M * K));
              const b = m.inp(d, [K * N], r.array(K * N));
              const cc = m.inp(c, [M * N], r.array(M * N));
              m.be.gemm({ transA, transB, m: M, n: N, k: K, alpha: 0.5, beta: 0.25, a, b, c: cc });
              return [cc];
            }, BOUND[c]);
          }
        }
        // Attention-style strided batch with padded leading dimensions.
        compare(ctx, "gemm batched lda/ldb/ldc", `${d}->${c}`, next(), (m, r) => {
          const [B, M, N, K] = [3, 8, 12, 16];
          const lda = K + 4, ldb = K + 2, ldc = N + 3;
          const sA = M * lda, sB = N * ldb, sC = M * ldc;
          const a = m.inp(d, [B * sA], r.array(B * sA));
          const b = m.inp(d, [B * sB], r.array(B * sB));
          const cc = m.inp(c, [B * sC], r.array(B * sC));
          m.be.gemm({
            transA: false,
            transB: true,
            m: M,
            n: N,
            k: K,
            alpha: 1.5,
            beta: 0,
            a,
            b,
            c: cc,
            lda,
            ldb,
            ldc,
            batch: B,
            strideA: sA,
            strideB: sB,
            strideC: sC,
          });
          return [cc];
        }, BOUND[c]);
      }
    }
  });

  Deno.test({ name: "gpu: layerNorm fwd/bwd, bias-GeLU fwd/bwd", ...opts }, () => {
    for (const d of FLOATS) {
      for (const h of [64, 1000, 1536]) {
        compare(ctx, `layerNormFwd h=${h}`, d, next(), (m, r) => {
          const rows = 37;
          const x = m.inp(d, [rows, h], r.array(rows * h, -2, 3));
          const g = m.inp(d, [h], r.array(h, 0.5, 1.5)), b = m.inp(d, [h], r.array(h));
          const y = m.out(d, [rows, h]), mean = m.out("f32", [rows]), rstd = m.out("f32", [rows]);
          m.be.layerNormFwd(x, g, b, 1e-5, y, mean, rstd);
          return [y, mean, rstd];
        });
        for (const acc of [false, true]) {
          compare(ctx, `layerNormBwd h=${h}${acc ? " (+=)" : ""}`, d, next(), (m, r) => {
            const rows = 45;
            const x = m.inp(d, [rows, h], r.array(rows * h, -2, 3));
            const g = m.inp(d, [h], r.array(h, 0.5, 1.5)), b = m.inp(d, [h], r.array(h));
            const y = m.out(d, [rows, h]), mean = m.out("f32", [rows]), rstd = m.out("f32", [rows]);
            m.be.layerNormFwd(x, g, b, 1e-5, y, mean, rstd);
            const dy = m.inp(d, [rows, h], r.array(rows * h));
            const dx = m.out(d, [rows, h]);
            const dg = acc ? m.inp("f32", [h], r.array(h)) : m.out("f32", [h]);
            const db = acc ? m.inp("f32", [h], r.array(h)) : m.out("f32", [h]);
            m.be.layerNormBwd(dy, x, g, mean, rstd, dx, dg, db, acc);
            return [dx, dg, db];
          }, d === "f32" ? 1e-5 : undefined);
        }
      }
      compare(ctx, "biasGeluFwd", d, next(), (m, r) => {
        const x = m.inp(d, [64, 96], r.array(64 * 96, -4, 4)), b = m.inp(d, [96], r.array(96));
        const y = m.out(d, [64, 96]);
        m.be.biasGeluFwd(x, b, y);
        return [y];
      });
      compare(ctx, "biasGeluBwd", d, next(), (m, r) => {
        const x = m.inp(d, [64, 96], r.array(64 * 96, -4, 4)), b = m.inp(d, [96], r.array(96));
        const dy = m.inp(d, [64, 96], r.array(64 * 96));
        const dx = m.out(d, [64, 96]);
        m.be.biasGeluBwd(dy, x, b, dx);
        return [dx];
      });
      for (const kind of ["tanh", "gelu_erf"] as const) {
        compare(ctx, `activation ${kind} fwd+bwd`, d, next(), (m, r) => {
          const x = m.inp(d, [64, 96], r.array(64 * 96, -5, 5));
          const dy = m.inp(d, [64, 96], r.array(64 * 96));
          const y = m.out(d, [64, 96]), dx = m.out(d, [64, 96]);
          m.be.activationFwd(kind, x, y);
          m.be.activationBwd(kind, dy, x, dx);
          return [y, dx];
        });
      }
    }
  });

  Deno.test({ name: "gpu: softmax fwd (none/causal/padding) and bwd", ...opts }, () => {
    for (const d of FLOATS) {
      for (const pd of FLOATS) {
        for (const kind of ["none", "causal", "padding"] as const) {
          for (const [sq, sk] of [[16, 16], [7, 130], [3, 1100]]) {
            if (kind === "causal" && sq > sk) continue;
            compare(ctx, `softmaxFwd ${kind} ${sq}x${sk}`, `${d}->${pd}`, next(), (m, r) => {
              const [b, np] = [2, 3];
              const x = m.inp(d, [b, np, sq, sk], r.array(b * np * sq * sk, -8, 8));
              let mask: SoftmaxMask = { kind: "none" };
              if (kind === "causal") mask = { kind: "causal" };
              if (kind === "padding") {
                // Include fully masked rows (every key masked): uniform over the row.
                const bits = r.ints(b * sq * sk, 0, 3).map((v, i) =>
                  (i % (sq * sk)) < sk ? 1 : v === 0 ? 1 : 0
                );
                mask = { kind: "padding", mask: m.inp("u8", [b, sq, sk], bits) };
              }
              const y = m.out(pd, [b, np, sq, sk]);
              m.be.softmaxFwd(x, 0.125, mask, y);
              return [y];
            }, BOUND[pd]);
          }
        }
      }
      compare(ctx, "softmaxBwd", d, next(), (m, r) => {
        const shape = [2, 2, 9, 300];
        const n = 2 * 2 * 9 * 300;
        const x = m.inp(d, shape, r.array(n, -4, 4));
        const p = m.out(d, shape);
        m.be.softmaxFwd(x, 1, { kind: "causal" }, p);
        const dp = m.inp(d, shape, r.array(n));
        const dx = m.out(d, shape);
        m.be.softmaxBwd(dp, p, 0.3, dx);
        return [dx];
      });
    }
  });

  Deno.test({ name: "gpu: dropout and bias-dropout-add masks are bit-identical to the CPU", ...opts }, () => {
    for (const d of FLOATS) {
      for (const p of [0, 0.1, 0.5]) {
        const addr = {
          seed: 1234,
          stream: 0x300005,
          iteration: 7,
          base: 2 ** 33 + 5,
          rowStride: 4096,
          rowLen: 100,
        };
        const masks: Uint8Array[] = [];
        compare(ctx, `dropout p=${p}`, d, next(), (m, r) => {
          const x = m.inp(d, [30, 100], r.array(3000, 0.5, 1.5)); // nonzero: y == 0 iff dropped
          const y = m.out(d, [30, 100]);
          m.be.dropout(x, p, addr, y);
          masks.push(Uint8Array.from(m.be.toF64(y), (v) => (v === 0 ? 0 : 1)));
          return [y];
        }, 0);
        let diff = 0;
        for (let i = 0; i < masks[0].length; i++) diff += masks[0][i] !== masks[1][i] ? 1 : 0;
        assert.equal(diff, 0, `dropout p=${p} ${d}: ${diff} mask bits differ`);
        if (p > 0) {
          const dropped = masks[0].reduce((s, v) => s + (1 - v), 0) / masks[0].length;
          assert.ok(Math.abs(dropped - p) < 0.05, `dropped fraction ${dropped} for p=${p}`);
        }
        for (const rd of [d, "f32"] as DType[]) {
          for (const withBias of [true, false]) {
            compare(
              ctx,
              `biasDropoutAdd p=${p}${withBias ? "" : " no bias"}`,
              `${d}+${rd}`,
              next(),
              (m, r) => {
                const x = m.inp(d, [30, 100], r.array(3000));
                const bias = withBias ? m.inp(d, [100], r.array(100)) : null;
                const res = m.inp(rd, [30, 100], r.array(3000));
                const out = m.out(rd, [30, 100]);
                m.be.biasDropoutAdd(x, bias, res, p, addr, out);
                return [out];
              },
              BOUND[rd],
            );
          }
        }
      }
    }
  });

  Deno.test({ name: "gpu: embedding fwd/bwd (i32/i64 ids, out-of-shard ids)", ...opts }, () => {
    for (const d of FLOATS) {
      for (const it of ["i32", "i64"] as DType[]) {
        const [V, h, n, start] = [50, 48, 64, 100];
        compare(ctx, "embeddingFwd", `${it}/${d}`, next(), (m, r) => {
          const ids = m.inp(it, [n], r.ints(n, 90, 160)); // some below, some above the shard
          const table = m.inp(d, [V, h], r.array(V * h));
          const out = m.out(d, [n, h]);
          m.be.embeddingFwd(ids, table, out, start);
          return [out];
        }, 0);
        compare(ctx, "embeddingBwd", `${it}/${d}`, next(), (m, r) => {
          const ids = m.inp(it, [n], r.ints(n, 90, 160));
          const dout = m.inp(d, [n, h], r.array(n * h));
          const dt = m.inp("f32", [V, h], r.array(V * h));
          m.be.embeddingBwd(ids, dout, dt, start);
          return [dt];
        }, 1e-5);
      }
    }
  });

  Deno.test({ name: "gpu: cross-entropy pieces", ...opts }, () => {
    for (const d of FLOATS) {
      for (const it of ["i32", "i64"] as DType[]) {
        const [rows, V, start] = [21, 1003, 500];
        compare(ctx, "ceStats/SumExp/Loss/Bwd", `${it}/${d}`, next(), (m, r) => {
          const logits = m.inp(d, [rows, V], r.array(rows * V, -6, 6));
          const targets = m.inp(it, [rows], r.ints(rows, 0, 2000)); // some in this shard, most not
          const mx = m.out("f32", [rows]), tl = m.out("f32", [rows]);
          m.be.ceStats(logits, targets, start, mx, tl);
          const se = m.out("f32", [rows]);
          m.be.ceSumExp(logits, mx, se);
          const loss = m.out("f32", [rows]);
          m.be.ceLoss(mx, se, tl, loss);
          const dloss = m.inp("f32", [rows], r.array(rows, 0.1, 1));
          const dl = m.out(d, [rows, V]);
          m.be.ceBwd(logits, targets, start, mx, se, dloss, dl);
          return [mx, tl, se, loss, dl];
        }, d === "f32" ? 1e-5 : undefined);
      }
    }
  });

  Deno.test({ name: "gpu: adam / sgd / sumSquares / countZeros / nonFinite", ...opts }, () => {
    // The CPU reference takes f32 gradients only (the CUDA kernels also accept half grads).
    for (const g of FLOATS) {
      if (g === "f32") {
        compare(ctx, "adamStep x3", `grad ${g}`, next(), (m, r) => {
          const n = 3001;
          const p = m.inp("f32", [n], r.array(n)), mm = m.inp("f32", [n], r.array(n, -0.1, 0.1));
          const v = m.inp("f32", [n], r.array(n, 0, 0.01));
          for (let step = 1; step <= 3; step++) {
            const gr = m.inp(g, [n], r.array(n));
            m.be.adamStep(p, gr, mm, v, {
              lr: 1e-3,
              beta1: 0.9,
              beta2: 0.999,
              eps: 1e-8,
              weightDecay: 0.01,
              step,
            });
          }
          return [p, mm, v];
        }, 1e-5);
        compare(ctx, "sgdStep x3", `grad ${g}`, next(), (m, r) => {
          const n = 3001;
          const p = m.inp("f32", [n], r.array(n)), buf = m.out("f32", [n]);
          for (let step = 0; step < 3; step++) {
            const gr = m.inp(g, [n], r.array(n));
            m.be.sgdStep(p, gr, buf, { lr: 0.1, momentum: 0.9, weightDecay: 0.01, firstStep: step === 0 });
          }
          return [p, buf];
        }, 1e-5);
      }
      for (const acc of [false, true]) {
        // Both backends sum exact f64 squares over the same 16384-element chunks (different trees
        // inside a chunk): only f64 rounding separates them.
        const n = 100003;
        compare(ctx, `sumSquares${acc ? " (+=)" : ""}`, g, next(), (m, r) => {
          const x = m.inp(g, [n], r.array(n));
          const out = acc ? m.inp("f64", [1], [3.5]) : m.out("f64", [1]);
          m.be.sumSquares(x, out, acc);
          return [out];
        }, 1e-13);
      }
      compare(ctx, "countZeros (+=)", g, next(), (m, r) => {
        const data = r.array(70001);
        for (let i = 0; i < data.length; i += 7) data[i] = i % 2 ? -0 : 0;
        const out = m.inp("f64", [1], [2]);
        m.be.countZeros(m.inp(g, [data.length], data), out, true);
        return [out];
      }, 0);
      for (const bad of [null, NaN, Infinity, -Infinity]) {
        compare(ctx, `nonFinite ${bad}`, g, next(), (m, r) => {
          const data = r.array(5000);
          if (bad !== null) data[4321] = bad;
          const x = m.inp(g, [5000], data);
          const flag = m.inp("f32", [1], [0]);
          m.be.nonFinite(x, flag);
          return [flag];
        }, 0);
      }
    }
  });

  Deno.test({ name: "gpu: allocator steady state and use-after-free", ...opts }, () => {
    const be = ctx.cuda;
    const step = () => {
      const ts = [be.empty("bf16", [1024, 1024]), be.empty("f32", [333]), be.empty("f16", [4, 1000, 1000])];
      for (const t of ts) be.free(t);
    };
    step();
    if (be.memoryStats) {
      const before = be.memoryStats().deviceMallocs;
      for (let i = 0; i < 5; i++) step();
      assert.equal(be.memoryStats().deviceMallocs, before, "no cudaMalloc in steady state");
    }
    const t = be.zeros("f32", [10]);
    be.free(t);
    assert.throws(() => be.toHost(t), /free/);
  });

  Deno.test({ name: "gpu: summary", ...opts }, () => {
    printTable("test:gpu ops: CUDA vs CPU (max |cuda-cpu| / max |cpu|)", ctx.rows);
    const failed = ctx.rows.filter((r) => !r.ok);
    assert.equal(failed.length, 0, `${failed.length} comparisons out of bounds`);
  });
}
