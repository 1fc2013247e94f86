import assert from "node:assert/strict";
import {
  type Config,
  ConfigError,
  configToJson,
  editDistance,
  helpText,
  parseArgs,
  validateForTraining,
  withDefaults,
} from "../src/training/config.ts";

function err(argv: string[], f: (c: Config) => unknown = (c) => c): string {
  try {
    f(parseArgs(argv));
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${e}`);
    assert.ok(!e.message.includes("\n"), "error must be one line");
    return e.message;
  }
  throw new Error(`no error for ${argv.join(" ")}`);
}

const SHAPE = [
  "--num-layers",
  "4",
  "--hidden-size",
  "64",
  "--num-attention-heads",
  "4",
  "--seq-length",
  "32",
  "--max-position-embeddings",
  "64",
  "--micro-batch-size",
  "2",
  "--lr",
  "1e-4",
  "--train-iters",
  "10",
  "--data-path",
  "data/x_text_document",
];

Deno.test("config: no flags parses, with Megatron's defaults", () => {
  const c = parseArgs([]);
  assert.equal(c.explicit.size, 0);
  assert.equal(c.makeVocabSizeDivisibleBy, 128);
  assert.equal(c.initMethodStd, 0.02);
  assert.equal(c.hiddenDropout, 0.1);
  assert.equal(c.attentionDropout, 0.1);
  assert.equal(c.lrDecayStyle, "linear");
  assert.equal(c.minLr, 0);
  assert.equal(c.lrWarmupIters, 0);
  assert.equal(c.weightDecay, 0.01);
  assert.equal(c.clipGrad, 1.0);
  assert.equal(c.adamBeta1, 0.9);
  assert.equal(c.adamBeta2, 0.999);
  assert.equal(c.adamEps, 1e-8);
  assert.equal(c.sgdMomentum, 0.9);
  assert.equal(c.optimizer, "adam");
  assert.equal(c.initialLossScale, 4294967296);
  assert.equal(c.minLossScale, 1);
  assert.equal(c.lossScaleWindow, 1000);
  assert.equal(c.hysteresis, 2);
  assert.equal(c.split, "969,30,1");
  assert.equal(c.seed, 1234);
  assert.equal(c.dataImpl, "infer");
  assert.equal(c.evalInterval, 1000);
  assert.equal(c.evalIters, 100);
  assert.equal(c.logInterval, 100);
  assert.equal(c.activationsCheckpointNumLayers, 1);
  assert.equal(c.tensorModelParallelSize, 1);
  assert.equal(c.pipelineModelParallelSize, 1);
  assert.equal(c.ddpImpl, "local");
  assert.equal(c.device, "auto");
  assert.equal(c.worldSize, 1);
  assert.equal(c.dataParallelSize, 1);
  assert.equal(c.paramsDtype, "f32");
  assert.equal(c.numLayers, undefined);
  assert.equal(c.lr, undefined);
  assert.throws(() => validateForTraining(c), { message: "--num-layers is required for training" });
});

Deno.test("config: both flag forms, lists, derived fields", () => {
  const a = parseArgs(["--hidden-size", "64", "--num-attention-heads=4", "--lr=3e-4", "--fp16"]);
  assert.equal(a.hiddenSize, 64);
  assert.equal(a.numAttentionHeads, 4);
  assert.equal(a.lr, 3e-4);
  assert.equal(a.kvChannels, 16);
  assert.equal(a.ffnHiddenSize, 256);
  assert.equal(a.paramsDtype, "f16");
  assert.deepEqual([...a.explicit].sort(), ["fp16", "hiddenSize", "lr", "numAttentionHeads"]);
  const b = parseArgs([
    "--data-path",
    "0.3",
    "a",
    "0.7",
    "b",
    "--rampup-batch-size=16",
    "16",
    "512",
    "--train-samples",
    "100",
  ]);
  assert.deepEqual(b.dataPath, ["0.3", "a", "0.7", "b"]);
  assert.deepEqual(b.rampupBatchSize, [16, 16, 512]);
  const c = parseArgs([
    "--micro-batch-size",
    "2",
    "--tensor-model-parallel-size",
    "2",
    "--pipeline-model-parallel-size",
    "4",
    "--world-size",
    "24",
    "--num-layers",
    "16",
    "--num-layers-per-virtual-pipeline-stage",
    "2",
    "--checkpoint-activations",
    "--bf16",
    "--DDP-impl",
    "local",
  ]);
  assert.equal(c.dataParallelSize, 3);
  assert.equal(c.globalBatchSize, 6); // micro * dp
  assert.equal(c.virtualPipelineModelParallelSize, 2);
  assert.equal(c.activationsCheckpointMethod, "uniform");
  assert.equal(c.accumulateAllreduceGradsInFp32, true);
  assert.equal(parseArgs(["--data-parallel-size", "2", "--tensor-model-parallel-size", "2"]).worldSize, 4);
  assert.equal(parseArgs(["-h"]).help, true);
  const full = validateForTraining(parseArgs(SHAPE));
  assert.equal(full.globalBatchSize, 2);
  assert.equal(configToJson(full).numLayers, 4);
});

Deno.test("config: did-you-mean and per-flag errors", () => {
  assert.equal(err(["--num-layer", "2"]), "unknown flag --num-layer; did you mean --num-layers?");
  assert.equal(err(["--hiden-size=2"]), "unknown flag --hiden-size; did you mean --hidden-size?");
  assert.equal(err(["--ddp-impl", "local"]), "unknown flag --ddp-impl; did you mean --DDP-impl?");
  assert.equal(err(["--completely-unrelated-thing"]), "unknown flag --completely-unrelated-thing");
  assert.equal(err(["--num-layers"]), "--num-layers: missing value (expected a positive integer)");
  assert.equal(err(["--num-layers", "--fp16"]), "--num-layers: missing value (expected a positive integer)");
  assert.equal(err(["--num-layers", "2.5"]), '--num-layers: expected a positive integer, found "2.5"');
  assert.equal(err(["--num-layers=0"]), "--num-layers: expected a positive integer, found 0");
  assert.equal(err(["--lr", "fast"]), '--lr: expected a non-negative number, found "fast"');
  assert.equal(
    err(["--lr-decay-style", "exp"]),
    "--lr-decay-style: expected one of constant, linear, cosine, found exp",
  );
  assert.equal(err(["--device=tpu"]), "--device: expected one of cpu, cuda, auto, found tpu");
  assert.equal(err(["--fp16=yes"]), '--fp16: takes no value, found "yes"');
  assert.equal(err(["--data-path"]), "--data-path: missing value (expected strings)");
  assert.equal(err(["stray"]), 'unexpected argument "stray": flags start with --');
  assert.equal(editDistance("kitten", "sitting"), 3);
});

Deno.test("config: Megatron's cross-flag rules, one line each", () => {
  assert.equal(err(["--fp16", "--bf16"]), "--fp16 and --bf16 cannot be used together");
  assert.equal(
    err(["--train-iters", "10", "--train-samples", "100"]),
    "--train-iters and --train-samples are mutually exclusive",
  );
  assert.equal(
    err(["--train-samples", "100", "--lr-decay-iters", "10"]),
    "--lr-decay-iters needs --train-iters (training is sample-based)",
  );
  assert.equal(
    err(["--train-samples", "100", "--lr-warmup-iters", "10"]),
    "--lr-warmup-iters needs --train-iters (training is sample-based)",
  );
  assert.equal(
    err(["--train-iters", "10", "--lr-decay-samples", "100"]),
    "--lr-decay-samples needs --train-samples (training is iteration-based)",
  );
  assert.equal(
    err(["--train-iters", "10", "--lr-warmup-samples", "100"]),
    "--lr-warmup-samples needs --train-samples (training is iteration-based)",
  );
  assert.equal(
    err(["--train-iters", "10", "--rampup-batch-size", "1", "1", "10"]),
    "--rampup-batch-size needs --train-samples, not --train-iters",
  );
  assert.equal(err(["--rampup-batch-size", "1", "1", "10"]), "--rampup-batch-size needs --train-samples");
  assert.equal(
    err(["--train-samples", "9", "--rampup-batch-size", "1", "1"]),
    "--rampup-batch-size: expected 3 values <start> <increment> <samples>, found 2",
  );
  assert.equal(
    err(["--train-samples", "9", "--rampup-batch-size", "4", "3", "10", "--global-batch-size", "8"]),
    "--rampup-batch-size: global batch size (8) minus start (4) is not a non-negative multiple of the increment (3)",
  );
  assert.equal(
    err(["--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "5"]),
    "--lr-warmup-fraction and --lr-warmup-iters are mutually exclusive",
  );
  assert.equal(
    err(["--hidden-size", "10", "--num-attention-heads", "3"]),
    "--hidden-size: 10 is not divisible by --num-attention-heads 3 (or give --kv-channels)",
  );
  assert.equal(
    parseArgs(["--hidden-size", "10", "--num-attention-heads", "3", "--kv-channels", "4"]).kvChannels,
    4,
  );
  assert.equal(
    err(["--micro-batch-size", "4", "--global-batch-size", "10", "--data-parallel-size", "1"]),
    "--global-batch-size: 10 is not divisible by --micro-batch-size (4) * data-parallel size (1)",
  );
  assert.equal(
    err(["--micro-batch-size", "2", "--global-batch-size", "6", "--world-size", "2"]),
    "--global-batch-size: 6 is not divisible by --micro-batch-size (2) * data-parallel size (2)",
  );
  assert.equal(
    err(["--world-size", "6", "--tensor-model-parallel-size", "4"]),
    "--world-size: 6 is not divisible by --tensor-model-parallel-size (4) * --pipeline-model-parallel-size (1)",
  );
  assert.equal(
    err(["--world-size", "6", "--data-parallel-size", "2", "--tensor-model-parallel-size", "2"]),
    "--world-size: expected tensor (2) * pipeline (1) * data-parallel (2) = 4, found 6",
  );
  assert.equal(
    err(["--num-layers", "6", "--pipeline-model-parallel-size", "4"]),
    "--num-layers: 6 is not divisible by --pipeline-model-parallel-size 4",
  );
  assert.equal(
    err([
      "--num-layers",
      "8",
      "--pipeline-model-parallel-size",
      "1",
      "--num-layers-per-virtual-pipeline-stage",
      "2",
    ]),
    "--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size >= 2, found 1",
  );
  assert.equal(
    err([
      "--num-layers",
      "12",
      "--pipeline-model-parallel-size",
      "3",
      "--num-layers-per-virtual-pipeline-stage",
      "3",
    ]),
    "--num-layers-per-virtual-pipeline-stage: layers per pipeline stage (4) is not divisible by 3",
  );
  assert.equal(
    err(["--seq-length", "128", "--max-position-embeddings", "64"]),
    "--seq-length: 128 is larger than --max-position-embeddings 64",
  );
  assert.equal(err(["--save-interval", "10"]), "--save-interval needs --save");
  assert.equal(err(["--lr", "1e-4", "--min-lr", "1e-3"]), "--min-lr: 0.001 is larger than --lr 0.0001");
  assert.equal(
    err(["--bf16", "--DDP-impl", "torch"]),
    "--bf16 requires --DDP-impl local (grads are accumulated in fp32)",
  );
  assert.equal(
    err(["--data-path", "0.5", "a", "b"]),
    "--data-path: expected one prefix or weight prefix pairs, found 3 values",
  );
  assert.equal(
    err(["--data-path", "a", "0.5", "b", "0.5"]),
    '--data-path: expected a non-negative weight at position 1, found "a"',
  );
  assert.equal(
    err(["--num-attention-heads", "6", "--tensor-model-parallel-size", "4"]),
    "--num-attention-heads: 6 is not divisible by --tensor-model-parallel-size 4",
  );
  assert.equal(
    err(["--checkpoint-activations", "--activations-checkpoint-method", "block"]),
    "--checkpoint-activations means --activations-checkpoint-method uniform, found block",
  );
  assert.equal(err(["--batch-size", "8"]), "--batch-size is no longer valid; use --micro-batch-size");
  assert.equal(err(["--fp16-lm-cross-entropy"]), "--fp16-lm-cross-entropy needs --fp16");
  assert.equal(err(["--fp32-residual-connection"]), "--fp32-residual-connection needs --fp16 or --bf16");
  assert.equal(
    err(["--seq-length", "8", "--encoder-seq-length", "8"]),
    "--seq-length and --encoder-seq-length are mutually exclusive",
  );
  assert.equal(
    err(["--decoder-seq-length", "128", "--max-position-embeddings", "64"]),
    "--decoder-seq-length: 128 is larger than --max-position-embeddings 64",
  );
  assert.equal(parseArgs(["--encoder-seq-length", "32"]).seqLength, 32);
  assert.equal(parseArgs(["--seq-length", "32"]).encoderSeqLength, 32);
  assert.equal(parseArgs(["--checkpoint-num-layers", "3"]).activationsCheckpointNumLayers, 3);
  assert.equal(parseArgs(["--local_rank=1"]).localRank, 1);
  // validateForTraining's required rules
  const without = (flag: string) => {
    const i = SHAPE.indexOf(flag);
    return [...SHAPE.slice(0, i), ...SHAPE.slice(i + 2)];
  };
  assert.equal(err(without("--lr"), validateForTraining), "--lr is required for training");
  assert.equal(err(without("--seq-length"), validateForTraining), "--seq-length is required for training");
  assert.equal(
    err(without("--train-iters"), validateForTraining),
    "one of --train-iters or --train-samples is required for training",
  );
  assert.equal(err(without("--data-path"), validateForTraining), "--data-path is required for training");
});

Deno.test("config: withDefaults fills only what was not given, and re-checks", () => {
  const base = {
    numLayers: 2,
    hiddenSize: 32,
    numAttentionHeads: 2,
    seqLength: 16,
    maxPositionEmbeddings: 16,
    microBatchSize: 4,
    lr: 1e-3,
    trainIters: 5,
    dataPath: ["embedded"],
  };
  const c = validateForTraining(withDefaults(parseArgs(["--hidden-size=64", "--lr", "5e-4"]), base));
  assert.equal(c.hiddenSize, 64);
  assert.equal(c.ffnHiddenSize, 256); // re-derived from the explicit hidden size, not the base's
  assert.equal(c.kvChannels, 32);
  assert.equal(c.lr, 5e-4);
  assert.equal(c.numLayers, 2);
  assert.equal(c.globalBatchSize, 4);
  // sizes from the base are honoured, and explicit flags re-derive the rest
  const d = withDefaults(parseArgs(["--tensor-model-parallel-size", "2"]), { ...base, worldSize: 8 });
  assert.equal(d.dataParallelSize, 4);
  assert.equal(d.globalBatchSize, 16);
  assert.throws(() => withDefaults(parseArgs(["--num-attention-heads", "5"]), base), {
    message: "--hidden-size: 32 is not divisible by --num-attention-heads 5 (or give --kv-channels)",
  });
});

Deno.test("config: help lists every flag with its default, grouped", () => {
  const h = helpText();
  for (
    const g of [
      "network size:",
      "regularization:",
      "training:",
      "initialization:",
      "learning rate:",
      "checkpointing:",
      "mixed precision:",
      "distributed:",
      "validation:",
      "data and dataloader:",
      "logging:",
      "activation checkpointing:",
    ]
  ) assert.ok(h.includes(`\n${g}\n`), g);
  const line = (flag: string) => h.split("\n").find((l) => l.trimStart().startsWith(flag + " ")) ?? "";
  assert.match(line("--make-vocab-size-divisible-by"), /\(default: 128\)$/);
  assert.match(line("--initial-loss-scale"), /\(default: 2\^32\)$/);
  assert.match(line("--split"), /\(default: 969,30,1\)$/);
  assert.match(line("--DDP-impl"), /\(default: local\)$/);
  assert.match(line("--fp16"), /\(default: off\)$/);
  assert.match(line("--global-batch-size"), /\(default: micro-batch-size \* data-parallel-size\)$/);
  const flags = h.split("\n").filter((l) => l.startsWith("  --"));
  assert.ok(flags.length > 100, `only ${flags.length} flags listed`);
  assert.ok(flags.every((l) => /\(default: .+\)$/.test(l)));
});
