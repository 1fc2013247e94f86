// Start-up check for --load: will the checkpoint's consumed sample counts, continued under this run's
// flags, stay inside the train and validation splits this run built? Megatron sizes each split for the
// whole run from iteration 0 (train_iters * global batch; (train_iters // eval_interval + 1) *
// eval_iters * global batch) and its samplers walk on from the checkpoint's consumed counts, so
// changing --eval-interval, --eval-iters, --split, the data or the batch size between runs can make a
// sampler run off the end of its split, which would otherwise surface as an index error only when
// that evaluation (possibly after all of training) is reached.

import { flagName } from "./config.ts";

/** Flags whose change between the checkpoint and this run moves the sample counts or the splits. */
const SIZING_FLAGS = [
  "evalInterval",
  "evalIters",
  "split",
  "dataPath",
  "seqLength",
  "globalBatchSize",
  "trainIters",
  "trainSamples",
  "seed",
  "dataloaderType",
] as const;

export interface ResumeCheck {
  /** --load directory and the checkpoint's saved args. */
  loadDir: string;
  savedArgs: Record<string, unknown>;
  /** This run's flag values for SIZING_FLAGS (a Config). */
  cfg: { readonly [K in (typeof SIZING_FLAGS)[number]]?: unknown } & {
    evalInterval: number;
    evalIters: number;
    globalBatchSize?: number;
  };
  iteration: number;
  trainIters: number;
  consumedTrain: number;
  consumedValid: number;
  /** Samples the train and validation splits hold (null: that split is empty). */
  trainLength: number;
  validLength: number | null;
  /** Global batch of each remaining iteration, given the samples consumed before it (ramp-up). */
  batchAt: (consumed: number) => number;
}

function show(v: unknown): string {
  return v === undefined ? "unset" : Array.isArray(v) ? v.join(" ") : String(v);
}

/** The sizing flags whose value differs from the checkpoint's, as "--flag old -> new". */
export function changedSizingFlags(
  savedArgs: Record<string, unknown>,
  cfg: ResumeCheck["cfg"],
): string[] {
  const out: string[] = [];
  for (const k of SIZING_FLAGS) {
    const was = savedArgs[k], now = cfg[k];
    if (JSON.stringify(was) !== JSON.stringify(now)) out.push(`${flagName(k)} ${show(was)} -> ${show(now)}`);
  }
  return out;
}

/** Throws one line when resuming would read past the end of the train or validation split
 *  (--dataloader-type single; cyclic wraps around, as Megatron's cyclic_iter). */
export function checkResumeFits(r: ResumeCheck): void {
  if (r.cfg.dataloaderType === "cyclic") return;
  const gbs = r.cfg.globalBatchSize!;
  let train = r.consumedTrain;
  for (let it = r.iteration; it < r.trainIters; it++) train += r.batchAt(train);
  const { evalInterval, evalIters } = r.cfg;
  const evals = Math.floor(r.trainIters / evalInterval) - Math.floor(r.iteration / evalInterval);
  // The evaluation at the end of training, when off the interval, reads on without advancing.
  const valid = r.consumedValid + evals * evalIters * gbs +
    (r.trainIters % evalInterval !== 0 ? evalIters * gbs : 0);
  const problems: string[] = [];
  if (train > r.trainLength) {
    problems.push(`training needs samples up to ${train} but the train split has ${r.trainLength}`);
  }
  if (evalIters > 0 && r.validLength !== null && valid > r.validLength) {
    problems.push(
      `evaluation needs samples up to ${valid} (${r.consumedValid} consumed before) but the validation ` +
        `split has ${r.validLength}`,
    );
  }
  if (problems.length === 0) return;
  const changed = changedSizingFlags(r.savedArgs, r.cfg);
  throw new Error(
    `--load ${r.loadDir}: resuming at iteration ${r.iteration}, ${problems.join("; ")}; ` +
      (changed.length > 0
        ? `changed since the checkpoint: ${changed.join(", ")}`
        : "no sizing flag changed, so the data files did") +
      `; resume with the checkpoint's values, or start a new run without --load`,
  );
}
