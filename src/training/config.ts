// Command-line configuration for the trainers: Megatron-LM's (2021) flag names, defaults and --help
// groups, parsed into one typed camelCase Config. Parsing never demands model-shape/lr/data flags, so
// a trainer can substitute an embedded default (withDefaults) before validateForTraining enforces the
// "required" rules. Every error is one line that names the flag.

// deno-lint-ignore no-import-prefix -- the project rule: fully qualified specifiers, importable from a URL
import { z } from "npm:zod@4.6.7";

/** A bad command line: one line naming the flag, what was expected and what was found. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

type Kind = "bool" | "value" | "list";
type Conv = "int" | "float" | "str";

interface FlagDef<S extends z.ZodType = z.ZodType> {
  readonly group: string;
  readonly kind: Kind;
  readonly conv: Conv;
  readonly schema: S;
  /** What a valid value looks like, for error messages ("a positive integer"). */
  readonly expect: string;
  readonly help: string;
  /** Flag spelling when it is not the kebab-case of the key (e.g. --DDP-impl). */
  readonly flag?: string;
  /** Default shown in help when it is not a literal (e.g. "micro-batch-size * data-parallel-size"). */
  readonly shownDefault?: string;
  /** The allowed values of an enumerated flag, shown in --help as {a,b,c}. */
  readonly choices?: readonly string[];
}

const G = {
  net: "network size",
  reg: "regularization",
  train: "training",
  init: "initialization",
  lr: "learning rate",
  ckpt: "checkpointing",
  mp: "mixed precision",
  dist: "distributed",
  valid: "validation",
  data: "data and dataloader",
  log: "logging",
  act: "activation checkpointing",
  ours: "megatron-deno",
} as const;

const GROUP_ORDER: readonly string[] = Object.values(G);

// Schema helpers. Each keeps the zod output type so Config is inferred from the table below.
const intSchema = (min: number) => z.number().int().min(min);
function int(group: string, def: number, help: string, min = 0) {
  return def0(group, "value", "int", intSchema(min).default(def), intExpect(min), help);
}
function intOpt(group: string, help: string, min = 1, shownDefault?: string) {
  return def0(group, "value", "int", intSchema(min).optional(), intExpect(min), help, shownDefault);
}
function num(group: string, def: number, help: string, min = -Infinity) {
  return def0(group, "value", "float", z.number().min(min).default(def), numExpect(min), help);
}
function numOpt(group: string, help: string, min = -Infinity) {
  return def0(group, "value", "float", z.number().min(min).optional(), numExpect(min), help);
}
function str(group: string, def: string, help: string) {
  return def0(group, "value", "str", z.string().default(def), "a string", help);
}
function strOpt(group: string, help: string) {
  return def0(group, "value", "str", z.string().optional(), "a string", help);
}
function choice<const T extends readonly [string, ...string[]]>(
  group: string,
  values: T,
  def: T[number],
  help: string,
) {
  const d = def0(
    group,
    "value",
    "str",
    z.enum(values).default(def as never),
    `one of ${values.join(", ")}`,
    help,
  );
  return { ...d, choices: values };
}
function choiceOpt<const T extends readonly [string, ...string[]]>(group: string, values: T, help: string) {
  const d = def0(group, "value", "str", z.enum(values).optional(), `one of ${values.join(", ")}`, help);
  return { ...d, choices: values };
}
function bool(group: string, help: string) {
  return def0(group, "bool", "str", z.boolean().default(false), "no value", help);
}
function intList(group: string, help: string, min = 1) {
  return def0(group, "list", "int", z.array(intSchema(min)).optional(), `${intExpect(min)}s`, help);
}
function strList(group: string, help: string) {
  return def0(group, "list", "str", z.array(z.string()).optional(), "strings", help);
}
function def0<S extends z.ZodType>(
  group: string,
  kind: Kind,
  conv: Conv,
  schema: S,
  expect: string,
  help: string,
  shownDefault?: string,
): FlagDef<S> {
  return { group, kind, conv, schema, expect, help, shownDefault };
}
function withFlag<S extends z.ZodType>(d: FlagDef<S>, flag: string): FlagDef<S> {
  return { ...d, flag };
}
function intExpect(min: number): string {
  return min === 1 ? "a positive integer" : min === 0 ? "a non-negative integer" : `an integer >= ${min}`;
}
function numExpect(min: number): string {
  return min === -Infinity ? "a number" : min === 0 ? "a non-negative number" : `a number >= ${min}`;
}

