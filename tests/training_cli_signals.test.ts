// Stopping a real `tasks/pretrain_gpt.ts` process: SIGTERM/SIGINT with --exit-signal-handler saves at
// the current iteration and exits 0 with a loadable checkpoint; SIGKILL at any moment of a save
// (random timing against the CLI's --save-interval 1 saves, and deterministically at each stage of
// saveCheckpoint in a child process) leaves the tracker naming a complete checkpoint that the CLI
// resumes from.

import assert from "node:assert/strict";
import { loadCheckpoint, readTracker } from "../src/training/checkpoint.ts";
import { preprocessTinyCorpus } from "./helpers/tiny_corpus.ts";

const SCRIPT = new URL("../tasks/pretrain_gpt.ts", import.meta.url).pathname;
const dec = new TextDecoder();
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_sig_" });
// Remove the scratch directory when the test module ends.
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));

function tinyData(): Promise<string> {
  const docs = Array.from(
    { length: 80 },
    (_, d) => Array.from({ length: 60 + d }, (_, i) => (i * 11 + d * 3) % 50).join(" "),
  );
  return preprocessTinyCorpus(DIR, docs, 50);
}
const DATA = tinyData();

async function flags(hidden: number, more: string[]): Promise<string[]> {
  return [
    ...["--num-layers", "2", "--hidden-size", String(hidden), "--num-attention-heads", "2"],
    ...["--seq-length", "16", "--max-position-embeddings", "16", "--micro-batch-size", "2"],
    ...["--global-batch-size", "4", "--lr", "1e-3", "--make-vocab-size-divisible-by", "8"],
    ...["--log-interval", "1", "--eval-interval", "100000", "--eval-iters", "1", "--split", "90,10,0"],
    ...["--data-path", await DATA, "--tokenizer-type", "NullTokenizer", "--vocab-size", "50"],
    ...["--device", "cpu", "--no-progress"],
    ...more,
  ];
}

/** A running CLI whose stdout lines are collected; `waitFor` resolves on the n-th line matching re. */
function spawnCli(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCRIPT, ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const waiters: { re: RegExp; n: number; resolve: () => void }[] = [];
  const check = () => {
    for (const w of [...waiters]) {
      if (lines.filter((l) => w.re.test(l)).length >= w.n) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  };
  const stdoutDone = (async () => {
    let buf = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      const parts = buf.split("\n");
      buf = parts.pop()!;
      lines.push(...parts);
      check();
    }
    if (buf) lines.push(buf);
  })();
  const stderr = new Response(child.stderr).text();
  return {
    child,
    lines,
    stderr,
    stdoutDone,
    waitFor(re: RegExp, n = 1): Promise<void> {
      return new Promise((resolve) => {
        waiters.push({ re, n, resolve });
        check();
      });
    },
  };
}

async function cli(args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCRIPT, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** The tracker's checkpoint loads (model and optimizer) and has the iteration it names. */
function assertLoadable(dir: string): number {
  const t = readTracker(dir);
  assert.ok(t !== null, `${dir}: no tracker`);
  const ck = loadCheckpoint(dir, { tp: 0, pp: 0 });
  assert.equal(ck.meta.iteration, t.iteration);
  assert.ok(ck.model.length > 0 && ck.optim !== undefined && ck.optim.length > 0);
  return t.iteration;
}

for (const sig of ["SIGTERM", "SIGINT"] as const) {
  Deno.test(`cli: ${sig} with --exit-signal-handler saves at the current iteration and exits 0`, async () => {
    const save = `${DIR}/sig_${sig}`;
    const p = spawnCli(
      await flags(16, ["--train-iters", "1000000", "--save", save, "--exit-signal-handler"]),
    );
    await p.waitFor(/^ iteration\s+\d+\//);
    p.child.kill(sig);
    const status = await p.child.status;
    await p.stdoutDone;
    const stderr = await p.stderr;
    assert.equal(status.code, 0, stderr);
    const exitLine = p.lines.find((l) => l.startsWith("exiting at iteration"));
    assert.ok(exitLine, p.lines.slice(-5).join("\n"));
    assert.ok(exitLine.endsWith(`(signal ${sig})`), exitLine);
    const it = Number(/exiting at iteration (\d+)/.exec(exitLine)![1]);
    // The last logged iteration is the one saved.
    const logged = p.lines.filter((l) => l.startsWith(" iteration")).map((l) =>
      Number(/iteration\s+(\d+)/.exec(l)![1])
    );
    assert.equal(logged.at(-1), it);
    assert.equal(assertLoadable(save), it);
    assert.ok(
      p.lines.includes(
        `checkpoint saved in ${save}/iter_${String(it).padStart(7, "0")} (resume with --load ${save})`,
      ),
    );
  });
}

Deno.test("cli: SIGKILL while the CLI saves every iteration never leaves an unloadable checkpoint", async () => {
  // hidden 256: ~1.6M parameters, ~19 MB per save with the Adam state; an iteration plus its save takes
  // ~50-150 ms here, so the delays spread the kills over steps and saves.
  const save = `${DIR}/kill`;
  const args = await flags(256, ["--train-iters", "1000000", "--save", save, "--save-interval", "1"]);
  const seen: number[] = [];
  for (const [i, delayMs] of [10, 35, 60, 85, 110, 135].entries()) {
    const p = spawnCli([...args, ...(i > 0 ? ["--load", save] : [])]);
    await p.waitFor(/^saved checkpoint at iteration/, 2);
    await new Promise((r) => setTimeout(r, delayMs));
    p.child.kill("SIGKILL");
    const status = await p.child.status;
    await p.stdoutDone;
    await p.stderr;
    assert.equal(status.signal, "SIGKILL");
    seen.push(assertLoadable(save));
  }
  // Each restart resumed from the last complete checkpoint, so progress only moves forward.
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i] >= seen[i - 1] + 2, seen.join(","));
});

