// Megatron's tensor-parallel building blocks as explicit forward/backward objects over a Backend
// and a Communicator: the four mappings between the replicated and the TP-split regions,
// ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding and the vocab-parallel cross
// entropy. Communication happens exactly where Megatron's does: copy-to all-reduces in backward,
// reduce-from all-reduces in forward, so a column -> row pair (attention or MLP) costs one
// all-reduce forward and one backward, 2 + 2 per transformer layer. The all-reduces are issued at
// TP = 1 too (a one-member group is the identity), so every layout runs the same collective sequence.
//
// The GPT model in src/transformer is built from these classes (it fuses bias + GeLU and
// bias-dropout-add around their GEMMs via skipBiasAdd). Weights are initialized by global
// coordinates (element (r, c) of the full TP=1 weight draws Philox counter r * cols + c), so TP
// shards are exact slices of the TP=1 weight.

import type { Backend, RngAddress } from "../backend/backend.ts";
import { type DType, isHalf } from "../tensor/dtype.ts";
import type { Param, TensorParallelInfo } from "../tensor/param.ts";
import { shapeStr, type Tensor } from "../tensor/tensor.ts";
import type { Communicator, ParallelState } from "./types.ts";

/** What every TP module needs, passed explicitly. */
export interface TPEnv {
  readonly backend: Backend;
  readonly comm: Communicator;
  readonly ps: ParallelState;
  /** Parameter and activation dtype (f32; f64 for gradient checks). Grads are f32 (f64 for f64). */
  readonly dtype: DType;
}

/** Normal init of a full [rows, cols] weight: seed, Philox stream and standard deviation. */
export interface NormalInit {
  readonly seed: number;
  readonly stream: number;
  readonly std: number;
}

export const COLUMN_SPLIT: TensorParallelInfo = { partitionDim: 0, stride: 1 };
export const ROW_SPLIT: TensorParallelInfo = { partitionDim: 1, stride: 1 };

function gradDType(dt: DType): DType {
  return dt === "f64" ? "f64" : "f32";
}

/** A normal initialization run by the backend (Backend.normalInit): on a GPU it runs on the device,
 *  so a large model does not spend minutes drawing its weights in JavaScript. */
export interface NormalFill {
  readonly std: number;
  readonly addr: RngAddress;
}

/** This TP rank's slice of the full [rows, cols] weight drawn by global coordinates: its shape and
 *  the addressing that makes element (r, c) draw counter (r0 + r) * cols + c0 + c. */
export function initWeightShard(
  fullRows: number,
  fullCols: number,
  split: TensorParallelInfo,
  tpRank: number,
  tpSize: number,
  init: NormalInit,
): { shape: [number, number]; fill: NormalFill } {
  const dim = split.partitionDim === 0 ? fullRows : fullCols;
  if (dim % tpSize !== 0) {
    throw new Error(
      `tensor parallel: dimension ${split.partitionDim} of [${fullRows}, ${fullCols}] is not divisible by ` +
        `tensor-parallel size ${tpSize}`,
    );
  }
  const nr = split.partitionDim === 0 ? fullRows / tpSize : fullRows;
  const nc = split.partitionDim === 1 ? fullCols / tpSize : fullCols;
  const r0 = split.partitionDim === 0 ? tpRank * nr : 0;
  const c0 = split.partitionDim === 1 ? tpRank * nc : 0;
  const addr = {
    seed: init.seed,
    stream: init.stream,
    iteration: 0,
    base: r0 * fullCols + c0,
    rowStride: fullCols,
  };
  return { shape: [nr, nc], fill: { std: init.std, addr: { ...addr, rowLen: nc } } };
}

/** A Param in env.dtype from host values, a normal fill drawn by the backend, or zeros (null); its
 *  zeroed grad and, for half precision, the f32 master copy the optimizer updates. */
export function createParam(
  env: TPEnv,
  name: string,
  shape: number[],
  data: Float64Array | NormalFill | null,
  tp: TensorParallelInfo | null,
  noWeightDecay: boolean,
): Param {
  const be = env.backend;
  const host = (dt: DType) => {
    if (data === null) return be.zeros(dt, shape);
    if (data instanceof Float64Array) return be.fromHost(dt, shape, data);
    const t = be.empty(dt, shape);
    be.normalInit(t, data.std, data.addr);
    return t;
  };
  return {
    name,
    value: host(env.dtype),
    grad: be.zeros(gradDType(env.dtype), shape),
    main: isHalf(env.dtype) ? host("f32") : null,
    noWeightDecay,
    tensorParallel: tp,
    shared: false,
  };
}