/** Every flag, keyed by its Config field. Order within a group is the --help order. */
const FLAGS = {
  // network size
  numLayers: intOpt(G.net, "Number of transformer layers."),
  hiddenSize: intOpt(G.net, "Transformer hidden size."),
  ffnHiddenSize: intOpt(G.net, "Transformer feed-forward hidden size.", 1, "4 * hidden-size"),
  numAttentionHeads: intOpt(G.net, "Number of attention heads."),
  kvChannels: intOpt(G.net, "Projection size per attention head.", 1, "hidden-size / num-attention-heads"),
  maxPositionEmbeddings: intOpt(G.net, "Maximum sequence length the position embeddings cover."),
  makeVocabSizeDivisibleBy: int(G.net, 128, "Pad the vocabulary to a multiple of this (times TP size).", 1),
  layernormEpsilon: num(G.net, 1e-5, "LayerNorm epsilon.", 0),
  applyResidualConnectionPostLayernorm: bool(G.net, "Use the LayerNorm output as the residual (BERT order)."),
  openaiGelu: bool(G.net, "Use the tanh GeLU approximation without the bias-gelu fusion."),
  onnxSafe: bool(G.net, "Use the erf GeLU."),
  bertNoBinaryHead: bool(G.net, "BERT without the sentence-order head."),
  // regularization
  attentionDropout: num(G.reg, 0.1, "Dropout probability on attention probabilities.", 0),
  hiddenDropout: num(G.reg, 0.1, "Dropout probability on hidden states.", 0),
  weightDecay: num(G.reg, 0.01, "Decoupled weight decay (not on biases and LayerNorm).", 0),
  clipGrad: num(G.reg, 1.0, "Clip the global gradient L2 norm to this (0 disables).", 0),
  adamBeta1: num(G.reg, 0.9, "Adam beta1.", 0),
  adamBeta2: num(G.reg, 0.999, "Adam beta2.", 0),
  adamEps: num(G.reg, 1e-8, "Adam epsilon.", 0),
  sgdMomentum: num(G.reg, 0.9, "SGD momentum.", 0),
  // training
  microBatchSize: intOpt(G.train, "Samples per micro-batch per data-parallel rank."),
  globalBatchSize: intOpt(
    G.train,
    "Samples per step over all ranks.",
    1,
    "micro-batch-size * data-parallel-size",
  ),
  rampupBatchSize: intList(G.train, "Batch ramp-up: <start> <increment> <samples> (needs --train-samples)."),
  trainIters: intOpt(G.train, "Iterations to train (exclusive with --train-samples)."),
  trainSamples: intOpt(G.train, "Samples to train (exclusive with --train-iters)."),
  logInterval: int(G.train, 100, "Report loss and timing every this many iterations.", 1),
  exitInterval: intOpt(G.train, "Exit after the iteration that is a multiple of this."),
  exitDurationInMins: intOpt(G.train, "Exit after this many minutes of training."),
  exitSignalHandler: bool(G.train, "Save a checkpoint and exit on SIGTERM."),
  tensorboardDir: strOpt(G.train, "Write TensorBoard event files here."),
  noMaskedSoftmaxFusion: bool(G.train, "Do not fuse scaling, masking and softmax."),
  noBiasGeluFusion: bool(G.train, "Do not fuse bias and GeLU."),
  noBiasDropoutFusion: bool(G.train, "Do not fuse bias, dropout and residual add."),
  optimizer: choice(G.train, ["adam", "sgd"], "adam", "Optimizer."),
  dataloaderType: choice(G.train, ["single", "cyclic"], "single", "Sampler type."),
  // initialization
  seed: int(G.init, 1234, "Random seed.", 0),
  initMethodStd: num(G.init, 0.02, "Standard deviation of the normal weight init.", 0),
  initMethodXavierUniform: bool(G.init, "Xavier-uniform weight init."),
  // learning rate
  lr: numOpt(G.lr, "Peak learning rate (required for training).", 0),
  lrDecayStyle: choice(G.lr, ["constant", "linear", "cosine"], "linear", "Learning-rate decay."),
  lrDecayIters: intOpt(G.lr, "Iterations to decay over.", 1, "--train-iters"),
  lrDecaySamples: intOpt(G.lr, "Samples to decay over.", 1, "--train-samples"),
  lrWarmupFraction: numOpt(G.lr, "Warmup as a fraction of the decay span.", 0),
  lrWarmupIters: int(G.lr, 0, "Warmup iterations."),
  lrWarmupSamples: int(G.lr, 0, "Warmup samples."),
  minLr: num(G.lr, 0, "Learning-rate floor.", 0),
  overrideLrScheduler: bool(G.lr, "Take scheduler settings from the flags, not the checkpoint."),
  useCheckpointLrScheduler: bool(G.lr, "Take scheduler settings from the checkpoint."),
  // checkpointing
  save: strOpt(G.ckpt, "Directory to save checkpoints to."),
  saveInterval: intOpt(G.ckpt, "Save every this many iterations."),
  noSaveOptim: bool(G.ckpt, "Do not save optimizer state."),
  noSaveRng: bool(G.ckpt, "Do not save RNG state."),
  load: strOpt(G.ckpt, "Directory to load a checkpoint from."),
  noLoadOptim: bool(G.ckpt, "Do not load optimizer state."),
  noLoadRng: bool(G.ckpt, "Do not load RNG state."),
  finetune: bool(G.ckpt, "Load model weights only and start at iteration 0."),
  // mixed precision
  fp16: bool(G.mp, "fp16 parameters and activations with dynamic loss scaling."),
  bf16: bool(G.mp, "bf16 parameters and activations."),
  lossScale: numOpt(G.mp, "Constant loss scale (unset: dynamic scaling for fp16).", 0),
  initialLossScale: num(G.mp, 2 ** 32, "Initial dynamic loss scale.", 0),
  minLossScale: num(G.mp, 1, "Minimum dynamic loss scale.", 0),
  lossScaleWindow: int(G.mp, 1000, "Clean steps before the loss scale doubles.", 1),
  hysteresis: int(G.mp, 2, "Overflows tolerated before the loss scale halves.", 1),
  fp32ResidualConnection: bool(G.mp, "Keep the residual stream in fp32."),
  noQueryKeyLayerScaling: bool(G.mp, "Do not scale Q*K^T by 1/layer_number."),
  attentionSoftmaxInFp32: bool(G.mp, "Run the attention softmax in fp32."),
  accumulateAllreduceGradsInFp32: bool(G.mp, "Accumulate and all-reduce grads in fp32 (forced by bf16)."),
  fp16LmCrossEntropy: bool(G.mp, "Compute the LM cross entropy in fp16."),
  // distributed
  tensorModelParallelSize: int(G.dist, 1, "Tensor-model-parallel size.", 1),
  pipelineModelParallelSize: int(G.dist, 1, "Pipeline-model-parallel size.", 1),
  numLayersPerVirtualPipelineStage: intOpt(G.dist, "Layers per virtual stage (interleaved schedule)."),
  ddpImpl: withFlag(
    choice(G.dist, ["local", "torch"], "local", "Data-parallel implementation."),
    "--DDP-impl",
  ),
  useContiguousBuffersInDdp: bool(G.dist, "Contiguous gradient buffer for local DDP."),
  worldSize: intOpt(G.dist, "Total ranks (tp * pp * dp).", 1, "tensor * pipeline * data-parallel size"),
  dataParallelSize: intOpt(G.dist, "Data-parallel size.", 1, "world-size / (tensor * pipeline)"),
  localRank: withFlag(intOpt(G.dist, "Local rank from a launcher (accepted).", 0), "--local_rank"),
  useCpuInitialization: bool(G.dist, "Initialize weights on the host (ours always does; accepted)."),
  distributedBackend: {
    ...choiceOpt(
      G.dist,
      ["nccl", "mpi", "local"],
      "Communicator between ranks: nccl (GPU processes), mpi (CPU processes, under mpiexec or the " +
        "launcher), local (every rank in this one process).",
    ),
    shownDefault: "nccl on cuda, mpi on cpu when this process is one rank of several; else local",
  },
  distributedTimeoutMinutes: num(
    G.dist,
    10,
    "Minutes a collective or receive waits for its peers before every waiting rank fails.",
    1e-6,
  ),
  // validation
  evalIters: int(G.valid, 100, "Iterations per evaluation.", 0),
  evalInterval: int(G.valid, 1000, "Evaluate every this many iterations.", 1),
  // data and dataloader
  dataPath: strList(G.data, "Dataset prefix, or weight prefix pairs to blend."),
  split: str(G.data, "969,30,1", "Train,valid,test split weights."),
  vocabFile: strOpt(G.data, "Vocabulary file."),
  mergeFile: strOpt(G.data, "BPE merges file."),
  vocabExtraIds: int(G.data, 0, "Extra sentinel tokens (T5)."),
  seqLength: intOpt(G.data, "Sequence length."),
  encoderSeqLength: intOpt(G.data, "Encoder sequence length (T5)."),
  decoderSeqLength: intOpt(G.data, "Decoder sequence length (T5)."),
  maskProb: num(G.data, 0.15, "Masking probability (BERT/T5).", 0),
  shortSeqProb: num(G.data, 0.1, "Probability of a short sequence (BERT).", 0),
  mmapWarmup: bool(G.data, "Read the mmap files once up front."),
  numWorkers: int(G.data, 2, "Data loader workers (accepted; loading is in-process)."),
  tokenizerType: choiceOpt(
    G.data,
    ["BertWordPieceLowerCase", "BertWordPieceCase", "GPT2BPETokenizer", "NullTokenizer"],
    "Tokenizer (NullTokenizer: pre-tokenized ids, needs --vocab-size).",
  ),
  vocabSize: intOpt(G.data, "Vocabulary size without eod, for --tokenizer-type NullTokenizer."),
  dataImpl: choice(G.data, ["mmap", "infer"], "infer", "Indexed dataset implementation."),
  resetPositionIds: bool(G.data, "Restart position ids after each end-of-document token."),
  resetAttentionMask: bool(G.data, "Do not attend across end-of-document tokens."),
  eodMaskLoss: bool(G.data, "Mask the loss at end-of-document tokens."),
  // logging
  logParamsNorm: bool(G.log, "Log the parameter norm."),
  logNumZerosInGrad: bool(G.log, "Log the number of zero gradients."),
  tensorboardLogInterval: int(G.log, 1, "Write TensorBoard scalars every this many iterations.", 1),
  tensorboardQueueSize: int(G.log, 1000, "Pending TensorBoard events before a forced flush.", 1),
  logTimersToTensorboard: bool(G.log, "Write timers to TensorBoard."),
  logBatchSizeToTensorboard: bool(G.log, "Write the batch size to TensorBoard."),
  noLogLearnigRateToTensorboard: bool(G.log, "Do not write the learning rate (Megatron's spelling)."),
  noLogLossScaleToTensorboard: bool(G.log, "Do not write the loss scale."),
  logValidationPplToTensorboard: bool(G.log, "Write validation perplexity."),
  // activation checkpointing
  checkpointActivations: bool(
    G.act,
    "Recompute activations (same as --activations-checkpoint-method uniform).",
  ),
  activationsCheckpointMethod: choiceOpt(G.act, ["uniform", "block"], "Which layers to recompute."),
  activationsCheckpointNumLayers: int(G.act, 1, "Layers per recompute chunk (uniform) or count (block).", 1),
  distributeCheckpointedActivations: bool(G.act, "Shard stored checkpoint inputs across TP ranks."),
  // ours
  device: choice(G.ours, ["cpu", "cuda", "auto"], "auto", "Backend: cpu, cuda, or cuda when available."),
  metricsFile: strOpt(G.ours, "Append one JSON object per log interval/eval to this file."),
  noProgress: bool(G.ours, "No progress output."),
  help: withFlag(bool(G.ours, "Show this help."), "--help"),
} as const;

