// Writes what the PyTorch reference needs and may not recompute itself: the project's initial weights
// (Philox-initialized) and the training samples in consumption order, for the run in run.ts.
//
//   deno run -A scripts/pytorch_reference/dump_inputs.ts <out-dir>
//
// <out-dir>/params.json: [{name, shape, noWeightDecay, file}], each file raw little-endian f32;
// <out-dir>/samples.i32: [train-iters * global-batch, seq + 1] tokens; <out-dir>/run.json: the flags.
// The training math (forward, backward, Adam, clipping, LR schedule) is left to PyTorch.

import { createCpuBackend } from "../../src/backend/cpu/cpu_backend.ts";
import { ensureDefaultCorpus } from "../../src/data/corpus.ts";
import { padVocabSize } from "../../src/models/mod.ts";
import { createLrScheduler } from "../../src/optimizer/lr_schedule.ts";
import { makeParallelState, SingleRankCommunicator } from "../../src/parallel/types.ts";
import { buildTokenizer } from "../../src/tokenizer/mod.ts";
import { parseArgs, validateForTraining } from "../../src/training/config.ts";
import { buildGptData } from "../../src/training/data.ts";
import { RankState } from "../../src/training/rank.ts";
import { gptTask } from "../../src/training/gpt_task.ts";
import type { TrainingTask } from "../../src/training/task.ts";
import { REFERENCE_FLAGS } from "./run.ts";

async function main(out: string): Promise<void> {
  const { prefix } = await ensureDefaultCorpus({ log: (l) => console.log(l) });
  const argv = [...REFERENCE_FLAGS, "--data-path", prefix];
  const cfg = validateForTraining(parseArgs(argv));
  const tokenizer = await buildTokenizer({ tokenizerType: cfg.tokenizerType as never });
  const padded = padVocabSize(tokenizer.vocabSize, cfg.makeVocabSizeDivisibleBy, 1);
  const backend = createCpuBackend({ log: () => {} });
  const gbs = cfg.globalBatchSize!, iters = cfg.trainIters!;
  const scheduler = createLrScheduler({ ...cfg, globalBatchSize: gbs, trainIters: iters, lr: cfg.lr! });
  const rank = new RankState(
    cfg,
    gptTask as TrainingTask<unknown>,
    { cfg, paddedVocab: padded, tokenizer, log: () => {} },
    backend,
    makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    new SingleRankCommunicator(),
    scheduler,
    null,
  );
  Deno.mkdirSync(`${out}/params`, { recursive: true });
  const manifest = rank.params.map((p, i) => {
    const file = `params/${String(i).padStart(3, "0")}.f32`;
    const v = backend.toF64(p.value);
    Deno.writeFileSync(`${out}/${file}`, new Uint8Array(Float32Array.from(v).buffer));
    return { name: p.name, shape: p.value.shape, noWeightDecay: p.noWeightDecay, file };
  });
  Deno.writeTextFileSync(`${out}/params.json`, JSON.stringify(manifest, null, 1));
  // The same sample counts as pretrainGPT asks for, so the index maps (and samples) are the same.
  const evalIters = cfg.evalIters;
  const data = buildGptData({
    dataPath: cfg.dataPath!,
    split: cfg.split,
    seqLength: cfg.seqLength!,
    seed: cfg.seed,
    vocabSize: padded,
    numSamples: [iters * gbs, (Math.floor(iters / cfg.evalInterval) + 1) * evalIters * gbs, evalIters * gbs],
    log: () => {},
  });
  const s1 = cfg.seqLength! + 1, samples = new Int32Array(iters * gbs * s1);
  for (let i = 0; i < iters * gbs; i++) samples.set(data.train!.getItem(i).subarray(0, s1), i * s1);
  data.close();
  Deno.writeFileSync(`${out}/samples.i32`, new Uint8Array(samples.buffer));
  Deno.writeTextFileSync(
    `${out}/run.json`,
    JSON.stringify({ flags: REFERENCE_FLAGS, paddedVocab: padded, eod: tokenizer.eod }, null, 1),
  );
  console.log(`dump_inputs: ${manifest.length} params, ${iters * gbs} samples of ${s1} tokens -> ${out}`);
}

if (import.meta.main) {
  if (Deno.args.length !== 1) {
    console.error("usage: deno run -A scripts/pytorch_reference/dump_inputs.ts <out-dir>");
    Deno.exit(2);
  }
  await main(Deno.args[0]);
}