// ---- the four mappings (last dimension = the split dimension) ------------------------------------

/** Split x [rows, n] along the last dimension; returns this rank's [rows, n / p] (new tensor). */
export function splitLastDim(env: TPEnv, x: Tensor): Tensor {
  const { backend: be, ps } = env;
  const p = ps.tpSize;
  const n = x.shape[x.shape.length - 1];
  if (n % p !== 0) {
    throw new Error(`scatter to TP region: last dimension of ${shapeStr(x.shape)} is not divisible by ${p}`);
  }
  const rows = x.size / n, c = n / p;
  const outShape = [...x.shape.slice(0, -1), c];
  if (p === 1) {
    const y = be.empty(x.dtype, outShape);
    be.copy(x, y);
    return y;
  }
  // [rows, p, c] -> [p, rows, c]; this rank's block is then contiguous.
  const t = be.empty(x.dtype, [1, p, rows, c]);
  be.transpose12(x.view([1, rows, p, c]), t);
  const y = be.empty(x.dtype, outShape);
  be.copy(t.view([p, rows * c]).narrow(ps.tpRank, 1), y);
  be.free(t);
  return y;
}

/** All-gather x_i [rows, c] from every TP rank into [rows, p * c] (new tensor). */
export async function gatherLastDim(env: TPEnv, x: Tensor): Promise<Tensor> {
  const { backend: be, comm, ps } = env;
  const p = ps.tpSize;
  const c = x.shape[x.shape.length - 1];
  const rows = x.size / c;
  const outShape = [...x.shape.slice(0, -1), p * c];
  const y = be.empty(x.dtype, outShape);
  if (p === 1) {
    be.copy(x, y);
    return y;
  }
  // The communicator gathers along the leading dimension: [p, rows, c] -> [rows, p, c].
  const g = be.empty(x.dtype, [p, rows, c]);
  await comm.allGather(x.view([rows, c]), g, "tensor");
  be.transpose12(g.view([1, p, rows, c]), y.view([1, rows, p, c]));
  be.free(g);
  return y;
}

/** copy_to_tensor_model_parallel_region: forward identity, backward all-reduce (in place). */
export const copyToTensorParallelRegion = {
  forward(_env: TPEnv, x: Tensor): Tensor {
    return x;
  },
  async backward(env: TPEnv, dx: Tensor): Promise<Tensor> {
    await env.comm.allReduce(dx, "sum", "tensor");
    return dx;
  },
};

/** reduce_from_tensor_model_parallel_region: forward all-reduce (in place), backward identity. */
export const reduceFromTensorParallelRegion = {
  async forward(env: TPEnv, y: Tensor): Promise<Tensor> {
    await env.comm.allReduce(y, "sum", "tensor");
    return y;
  },
  backward(_env: TPEnv, dy: Tensor): Tensor {
    return dy;
  },
};

/** scatter_to_tensor_model_parallel_region: forward split last dim, backward all-gather it. */
export const scatterToTensorParallelRegion = {
  forward(env: TPEnv, x: Tensor): Promise<Tensor> {
    return Promise.resolve(splitLastDim(env, x));
  },
  backward(env: TPEnv, dy: Tensor): Promise<Tensor> {
    return gatherLastDim(env, dy);
  },
};

/** gather_from_tensor_model_parallel_region: forward all-gather last dim, backward split it. */
export const gatherFromTensorParallelRegion = {
  forward(env: TPEnv, x: Tensor): Promise<Tensor> {
    return gatherLastDim(env, x);
  },
  backward(env: TPEnv, dy: Tensor): Promise<Tensor> {
    return Promise.resolve(splitLastDim(env, dy));
  },
};

// ---- linear layers -------------------------------------------------------------------------------

/** y[rows, out] = beta * y + ones[rows, 1] bias[1, out]: the broadcast as a rank-1 GEMM, so it shares
 *  the GEMM's output rounding. */
