// The Backend interface: the fixed op set every model, optimizer and schedule is written against.
// The CPU backend (src/backend/cpu/) is the reference; the CUDA backend implements the same ops and
// is tested op by op against it.
//
// Conventions (all backends):
// - Destination passing: ops write into tensors the caller allocated. Nothing is allocated inside
//   an op, so memory lifetimes stay explicit (see docs/architecture.md).
// - Row-major, contiguous tensors (views with an element offset are allowed). GEMM takes explicit
//   leading dimensions and batch strides where a strided view is needed (attention heads).
// - Arithmetic is fp32 (f64 when every operand is f64, for gradient checks). Half inputs are read
//   exactly; results are rounded to the output dtype with round-to-nearest-even.
// - `accumulate: true` means out += result (parameter gradients across micro-batches); otherwise
//   out = result.
// - Ops are synchronous from the caller's point of view; `toHost` returns finished values.

import type { DType, HostArray } from "../tensor/dtype.ts";
import type { Shape, Tensor } from "../tensor/tensor.ts";

/**
 * Address of a counter-based random stream (see src/rng/philox.ts). Element (r, i) of an op's
 * input viewed as [rows, rowLen] uses the Philox counter index `base + r * rowStride + i`, so the
 * caller can make the index a *global* coordinate (global sample, global head, position, feature)
 * independent of how the tensor is split across ranks.
 */
export interface RngAddress {
  /** Philox key: the run's seed (u32). */
  seed: number;
  /** Purpose and global layer packed into a u32 (see philox.ts streamId). */
  stream: number;
  /** Iteration (or another u32 that changes each step). */
  iteration: number;
  /** Counter index of element (0, 0). Integer < 2^53. */
  base: number;
  /** Counter-index distance between consecutive rows. */
  rowStride: number;
  /** Row length in elements; the op's element count must be a multiple of it. */
  rowLen: number;
}

export type SoftmaxMask =
  | { kind: "none" }
  /** Key position j is masked for query position i when j > i (GPT). */
  | { kind: "causal" }
  /** u8 [b, sq, sk], 1 = masked (Megatron's boolean True); broadcast over heads. */
  | { kind: "padding"; mask: Tensor };

/** One operand of fused attention: element (sample bi, head hd, row i, feature d) is at the tensor's
 *  element bi * strideB + hd * strideH + i * ld + d (q, k, v inside a QKV projection, or the context
 *  written straight into [b, sq, np, hn]). */
export interface AttentionOperand {
  t: Tensor;
  strideB: number;
  strideH: number;
  ld: number;
}

/** softmax(scale * q k^T + mask) with dropout, times v, per (sample, head); what the unfused path
 *  computes with gemm, softmaxFwd, dropout and gemm, without the [b, np, sq, sk] probabilities. */
export interface FusedAttentionArgs {
  b: number;
  np: number;
  sq: number;
  sk: number;
  hn: number;
  scale: number;
  /** As softmaxFwd's (masked scores become -10000). */
  mask: SoftmaxMask;
  /** Attention-dropout probability (0: none) and the address `dropout` would get for the
   *  [b, np, sq, sk] probabilities, so the kept elements are the same. */
  dropoutP: number;
  dropoutAddr: RngAddress | null;
  q: AttentionOperand;
  k: AttentionOperand;
  v: AttentionOperand;
  /** The context [b, np, sq, hn] (any strides); written by forward, read by backward. */
  out: AttentionOperand;
  /** f32 [b * np * sq]: each query row's log-sum-exp, written by forward, read by backward. */
  lse: Tensor;
}

/** Gradients of fused attention; each tensor is laid out as the forward operand it belongs to
 *  (dOut as out, dq as q, ...), and dq/dk/dv are overwritten. */
export interface FusedAttentionGrads {
  dOut: Tensor;
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
}

/** Elementwise activations beyond the fused bias-GeLU: tanh (BERT pooler) and the exact erf GeLU
 *  0.5 x (1 + erf(x / sqrt 2)) (torch's F.gelu, BERT's LM head). */
export type Activation = "tanh" | "gelu_erf";

export interface GemmArgs {
  transA: boolean;
  transB: boolean;
  /** C is m x n; op(A) is m x k; op(B) is k x n. */
  m: number;
  n: number;
  k: number;
  alpha?: number; // default 1
  beta?: number; // default 0
  a: Tensor;
  b: Tensor;
  c: Tensor;
  /** Leading dimensions (row strides, in elements) of A, B, C as stored. Default: contiguous. */
  lda?: number;
  ldb?: number;
  ldc?: number;
  /** Strided-batched GEMM: number of matrices and element strides between them (default 1). */
  batch?: number;
  strideA?: number;
  strideB?: number;
  strideC?: number;
}