type Flags = typeof FLAGS;

interface FlagPolicy {
  /** Why, in a few words; completes "--flag value: <kind>; <why>". */
  readonly why: string;
  /** When the policy applies (default: the value differs from the flag's default). */
  readonly when?: (v: unknown) => boolean;
}

/** Flags megatron-deno does not implement. Set to anything but their default, each stops the run with
 *  one line (exit 2) instead of being accepted and silently ignored. */
const REJECTED: { readonly [K in keyof Flags]?: FlagPolicy } = {
  applyResidualConnectionPostLayernorm: {
    why: "GPT keeps the residual at the LayerNorm input; pretrain-bert reads it",
  },
  openaiGelu: { why: "the MLP uses the fused bias + tanh-approximation GeLU" },
  onnxSafe: { why: "the MLP uses the fused bias + tanh-approximation GeLU (no erf GeLU)" },
  bertNoBinaryHead: { why: "it applies to BERT (pretrain-bert); GPT has no binary head" },
  noMaskedSoftmaxFusion: {
    why: "megatron-deno has only the fused scale + causal mask + softmax (fp32 math)",
  },
  noBiasGeluFusion: {
    why: "GPT uses only the fused bias + tanh GeLU; pretrain-bert and pretrain-t5 read it",
  },
  noBiasDropoutFusion: { why: "megatron-deno has only the fused bias + dropout + residual add" },
  initMethodXavierUniform: { why: "weights use the normal init of --init-method-std" },
  fp32ResidualConnection: { why: "the residual stream is kept in the parameter dtype" },
  fp16LmCrossEntropy: {
    why: "the LM cross entropy is computed in fp32 from the fp16 logits (Megatron's default, logits.float())",
  },
  ddpImpl: {
    why: "this project implements --DDP-impl local (a contiguous fp32 gradient buffer, averaged over the " +
      "data-parallel group in buckets)",
  },
  distributeCheckpointedActivations: { why: "stored recompute inputs are kept whole on every TP rank" },
  decoderSeqLength: { why: "it applies to T5's decoder; GPT uses --seq-length" },
  maskProb: { why: "it applies to BERT/T5 masking; GPT pretraining masks nothing" },
  shortSeqProb: { why: "it applies to BERT (pretrain-bert); GPT samples are always --seq-length tokens" },
  resetPositionIds: { why: "position ids always run 0..seq-length-1 over a sample" },
  resetAttentionMask: { why: "attention is causal over the whole sample, across end-of-document tokens" },
};