function addBias(be: Backend, bias: Tensor, y: Tensor, beta: number): void {
  const out = bias.size, rows = y.size / out;
  const ones = be.empty(y.dtype, [rows, 1]);
  be.fill(ones, 1);
  be.gemm({
    transA: false,
    transB: false,
    m: rows,
    n: out,
    k: 1,
    a: ones,
    b: bias.view([1, out]),
    c: y,
    beta,
  });
  be.free(ones);
}

/** y[rows, out] = x[rows, in] w[out, in]^T, plus a broadcast bias when given. */
export function linear(be: Backend, x: Tensor, w: Tensor, bias: Tensor | null, y: Tensor): void {
  const rows = x.size / w.shape[1], out = w.shape[0];
  if (bias !== null) addBias(be, bias, y, 0);
  const beta = bias !== null ? 1 : 0;
  be.gemm({ transA: false, transB: true, m: rows, n: out, k: w.shape[1], a: x, b: w, c: y, beta });
}

/** dx = dy w (when dx given); dw += dy^T x. */
export function linearGrad(
  be: Backend,
  dy: Tensor,
  x: Tensor,
  w: Tensor,
  dw: Tensor,
  dx: Tensor | null,
): void {
  const out = w.shape[0], inF = w.shape[1], rows = x.size / inF;
  if (dx !== null) be.gemm({ transA: false, transB: false, m: rows, n: inF, k: out, a: dy, b: w, c: dx });
  be.gemm({ transA: true, transB: false, m: out, n: inF, k: rows, a: dy, b: x, c: dw, beta: 1 });
}

export interface ParallelLinearOptions {
  bias?: boolean; // default true
  /** Return the bias instead of adding it (the caller fuses it into the next op). */
  skipBiasAdd?: boolean; // default false
}

/** What Column- and RowParallelLinear share: this rank's shard of the full [out, in] weight and the
 *  bias ([out / p] split with the rows, or [out] replicated), created in that order. */
export class ParallelLinear<O extends ParallelLinearOptions> {
  readonly weight: Param;
  readonly bias: Param | null;
  readonly skipBiasAdd: boolean;

  constructor(
    readonly env: TPEnv,
    readonly name: string,
    readonly inFeatures: number,
    readonly outFeatures: number,
    init: NormalInit,
    protected readonly opts: O = {} as O,
  ) {
    const { ps } = env, split = this.split;
    const w = initWeightShard(outFeatures, inFeatures, split, ps.tpRank, ps.tpSize, init);
    this.weight = createParam(env, `${name}.weight`, w.shape, w.fill, split, false);
    const biasSplit = split.partitionDim === 0 ? split : null;
    this.bias = (opts.bias ?? true)
      ? createParam(env, `${name}.bias`, [w.shape[0]], null, biasSplit, true)
      : null;
    this.skipBiasAdd = opts.skipBiasAdd ?? false;
  }

  /** How the weight is split: each subclass overrides this prototype getter, which the constructor
   *  above reads (a getter, not a field, so it is already the subclass's there). */
  protected get split(): TensorParallelInfo {
    throw new Error("ParallelLinear: a subclass must define how its weight is split");
  }

  params(): Param[] {
    return this.bias ? [this.weight, this.bias] : [this.weight];
  }

  /** The bias the caller must add itself (skipBiasAdd), else null: Megatron's (output, bias) pair, so
   *  a fused bias-dropout-add does not reach into the layer. */
  get outputBias(): Tensor | null {
    return this.skipBiasAdd && this.bias ? this.bias.value : null;
  }
}

export interface ColumnParallelOptions extends ParallelLinearOptions {
  /** All-gather the output to [rows, out] (Megatron 2021's class default; the transformer uses false). */
  gatherOutput?: boolean; // default true
}

/** Y = X A^T + b with A split by rows (output features): A_i [out / p, in]. */
export class ColumnParallelLinear extends ParallelLinear<ColumnParallelOptions> {
  protected override get split(): TensorParallelInfo {
    return COLUMN_SPLIT;
  }
  get outPerRank(): number {
    return this.weight.value.shape[0];
  }
  private get gatherOutput(): boolean {
    return this.opts.gatherOutput ?? true;
  }

