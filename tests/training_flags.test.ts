// Every flag of the config schema is either read by the training code or rejected with one line: the
// table below must classify each key flagKeys() returns (a new flag without an entry fails), and each
// entry proves its class. "run" entries train a tiny GPT in-process with and without the flag and
// compare one specific observation (losses, learning rates, loss scales, a log line, a TensorBoard tag,
// a file); "config" entries compare what the trainer builds from the config; "rejected" entries check
// the exact error line; "always" entries (the flag asks for what megatron-deno always does) check the
// note the run prints. A few flags only act in the CLI process (signals, terminal) and point at the
// test that drives them.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { parsePreprocessArgs, preprocess } from "../src/data/preprocess.ts";
import {
  type Config,
  flagKeys,
  flagName,
  flagNotes,
  flagPolicy,
  parseArgs,
  validateForTraining,
} from "../src/training/config.ts";
import { readEvents } from "../src/training/tensorboard.ts";
import { modelConfigOf, pretrainGPT, type TrainEnv, type TrainResult } from "../src/training/train.ts";

const VOCAB = 30;
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_flags_" });
// Remove the scratch directory when the test module ends.
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));

async function prepare(): Promise<string> {
  const docs = Array.from(
    { length: 60 },
    (_, d) =>
      JSON.stringify({ text: Array.from({ length: 30 + d }, (_, i) => (i * 7 + d * 3) % VOCAB).join(" ") }),
  );
  Deno.writeTextFileSync(`${DIR}/c.jsonl`, docs.join("\n") + "\n");
  await preprocess(
    parsePreprocessArgs([
      ...["--input", `${DIR}/c.jsonl`, "--output-prefix", `${DIR}/c`, "--append-eod"],
      ...["--tokenizer-type", "NullTokenizer", "--vocab-size", String(VOCAB)],
    ])!,
  );
  // A legacy (TNTIDX) index: what --data-impl infer detects and --data-impl mmap does not.
  Deno.writeFileSync(`${DIR}/legacy.idx`, new TextEncoder().encode("TNTIDX\0\0" + "\0".repeat(32)));
  Deno.writeFileSync(`${DIR}/legacy.bin`, new Uint8Array(8));
  for (const n of [40, 60]) {
    const vocab = Object.fromEntries(Array.from({ length: n - 1 }, (_, i) => [`t${i}`, i]));
    Deno.writeTextFileSync(`${DIR}/vocab${n}.json`, JSON.stringify({ ...vocab, "<|endoftext|>": n - 1 }));
  }
  Deno.writeTextFileSync(`${DIR}/merges.txt`, "#version: 0.2\nt 0\n");
  return `${DIR}/c_text_document`;
}
const DATA = prepare();
const backend = createCpuBackend({ log: () => {} });

const GPT2_FILES = [
  ...["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", `${DIR}/vocab40.json`],
  ...["--merge-file", `${DIR}/merges.txt`],
];
const TOKENIZER = ["--tokenizer-type", "NullTokenizer", "--vocab-size", String(VOCAB)];
/** The base run: 1 layer, 3 iterations, an evaluation at iteration 2 and at the end. */
const base = async (tokenizer = TOKENIZER) => [
  ...["--num-layers", "1", "--hidden-size", "8", "--num-attention-heads", "2"],
  ...["--seq-length", "8", "--max-position-embeddings", "8", "--micro-batch-size", "2"],
  ...["--lr", "1e-2", "--train-iters", "3", "--eval-interval", "2", "--eval-iters", "1"],
  ...["--log-interval", "1", "--make-vocab-size-divisible-by", "8", "--split", "80,10,10"],
  ...["--data-path", await DATA, ...tokenizer],
];

interface Obs {
  error: string | null;
  result: TrainResult | null;
  logs: string[];
  /** TensorBoard tag -> [step, value][] (when the run had --tensorboard-dir @RUN/tb). */
  tb: Map<string, [number, number][]>;
  /** Bytes of the event file on disk when each iteration log line was printed. */
  tbBytes: number[];
  dir: string;
}

let runs = 0;

/** Runs pretrainGPT on argv (@RUN is replaced by a fresh folder, @CKPT by the shared checkpoint). */
async function observe(argv: string[], env: Partial<TrainEnv> = {}): Promise<Obs> {
  const dir = `${DIR}/run${runs++}`;
  Deno.mkdirSync(dir);
  const args = argv.map((a) => a.replaceAll("@RUN", dir).replaceAll("@CKPT", `${DIR}/ckpt`));
  const logs: string[] = [];
  const tbBytes: number[] = [];
  const tbFile = () => {
    try {
      const f = [...Deno.readDirSync(`${dir}/tb`)][0];
      return f ? `${dir}/tb/${f.name}` : null;
    } catch {
      return null;
    }
  };
  let result: TrainResult | null = null;
  let error: string | null = null;
  try {
    const cfg = validateForTraining(parseArgs(args));
    result = await pretrainGPT(cfg, {
      backend,
      log: (l) => {
        logs.push(l);
        const f = tbFile();
        if (f && l.startsWith(" iteration")) tbBytes.push(Deno.statSync(f).size);
      },
      ...env,
    });
  } catch (e) {
    error = (e as Error).message;
  }
  const tb = new Map<string, [number, number][]>();
  const f = tbFile();
  if (f) {
    for (const ev of readEvents(f)) {
      for (const s of ev.scalars) {
        if (!tb.has(s.tag)) tb.set(s.tag, []);
        tb.get(s.tag)!.push([ev.step, s.value]);
      }
    }
  }
  return { error, result, logs, tb, tbBytes, dir };
}