export interface AdamArgs {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step count used for bias correction. */
  step: number;
}

/** One parameter of a multi-tensor Adam step (adamStepMulti). */
export interface AdamTensors {
  /** f32 parameter (the main copy under mixed precision), m, v, all of one size; grad any float. */
  param: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
  /** When set, also receives the updated parameter, rounded to its dtype (the model's bf16/f16
   *  copy of an f32 main param), exactly as `copy(param, copyTo)` would. */
  copyTo: Tensor | null;
}

export interface SgdArgs {
  lr: number;
  momentum: number;
  weightDecay: number;
  /** True on the first step for this buffer (torch: buf = grad). */
  firstStep: boolean;
}

/** Elements per f64 partial sum of sumSquares / countZeros on every backend (kernels/elementwise.cu
 *  MD_REDUCE_CHUNK): short enough that a chunk's f64 sum is exact to ~1e-12, long enough that the
 *  partials of a 10^8-element tensor are few. */
export const REDUCE_CHUNK = 16384;

export interface Backend {
  readonly name: "cpu" | "cuda";
  /** Human-readable description, e.g. "cpu (OpenBLAS 0.3.21 via FFI)". */
  readonly description: string;

  // ---- memory -----------------------------------------------------------------------------
  /** New tensor; contents are zero on CPU, unspecified elsewhere. */
  empty(dtype: DType, shape: Shape): Tensor;
  zeros(dtype: DType, shape: Shape): Tensor;
  /** Copy host values in. Numbers/Float32Array/Float64Array are rounded to half types; a
   *  Uint16Array for f16/bf16 is taken as raw bits; BigInt64Array for i64. */
  fromHost(dtype: DType, shape: Shape, data: ArrayLike<number> | HostArray): Tensor;
  /** Copy out as host storage of the tensor's dtype (half types as raw Uint16 bits). */
  toHost(t: Tensor): HostArray;
  /** Copy out converted to f64 numbers (half bits decoded); convenient for tests and logging. */
  toF64(t: Tensor): Float64Array;
  /** Release storage. Later use of the tensor (or any view of it) throws. */
  free(t: Tensor): void;
  /** Wait for all queued work (no-op on CPU). */
  synchronize(): void;
  /** Device memory a new allocation can use (free + cached but unused), for a device with its own
   *  memory; absent on the CPU, whose limit is the host's (src/training/memory_estimate.ts). */
  deviceMemory?(): { free: number; total: number };

  // ---- elementwise / copies ---------------------------------------------------------------
  /** dst = src with dtype conversion (same element count). */
  copy(src: Tensor, dst: Tensor): void;
  fill(t: Tensor, value: number): void;
  /** out = alpha * x */
  scale(x: Tensor, alpha: number, out: Tensor): void;
  /** out = alpha * a + beta * b */
  add(a: Tensor, b: Tensor, out: Tensor, alpha?: number, beta?: number): void;
  /** [A, B, C, D] -> [A, C, B, D] (attention head split/merge). */
  transpose12(x: Tensor, out: Tensor): void;
  /** out[j] (+)= sum_i x[i, j] for x viewed as [rows, cols] with cols = out.size (bias grads). */
  sumRows(x: Tensor, out: Tensor, accumulate: boolean): void;

  // ---- BLAS -------------------------------------------------------------------------------
  /** C = alpha * op(A) op(B) + beta * C, row-major, optionally strided-batched. A and B share a
   *  dtype; C is that dtype or f32. */
  gemm(args: GemmArgs): void;