  /** x [rows, in] (replicated) -> y [rows, out / p] (or [rows, out] gathered). Caller owns y and keeps
   *  x alive until backward. */
  async forward(x: Tensor): Promise<Tensor> {
    const { backend: be } = this.env;
    const xi = copyToTensorParallelRegion.forward(this.env, x);
    const rows = x.size / this.inFeatures;
    const y = be.empty(this.env.dtype, [rows, this.outPerRank]);
    linear(
      be,
      xi.view([rows, this.inFeatures]),
      this.weight.value,
      this.skipBiasAdd ? null : this.bias?.value ?? null,
      y,
    );
    if (!this.gatherOutput) return y;
    const g = await gatherFromTensorParallelRegion.forward(this.env, y);
    be.free(y);
    return g;
  }

  /** dy like forward's output -> dx [rows, in] (all-reduced over TP; caller owns it). Accumulates
   *  the weight and bias grads. `releaseDy` frees dy after its last use, before the all-reduce (as
   *  autograd would), when the caller has no further use for it. */
  async backward(x: Tensor, dy: Tensor, releaseDy = false): Promise<Tensor> {
    const { backend: be } = this.env;
    const rows = x.size / this.inFeatures;
    const dyi = this.gatherOutput ? await gatherFromTensorParallelRegion.backward(this.env, dy) : dy;
    const dyv = dyi.view([rows, this.outPerRank]);
    if (this.bias) be.sumRows(dyv, this.bias.grad, true);
    const dx = be.empty(this.env.dtype, [rows, this.inFeatures]);
    linearGrad(be, dyv, x.view([rows, this.inFeatures]), this.weight.value, this.weight.grad, dx);
    if (dyi !== dy) be.free(dyi);
    if (releaseDy) be.free(dy);
    return await copyToTensorParallelRegion.backward(this.env, dx);
  }
}

export interface RowParallelOptions extends ParallelLinearOptions {
  /** The input is already split over TP (a column-parallel output); else it is scattered here. */
  inputIsParallel?: boolean; // default false
}

/** Y = X A^T + b with A split by columns (input features): A_i [out, in / p]; one all-reduce
 *  in forward, the bias (replicated) added after it. */
export class RowParallelLinear extends ParallelLinear<RowParallelOptions> {
  protected override get split(): TensorParallelInfo {
    return ROW_SPLIT;
  }
  get inPerRank(): number {
    return this.weight.value.shape[1];
  }
  private get inputIsParallel(): boolean {
    return this.opts.inputIsParallel ?? false;
  }

  /** The input this rank multiplies: x itself when input-parallel, else its scattered slice (new). */
  async localInput(x: Tensor): Promise<Tensor> {
    return this.inputIsParallel ? x : await scatterToTensorParallelRegion.forward(this.env, x);
  }

  /** x [rows, in / p] (input-parallel) or [rows, in] -> y [rows, out] (replicated; caller owns). */
  async forward(x: Tensor): Promise<Tensor> {
    const { backend: be } = this.env;
    const xi = await this.localInput(x);
    const rows = xi.size / this.inPerRank;
    const y = be.empty(this.env.dtype, [rows, this.outFeatures]);
    linear(be, xi.view([rows, this.inPerRank]), this.weight.value, null, y);
    if (xi !== x) be.free(xi);
    await reduceFromTensorParallelRegion.forward(this.env, y);
    // After the reduce, so the replicated bias is added once.
    if (this.bias && !this.skipBiasAdd) addBias(be, this.bias.value, y, 1);
    return y;
  }

  /** dy [rows, out] -> dx like forward's input (caller owns). Accumulates weight and bias grads. */
  async backward(x: Tensor, dy: Tensor): Promise<Tensor> {
    const { backend: be } = this.env;
    const dyl = reduceFromTensorParallelRegion.backward(this.env, dy);
    const xi = await this.localInput(x);
    const rows = xi.size / this.inPerRank;
    if (this.bias) be.sumRows(dyl, this.bias.grad, true);
    const dxi = be.empty(this.env.dtype, [rows, this.inPerRank]);
    linearGrad(
      be,
      dyl.view([rows, this.outFeatures]),
      xi.view([rows, this.inPerRank]),
      this.weight.value,
      this.weight.grad,
      dxi,
    );
    if (xi !== x) be.free(xi);
    if (this.inputIsParallel) return dxi;
    const dx = await scatterToTensorParallelRegion.backward(this.env, dxi);
    be.free(dxi);
    return dx;
  }
}