const losses = (o: Obs) => o.error ?? o.result!.history.map((h) => h.loss);
const lrs = (o: Obs) => o.error ?? o.result!.history.map((h) => h.lr);
const scales = (o: Obs) => o.error ?? o.result!.history.map((h) => h.lossScale);
const valid = (o: Obs) => o.error ?? o.result!.validation.map((v) => [v.iteration, v.loss]);
const line = (re: RegExp) => (o: Obs) => o.error ?? (o.logs.find((l) => re.test(l)) ?? null);
const count = (re: RegExp) => (o: Obs) => o.error ?? o.logs.filter((l) => re.test(l)).length;
const tags = (o: Obs) => o.error ?? [...o.tb.keys()].sort();
const fileExists = (rel: string) => (o: Obs) => {
  try {
    Deno.statSync(`${o.dir}/${rel}`);
    return true;
  } catch {
    return false;
  }
};

type Entry =
  /** Train with base (+ `base`) and with base + `base` + `args`; `see` must differ. */
  | {
    kind: "run";
    args: string[];
    base?: string[];
    /** Flags (each with one value) removed from the base run first. */
    drop?: string[];
    tokenizer?: string[];
    see: (o: Obs) => unknown;
    env?: () => Partial<TrainEnv>;
  }
  /** What the trainer builds from the validated config (modelConfigOf) must differ. */
  | { kind: "config"; args: string[]; drop?: string[]; see: (c: Config) => unknown }
  /** validateForTraining (and so the CLI, exit 2) stops with exactly this line. */
  | { kind: "rejected"; args: string[]; error: string }
  /** Accepted; the run prints exactly this note. */
  | { kind: "always"; args: string[]; note: string }
  /** Both: `rejected` for one value, `always` for another. */
  | { kind: "both"; rejected: [string[], string]; always: [string[], string] }
  /** Acts only in the CLI process; `test` names the test file that drives it (checked to mention it). */
  | { kind: "cli"; test: string };

const SAMPLES = ["--train-samples", "8", "--global-batch-size", "2"];
const NO_ITERS = ["--train-iters"];
const TB = ["--tensorboard-dir", "@RUN/tb"];
const FP16 = ["--fp16"];
/** The checkpoint @CKPT: the base run (--lr 1e-2, --seed 1234) saved at iteration 3 of a schedule
 *  sized by --lr-decay-iters 10, so a resume may train on to iteration 5 under the same schedule. */
const SCHEDULE = ["--lr-decay-iters", "10"];
const RESUME = ["--load", "@CKPT", "--train-iters", "5", ...SCHEDULE];