/** Flags that ask for what megatron-deno always does: accepted, and a run that sets one says so once
 *  (a "> --flag: ..." line) rather than staying silent. */
const ALWAYS: { readonly [K in keyof Flags]?: FlagPolicy } = {
  useContiguousBuffersInDdp: {
    why: "gradients always live in one contiguous buffer per rank (the local DDP implementation)",
    when: (v) => v === true,
  },
  useCpuInitialization: {
    why: "weights are always drawn by their coordinate in the full unsplit weight, so every layout and " +
      "device gets the values a CPU initialization gives",
    when: (v) => v === true,
  },
  attentionSoftmaxInFp32: {
    why: "the attention softmax always computes in fp32 (its inputs and outputs are in the parameter dtype)",
    when: (v) => v === true,
  },
  noQueryKeyLayerScaling: {
    why: "megatron-deno never scales Q*K^T by the layer number: 1/sqrt(kv-channels) is applied inside the " +
      "fp32 softmax",
    when: (v) => v === true,
  },
  accumulateAllreduceGradsInFp32: {
    why: "gradients are always accumulated and all-reduced in an fp32 buffer",
    when: (v) => v === true,
  },
  localRank: {
    why: "a launcher's local rank, accepted: this process's rank and world come from the rank source " +
      "(RANK/WORLD_SIZE, mpiexec, SLURM); without one, this process runs every rank of the layout",
    when: (v) => v !== undefined,
  },
  numWorkers: {
    why: "samples are read in the training process straight from the mmapped files; no loader workers " +
      "are started, whatever the value",
    when: () => true,
  },
};

function valueText(key: keyof Flags, v: unknown): string {
  const d: FlagDef = FLAGS[key];
  if (d.kind === "bool") return "";
  return " " + (Array.isArray(v) ? v.join(" ") : String(v));
}

function applies(p: FlagPolicy, v: unknown, def: unknown): boolean {
  return p.when ? p.when(v) : v !== def;
}

/** A Config key that is a flag. */
export type FlagKey = keyof Flags;
/** Megatron's argument groups (_add_network_size_args, _add_regularization_args, ...), by key. */
export type FlagGroup = keyof typeof G;
export const FLAG_GROUPS: { readonly [K in FlagGroup]: string } = G;

/**
 * A task's command line, composed from flag groups as Megatron's parse_args composes _add_*_args and
 * the task's extra_args_provider: the groups it takes, the flags it reads that other tasks reject
 * (e.g. BERT's --bert-no-binary-head), and the flags training requires beyond the common ones.
 */
export interface TaskFlags {
  /** For messages: "pretrain-gpt". */
  readonly command: string;
  readonly groups: readonly FlagGroup[];
  readonly reads: readonly FlagKey[];
  readonly required: readonly FlagKey[];
}

/** GPT: every group, nothing extra (the table's rejections are GPT's). */
export const GPT_FLAGS: TaskFlags = {
  command: "pretrain-gpt",
  groups: Object.keys(G) as FlagGroup[],
  reads: [],
  required: [],
};

/** The group key of a flag. */
export function flagGroup(key: FlagKey): FlagGroup {
  const d: FlagDef = FLAGS[key];
  return (Object.keys(G) as FlagGroup[]).find((g) => G[g] === d.group)!;
}

/** Throws a ConfigError for the first given flag megatron-deno does not implement (see REJECTED);
 *  flags the task reads (`task.reads`) are exempt. */
export function assertFlagsSupported(cfg: Config, task: TaskFlags = GPT_FLAGS): void {
  const base = baseValues();
  for (const [k, p] of Object.entries(REJECTED) as [keyof Flags, FlagPolicy][]) {
    if (task.reads.includes(k)) continue;
    const v = cfg[k];
    // By value, not by whether the flag was typed: a config built in code is held to the same rule.
    if (applies(p, v, base[k])) {
      throw new ConfigError(`${flagOf(k)}${valueText(k, v)}: not supported; ${p.why}`);
    }
  }
  if (cfg.vocabExtraIds !== 0 && !cfg.tokenizerType?.startsWith("Bert")) {
    throw new ConfigError(
      `--vocab-extra-ids applies to the BERT WordPiece tokenizers, found --tokenizer-type ${cfg.tokenizerType}`,
    );
  }
}