  // ---- transformer ops --------------------------------------------------------------------
  /** x [rows, h]; gamma/beta [h]; mean/rstd f32 [rows] saved for backward. */
  layerNormFwd(
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: number,
    y: Tensor,
    mean: Tensor,
    rstd: Tensor,
  ): void;
  /** dx = grad wrt x; dgamma/dbeta are f32 and (+)= per `accumulate`. */
  layerNormBwd(
    dy: Tensor,
    x: Tensor,
    gamma: Tensor,
    mean: Tensor,
    rstd: Tensor,
    dx: Tensor,
    dgamma: Tensor,
    dbeta: Tensor,
    accumulate: boolean,
  ): void;
  /** y = gelu_tanh(x + bias); x [rows, f], bias [f] (Megatron's fused bias-GeLU). */
  biasGeluFwd(x: Tensor, bias: Tensor, y: Tensor): void;
  /** dx = dy * gelu_tanh'(x + bias) (bias grad = sumRows(dx)). */
  biasGeluBwd(dy: Tensor, x: Tensor, bias: Tensor, dx: Tensor): void;
  /** y = act(x) elementwise (x, y of one float dtype and size). */
  activationFwd(kind: Activation, x: Tensor, y: Tensor): void;
  /** dx = dy * act'(x) elementwise (from the forward's input x). */
  activationBwd(kind: Activation, dy: Tensor, x: Tensor, dx: Tensor): void;
  /** probs = softmax(scale * scores + mask(-10000)) over the last dim; scores [b, np, sq, sk]. */
  softmaxFwd(scores: Tensor, scale: number, mask: SoftmaxMask, probs: Tensor): void;
  /** dscores = scale * probs * (dprobs - sum(dprobs * probs)). */
  softmaxBwd(dprobs: Tensor, probs: Tensor, scale: number, dscores: Tensor): void;
  /** Optional fused attention (CUDA, when enabled); src/transformer/attention.ts uses it when both
   *  directions are present and otherwise composes gemm / softmax / dropout. */
  fusedAttentionFwd?(a: FusedAttentionArgs): void;
  fusedAttentionBwd?(a: FusedAttentionArgs, g: FusedAttentionGrads): void;
  /**
   * out[i] = std * normal(addr's counter index of i) (philox.ts PhiloxStream.normal, f64), stored
   * as fromHost stores an f64 (f64 -> f32 -> f16/bf16, each RNE). Weight initialization: every
   * backend gives the same bits, so a model initialized on the device equals one built on the CPU.
   */
  normalInit(out: Tensor, std: number, addr: RngAddress): void;
  /** y = x * keep / (1 - p), keep = uniform(addr) >= p; also the backward (same mask). p = 0: copy. */
  dropout(x: Tensor, p: number, addr: RngAddress, y: Tensor): void;
  /** out = residual + dropout(x + bias); x, residual, out [rows, h]; bias [h] or null. */
  biasDropoutAdd(
    x: Tensor,
    bias: Tensor | null,
    residual: Tensor,
    p: number,
    addr: RngAddress,
    out: Tensor,
  ): void;
  /** out[i] = table[ids[i] - vocabStart] for ids in [vocabStart, vocabStart + rows); 0 otherwise. */
  embeddingFwd(ids: Tensor, table: Tensor, out: Tensor, vocabStart: number): void;
  /** dtable[ids[i] - vocabStart] += dout[i] for in-range ids (dtable f32, always accumulates). */
  embeddingBwd(ids: Tensor, dout: Tensor, dtable: Tensor, vocabStart: number): void;

  // ---- cross-entropy (vocab-parallel pieces; with one shard they compose to plain CE) --------
  /** Per row: rowMax = max_j logits; targetLogit = logits[target - vocabStart] if in shard else 0. */
  ceStats(logits: Tensor, targets: Tensor, vocabStart: number, rowMax: Tensor, targetLogit: Tensor): void;
  /** sumExp[i] = sum_j exp(logits[i, j] - globalMax[i]). */
  ceSumExp(logits: Tensor, globalMax: Tensor, sumExp: Tensor): void;
  /** loss[i] = log(sumExp[i]) + globalMax[i] - targetLogit[i] (all f32 [rows]). */
  ceLoss(globalMax: Tensor, sumExp: Tensor, targetLogit: Tensor, loss: Tensor): void;
  /** dlogits = dloss[i] * (softmax - onehot(target in shard)). */
  ceBwd(
    logits: Tensor,
    targets: Tensor,
    vocabStart: number,
    globalMax: Tensor,
    sumExp: Tensor,
    dloss: Tensor,
    dlogits: Tensor,
  ): void;

  // ---- optimizer and reductions -------------------------------------------------------------
  /** AdamW (decoupled weight decay, bias correction), all f32, in place on param/m/v. */
  adamStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, args: AdamArgs): void;
  /** Optional: adamStep over many parameters (with their copyTo) in few launches, bit-identical to
   *  adamStep + copy per parameter. The optimizer uses it when present. */
  adamStepMulti?(list: readonly AdamTensors[], args: AdamArgs): void;
  /** SGD with momentum (torch semantics), f32, in place. */
  sgdStep(param: Tensor, grad: Tensor, momentumBuf: Tensor, args: SgdArgs): void;
  /** out[0] (+)= sum(x^2) accumulated in f64 (squares of f32/half values are exact in f64): each
   *  REDUCE_CHUNK-element chunk is summed in f64, the chunk sums are added in f64, in an order fixed by
   *  the backend (same bits for the same input). out is f64 [1]. */
  sumSquares(x: Tensor, out: Tensor, accumulate: boolean): void;
  /** out[0] (+)= the number of elements of x equal to zero (either sign; NaN is not zero), chunked like
   *  sumSquares; out is f64 [1] (counts below 2^53 are exact). */
  countZeros(x: Tensor, out: Tensor, accumulate: boolean): void;
  /** flag[0] = max(flag[0], 1 if any element of x is inf/nan); flag is f32 [1]. */
  nonFinite(x: Tensor, flag: Tensor): void;
}