const FLAGS: Record<string, Entry> = {
  // network size
  numLayers: { kind: "run", args: ["--num-layers", "2"], see: losses },
  hiddenSize: { kind: "run", args: ["--hidden-size", "16"], see: losses },
  ffnHiddenSize: { kind: "run", args: ["--ffn-hidden-size", "8"], see: losses },
  numAttentionHeads: { kind: "run", args: ["--num-attention-heads", "4"], see: losses },
  kvChannels: { kind: "run", args: ["--kv-channels", "8"], see: losses },
  // Rows beyond seq-length are never used, so the shape check is what shows it is read.
  maxPositionEmbeddings: { kind: "run", args: ["--max-position-embeddings", "4"], see: (o) => o.error },
  makeVocabSizeDivisibleBy: {
    kind: "run",
    args: ["--make-vocab-size-divisible-by", "64"],
    see: (o) => o.result?.paddedVocabSize,
  },
  layernormEpsilon: { kind: "run", args: ["--layernorm-epsilon", "0.5"], see: losses },
  applyResidualConnectionPostLayernorm: {
    kind: "rejected",
    args: ["--apply-residual-connection-post-layernorm"],
    // Rejected for GPT; pretrain-bert reads it (tests/training_bert.test.ts).
    error:
      "--apply-residual-connection-post-layernorm: not supported; GPT keeps the residual at the LayerNorm input; pretrain-bert reads it",
  },
  openaiGelu: {
    kind: "rejected",
    args: ["--openai-gelu"],
    error: "--openai-gelu: not supported; the MLP uses the fused bias + tanh-approximation GeLU",
  },
  onnxSafe: {
    kind: "rejected",
    args: ["--onnx-safe"],
    error: "--onnx-safe: not supported; the MLP uses the fused bias + tanh-approximation GeLU (no erf GeLU)",
  },
  bertNoBinaryHead: {
    kind: "rejected",
    args: ["--bert-no-binary-head"],
    // Rejected for GPT; pretrain-bert reads it (tests/training_bert.test.ts).
    error: "--bert-no-binary-head: not supported; it applies to BERT (pretrain-bert); GPT has no binary head",
  },
  // regularization
  attentionDropout: { kind: "run", args: ["--attention-dropout", "0.5"], see: losses },
  hiddenDropout: { kind: "run", args: ["--hidden-dropout", "0.5"], see: losses },
  weightDecay: { kind: "run", args: ["--weight-decay", "0.9"], see: losses },
  clipGrad: { kind: "run", args: ["--clip-grad", "0.001"], see: losses },
  adamBeta1: { kind: "run", args: ["--adam-beta1", "0.1"], see: losses },
  adamBeta2: { kind: "run", args: ["--adam-beta2", "0.1"], see: losses },
  adamEps: { kind: "run", args: ["--adam-eps", "1"], see: losses },
  sgdMomentum: { kind: "run", base: ["--optimizer", "sgd"], args: ["--sgd-momentum", "0"], see: losses },
  // training
  microBatchSize: { kind: "run", args: ["--micro-batch-size", "1"], see: losses },
  globalBatchSize: {
    kind: "run",
    args: ["--global-batch-size", "4"],
    see: (o) => o.result?.consumedTrainSamples,
  },
  rampupBatchSize: {
    kind: "run",
    base: SAMPLES,
    drop: NO_ITERS,
    args: ["--rampup-batch-size", "1", "1", "2", "--micro-batch-size", "1"],
    see: (o) => o.result?.history.length,
  },
  trainIters: { kind: "run", args: ["--train-iters", "2"], see: (o) => o.result?.iteration },
  trainSamples: {
    kind: "run",
    base: SAMPLES,
    drop: NO_ITERS,
    args: ["--train-samples", "4"],
    see: (o) => o.result?.iteration,
  },
  logInterval: { kind: "run", args: ["--log-interval", "2"], see: count(/^ iteration/) },
  exitInterval: { kind: "run", args: ["--exit-interval", "2"], see: (o) => o.result?.exitReason },
  exitDurationInMins: {
    kind: "run",
    args: ["--exit-duration-in-mins", "1"],
    env: () => {
      let t = 0; // the injected clock runs 20 s per reading
      return { now: () => (t += 20_000) };
    },
    see: (o) => o.result?.exitReason,
  },
  exitSignalHandler: { kind: "cli", test: "training_cli_signals.test.ts" },
  tensorboardDir: { kind: "run", args: TB, see: fileExists("tb") },
  noMaskedSoftmaxFusion: {
    kind: "rejected",
    args: ["--no-masked-softmax-fusion"],
    error:
      "--no-masked-softmax-fusion: not supported; megatron-deno has only the fused scale + causal mask + softmax (fp32 math)",
  },
  noBiasGeluFusion: {
    kind: "rejected",
    args: ["--no-bias-gelu-fusion"],
    // Rejected for GPT; pretrain-bert / pretrain-t5 read it (erf GeLU, as Hugging Face BERT).
    error:
      "--no-bias-gelu-fusion: not supported; GPT uses only the fused bias + tanh GeLU; pretrain-bert and pretrain-t5 read it",
  },
  noBiasDropoutFusion: {
    kind: "rejected",
    args: ["--no-bias-dropout-fusion"],
    error:
      "--no-bias-dropout-fusion: not supported; megatron-deno has only the fused bias + dropout + residual add",
  },
  optimizer: { kind: "run", args: ["--optimizer", "sgd"], see: losses },
  // Sample order: the random sampler (tests/data_gpt_sampler_cyclic below checks the exact order).
  dataloaderType: { kind: "run", args: ["--dataloader-type", "cyclic"], see: losses },
  // initialization
  seed: { kind: "run", args: ["--seed", "5"], see: losses },
  initMethodStd: { kind: "run", args: ["--init-method-std", "0.5"], see: losses },
  initMethodXavierUniform: {
    kind: "rejected",
    args: ["--init-method-xavier-uniform"],
    error: "--init-method-xavier-uniform: not supported; weights use the normal init of --init-method-std",
  },
  // learning rate
  lr: { kind: "run", args: ["--lr", "2e-2"], see: lrs },
  lrDecayStyle: { kind: "run", args: ["--lr-decay-style", "cosine"], see: lrs },
  lrDecayIters: { kind: "run", args: ["--lr-decay-iters", "100"], see: lrs },
  lrDecaySamples: {
    kind: "run",
    base: SAMPLES,
    drop: NO_ITERS,
    args: ["--lr-decay-samples", "100"],
    see: lrs,
  },
  lrWarmupFraction: { kind: "run", args: ["--lr-warmup-fraction", "0.5"], see: lrs },
  lrWarmupIters: { kind: "run", args: ["--lr-warmup-iters", "2"], see: lrs },
  lrWarmupSamples: {
    kind: "run",
    base: SAMPLES,
    drop: NO_ITERS,
    args: ["--lr-warmup-samples", "4"],
    see: lrs,
  },
  minLr: { kind: "run", args: ["--min-lr", "5e-3"], see: lrs },
  // The checkpoint was saved with --lr 1e-2: a different --lr fails the scheduler check unless told
  // which one wins.
  overrideLrScheduler: {
    kind: "run",
    base: [...RESUME, "--lr", "2e-2"],
    args: ["--override-lr-scheduler"],
    see: lrs,
  },
  useCheckpointLrScheduler: {
    kind: "run",
    base: [...RESUME, "--lr", "2e-2"],
    args: ["--use-checkpoint-lr-scheduler"],
    see: lrs,
  },
  // checkpointing
  save: { kind: "run", args: ["--save", "@RUN/ck"], see: fileExists("ck/latest_checkpointed_iteration.txt") },
  saveInterval: {
    kind: "run",
    base: ["--save", "@RUN/ck"],
    args: ["--save-interval", "1"],
    see: fileExists("ck/iter_0000001"),
  },
  noSaveOptim: {
    kind: "run",
    base: ["--save", "@RUN/ck"],
    args: ["--no-save-optim"],
    see: fileExists("ck/iter_0000003/mp_rank_00/optim.safetensors"),
  },
  noSaveRng: {
    kind: "run",
    base: ["--save", "@RUN/ck"],
    args: ["--no-save-rng"],
    see: (o) => JSON.parse(Deno.readTextFileSync(`${o.dir}/ck/iter_0000003/mp_rank_00/meta.json`)).rng_state,
  },
  load: {
    kind: "run",
    base: RESUME.slice(2),
    args: RESUME.slice(0, 2),
    see: (o) => o.result?.history.length,
  },
  noLoadOptim: { kind: "run", base: RESUME, args: ["--no-load-optim"], see: line(/^loaded checkpoint/) },
  noLoadRng: { kind: "run", base: [...RESUME, "--seed", "9"], args: ["--no-load-rng"], see: (o) => o.error },
  finetune: { kind: "run", base: RESUME, args: ["--finetune"], see: line(/^loaded checkpoint/) },
  // mixed precision
  fp16: { kind: "run", args: FP16, see: scales },
  bf16: { kind: "run", args: ["--bf16"], see: losses },
  lossScale: { kind: "run", base: FP16, args: ["--loss-scale", "128"], see: scales },
  initialLossScale: { kind: "run", base: FP16, args: ["--initial-loss-scale", "256"], see: scales },
  // From 2^32 every fp16 step overflows; with hysteresis 1 each halves the scale, down to the floor.
  minLossScale: {
    kind: "run",
    base: [...FP16, "--hysteresis", "1"],
    args: ["--min-loss-scale", String(2 ** 31)],
    see: scales,
  },
  lossScaleWindow: {
    kind: "run",
    base: [...FP16, "--initial-loss-scale", "1"],
    args: ["--loss-scale-window", "1"],
    see: scales,
  },
  hysteresis: { kind: "run", base: FP16, args: ["--hysteresis", "1"], see: scales },
  fp32ResidualConnection: {
    kind: "rejected",
    args: ["--fp16", "--fp32-residual-connection"],
    error: "--fp32-residual-connection: not supported; the residual stream is kept in the parameter dtype",
  },
  noQueryKeyLayerScaling: {
    kind: "always",
    args: ["--no-query-key-layer-scaling"],
    note: "> --no-query-key-layer-scaling: megatron-deno never scales Q*K^T by the layer number: " +
      "1/sqrt(kv-channels) is applied inside the fp32 softmax",
  },
  attentionSoftmaxInFp32: {
    kind: "always",
    args: ["--attention-softmax-in-fp32"],
    note:
      "> --attention-softmax-in-fp32: the attention softmax always computes in fp32 (its inputs and outputs are in the parameter dtype)",
  },
  accumulateAllreduceGradsInFp32: {
    kind: "always",
    args: ["--accumulate-allreduce-grads-in-fp32"],
    note:
      "> --accumulate-allreduce-grads-in-fp32: gradients are always accumulated and all-reduced in an fp32 buffer",
  },
  fp16LmCrossEntropy: {
    kind: "rejected",
    args: ["--fp16", "--fp16-lm-cross-entropy"],
    error: "--fp16-lm-cross-entropy: not supported; the LM cross entropy is computed in fp32 from the fp16 " +
      "logits (Megatron's default, logits.float())",
  },
  // distributed
  tensorModelParallelSize: {
    kind: "run",
    args: ["--tensor-model-parallel-size", "2"],
    see: line(/layout TP=2 PP=1 DP=1/),
  },
  pipelineModelParallelSize: {
    kind: "run",
    args: ["--num-layers", "2", "--pipeline-model-parallel-size", "2"],
    see: line(/layout TP=1 PP=2 DP=1;/),
  },
  numLayersPerVirtualPipelineStage: {
    kind: "run",
    args: [
      "--num-layers",
      "4",
      "--pipeline-model-parallel-size",
      "2",
      "--num-layers-per-virtual-pipeline-stage",
      "1",
    ],
    see: line(/\(2 virtual chunks per stage\)/),
  },
  ddpImpl: {
    kind: "rejected",
    args: ["--DDP-impl", "torch"],
    error: "--DDP-impl torch: not supported; this project implements --DDP-impl local (a contiguous fp32 " +
      "gradient buffer, averaged over the data-parallel group in buckets)",
  },
  useContiguousBuffersInDdp: {
    kind: "always",
    args: ["--use-contiguous-buffers-in-ddp"],
    note:
      "> --use-contiguous-buffers-in-ddp: gradients always live in one contiguous buffer per rank (the local DDP implementation)",
  },
  worldSize: { kind: "run", args: ["--world-size", "2"], see: line(/layout TP=1 PP=1 DP=2/) },
  dataParallelSize: { kind: "run", args: ["--data-parallel-size", "2"], see: line(/layout TP=1 PP=1 DP=2/) },
  localRank: {
    kind: "always",
    args: ["--local_rank", "1"],
    note:
      "> --local_rank 1: a launcher's local rank, accepted: this process's rank and world come from the " +
      "rank source (RANK/WORLD_SIZE, mpiexec, SLURM); without one, this process runs every rank of the layout",
  },
  useCpuInitialization: {
    kind: "always",
    args: ["--use-cpu-initialization"],
    note:
      "> --use-cpu-initialization: weights are always drawn by their coordinate in the full unsplit weight, " +
      "so every layout and device gets the values a CPU initialization gives",
  },
  distributedBackend: { kind: "cli", test: "distributed_train.test.ts" },
  distributedTimeoutMinutes: { kind: "cli", test: "parallel_local_comm.test.ts" },
  // validation
  evalIters: { kind: "run", args: ["--eval-iters", "3"], see: valid },
  evalInterval: { kind: "run", args: ["--eval-interval", "1"], see: valid },
  // data and dataloader
  dataPath: { kind: "run", args: ["--data-path", `@RUN/none`], see: (o) => o.error },
  split: { kind: "run", args: ["--split", "50,40,10"], see: valid },
  // Small GPT-2 files of our own: 40 and 60 tokens (the ids in the data are < 30).
  vocabFile: {
    kind: "run",
    tokenizer: GPT2_FILES,
    args: ["--vocab-file", `${DIR}/vocab60.json`],
    see: (o) => o.result?.paddedVocabSize,
  },
  mergeFile: {
    kind: "run",
    tokenizer: GPT2_FILES,
    args: ["--merge-file", "@RUN/missing.txt"],
    see: (o) => o.error,
  },
  // BERT only (T5 sentinels); with another tokenizer it is rejected (checked below).
  vocabExtraIds: {
    kind: "run",
    tokenizer: ["--tokenizer-type", "BertWordPieceLowerCase"],
    args: ["--vocab-extra-ids", "100"],
    see: (o) => o.result?.paddedVocabSize,
  },
  seqLength: { kind: "run", args: ["--seq-length", "4"], see: losses },
  // --encoder-seq-length is Megatron's other spelling of the sequence length (in place of --seq-length).
  encoderSeqLength: {
    kind: "config",
    drop: ["--seq-length"],
    args: ["--encoder-seq-length", "4"],
    see: (c) => modelConfigOf(c, 32).seqLength,
  },
  // The "rejected" entries below are GPT's; T5 reads these (see the T5 test at the end of this file).
  decoderSeqLength: {
    kind: "rejected",
    args: ["--decoder-seq-length", "8"],
    error: "--decoder-seq-length 8: not supported; it applies to T5's decoder; GPT uses --seq-length",
  },
  // Rejected for GPT; pretrain-bert reads it (tests/training_bert.test.ts).
  maskProb: {
    kind: "rejected",
    args: ["--mask-prob", "0.2"],
    error: "--mask-prob 0.2: not supported; it applies to BERT/T5 masking; GPT pretraining masks nothing",
  },
  shortSeqProb: {
    kind: "rejected",
    args: ["--short-seq-prob", "0.2"],
    // Rejected for GPT; pretrain-bert reads it (tests/training_bert.test.ts).
    error:
      "--short-seq-prob 0.2: not supported; it applies to BERT (pretrain-bert); GPT samples are always --seq-length tokens",
  },
  mmapWarmup: {
    kind: "run",
    args: ["--mmap-warmup"],
    see: count(/^ {4}warming up (index|data) mmap file\.\.\.$/),
  },
  numWorkers: {
    kind: "always",
    args: ["--num-workers", "4"],
    note: "> --num-workers 4: samples are read in the training process straight from the mmapped files; " +
      "no loader workers are started, whatever the value",
  },
  tokenizerType: {
    kind: "run",
    tokenizer: ["--tokenizer-type", "GPT2BPETokenizer"],
    args: ["--tokenizer-type", "BertWordPieceLowerCase"],
    see: (o) => o.result?.paddedVocabSize,
  },
  vocabSize: { kind: "run", args: ["--vocab-size", "40"], see: (o) => o.result?.paddedVocabSize },
  // On a legacy (TNTIDX) index, infer names the format; mmap reads it as MMIDIDX and finds the wrong magic.
  dataImpl: {
    kind: "run",
    base: ["--data-path", `@LEGACY`],
    args: ["--data-impl", "mmap"],
    see: (o) => o.error,
  },
  resetPositionIds: {
    kind: "rejected",
    args: ["--reset-position-ids"],
    error: "--reset-position-ids: not supported; position ids always run 0..seq-length-1 over a sample",
  },
  resetAttentionMask: {
    kind: "rejected",
    args: ["--reset-attention-mask"],
    error:
      "--reset-attention-mask: not supported; attention is causal over the whole sample, across end-of-document tokens",
  },
  eodMaskLoss: { kind: "run", args: ["--eod-mask-loss"], see: losses },
  // logging
  // The values themselves are checked in training_pytorch_reference.test.ts (checkpoint weights, known count).
  logParamsNorm: { kind: "run", base: TB, args: ["--log-params-norm"], see: tags },
  logNumZerosInGrad: { kind: "run", base: TB, args: ["--log-num-zeros-in-grad"], see: tags },
  tensorboardLogInterval: {
    kind: "run",
    base: TB,
    args: ["--tensorboard-log-interval", "2"],
    see: (o) => o.tb.get("lm loss")?.map(([s]) => s),
  },
  // Queue size 1 writes each event at once; the default 1000 keeps them until the writer closes.
  tensorboardQueueSize: {
    kind: "run",
    base: TB,
    args: ["--tensorboard-queue-size", "1"],
    see: (o) => o.tbBytes,
  },
  logTimersToTensorboard: { kind: "run", base: TB, args: ["--log-timers-to-tensorboard"], see: tags },
  logBatchSizeToTensorboard: { kind: "run", base: TB, args: ["--log-batch-size-to-tensorboard"], see: tags },
  noLogLearnigRateToTensorboard: {
    kind: "run",
    base: TB,
    args: ["--no-log-learnig-rate-to-tensorboard"],
    see: tags,
  },
  noLogLossScaleToTensorboard: {
    kind: "run",
    base: TB,
    args: ["--no-log-loss-scale-to-tensorboard"],
    see: tags,
  },
  // The base run evaluates at iteration 2 and at the end (3): both are written.
  logValidationPplToTensorboard: {
    kind: "run",
    base: TB,
    args: ["--log-validation-ppl-to-tensorboard"],
    see: (o) =>
      [...o.tb].filter(([t]) => t.startsWith("lm loss validation")).map(([t, v]) => [t, v.map(([s]) => s)]),
  },
  // activation checkpointing (recompute reproduces the same values, so the model config shows it)
  checkpointActivations: {
    kind: "config",
    args: ["--checkpoint-activations"],
    see: (c) => modelConfigOf(c, 32).activationsCheckpointMethod,
  },
  activationsCheckpointMethod: {
    kind: "config",
    args: ["--activations-checkpoint-method", "block"],
    see: (c) => modelConfigOf(c, 32).activationsCheckpointMethod,
  },
  activationsCheckpointNumLayers: {
    kind: "config",
    args: ["--activations-checkpoint-num-layers", "2"],
    see: (c) => modelConfigOf(c, 32).activationsCheckpointNumLayers,
  },
  distributeCheckpointedActivations: {
    kind: "rejected",
    args: [
      ...["--tensor-model-parallel-size", "2", "--activations-checkpoint-method", "uniform"],
      "--distribute-checkpointed-activations",
    ],
    error:
      "--distribute-checkpointed-activations: not supported; stored recompute inputs are kept whole on " +
      "every TP rank",
  },
  // megatron-deno
  device: { kind: "cli", test: "training_flags.test.ts" }, // the CLI test at the end of this file
  metricsFile: { kind: "run", args: ["--metrics-file", "@RUN/m.jsonl"], see: fileExists("m.jsonl") },
  noProgress: { kind: "cli", test: "training_cli.test.ts" },
  help: { kind: "cli", test: "training_cli.test.ts" },
};