/** One line per given flag that asks for what megatron-deno always does (see ALWAYS), for the log. */
export function flagNotes(cfg: Config): string[] {
  const base = baseValues();
  const out: string[] = [];
  for (const [k, p] of Object.entries(ALWAYS) as [keyof Flags, FlagPolicy][]) {
    const v = cfg[k];
    if (cfg.explicit.has(k) && applies(p, v, base[k])) out.push(`> ${flagOf(k)}${valueText(k, v)}: ${p.why}`);
  }
  return out;
}

/** Every Config key that is a flag, in --help order (tests enumerate them). */
export function flagKeys(): string[] {
  return Object.keys(FLAGS);
}

/** How megatron-deno treats a flag that is not simply read: "rejected" (with the non-default value
 *  condition), "always" (accepted, noted), or null. */
export function flagPolicy(key: string): "rejected" | "always" | "rejected-or-always" | null {
  const r = key in REJECTED, a = key in ALWAYS;
  return r && a ? "rejected-or-always" : r ? "rejected" : a ? "always" : null;
}
export type FlagValues = { -readonly [K in keyof Flags]: z.output<Flags[K]["schema"]> };

/** The parsed configuration: flag values (after derivation) plus what was given explicitly. */
export type Config = FlagValues & {
  /** Config keys (camelCase) whose flags appeared on the command line. */
  explicit: Set<string>;
  /** tp * pp * dp, derived when --world-size is absent. */
  worldSize: number;
  dataParallelSize: number;
  /** Interleaved chunks per stage; 1 without --num-layers-per-virtual-pipeline-stage. */
  virtualPipelineModelParallelSize: number;
  /** Parameter/activation dtype chosen by --fp16/--bf16. */
  paramsDtype: "f32" | "f16" | "bf16";
};

function kebab(key: string): string {
  return "--" + key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
}

function flagOf(key: keyof Flags): string {
  const d: FlagDef = FLAGS[key];
  return d.flag ?? kebab(key);
}

/** The flag spelling of a Config key, e.g. "numLayers" -> "--num-layers". */
export function flagName(key: string): string {
  return key in FLAGS ? flagOf(key as keyof Flags) : kebab(key);
}

const BY_FLAG: ReadonlyMap<string, keyof Flags> = new Map(
  (Object.keys(FLAGS) as (keyof Flags)[]).map((k) => [flagOf(k), k]),
);

const SCHEMA = z.object(
  Object.fromEntries(Object.entries(FLAGS).map(([k, d]) => [k, d.schema])) as {
    [K in keyof Flags]: Flags[K]["schema"];
  },
);

/** Levenshtein distance, for did-you-mean. */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

function suggest(flag: string): string {
  let best = "";
  let bestD = Infinity;
  for (const f of BY_FLAG.keys()) {
    const d = editDistance(flag.toLowerCase(), f.toLowerCase());
    if (d < bestD) [best, bestD] = [f, d];
  }
  return bestD <= Math.max(2, Math.floor(flag.length / 3)) ? `; did you mean ${best}?` : "";
}

/** Flags Megatron removed, with what replaces them. */
const DEPRECATED: ReadonlyMap<string, string> = new Map([
  ["--batch-size", "--micro-batch-size"],
  ["--warmup", "--lr-warmup-fraction"],
  ["--model-parallel-size", "--tensor-model-parallel-size"],
]);

/** Other spellings Megatron used for the same flag (2021 versus later releases). */
const ALIASES: ReadonlyMap<string, keyof Flags> = new Map([
  ["--checkpoint-num-layers", "activationsCheckpointNumLayers"],
  ["--checkpoint-method", "activationsCheckpointMethod"],
]);

const INT_RE = /^[+-]?\d+$/;
const FLOAT_RE = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

function convert(flag: string, d: FlagDef, raw: string): number | string {
  if (d.conv === "str") return raw;
  const ok = d.conv === "int" ? INT_RE.test(raw) : FLOAT_RE.test(raw);
  if (!ok) throw new ConfigError(`${flag}: expected ${d.expect}, found ${JSON.stringify(raw)}`);
  return Number(raw);
}

/** Parse argv (Megatron flag names; `--flag value` or `--flag=value`; list flags take several values).
 *  Checks types and cross-flag rules among the flags given, but does not require any flag. */
export function parseArgs(argv: readonly string[]): Config {
  const raw: Record<string, unknown> = {};
  const explicit = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i];
    if (tok === "-h") {
      raw.help = true;
      explicit.add("help");
      continue;
    }
    if (!tok.startsWith("--")) {
      throw new ConfigError(`unexpected argument ${JSON.stringify(tok)}: flags start with --`);
    }
    const eq = tok.indexOf("=");
    const flag = eq < 0 ? tok : tok.slice(0, eq);
    const key = BY_FLAG.get(flag) ?? ALIASES.get(flag);
    if (key === undefined) {
      const instead = DEPRECATED.get(flag);
      if (instead) throw new ConfigError(`${flag} is no longer valid; use ${instead}`);
      throw new ConfigError(`unknown flag ${flag}${suggest(flag)}`);
    }
    const d: FlagDef = FLAGS[key];
    explicit.add(key);
    if (d.kind === "bool") {
      if (eq >= 0) {
        throw new ConfigError(`${flag}: takes no value, found ${JSON.stringify(tok.slice(eq + 1))}`);
      }
      raw[key] = true;
      continue;
    }
    const vals: string[] = [];
    if (eq >= 0) vals.push(tok.slice(eq + 1));
    if (d.kind === "value") {
      if (eq < 0) {
        if (i + 1 >= argv.length || argv[i + 1].startsWith("--")) {
          throw new ConfigError(`${flag}: missing value (expected ${d.expect})`);
        }
        vals.push(argv[++i]);
      }
      raw[key] = convert(flag, d, vals[0]);
    } else {
      while (i + 1 < argv.length && !argv[i + 1].startsWith("--")) vals.push(argv[++i]);
      if (vals.length === 0) throw new ConfigError(`${flag}: missing value (expected ${d.expect})`);
      raw[key] = vals.map((v) => convert(flag, d, v));
    }
  }
  const parsed = SCHEMA.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const key = issue.path[0] as keyof Flags;
    const d: FlagDef = FLAGS[key];
    const found = raw[key];
    throw new ConfigError(
      `${flagOf(key)}: expected ${d.expect}, found ${Array.isArray(found) ? found.join(" ") : String(found)}`,
    );
  }
  return finalize(parsed.data as FlagValues, explicit, false);
}

