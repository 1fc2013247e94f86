// CPU backend ops at the embedded-default GPT's shapes (4 layers, hidden 128, 4 heads, seq 128,
// micro-batch 8, vocab 50304, f32): the per-op costs behind one training step.
// `deno bench -A bench/cpu_ops.bench.ts`; each case's name carries its shape.
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import type { RngAddress } from "../src/backend/backend.ts";

const be = createCpuBackend({ log: () => {} });
const T = 8 * 128, H = 128, V = 50304, F = 4 * H, NP = 4, S = 128;

function filled(shape: number[], seed: number, scale = 1) {
  const n = shape.reduce((a, b) => a * b, 1);
  const d = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    d[i] = ((s >>> 8) / 16777216 - 0.5) * 2 * scale;
  }
  return be.fromHost("f32", shape, d);
}

const x = filled([T, H], 1), wte = filled([V, H], 2, 0.02), logits = be.empty("f32", [T, V]);
const dlogits = be.empty("f32", [T, V]), dx = be.empty("f32", [T, H]), dwte = be.zeros("f32", [V, H]);
be.gemm({ transA: false, transB: true, m: T, n: V, k: H, a: x, b: wte, c: logits });
const targets = be.fromHost("i32", [T], Int32Array.from({ length: T }, (_, i) => (i * 7919) % V));
const mx = be.empty("f32", [T]), tl = be.empty("f32", [T]), se = be.empty("f32", [T]);
const dloss = be.fromHost("f32", [T], new Float32Array(T).fill(1 / T));
be.ceStats(logits, targets, 0, mx, tl);
be.ceSumExp(logits, mx, se);

const g = { group: "logits [1024 x 50304]" };
Deno.bench(`gemm NT ${T}x${V}x${H} (logits)`, g, () => {
  be.gemm({ transA: false, transB: true, m: T, n: V, k: H, a: x, b: wte, c: logits });
});
Deno.bench(`gemm NN ${T}x${H}x${V} (dx)`, g, () => {
  be.gemm({ transA: false, transB: false, m: T, n: H, k: V, a: dlogits, b: wte, c: dx });
});
Deno.bench(`gemm TN ${V}x${H}x${T} (dwte, beta 1)`, g, () => {
  be.gemm({ transA: true, transB: false, m: V, n: H, k: T, a: dlogits, b: x, c: dwte, beta: 1 });
});
Deno.bench("ceStats", g, () => be.ceStats(logits, targets, 0, mx, tl));
Deno.bench("ceSumExp", g, () => be.ceSumExp(logits, mx, se));
Deno.bench("ceBwd", g, () => be.ceBwd(logits, targets, 0, mx, se, dloss, dlogits));
Deno.bench("empty + free [1024 x 50304] f32", g, () => be.free(be.empty("f32", [T, V])));

const P = V * H + S * H + 4 * (12 * H * H + 13 * H) + 2 * H; // parameter count
const p = filled([P], 3), gr = filled([P], 4, 1e-3), m = be.zeros("f32", [P]), v = be.zeros("f32", [P]);
const out1 = be.zeros("f64", [1]), flag = be.zeros("f32", [1]);
const go = { group: `optimizer over ${P} params` };
let step = 0;
Deno.bench("adamStep", go, () => {
  be.adamStep(p, gr, m, v, {
    lr: 1e-3,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weightDecay: 0.01,
    step: ++step,
  });
});
// The grad norm's reduction: exact f64 squares over 16384-element chunks (was an in-order f32 WASM loop:
// 8.4 ms here at commit 4bb99f5, and 1e-3 low on a 3.2M-element embedding gradient).
Deno.bench("sumSquares (f64 chunks)", go, () => be.sumSquares(gr, out1, false));
Deno.bench("countZeros (--log-num-zeros-in-grad)", go, () => be.countZeros(gr, out1, false));
Deno.bench("nonFinite", go, () => be.nonFinite(gr, flag));
Deno.bench("scale (in place)", go, () => be.scale(gr, 1, gr));
Deno.bench("fill 0", go, () => be.fill(v, 0));

const h4 = filled([T, F], 5), b4 = filled([F], 6, 0.1), y4 = be.empty("f32", [T, F]), d4 = filled([T, F], 7);
const scores = filled([8, NP, S, S], 8), probs = be.empty("f32", [8, NP, S, S]);
const gamma = filled([H], 9), beta = filled([H], 10), ln = be.empty("f32", [T, H]);
const mean = be.empty("f32", [T]),
  rstd = be.empty("f32", [T]),
  dg = be.zeros("f32", [H]),
  db = be.zeros("f32", [H]);
const addr = (rowLen: number): RngAddress => ({
  seed: 1,
  stream: 3,
  iteration: 7,
  base: 0,
  rowStride: rowLen,
  rowLen,
});
const gl = { group: "layer ops" };
Deno.bench(`biasGeluFwd [${T} x ${F}]`, gl, () => be.biasGeluFwd(h4, b4, y4));
Deno.bench(`biasGeluBwd [${T} x ${F}]`, gl, () => be.biasGeluBwd(d4, h4, b4, y4));
Deno.bench(
  `softmaxFwd causal [8, ${NP}, ${S}, ${S}]`,
  gl,
  () => be.softmaxFwd(scores, 0.17, { kind: "causal" }, probs),
);
Deno.bench(`softmaxBwd [8, ${NP}, ${S}, ${S}]`, gl, () => be.softmaxBwd(scores, probs, 0.17, scores));
Deno.bench(`dropout 0.1 [8, ${NP}, ${S}, ${S}]`, gl, () => be.dropout(probs, 0.1, addr(S), probs));
Deno.bench(`biasDropoutAdd 0.1 [${T} x ${H}]`, gl, () => be.biasDropoutAdd(x, gamma, x, 0.1, addr(H), ln));
Deno.bench(`layerNormFwd [${T} x ${H}]`, gl, () => be.layerNormFwd(x, gamma, beta, 1e-5, ln, mean, rstd));
Deno.bench(
  `layerNormBwd [${T} x ${H}]`,
  gl,
  () => be.layerNormBwd(x, x, gamma, mean, rstd, dx, dg, db, true),
);
Deno.bench(`embeddingBwd [${T} x ${H}] into [${V} x ${H}]`, gl, () => be.embeddingBwd(targets, x, dwte, 0));