Deno.test("flags: every flag of the schema is classified, and the policy tables agree", () => {
  const keys = flagKeys();
  const missing = keys.filter((k) => !(k in FLAGS));
  assert.deepEqual(missing, [], `flags without a classification: ${missing.map(flagName).join(", ")}`);
  const extra = Object.keys(FLAGS).filter((k) => !keys.includes(k));
  assert.deepEqual(extra, [], `classified keys that are not flags: ${extra.join(", ")}`);
  for (const k of keys) {
    const e = FLAGS[k];
    const policy = flagPolicy(k);
    const want = e.kind === "rejected"
      ? "rejected"
      : e.kind === "always"
      ? "always"
      : e.kind === "both"
      ? "rejected-or-always"
      : null;
    assert.equal(policy, want, `${flagName(k)}: classified ${e.kind}, config.ts policy ${policy}`);
  }
});

Deno.test("flags: rejected flags stop validation with their one line; always-on flags are noted", async () => {
  const b = await base();
  const rejectedErr = (args: string[]) => {
    try {
      validateForTraining(parseArgs([...b, ...args]));
      return null;
    } catch (e) {
      return (e as Error).message;
    }
  };
  const notes = (args: string[]) => flagNotes(validateForTraining(parseArgs([...b, ...args])));
  assert.deepEqual(notes([]), []);
  for (const [k, e] of Object.entries(FLAGS)) {
    if (e.kind === "rejected") assert.equal(rejectedErr(e.args), e.error, flagName(k));
    if (e.kind === "always") assert.deepEqual(notes(e.args), [e.note], flagName(k));
    if (e.kind === "both") {
      assert.equal(rejectedErr(e.rejected[0]), e.rejected[1], flagName(k));
      assert.deepEqual(notes(e.always[0]), [e.always[1]], flagName(k));
    }
  }
  // The default value given explicitly is never rejected.
  assert.equal(rejectedErr(["--DDP-impl", "local"]), null);
  assert.equal(
    rejectedErr(["--vocab-extra-ids", "100"]),
    "--vocab-extra-ids applies to the BERT WordPiece tokenizers, found --tokenizer-type NullTokenizer",
  );
});

