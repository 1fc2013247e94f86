// checkResumeFits: the start-up check that a resumed run's samplers stay inside the splits it built,
// on hand-computed counts (the CLI test in training_cli_first_run.test.ts drives it end to end).

import assert from "node:assert/strict";
import { checkResumeFits, type ResumeCheck } from "../src/training/resume.ts";

const saved = { evalInterval: 2, evalIters: 1, split: "90,10,0", globalBatchSize: 4, trainIters: 4, seed: 1 };

function check(over: Partial<ResumeCheck>, cfg: Partial<ResumeCheck["cfg"]> = {}): string | null {
  try {
    checkResumeFits({
      loadDir: "/ck",
      savedArgs: saved,
      cfg: { ...saved, ...cfg },
      iteration: 4,
      trainIters: 8,
      consumedTrain: 16,
      consumedValid: 8,
      trainLength: 32,
      validLength: 20,
      batchAt: () => cfg.globalBatchSize ?? 4,
      ...over,
    });
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}

Deno.test("resume check: exact fits pass; one sample over names the split and the changed flags", () => {
  // Train: 16 + 4 * 4 = 32 of 32. Validation: 8 + (8/2 - 4/2) * 1 * 4 = 16 of 20.
  assert.equal(check({}), null);
  assert.equal(
    check({ trainLength: 31 }),
    "--load /ck: resuming at iteration 4, training needs samples up to 32 but the train split has 31; " +
      "no sizing flag changed, so the data files did; resume with the checkpoint's values, or start a new run " +
      "without --load",
  );
  // An end-of-training evaluation off the interval reads one more eval-iters * batch (no advance).
  assert.equal(check({ trainIters: 7, trainLength: 28 }), null);
  assert.match(
    check({ trainIters: 7, trainLength: 28, validLength: 15 })!,
    /evaluation needs samples up to 16 \(8 consumed before\) but the validation split has 15;/,
  );
  assert.match(
    check({ validLength: 15 }, { evalIters: 2, split: "80,20,0" })!,
    /up to 24 .*changed since the checkpoint: --eval-iters 1 -> 2, --split 90,10,0 -> 80,20,0;/,
  );
});

Deno.test("resume check: a smaller global batch runs the train split out; cyclic and --eval-iters 0 never do", () => {
  // The checkpoint consumed 16 samples at batch 4; 4 more iterations at batch 8 need 48.
  assert.match(
    check({}, { globalBatchSize: 8 })!,
    /training needs samples up to 48 but the train split has 32; .*--global-batch-size 4 -> 8/,
  );
  assert.equal(check({ trainLength: 1, validLength: 1 }, { dataloaderType: "cyclic" }), null);
  assert.equal(check({ validLength: 1 }, { evalIters: 0 }), null);
});