/** Embedding table split by vocabulary rows: rank i holds ids [i V/p, (i+1) V/p). Out-of-range ids
 *  give zero rows locally; the forward all-reduce assembles the full lookup. */
export class VocabParallelEmbedding {
  readonly weight: Param;
  readonly vocabStart: number;
  readonly vocabPerRank: number;

  constructor(
    readonly env: TPEnv,
    readonly name: string,
    readonly vocabSize: number,
    readonly hiddenSize: number,
    init: NormalInit,
  ) {
    const { ps } = env;
    const w = initWeightShard(vocabSize, hiddenSize, COLUMN_SPLIT, ps.tpRank, ps.tpSize, init);
    this.vocabPerRank = w.shape[0];
    this.vocabStart = ps.tpRank * this.vocabPerRank;
    this.weight = createParam(env, `${name}.weight`, w.shape, w.fill, COLUMN_SPLIT, false);
  }

  /** ids i32 [n] -> [n, h] (replicated; caller owns). */
  async forward(ids: Tensor): Promise<Tensor> {
    const { backend: be } = this.env;
    const out = be.empty(this.env.dtype, [ids.size, this.hiddenSize]);
    be.embeddingFwd(ids, this.weight.value, out, this.vocabStart);
    return await reduceFromTensorParallelRegion.forward(this.env, out);
  }

  /** Accumulate the table grad for this shard's ids (dOut is replicated: identity backward). */
  backward(ids: Tensor, dOut: Tensor): void {
    const dy = reduceFromTensorParallelRegion.backward(this.env, dOut);
    this.env.backend.embeddingBwd(ids, dy, this.weight.grad, this.vocabStart);
  }
}

/** Saved state of a vocab-parallel cross entropy, for its backward. */
export interface VocabParallelCESaved {
  logits: Tensor;
  targets: Tensor;
  vocabStart: number;
  globalMax: Tensor;
  sumExp: Tensor;
}

/**
 * Per-row loss of logits split by vocabulary (this rank: columns [vocabStart, vocabStart + V/p)).
 * Three all-reduces: max of the row maxima, sum of the target logit (only its owner contributes),
 * sum of the shifted exponentials. Returns the loss [rows] (caller owns) and the saved state.
 */
export async function vocabParallelCrossEntropy(
  env: TPEnv,
  logits: Tensor,
  targets: Tensor,
  vocabStart: number,
): Promise<{ loss: Tensor; saved: VocabParallelCESaved }> {
  const { backend: be, comm } = env;
  const rows = logits.shape[0];
  if (targets.size !== rows) {
    throw new Error(`vocab-parallel cross entropy: ${targets.size} targets for ${rows} rows of logits`);
  }
  const sd = gradDType(logits.dtype);
  const globalMax = be.empty(sd, [rows]);
  const targetLogit = be.empty(sd, [rows]);
  be.ceStats(logits, targets, vocabStart, globalMax, targetLogit);
  await comm.allReduce(globalMax, "max", "tensor");
  await comm.allReduce(targetLogit, "sum", "tensor");
  const sumExp = be.empty(sd, [rows]);
  be.ceSumExp(logits, globalMax, sumExp);
  await comm.allReduce(sumExp, "sum", "tensor");
  const loss = be.empty(sd, [rows]);
  be.ceLoss(globalMax, sumExp, targetLogit, loss);
  be.free(targetLogit);
  return { loss, saved: { logits, targets, vocabStart, globalMax, sumExp } };
}

/** dlogits (this rank's shard) = dloss * (softmax - onehot). No communication. Written in place over
 *  the saved logits (ceBwd reads each element before writing it), so the caller owns the returned
 *  tensor and must not free saved.logits separately: one [tokens, vocab] buffer fewer per step. */
export function vocabParallelCrossEntropyBackward(
  env: TPEnv,
  saved: VocabParallelCESaved,
  dloss: Tensor,
): Tensor {
  const be = env.backend;
  const d = saved.logits;
  be.ceBwd(saved.logits, saved.targets, saved.vocabStart, saved.globalMax, saved.sumExp, dloss, d);
  be.free(saved.globalMax);
  be.free(saved.sumExp);
  return d;
}