Deno.test("flags: read flags change what the trainer builds or what a run does", async () => {
  const b = await base();
  // The checkpoint the resume entries load.
  const saved = await observe([...b, ...SCHEDULE, "--save", "@CKPT"]);
  assert.equal(saved.error, null);
  const fixed = (a: string[]) => a.map((x) => x === "@LEGACY" ? `${DIR}/legacy` : x);
  const baseCache = new Map<string, Obs>();
  const baseRun = async (argv: string[], env?: () => Partial<TrainEnv>) => {
    const key = JSON.stringify(argv);
    if (env) return await observe(argv, env());
    if (!baseCache.has(key)) baseCache.set(key, await observe(argv));
    return baseCache.get(key)!;
  };
  const failures: string[] = [];
  for (const [k, e] of Object.entries(FLAGS)) {
    if (e.kind === "config") {
      const b1 = b.filter((_, i, all) => !e.drop?.includes(all[i]) && !e.drop?.includes(all[i - 1]));
      const c0 = validateForTraining(parseArgs(b));
      const c1 = validateForTraining(parseArgs([...b1, ...e.args]));
      if (JSON.stringify(e.see(c0)) === JSON.stringify(e.see(c1))) failures.push(`${flagName(k)}: no effect`);
      continue;
    }
    if (e.kind !== "run") continue;
    const b0 = (e.tokenizer ? await base(e.tokenizer) : b)
      .filter((_, i, all) => !e.drop?.includes(all[i]) && !e.drop?.includes(all[i - 1]));
    const without = fixed([...b0, ...(e.base ?? [])]);
    const o0 = await baseRun(without, e.env);
    const o1 = await observe([...without, ...fixed(e.args)], e.env?.());
    const [s0, s1] = [String(JSON.stringify(e.see(o0))), String(JSON.stringify(e.see(o1)))];
    if (s0 === s1) failures.push(`${flagName(k)} ${e.args.join(" ")}: both runs show ${s0}`);
  }
  assert.deepEqual(failures, []);
});