/** A flag-free default for each field (what parseArgs([]) yields before derivation). */
function baseValues(): FlagValues {
  return SCHEMA.parse({}) as FlagValues;
}

/** Groups of flags that are alternatives to each other (at most one may be set). */
const EXCLUSIVE: readonly (readonly (keyof Flags)[])[] = [
  ["trainIters", "trainSamples"],
  ["lrDecayIters", "lrDecaySamples"],
  ["lrWarmupFraction", "lrWarmupIters", "lrWarmupSamples"],
  ["seqLength", "encoderSeqLength"],
];

/** Fill every field the user did not give from `base` (the trainer's embedded default config),
 *  then re-derive and re-check. Explicit flags always win. */
export function withDefaults(cfg: Config, base: Partial<FlagValues>): Config {
  const v: Record<string, unknown> = { ...baseValues() };
  // A default is dropped when the user gave a flag it is exclusive with (--train-samples replaces the
  // default's --train-iters, --lr-warmup-iters its --lr-warmup-fraction, ...).
  const excluded = (k: string) =>
    EXCLUSIVE.some((g) => g.includes(k as keyof Flags) && g.some((o) => o !== k && cfg.explicit.has(o)));
  for (const [k, val] of Object.entries(base)) if (k in FLAGS && !excluded(k)) v[k] = val;
  for (const k of cfg.explicit) v[k] = (cfg as unknown as Record<string, unknown>)[k];
  const parsed = SCHEMA.safeParse(v);
  if (!parsed.success) {
    const key = parsed.error.issues[0].path[0] as keyof Flags;
    throw new ConfigError(`default config: ${flagOf(key)}: expected ${(FLAGS[key] as FlagDef).expect}`);
  }
  return finalize(parsed.data as FlagValues, cfg.explicit, false);
}

/** Flags every training run needs (validateForTraining fails without them). */
const TRAINING_REQUIRED = [
  "numLayers",
  "hiddenSize",
  "numAttentionHeads",
  "seqLength",
  "maxPositionEmbeddings",
  "microBatchSize",
  "lr",
] as const;

/** A Config that validateForTraining accepted: the required and derived fields are present. */
export type TrainingConfig =
  & Config
  & { [K in (typeof TRAINING_REQUIRED)[number] | "dataPath" | "globalBatchSize"]-?: NonNullable<Config[K]> }
  & { kvChannels: number; ffnHiddenSize: number };

/** Enforce the rules a training run of `task` needs (required shape/lr/schedule flags, the task's
 *  groups and extra flags) on top of the cross-flag rules parseArgs already checked. Returns the
 *  config typed with its required fields present; throws ConfigError. */
export function validateForTraining(cfg: Config, task: TaskFlags = GPT_FLAGS): TrainingConfig {
  for (const k of cfg.explicit) {
    if (k in FLAGS && !task.groups.includes(flagGroup(k as FlagKey))) {
      throw new ConfigError(
        `${flagOf(k as FlagKey)}: not a flag of ${task.command} (group "${
          (FLAGS as Record<string, FlagDef>)[k].group
        }")`,
      );
    }
  }
  for (const k of [...TRAINING_REQUIRED, ...task.required]) {
    if (cfg[k] === undefined) throw new ConfigError(`${flagOf(k)} is required for training`);
  }
  if (cfg.trainIters === undefined && cfg.trainSamples === undefined) {
    throw new ConfigError("one of --train-iters or --train-samples is required for training");
  }
  if (cfg.dataPath === undefined) throw new ConfigError("--data-path is required for training");
  if (cfg.tokenizerType === "NullTokenizer" && cfg.vocabSize === undefined) {
    throw new ConfigError("--tokenizer-type NullTokenizer needs --vocab-size");
  }
  if (cfg.tokenizerType !== "NullTokenizer" && cfg.vocabSize !== undefined) {
    throw new ConfigError(
      `--vocab-size applies only to --tokenizer-type NullTokenizer, found ${cfg.tokenizerType}`,
    );
  }
  assertFlagsSupported(cfg, task);
  // finalize(strict) derives kvChannels, ffnHiddenSize and globalBatchSize or fails.
  return finalize(cfg, cfg.explicit, true) as TrainingConfig;
}

function fail(msg: string): never {
  throw new ConfigError(msg);
}

/** Derive the computed fields and check Megatron's cross-flag rules (each only when its inputs are
 *  known; `strict` is set by validateForTraining once the required flags are present). */
