// scripts/compare_losses.ts (gpu_check.sh's "gpt-default" step: CUDA vs CPU per-iteration losses of
// the embedded default): known-answer relative differences, the bound's edge, non-finite losses, and the
// CLI's exit codes and exact one-line messages on bad input.
import assert from "node:assert/strict";
import { compareLosses, InputError, trainLosses } from "../scripts/compare_losses.ts";

const script = new URL("../scripts/compare_losses.ts", import.meta.url).pathname;

/** A metrics file as src/training/metrics.ts writes it (train records plus an eval record). */
function metrics(losses: (number | string)[], extra = ""): string {
  return losses.map((l, i) =>
    JSON.stringify({
      kind: "train",
      iteration: i + 1,
      consumed_samples: 8 * (i + 1),
      lm_loss: l,
      grad_norm: 1,
    })
  ).join("\n") + "\n" + extra;
}

const opts = (rtol: number) => ({ rtol, refName: "cpu", otherName: "cuda" });

Deno.test("compare_losses: worst relative difference and its iteration, known answer", () => {
  const ref = trainLosses(metrics([10, 8, 4]), "cpu");
  // |10.0005-10|/10 = 5e-5, |8-8| = 0, |4.0004-4|/4 = 1e-4: the worst is iteration 3.
  const other = trainLosses(metrics([10.0005, 8, 4.0004]), "cuda");
  const r = compareLosses(ref, other, opts(2e-4));
  assert.equal(
    r.line,
    "compare_losses: ok: 3 iterations, cpu loss 10.0000 -> 4.0000, max |cuda - cpu| / |cpu| 1.00e-4 at iteration 3 (bound 2e-4)",
  );
  assert.ok(r.ok);
  const tight = compareLosses(ref, other, opts(9e-5));
  assert.ok(!tight.ok);
  assert.match(
    tight.line,
    /^compare_losses: FAILED: 3 iterations, .* 1\.00e-4 at iteration 3 \(bound 9e-5\)$/,
  );
});

Deno.test("compare_losses: eval records and blank lines are ignored; order by iteration", () => {
  const text = JSON.stringify({ kind: "train", iteration: 2, lm_loss: 5 }) + "\n\n" +
    JSON.stringify({ kind: "validation", iteration: 2, lm_loss: 99 }) + "\n" +
    JSON.stringify({ kind: "train", iteration: 1, lm_loss: 6 }) + "\n";
  assert.deepEqual([...trainLosses(text, "f")], [[1, 6], [2, 5]]);
});

Deno.test("compare_losses: a NaN or infinite loss (written as a string) fails", () => {
  const ref = trainLosses(metrics([10, 9]), "cpu");
  for (const bad of ["NaN", "Infinity"]) {
    const r = compareLosses(ref, trainLosses(metrics([10, bad]), "cuda"), opts(1));
    assert.ok(!r.ok);
    assert.equal(r.line, `compare_losses: FAILED: iteration 2 loss is not finite (cpu 9, cuda ${bad})`);
  }
});

Deno.test("compare_losses: bad input throws one line naming file and line", () => {
  assert.throws(() => trainLosses("{}\nnot json\n", "a.jsonl"), {
    message: "a.jsonl:2: expected a JSON object per line, found not json",
  });
  assert.throws(() => trainLosses('{"kind":"train","iteration":1.5,"lm_loss":1}\n', "a.jsonl"), {
    message: "a.jsonl:1: expected a train record with an integer iteration and lm_loss",
  });
  assert.throws(() => trainLosses(metrics([1]) + metrics([2]), "a.jsonl"), {
    message: "a.jsonl:2: iteration 1 appears twice",
  });
  assert.throws(() => trainLosses('{"kind":"validation","iteration":1,"lm_loss":1}\n', "a.jsonl"), {
    message: "a.jsonl: expected train records with lm_loss, found none",
  });
  const three = trainLosses(metrics([3, 2, 1]), "cpu"), two = trainLosses(metrics([3, 2]), "cuda");
  assert.throws(() => compareLosses(three, two, opts(1)), {
    message: "expected the same iterations in both files, found 3 (1..3) in cpu and 2 (1..2) in cuda",
  });
  assert.throws(() => compareLosses(three, three, { ...opts(1), iters: 4 }), InputError);
});

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check=remote", script, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const d = new TextDecoder();
  return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr) };
}

Deno.test("compare_losses CLI: exit 0 / 1 / 2 with one line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "md-compare-losses-" });
  try {
    await Deno.writeTextFile(`${dir}/cpu.jsonl`, metrics([10.5, 10.25]));
    await Deno.writeTextFile(`${dir}/cuda.jsonl`, metrics([10.5, 10.251]));
    const ok = await cli([`${dir}/cpu.jsonl`, `${dir}/cuda.jsonl`]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(
      ok.stdout,
      "compare_losses: ok: 2 iterations, cpu loss 10.5000 -> 10.2500, max |cuda - cpu| / |cpu| 9.76e-5 at " +
        "iteration 2 (bound 1e-4)\n",
    );
    const bad = await cli(["--rtol", "1e-5", `${dir}/cpu.jsonl`, `${dir}/cuda.jsonl`]);
    assert.equal(bad.code, 1);
    assert.match(
      bad.stdout,
      /^compare_losses: FAILED: 2 iterations, .* 9\.76e-5 at iteration 2 \(bound 1e-5\)\n$/,
    );
    const missing = await cli([`${dir}/cpu.jsonl`, `${dir}/none.jsonl`]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, new RegExp(`^compare_losses: ${dir}/none\\.jsonl: cannot read: .*\\n$`));
    const flag = await cli(["--rtol", "x", `${dir}/cpu.jsonl`, `${dir}/cuda.jsonl`]);
    assert.equal(flag.code, 2);
    assert.equal(flag.stderr, "compare_losses: --rtol: expected a number >= 0, found x\n");
    const short = await cli(["--iters", "3", `${dir}/cpu.jsonl`, `${dir}/cuda.jsonl`]);
    assert.equal(short.code, 2);
    assert.equal(short.stderr, "compare_losses: expected 3 iterations, found 2 in cpu\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