Deno.test("flags: CLI-only flags point at a test that drives them", () => {
  for (const [k, e] of Object.entries(FLAGS)) {
    if (e.kind !== "cli") continue;
    const text = Deno.readTextFileSync(new URL(e.test, import.meta.url));
    assert.ok(text.includes(flagName(k)), `${e.test} does not mention ${flagName(k)}`);
  }
});

// --- through the real CLI ---

const SCRIPT = new URL("../tasks/pretrain_gpt.ts", import.meta.url).pathname;
const dec = new TextDecoder();

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCRIPT, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("cli: --device cpu and auto say which backend they chose; a rejected flag is one line, exit 2", async () => {
  const b = [...await base(), "--train-iters", "1"];
  const cpu = await cli([...b, "--device", "cpu", "--num-workers", "0"]);
  assert.equal(cpu.code, 0, cpu.stderr);
  assert.match(cpu.stdout, /^device: cpu/m);
  assert.ok(
    cpu.stdout.includes(
      "> --num-workers 0: samples are read in the training process straight from the mmapped files; " +
        "no loader workers are started, whatever the value",
    ),
    cpu.stdout,
  );
  const auto = await cli([...b, "--device", "auto", "--DDP-impl", "torch"]);
  assert.equal(auto.code, 2, auto.stderr);
  assert.deepEqual(auto.stderr.trim().split("\n"), [
    `pretrain_gpt: ${(FLAGS.ddpImpl as { error: string }).error}`,
  ]);
  const auto2 = await cli([...b, "--device", "auto"]);
  assert.equal(auto2.code, 0, auto2.stderr);
  // Without a GPU auto falls back to the CPU and says why; with one it picks CUDA. Either way not cpu's line.
  assert.match(auto2.stdout, /^device: (auto chose cpu \(no CUDA: |.*cuda|.*CUDA|.*GPU)/mi);
  assert.doesNotMatch(auto2.stdout, /^device: cpu/m);
});

Deno.test("flags: a checkpoint saved without optimizer/RNG state needs --no-load-optim/--no-load-rng (as Megatron)", async () => {
  const b = [...await base(), ...SCHEDULE];
  const saved = await observe([...b, "--save", "@RUN/ck", "--no-save-optim", "--no-save-rng"]);
  assert.equal(saved.error, null);
  const ck = `${saved.dir}/ck`;
  const resume = (more: string[]) => observe([...b, "--load", ck, "--train-iters", "5", ...more]);
  const noOptim = await resume([]);
  assert.equal(
    noOptim.error,
    `${ck}/iter_0000003/mp_rank_00: no optimizer state (saved with --no-save-optim); pass --no-load-optim or ` +
      `--finetune to load the weights only`,
  );
  const noRng = await resume(["--no-load-optim"]);
  assert.equal(
    noRng.error,
    `${ck}/iter_0000003/mp_rank_00: no RNG state (saved with --no-save-rng); pass --no-load-rng or --finetune`,
  );
  const ok = await resume(["--no-load-optim", "--no-load-rng"]);
  assert.equal(ok.error, null);
  assert.equal(ok.result!.iteration, 5);
  assert.equal((await resume(["--finetune"])).error, null);
});

Deno.test("flags: a run with every always-on flag prints each note once", async () => {
  const args: string[] = [];
  const want: string[] = [];
  for (const e of Object.values(FLAGS)) {
    if (e.kind === "always") [args.push(...e.args), want.push(e.note)];
    if (e.kind === "both") [args.push(...e.always[0]), want.push(e.always[1])];
  }
  const o = await observe([...await base(), ...args]);
  assert.equal(o.error, null);
  assert.deepEqual(o.logs.filter((l) => l.startsWith("> --")).sort(), want.sort());
});

Deno.test("flags: TensorBoard tags and steps of a run, as Megatron's training_log writes them", async () => {
  const o = await observe([
    ...await base(),
    ...TB,
    ...["--log-validation-ppl-to-tensorboard", "--log-batch-size-to-tensorboard", "--global-batch-size", "4"],
  ]);
  assert.equal(o.error, null);
  const steps = (tag: string) => o.tb.get(tag)?.map(([s]) => s);
  for (const tag of ["lm loss", "learning-rate", "loss-scale", "grad-norm", "batch-size"]) {
    assert.deepEqual(steps(tag), [1, 2, 3], tag);
    assert.deepEqual(steps(`${tag} vs samples`), [4, 8, 12], `${tag} vs samples`); // consumed samples
  }
  // Validation at iteration 2 and at the end of training (3), by iteration and by consumed samples.
  for (const tag of ["lm loss validation", "lm loss validation ppl"]) {
    assert.deepEqual(steps(tag), [2, 3], tag);
    assert.deepEqual(steps(`${tag} vs samples`), [8, 12], tag);
  }
  const [loss] = o.tb.get("lm loss validation")!.map(([, v]) => v);
  const [ppl] = o.tb.get("lm loss validation ppl")!.map(([, v]) => v);
  assert.equal(ppl, Math.fround(Math.exp(o.result!.validation[0].loss)));
  assert.equal(loss, Math.fround(o.result!.validation[0].loss));
  assert.deepEqual(o.tb.get("batch-size")!.map(([, v]) => v), [4, 4, 4]);
});

Deno.test("flags: pretrain-t5 reads the T5 flags GPT rejects (--decoder-seq-length, --mask-prob, --short-seq-prob, the post-LN residual, the erf GeLU) and keeps GPT's other rejections", async () => {
  const { T5_FLAGS } = await import("../src/training/t5_task.ts");
  const t5 = [
    ...["--num-layers", "1", "--hidden-size", "8", "--num-attention-heads", "2", "--encoder-seq-length", "8"],
    ...["--max-position-embeddings", "8", "--micro-batch-size", "2", "--lr", "1e-2", "--train-iters", "3"],
    ...["--data-path", "x", "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-extra-ids", "4"],
  ];
  const reads = [
    ["--decoder-seq-length", "4"],
    ["--mask-prob", "0.2"],
    ["--short-seq-prob", "0.2"],
    ["--apply-residual-connection-post-layernorm"],
    ["--no-bias-gelu-fusion"],
  ];
  assert.equal(reads.length, T5_FLAGS.reads.length);
  for (const r of reads) {
    // T5 takes the flag; GPT still stops at it with its one line.
    validateForTraining(parseArgs([...t5, ...r, "--decoder-seq-length", "4"]), T5_FLAGS);
    assert.throws(() => validateForTraining(parseArgs([...t5, ...r])), /: not supported; /);
  }
  assert.throws(
    () => validateForTraining(parseArgs([...t5, "--decoder-seq-length", "4", "--openai-gelu"]), T5_FLAGS),
    /^ConfigError: --openai-gelu: not supported; /,
  );
});