function finalize(v0: FlagValues, explicit: Set<string>, strict: boolean): Config {
  const v = { ...v0 };
  const tp = v.tensorModelParallelSize;
  const pp = v.pipelineModelParallelSize;
  const mp = tp * pp;
  // world size / data-parallel size: give either or both, consistently.
  if (v.worldSize !== undefined && v.worldSize % mp !== 0) {
    fail(
      `--world-size: ${v.worldSize} is not divisible by --tensor-model-parallel-size (${tp}) * ` +
        `--pipeline-model-parallel-size (${pp})`,
    );
  }
  let dp: number;
  let world: number;
  if (v.dataParallelSize !== undefined) {
    dp = v.dataParallelSize;
    world = dp * mp;
    if (v.worldSize !== undefined && v.worldSize !== world) {
      fail(
        `--world-size: expected tensor (${tp}) * pipeline (${pp}) * data-parallel (${dp}) = ${world}, ` +
          `found ${v.worldSize}`,
      );
    }
  } else if (v.worldSize !== undefined) {
    world = v.worldSize;
    dp = world / mp;
  } else {
    dp = 1;
    world = dp * mp;
  }

  if (v.fp16 && v.bf16) fail("--fp16 and --bf16 cannot be used together");
  const paramsDtype = v.fp16 ? "f16" : v.bf16 ? "bf16" : "f32";
  if (v.bf16) {
    if (v.ddpImpl !== "local") fail("--bf16 requires --DDP-impl local (grads are accumulated in fp32)");
    v.accumulateAllreduceGradsInFp32 = true;
  }
  if (v.fp16LmCrossEntropy && !v.fp16) fail("--fp16-lm-cross-entropy needs --fp16");
  if (v.fp32ResidualConnection && !v.fp16 && !v.bf16) {
    fail("--fp32-residual-connection needs --fp16 or --bf16");
  }
  if (v.accumulateAllreduceGradsInFp32 && v.ddpImpl !== "local") {
    fail("--accumulate-allreduce-grads-in-fp32 requires --DDP-impl local");
  }

  // Iteration- versus sample-based training.
  if (v.trainIters !== undefined && v.trainSamples !== undefined) {
    fail("--train-iters and --train-samples are mutually exclusive");
  }
  if (v.trainIters !== undefined) {
    if (v.lrDecaySamples !== undefined) {
      fail("--lr-decay-samples needs --train-samples (training is iteration-based)");
    }
    if (v.lrWarmupSamples !== 0) {
      fail("--lr-warmup-samples needs --train-samples (training is iteration-based)");
    }
    if (v.rampupBatchSize !== undefined) fail("--rampup-batch-size needs --train-samples, not --train-iters");
  }
  if (v.trainSamples !== undefined) {
    if (v.lrDecayIters !== undefined) fail("--lr-decay-iters needs --train-iters (training is sample-based)");
    if (v.lrWarmupIters !== 0) fail("--lr-warmup-iters needs --train-iters (training is sample-based)");
  } else if (v.rampupBatchSize !== undefined) {
    fail("--rampup-batch-size needs --train-samples");
  }
  if (v.lrWarmupFraction !== undefined) {
    if (v.lrWarmupIters !== 0) fail("--lr-warmup-fraction and --lr-warmup-iters are mutually exclusive");
    if (v.lrWarmupSamples !== 0) fail("--lr-warmup-fraction and --lr-warmup-samples are mutually exclusive");
    if (v.lrWarmupFraction > 1) {
      fail(`--lr-warmup-fraction: expected a number in [0, 1], found ${v.lrWarmupFraction}`);
    }
  }
  if (v.overrideLrScheduler && v.useCheckpointLrScheduler) {
    fail("--override-lr-scheduler and --use-checkpoint-lr-scheduler are mutually exclusive");
  }
  if (v.lr !== undefined && v.minLr > v.lr) fail(`--min-lr: ${v.minLr} is larger than --lr ${v.lr}`);

  // Model shape.
  if (v.hiddenSize !== undefined && v.numAttentionHeads !== undefined && v.kvChannels === undefined) {
    if (v.hiddenSize % v.numAttentionHeads !== 0) {
      fail(
        `--hidden-size: ${v.hiddenSize} is not divisible by --num-attention-heads ${v.numAttentionHeads} ` +
          `(or give --kv-channels)`,
      );
    }
    v.kvChannels = v.hiddenSize / v.numAttentionHeads;
  }
  if (v.hiddenSize !== undefined && v.ffnHiddenSize === undefined) v.ffnHiddenSize = 4 * v.hiddenSize;
  if (v.numAttentionHeads !== undefined && v.numAttentionHeads % tp !== 0) {
    fail(
      `--num-attention-heads: ${v.numAttentionHeads} is not divisible by --tensor-model-parallel-size ${tp}`,
    );
  }
  if (explicit.has("seqLength") && explicit.has("encoderSeqLength")) {
    fail("--seq-length and --encoder-seq-length are mutually exclusive");
  }
  if (explicit.has("encoderSeqLength") || (v.seqLength === undefined && v.encoderSeqLength !== undefined)) {
    v.seqLength = v.encoderSeqLength;
  } else if (v.seqLength !== undefined) v.encoderSeqLength = v.seqLength;
  if (
    v.decoderSeqLength !== undefined && v.maxPositionEmbeddings !== undefined &&
    v.decoderSeqLength > v.maxPositionEmbeddings
  ) {
    fail(
      `--decoder-seq-length: ${v.decoderSeqLength} is larger than --max-position-embeddings ${v.maxPositionEmbeddings}`,
    );
  }
  if (
    v.seqLength !== undefined && v.maxPositionEmbeddings !== undefined &&
    v.seqLength > v.maxPositionEmbeddings
  ) {
    fail(`--seq-length: ${v.seqLength} is larger than --max-position-embeddings ${v.maxPositionEmbeddings}`);
  }
  if (v.numLayers !== undefined && v.numLayers % pp !== 0) {
    fail(`--num-layers: ${v.numLayers} is not divisible by --pipeline-model-parallel-size ${pp}`);
  }
  let vp = 1;
  if (v.numLayersPerVirtualPipelineStage !== undefined) {
    // Megatron 2021 also rejects 2 stages (its batched isend/irecv paired one peer twice); our
    // sends never block, so interleaving works from 2 stages on.
    if (pp < 2) {
      fail(
        `--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size >= 2, found ${pp}`,
      );
    }
    if (v.numLayers !== undefined) {
      const perStage = v.numLayers / pp;
      if (perStage % v.numLayersPerVirtualPipelineStage !== 0) {
        fail(
          `--num-layers-per-virtual-pipeline-stage: layers per pipeline stage (${perStage}) is not divisible ` +
            `by ${v.numLayersPerVirtualPipelineStage}`,
        );
      }
      vp = perStage / v.numLayersPerVirtualPipelineStage;
    }
  }

  // Batch sizes.
  if (v.microBatchSize !== undefined) {
    if (v.globalBatchSize === undefined) v.globalBatchSize = v.microBatchSize * dp;
    if (v.globalBatchSize % (v.microBatchSize * dp) !== 0) {
      fail(
        `--global-batch-size: ${v.globalBatchSize} is not divisible by --micro-batch-size ` +
          `(${v.microBatchSize}) * data-parallel size (${dp})`,
      );
    }
  }
  if (v.rampupBatchSize !== undefined) {
    const r = v.rampupBatchSize;
    if (r.length !== 3) {
      fail(`--rampup-batch-size: expected 3 values <start> <increment> <samples>, found ${r.length}`);
    }
    if (v.globalBatchSize !== undefined) {
      const [start, incr] = r;
      const diff = v.globalBatchSize - start;
      if (diff < 0 || diff % incr !== 0) {
        fail(
          `--rampup-batch-size: global batch size (${v.globalBatchSize}) minus start (${start}) is not a ` +
            `non-negative multiple of the increment (${incr})`,
        );
      }
      if (
        v.microBatchSize !== undefined && (start % (v.microBatchSize * dp) || incr % (v.microBatchSize * dp))
      ) {
        fail(
          `--rampup-batch-size: start (${start}) and increment (${incr}) must be multiples of ` +
            `--micro-batch-size (${v.microBatchSize}) * data-parallel size (${dp})`,
        );
      }
    }
  }

  // Data.
  if (v.dataPath !== undefined && v.dataPath.length > 1) {
    if (v.dataPath.length % 2 !== 0) {
      fail(`--data-path: expected one prefix or weight prefix pairs, found ${v.dataPath.length} values`);
    }
    for (let i = 0; i < v.dataPath.length; i += 2) {
      const w = v.dataPath[i];
      if (!FLOAT_RE.test(w) || !(Number(w) >= 0)) {
        fail(`--data-path: expected a non-negative weight at position ${i + 1}, found ${JSON.stringify(w)}`);
      }
    }
  }
  const split = v.split.split(/[,/]/).map((s) => s.trim());
  if (split.length > 3 || split.some((s) => !FLOAT_RE.test(s))) {
    fail(`--split: expected up to 3 comma-separated non-negative numbers, found ${JSON.stringify(v.split)}`);
  }

  // Checkpointing and output.
  if (v.saveInterval !== undefined && v.save === undefined) fail("--save-interval needs --save");
  if (v.checkpointActivations) {
    if (v.activationsCheckpointMethod === "block") {
      fail("--checkpoint-activations means --activations-checkpoint-method uniform, found block");
    }
    v.activationsCheckpointMethod = "uniform";
  }
  if (v.distributeCheckpointedActivations) {
    if (v.activationsCheckpointMethod === undefined) {
      fail("--distribute-checkpointed-activations needs --activations-checkpoint-method");
    }
    if (tp <= 1) fail("--distribute-checkpointed-activations needs --tensor-model-parallel-size > 1");
    if (v.numLayersPerVirtualPipelineStage !== undefined) {
      fail("--distribute-checkpointed-activations does not support the interleaved schedule");
    }
  }
  if (strict && v.globalBatchSize === undefined) fail("--global-batch-size could not be derived");

  return {
    ...v,
    explicit,
    worldSize: world,
    dataParallelSize: dp,
    virtualPipelineModelParallelSize: vp,
    paramsDtype,
  };
}