Deno.test("cli: SIGKILL at each stage of a save (written, synced, renamed) keeps the previous checkpoint; the CLI resumes from it", async () => {
  const save = `${DIR}/stages`;
  const first = await cli(await flags(16, ["--train-iters", "6", "--exit-interval", "3", "--save", save]));
  assert.equal(first.code, 0, first.stderr);
  assert.equal(assertLoadable(save), 3);
  const model0 = Deno.readFileSync(`${save}/iter_0000003/mp_rank_00/model.safetensors`);

  const mod = new URL("../src/training/checkpoint.ts", import.meta.url).href;
  for (
    const [stage, iteration] of [["rank-written", 5], ["synced", 5], ["renamed", 5], ["synced", 3]] as const
  ) {
    // The child re-saves the checkpoint as iteration `iteration` and kills itself (SIGKILL) at `stage`;
    // ["synced", 3] is a re-save of the tracker's own iteration, killed before it replaces the directory.
    const code = `
      import { loadCheckpoint, saveCheckpoint } from ${JSON.stringify(mod)};
      const dir = ${JSON.stringify(save)};
      const ck = loadCheckpoint(dir, { tp: 0, pp: 0 });
      const zero = (t) => ({ ...t, data: new t.data.constructor(t.data.length) });
      saveCheckpoint({
        saveDir: dir, iteration: ${iteration}, tpSize: 1, ppSize: 1, token: "child",
        ranks: [{ tp: 0, pp: 0, model: ck.model.map(zero), optim: ck.optim.map(zero),
                  meta: { ...ck.meta, iteration: ${iteration} } }],
        onStage: (s) => { if (s === ${JSON.stringify(stage)}) Deno.kill(Deno.pid, "SIGKILL"); },
      });
      console.log("not killed");`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", code],
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    assert.equal(out.signal, "SIGKILL", `${stage}: ${dec.decode(out.stdout)}${dec.decode(out.stderr)}`);
    assert.equal(assertLoadable(save), 3, stage);
    const ck = loadCheckpoint(save, { tp: 0, pp: 0 });
    assert.ok(
      ck.model.some((t) => Array.from(t.data as Float32Array).some((x) => x !== 0)),
      `${stage}: zeros`,
    );
  }
  // None of the killed saves touched the files the tracker names: same bytes as the CLI saved.
  const after = loadCheckpoint(save, { tp: 0, pp: 0 });
  assert.deepEqual(Deno.readFileSync(`${after.dir}/model.safetensors`), model0);

  // The CLI resumes from iteration 3 over the debris and saves a good iteration 6.
  const resumed = await cli(await flags(16, ["--train-iters", "6", "--save", save, "--load", save]));
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.ok(resumed.stdout.includes(`loaded checkpoint ${save} at iteration 3`), resumed.stdout);
  assert.match(resumed.stdout, /^ iteration\s+4\/\s+6 \|/m);
  assert.equal(assertLoadable(save), 6);
});
