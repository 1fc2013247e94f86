// In-process parallelism overhead: one full training step (4 micro-batches forward + backward, DP/TP
// reductions, Adam) of the same tiny GPT as one rank (1,1,1) and as 4 in-process ranks (2,2,1) over
// the local communicator on the CPU backend. Both do the same arithmetic; the difference is the
// collectives, p2p copies, schedule bookkeeping and smaller GEMMs.
// tokens/s = tokens per step (in each bench's name) * iterations/s as reported by deno bench.

import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { padVocabSize } from "../src/models/mod.ts";
import { createGradScaler } from "../src/optimizer/grad_scaler.ts";
import { createLrScheduler } from "../src/optimizer/lr_schedule.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import { type Communicator, makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import { parseArgs, validateForTraining } from "../src/training/config.ts";
import { RankState, type StepInputs } from "../src/training/rank.ts";
import { gptHostBatch, gptTask } from "../src/training/gpt_task.ts";
import type { TaskContext, TrainingTask } from "../src/training/task.ts";

const backend = createCpuBackend({ log: () => {} });
const MICRO = 4, SEQ = 64, GLOBAL = 16, VOCAB = 1024;
const TOKENS = GLOBAL * SEQ;

function setup(tp: number, pp: number) {
  const cfg = validateForTraining(parseArgs([
    ...["--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4"],
    ...["--seq-length", String(SEQ), "--max-position-embeddings", String(SEQ)],
    ...[
      "--micro-batch-size",
      String(MICRO),
      "--global-batch-size",
      String(GLOBAL),
      "--train-iters",
      "1000000",
    ],
    ...["--lr", "1e-4", "--data-path", "unused", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1023"],
    ...["--tensor-model-parallel-size", String(tp), "--pipeline-model-parallel-size", String(pp)],
  ]));
  // Batches are given directly, so the task never reads the tokenizer.
  const taskCtx: TaskContext = {
    cfg,
    paddedVocab: padVocabSize(VOCAB, cfg.makeVocabSizeDivisibleBy, tp),
    tokenizer: null as never,
    log: () => {},
  };
  const world = tp * pp > 1 ? new LocalWorld(backend, { tp, pp, dp: 1 }) : null;
  const ranks = Array.from({ length: tp * pp }, (_, g) => {
    const ps = world ? world.states[g] : makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0);
    const comm: Communicator = world ? world.communicator(g) : new SingleRankCommunicator();
    const scheduler = createLrScheduler({
      ...cfg,
      globalBatchSize: GLOBAL,
      trainIters: 1000000,
      lr: cfg.lr!,
    });
    const task = gptTask as TrainingTask<unknown>;
    return new RankState(cfg, task, taskCtx, backend, ps, comm, scheduler, createGradScaler(cfg));
  });
  const tok = Int32Array.from({ length: MICRO * SEQ }, (_, i) => (i * 7919) % 1023);
  const batch = gptHostBatch(
    tok,
    tok.map((t) => (t + 1) % 1023),
    new Float32Array(MICRO * SEQ).fill(1),
    MICRO,
    SEQ,
  );
  let iteration = 0;
  return async () => {
    iteration++;
    const inputs: StepInputs = {
      iteration,
      numMicroBatches: GLOBAL / MICRO,
      batch: () => batch,
      firstGlobalSample: (mb) => mb * MICRO,
    };
    await Promise.all(ranks.map((r) => r.trainStep(inputs)));
  };
}

for (const [tp, pp] of [[1, 1], [2, 2], [2, 1], [1, 2]]) {
  const step = setup(tp, pp);
  Deno.bench({
    name: `train step (TP,PP,DP)=(${tp},${pp},1), 4 layers h128 s${SEQ}, ${TOKENS} tokens/step`,
    group: "layout",
    baseline: tp === 1 && pp === 1,
    fn: step,
  });
}