function showDefault(key: keyof Flags, d: FlagDef, base: FlagValues): string {
  if (d.shownDefault) return d.shownDefault;
  if (d.kind === "bool") return "off";
  const val = base[key];
  if (val === undefined) return "none";
  if (key === "initialLossScale") return "2^32";
  return Array.isArray(val) ? val.join(" ") : String(val);
}

/** --help text: every flag, grouped as Megatron's --help is, with its default. */
export function helpText(): string {
  const base = baseValues();
  const lines = ["usage: deno task pretrain:gpt [flags]", ""];
  for (const group of GROUP_ORDER) {
    lines.push(`${group}:`);
    for (const key of Object.keys(FLAGS) as (keyof Flags)[]) {
      const d: FlagDef = FLAGS[key];
      if (d.group !== group) continue;
      const meta = d.kind === "bool"
        ? ""
        : d.choices
        ? ` {${d.choices.join(",")}}`
        : d.kind === "list"
        ? " VALUE..."
        : " VALUE";
      const left = `  ${flagOf(key)}${meta}`;
      const r = REJECTED[key];
      const unsupported = !r || r.when
        ? ""
        : d.kind === "bool" || base[key] === undefined
        ? " [not supported]"
        : " [only the default]";
      lines.push(`${left.padEnd(46)} ${d.help}${unsupported} (default: ${showDefault(key, d, base)})`);
    }
    lines.push("");
  }
  return lines.join("\n");
}

/** Config as a plain JSON-able object (explicit as a sorted list), for checkpoints and logs. */
export function configToJson(cfg: Config): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(cfg)) {
    if (k === "explicit") out[k] = [...cfg.explicit].sort();
    else if (v !== undefined) out[k] = v;
  }
  return out;
}
