// Bad situations met by a real `deno run -A tasks/pretrain_gpt.ts ...`, each one line on stderr with a
// non-zero exit and nothing half-written left in --save: NaN/Inf in a loaded checkpoint (file and
// tensor named), an f32/bf16 loss that turns NaN/Inf (iteration named, last good checkpoint kept; fp16
// still skips such steps), an unwritable --save (found at start-up), a disk that fills during a save
// (a small tmpfs: root only), temp entries of a writer killed with SIGKILL (removed at the next run
// when their process is gone, kept otherwise), two trainers on one --save folder (lock file), and a
// model too large for the host (the memory estimate).

import assert from "node:assert/strict";
import {
  loadCheckpoint,
  type NamedTensor,
  readTracker,
  removeStaleTemps,
  saveCheckpoint,
} from "../src/training/checkpoint.ts";
import { firstNonFinite } from "../src/training/checkpoint.ts";
import { LOCK_FILE } from "../src/training/lock.ts";
import { formatBytes } from "../src/training/memory_estimate.ts";
import { hostName } from "../src/training/process.ts";
import { readSafetensors, writeSafetensors } from "../src/training/safetensors.ts";
import { preprocessTinyCorpus } from "./helpers/tiny_corpus.ts";
import { errorLine, type Ran, runScript } from "./helpers/run_cli.ts";

const SCRIPT = new URL("../tasks/pretrain_gpt.ts", import.meta.url).pathname;
const dec = new TextDecoder();
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_robust_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));

const DATA = preprocessTinyCorpus(
  DIR,
  Array.from(
    { length: 80 },
    (_, d) => Array.from({ length: 60 + d }, (_, i) => (i * 11 + d * 3) % 50).join(" "),
  ),
  50,
);

async function flags(more: string[]): Promise<string[]> {
  return [
    ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2"],
    ...["--seq-length", "16", "--max-position-embeddings", "16", "--micro-batch-size", "2"],
    ...["--global-batch-size", "4", "--make-vocab-size-divisible-by", "8"],
    ...["--log-interval", "1", "--eval-interval", "100000", "--eval-iters", "1", "--split", "90,10,0"],
    ...["--data-path", await DATA, "--tokenizer-type", "NullTokenizer", "--vocab-size", "50"],
    ...["--device", "cpu", "--no-progress"],
    ...more,
  ];
}

async function cli(args: string[]): Promise<Ran> {
  return runScript(SCRIPT, await flags(args));
}

function listing(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

function iterationsLogged(stdout: string): number[] {
  return [...stdout.matchAll(/^ iteration\s+(\d+)\//gm)].map((m) => Number(m[1]));
}

/** A fresh --save folder holding a checkpoint at iteration `iters` of a `total`-iteration run (the
 *  LR schedule depends on the total, so a resume must pass the same --train-iters). */
async function trained(name: string, iters: number, total: number): Promise<string> {
  const save = `${DIR}/${name}`;
  const r = await cli([
    ...["--lr", "1e-3", "--train-iters", String(total), "--exit-interval", String(iters), "--save", save],
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(listing(save), [
    `iter_${String(iters).padStart(7, "0")}`,
    "latest_checkpointed_iteration.txt",
  ]);
  return save;
}

/** The pid of a process that has exited (and was reaped): a dead process of this host. */
async function deadPid(): Promise<number> {
  const child = new Deno.Command("true").spawn();
  await child.status;
  return child.pid;
}

const IS_ROOT = Deno.uid() === 0;

/** Can this process mount a tmpfs (root in a container may still lack the capability)? */
function canMount(): boolean {
  if (!IS_ROOT) return false;
  const at = Deno.makeTempDirSync({ prefix: "mdeno_mnt_" });
  try {
    const ok =
      new Deno.Command("mount", { args: ["-t", "tmpfs", "-o", "size=64k", "tmpfs", at], stderr: "null" })
        .outputSync().success;
    if (ok) new Deno.Command("umount", { args: [at] }).outputSync();
    return ok;
  } catch {
    return false;
  } finally {
    Deno.removeSync(at);
  }
}
const MOUNT = canMount();
if (!MOUNT) {
  console.log(
    `training_cli_robust: skipped: the disk-full test${IS_ROOT ? " and the read-only --save test" : ""}: ` +
      `they need root with the right to mount a tmpfs (uid ${Deno.uid()})`,
  );
}

function mountTmpfs(at: string, opts: string): void {
  Deno.mkdirSync(at, { recursive: true });
  const r = new Deno.Command("mount", { args: ["-t", "tmpfs", "-o", opts, "tmpfs", at] }).outputSync();
  assert.ok(r.success, dec.decode(r.stderr));
}

function umount(at: string): void {
  new Deno.Command("umount", { args: [at] }).outputSync();
}

// ---- non-finite values ------------------------------------------------------------------------

Deno.test("non-finite: f16/bf16 bit patterns and f32 values are classified exactly", () => {
  const t = (dtype: NamedTensor["dtype"], data: NamedTensor["data"]): NamedTensor => ({
    name: "x",
    dtype,
    shape: [data.length],
    data,
  });
  // f16: 0x7bff = 65504 (largest finite), 0x7c00 = +Inf, 0xfc00 = -Inf, 0x7e00 = NaN
  assert.equal(firstNonFinite(t("f16", new Uint16Array([0x3c00, 0x7bff, 0xfbff, 0x0001]))), null);
  assert.deepEqual(firstNonFinite(t("f16", new Uint16Array([0, 0x7c00]))), { index: 1, value: "Infinity" });
  assert.deepEqual(firstNonFinite(t("f16", new Uint16Array([0xfc00]))), { index: 0, value: "-Infinity" });
  assert.deepEqual(firstNonFinite(t("f16", new Uint16Array([1, 2, 0x7e00]))), { index: 2, value: "NaN" });
  // bf16: 0x7f7f largest finite, 0x7f80 = +Inf, 0x7fc0 = NaN
  assert.equal(firstNonFinite(t("bf16", new Uint16Array([0x3f80, 0x7f7f, 0xff7f]))), null);
  assert.deepEqual(firstNonFinite(t("bf16", new Uint16Array([0x7f80]))), { index: 0, value: "Infinity" });
  assert.deepEqual(firstNonFinite(t("bf16", new Uint16Array([0, 0x7fc0]))), { index: 1, value: "NaN" });
  assert.equal(firstNonFinite(t("f32", new Float32Array([3.4e38, -0, 1e-45]))), null);
  assert.deepEqual(firstNonFinite(t("f32", new Float32Array([0, 0, -Infinity]))), {
    index: 2,
    value: "-Infinity",
  });
  assert.deepEqual(firstNonFinite(t("f64", new Float64Array([NaN]))), { index: 0, value: "NaN" });
  assert.equal(firstNonFinite(t("i32", new Int32Array([-1]))), null);
});

Deno.test("cli: NaN/Inf in a loaded checkpoint -> one line naming the file and the tensor, exit 1", async () => {
  const save = await trained("nan_ckpt", 2, 4);
  const rankDir = `${save}/iter_0000002/mp_rank_00`;
  for (
    const [file, pick, value] of [
      ["model.safetensors", "language_model.encoder.layers.1.mlp.dense_4h_to_h.weight", NaN],
      [
        "optim.safetensors",
        "optimizer.state.language_model.encoder.layers.0.input_layernorm.weight.exp_avg_sq",
        Infinity,
      ],
    ] as const
  ) {
    const path = `${rankDir}/${file}`;
    const good = Deno.readFileSync(path);
    const st = readSafetensors(path);
    const t = st.tensors.find((x) => x.name === pick)!;
    assert.ok(t, pick);
    (t.data as Float32Array)[5] = value;
    writeSafetensors(path, st.tensors, st.metadata);
    const bad = Deno.readFileSync(path);

    const r = await cli(["--lr", "1e-3", "--train-iters", "4", "--save", save, "--load", save]);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(
      errorLine(r),
      `${path}: tensor ${pick} holds a non-finite value (${value} at element 5 of f32 [${
        t.shape.join(", ")
      }]); ` +
        `refusing to resume from a diverged or corrupt checkpoint`,
    );
    assert.deepEqual(iterationsLogged(r.stdout), []);
    // Nothing written: same files, same bytes, no lock or temp left.
    assert.deepEqual(listing(save), ["iter_0000002", "latest_checkpointed_iteration.txt"]);
    assert.deepEqual(Deno.readFileSync(path), bad);
    Deno.writeFileSync(path, good);
  }
});

Deno.test("cli: an f32 loss that turns NaN stops at that iteration, exit 1, the loaded checkpoint kept", async () => {
  const save = await trained("nan_f32", 2, 8);
  const model = Deno.readFileSync(`${save}/iter_0000002/mp_rank_00/model.safetensors`);
  // lr 1e38: the first Adam step moves every weight by ~1e38, so a following forward overflows.
  const r = await cli([
    ...["--lr", "1e38", "--lr-decay-style", "constant", "--override-lr-scheduler"],
    ...["--train-iters", "8", "--save", save, "--load", save],
  ]);
  assert.equal(r.code, 1, r.stderr);
  const line = errorLine(r);
  const m =
    /^iteration (\d+): lm loss is (NaN|Infinity|-Infinity) \(f32 training, no loss scaler to skip the step\); stopping without saving; last checkpoint: (.*)$/
      .exec(line);
  assert.ok(m, line);
  assert.equal(Number(m[1]), iterationsLogged(r.stdout).at(-1)! + 1, r.stdout);
  assert.equal(m[3], `${save} (iteration 2)`);
  // Nothing saved (no save at exit for an error), no lock or temp left, the checkpoint's bytes as before.
  assert.deepEqual(listing(save), ["iter_0000002", "latest_checkpointed_iteration.txt"]);
  assert.deepEqual(Deno.readFileSync(`${save}/iter_0000002/mp_rank_00/model.safetensors`), model);
});

Deno.test("cli: a bf16 loss that turns NaN stops too; the checkpoints saved before it stay, the NaN state is not saved", async () => {
  const save = `${DIR}/nan_bf16`;
  const r = await cli([
    ...["--bf16", "--lr", "1e38", "--lr-decay-style", "constant", "--train-iters", "8"],
    ...["--save", save, "--save-interval", "1"],
  ]);
  assert.equal(r.code, 1, r.stderr);
  const line = errorLine(r);
  const m =
    /^iteration (\d+): lm loss is (NaN|Infinity|-Infinity) \(bf16 training, no loss scaler to skip the step\); stopping without saving; last checkpoint: (.*)$/
      .exec(line);
  assert.ok(m, line);
  const it = Number(m[1]);
  assert.equal(it, iterationsLogged(r.stdout).at(-1)! + 1);
  const names = Array.from({ length: it - 1 }, (_, i) => `iter_${String(i + 1).padStart(7, "0")}`);
  assert.equal(m[3], `${save}/${names.at(-1)}`);
  assert.deepEqual(listing(save), [...names, "latest_checkpointed_iteration.txt"]);
  assert.equal(readTracker(save)!.iteration, it - 1);
  loadCheckpoint(save, { tp: 0, pp: 0 }); // loads: every tensor of the last saved state is finite
});

Deno.test("cli: fp16 keeps skipping NaN steps through its loss scaler and finishes with exit 0", async () => {
  const r = await cli([
    ...["--fp16", "--initial-loss-scale", "1", "--lr", "1e38", "--lr-decay-style", "constant"],
    ...["--train-iters", "4"],
  ]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.split("\n").filter((l) => l.startsWith(" iteration"));
  assert.equal(lines.length, 4);
  // Iteration 1 steps (scale 1: no overflow); its 1e38 update overflows fp16, so 2..4 are NaN and skipped.
  assert.match(lines[0], /number of skipped iterations:\s+0 \| number of nan iterations:\s+0 \|/);
  for (const l of lines.slice(1)) {
    assert.match(l, /number of skipped iterations:\s+1 \| number of nan iterations:\s+1 \|/);
  }
});

// ---- --save at start-up -----------------------------------------------------------------------

Deno.test("cli: a --save below a regular file fails at start-up with one line, exit 1", async () => {
  Deno.writeTextFileSync(`${DIR}/afile`, "x");
  const r = await cli(["--lr", "1e-3", "--train-iters", "2", "--save", `${DIR}/afile/ck`]);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(errorLine(r), `--save ${DIR}/afile/ck: cannot create the folder (Not a directory)`);
  assert.ok(!r.stdout.includes("> model:"), "failed before the model was built");
});

Deno.test({
  name: "cli: an unwritable --save (read-only mount as root, mode 0555 otherwise) fails at start-up",
  ignore: IS_ROOT && !MOUNT,
  fn: async () => {
    const ro = `${DIR}/ro`;
    let reason: string;
    if (IS_ROOT) {
      mountTmpfs(ro, "ro,size=64k");
      reason = "Read-only file system";
    } else {
      Deno.mkdirSync(ro);
      Deno.chmodSync(ro, 0o555);
      reason = "Permission denied";
    }
    try {
      const exists = await cli(["--lr", "1e-3", "--train-iters", "2", "--save", ro]);
      assert.equal(exists.code, 1, exists.stderr);
      assert.equal(errorLine(exists), `--save ${ro}: cannot write in the folder (${reason})`);
      assert.ok(!exists.stdout.includes("> model:"));
      const missing = await cli(["--lr", "1e-3", "--train-iters", "2", "--save", `${ro}/sub/dir`]);
      assert.equal(missing.code, 1, missing.stderr);
      assert.equal(errorLine(missing), `--save ${ro}/sub/dir: cannot create the folder (${reason})`);
      assert.deepEqual(listing(ro), []);
    } finally {
      if (IS_ROOT) umount(ro);
      else Deno.chmodSync(ro, 0o755);
    }
  },
});

// ---- disk full --------------------------------------------------------------------------------

Deno.test({
  name: "cli: disk full during a save names the file and keeps the previous checkpoint (tmpfs, root)",
  ignore: !MOUNT,
  fn: async () => {
    const mnt = `${DIR}/full`;
    mountTmpfs(mnt, "size=512k");
    try {
      const save = `${mnt}/ck`;
      const first = await cli(["--lr", "1e-3", "--train-iters", "4", "--exit-interval", "2", "--save", save]);
      assert.equal(first.code, 0, first.stderr);
      const model = Deno.readFileSync(`${save}/iter_0000002/mp_rank_00/model.safetensors`);
      // Fill the file system, then free 48 KiB: less than the ~100 KB one checkpoint needs.
      const filler = Deno.openSync(`${mnt}/filler`, { write: true, create: true });
      let size = 0;
      try {
        for (;;) size += filler.writeSync(new Uint8Array(4096));
      } catch (e) {
        assert.match((e as Error).message, /No space left on device/);
      }
      filler.truncateSync(size - 48 * 1024);
      filler.close();

      const r = await cli(["--lr", "1e-3", "--train-iters", "4", "--save", save, "--load", save]);
      assert.equal(r.code, 1, r.stderr);
      const line = errorLine(r);
      const esc = save.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      assert.match(
        line,
        new RegExp(
          `^checkpoint save failed at iteration 4: ${esc}/iter_0000004\\.tmp-[^/]+-\\d+/mp_rank_00/` +
            `(model|optim)\\.safetensors: No space left on device \\(os error 28\\); ` +
            `${esc}/latest_checkpointed_iteration\\.txt still names iteration 2$`,
        ),
      );
      assert.deepEqual(iterationsLogged(r.stdout), [3, 4]);
      // State intact: tracker, previous checkpoint bytes; no temp dir, no lock.
      assert.deepEqual(listing(save), ["iter_0000002", "latest_checkpointed_iteration.txt"]);
      assert.deepEqual(Deno.readFileSync(`${save}/iter_0000002/mp_rank_00/model.safetensors`), model);
      // With space again, the same command resumes from iteration 2 and saves iteration 4.
      Deno.removeSync(`${mnt}/filler`);
      const again = await cli(["--lr", "1e-3", "--train-iters", "4", "--save", save, "--load", save]);
      assert.equal(again.code, 0, again.stderr);
      assert.ok(again.stdout.includes(`loaded checkpoint ${save} at iteration 2`), again.stdout);
      assert.equal(readTracker(save)!.iteration, 4);
    } finally {
      umount(mnt);
    }
  },
});

// ---- temp entries of killed writers -----------------------------------------------------------

Deno.test("cli: temp entries of a writer killed with SIGKILL are removed at the next run; live, foreign and unknown ones stay", async () => {
  const save = await trained("stale", 3, 4);
  const host = hostName();
  // A real writer killed (SIGKILL) after writing its rank files: leaves iter_0000005.tmp-<host>-<pid>/.
  const mod = new URL("../src/training/checkpoint.ts", import.meta.url).href;
  const code = `
    import { loadCheckpoint, saveCheckpoint } from ${JSON.stringify(mod)};
    const ck = loadCheckpoint(${JSON.stringify(save)}, { tp: 0, pp: 0 });
    saveCheckpoint({
      saveDir: ${JSON.stringify(save)}, iteration: 5, tpSize: 1, ppSize: 1,
      ranks: [{ tp: 0, pp: 0, model: ck.model, optim: ck.optim, meta: { ...ck.meta, iteration: 5 } }],
      onStage: (s) => { if (s === "rank-written") Deno.kill(Deno.pid, "SIGKILL"); },
    });`;
  const child = new Deno.Command(Deno.execPath(), { args: ["eval", code], stdout: "null", stderr: "piped" })
    .spawn();
  const st = await child.status;
  assert.equal(st.signal, "SIGKILL");
  const killed = `iter_0000005.tmp-${host}-${child.pid}`;
  assert.ok(Deno.statSync(`${save}/${killed}/mp_rank_00/model.safetensors`).isFile);
  // More debris of dead writers of this host: a tracker temp, and an old copy whose replacement is in
  // place (a kill between the two renames of a re-save).
  const dead = await deadPid();
  const trackerTmp = `latest_checkpointed_iteration.txt.tmp-${host}-${dead}`;
  Deno.writeTextFileSync(`${save}/${trackerTmp}`, "9");
  const oldDone = `iter_0000003.old-${host}-${dead}`;
  Deno.mkdirSync(`${save}/${oldDone}`);
  // Kept: the only copy of iteration 1 (its final directory is missing), a live process's temp (this
  // test's), another host's, and a name this code does not write.
  const keep = [
    `iter_0000001.old-${host}-${dead}`,
    `iter_0000007.tmp-${host}-${Deno.pid}`,
    "iter_0000008.tmp-otherhost.example-1",
    "iter_0000009.tmp-child",
  ];
  for (const k of keep) Deno.mkdirSync(`${save}/${k}`);

  const r = await cli(["--lr", "1e-3", "--train-iters", "4", "--save", save, "--load", save]);
  assert.equal(r.code, 0, r.stderr);
  const notes = r.stdout.split("\n").filter((l) => l.startsWith("removed ")).sort();
  assert.deepEqual(
    notes,
    [
      `removed ${save}/${killed} (left by process ${host}-${child.pid}, which is no longer running)`,
      `removed ${save}/${oldDone} (left by process ${host}-${dead}, which is no longer running)`,
      `removed ${save}/${trackerTmp} (left by process ${host}-${dead}, which is no longer running)`,
    ].sort(),
  );
  assert.deepEqual(
    listing(save),
    ["iter_0000003", "iter_0000004", "latest_checkpointed_iteration.txt", ...keep].sort(),
  );
});

Deno.test("checkpoint: each save removes dead writers' temps first (not only at start-up)", () => {
  const dir = `${DIR}/stale_lib`;
  Deno.mkdirSync(dir);
  const host = hostName();
  const mk = (n: string) => Deno.mkdirSync(`${dir}/${n}`);
  const rank = (iteration: number) => ({
    tp: 0,
    pp: 0,
    model: [{ name: "w", dtype: "f32" as const, shape: [2], data: new Float32Array([1, 2]) }],
    meta: { args: {}, iteration, consumedTrainSamples: 0, consumedValidSamples: 0 },
  });
  // pid 2^31 - 2 is above Linux's pid_max: never a live process.
  mk(`iter_0000002.tmp-${host}-2147483646`);
  const notes: string[] = [];
  saveCheckpoint({
    saveDir: dir,
    iteration: 3,
    tpSize: 1,
    ppSize: 1,
    ranks: [rank(3)],
    log: (l) => notes.push(l),
  });
  assert.deepEqual(notes, [
    `removed ${dir}/iter_0000002.tmp-${host}-2147483646 (left by process ${host}-2147483646, which is no longer running)`,
  ]);
  assert.deepEqual(listing(dir), ["iter_0000003", "latest_checkpointed_iteration.txt"]);
  // A bare pid (older temp names) is taken as this host's.
  mk("iter_0000004.tmp-2147483646");
  assert.deepEqual(removeStaleTemps(dir), [`${dir}/iter_0000004.tmp-2147483646`]);
});

// ---- one trainer per --save folder ------------------------------------------------------------

/** A running CLI; `started` resolves once its first iteration is logged. Its stdout is drained to the
 *  end, so the trainer never blocks on a full pipe (it must stay responsive to signals). */
function spawnCli(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCRIPT, ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  let onStart: () => void = () => {};
  const started = new Promise<void>((resolve) => onStart = resolve);
  const drained = (async () => {
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      out += chunk;
      if (/^ iteration\s+1\//m.test(out)) onStart();
    }
    onStart(); // ended without an iteration: let the test fail on what follows
  })();
  return { child, started, drained, stderr: new Response(child.stderr).text() };
}

Deno.test("cli: a second trainer on the same --save fails with one line naming the owner; the lock goes with the first", async () => {
  const save = `${DIR}/lock_busy`;
  const first = spawnCli(
    await flags(["--lr", "1e-3", "--train-iters", "1000000", "--save", save, "--exit-signal-handler"]),
  );
  try {
    await first.started;
    const lockText = Deno.readTextFileSync(`${save}/${LOCK_FILE}`);
    const owner = JSON.parse(lockText);
    assert.equal(owner.pid, first.child.pid);
    assert.equal(owner.host, hostName());
    assert.ok(owner.command.startsWith("pretrain_gpt --num-layers 2 "), owner.command);
    assert.ok(!Number.isNaN(Date.parse(owner.started)), owner.started);

    const second = await cli(["--lr", "1e-3", "--train-iters", "2", "--save", save]);
    assert.equal(second.code, 1, second.stderr);
    assert.equal(
      errorLine(second),
      `--save ${save} is in use by another trainer (pid ${owner.pid} on host ${owner.host}, started ` +
        `${owner.started}, command: ${owner.command}); lock ${save}/${LOCK_FILE}`,
    );
    assert.ok(!second.stdout.includes("> model:"));
    assert.equal(Deno.readTextFileSync(`${save}/${LOCK_FILE}`), lockText, "the owner's lock is untouched");
  } finally {
    first.child.kill("SIGTERM");
  }
  const st = await first.child.status;
  await first.drained;
  await first.stderr;
  assert.equal(st.code, 0);
  assert.ok(!listing(save).includes(LOCK_FILE), "released on the signal-handler exit");
  assert.ok(readTracker(save) !== null);
});

Deno.test("cli: the lock of a trainer killed with SIGKILL is taken over with a note, and released at the end", async () => {
  const save = `${DIR}/lock_stale`;
  const victim = spawnCli(await flags(["--lr", "1e-3", "--train-iters", "1000000", "--save", save]));
  await victim.started;
  victim.child.kill("SIGKILL");
  await victim.child.status;
  await victim.drained;
  await victim.stderr;
  const owner = JSON.parse(Deno.readTextFileSync(`${save}/${LOCK_FILE}`));
  assert.equal(owner.pid, victim.child.pid);

  const r = await cli(["--lr", "1e-3", "--train-iters", "2", "--save", save]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(
    r.stdout.split("\n").includes(
      `note: took over the stale lock ${save}/${LOCK_FILE} of a trainer that is no longer running ` +
        `(pid ${owner.pid} on host ${owner.host}, started ${owner.started}, command: ${owner.command})`,
    ),
    r.stdout,
  );
  assert.deepEqual(listing(save), ["iter_0000002", "latest_checkpointed_iteration.txt"]);
});

Deno.test("cli: a lock whose pid now belongs to a newer process (pid reused) is taken over", async () => {
  const save = `${DIR}/lock_reused`;
  Deno.mkdirSync(save);
  const other = new Deno.Command("sleep", { args: ["60"] }).spawn();
  try {
    // The lock says the owner started in 2020; the live process with that pid started just now.
    const owner = {
      pid: other.pid,
      host: hostName(),
      started: "2020-01-01T00:00:00.000Z",
      command: "pretrain_gpt --x",
    };
    Deno.writeTextFileSync(`${save}/${LOCK_FILE}`, JSON.stringify(owner) + "\n");
    const r = await cli(["--lr", "1e-3", "--train-iters", "2", "--save", save]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(
      r.stdout.split("\n").includes(
        `note: took over the stale lock ${save}/${LOCK_FILE} of a trainer that is no longer running ` +
          `(pid ${other.pid} on host ${owner.host}, started 2020-01-01T00:00:00.000Z, command: pretrain_gpt --x)`,
      ),
      r.stdout,
    );
    assert.deepEqual(listing(save), ["iter_0000002", "latest_checkpointed_iteration.txt"]);
  } finally {
    other.kill("SIGKILL");
    await other.status;
  }
});

Deno.test("cli: a lock held from another host is not judged: one line naming it, exit 1, lock kept", async () => {
  const save = `${DIR}/lock_foreign`;
  Deno.mkdirSync(save);
  const text = JSON.stringify({
    pid: 1,
    host: "elsewhere.example",
    started: "2026-01-01T00:00:00.000Z",
    command: "pretrain_gpt --num-layers 24",
  }) + "\n";
  Deno.writeTextFileSync(`${save}/${LOCK_FILE}`, text);
  const r = await cli(["--lr", "1e-3", "--train-iters", "2", "--save", save]);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(
    errorLine(r),
    `--save ${save} is locked by a trainer on another host (pid 1 on host elsewhere.example, started ` +
      `2026-01-01T00:00:00.000Z, command: pretrain_gpt --num-layers 24); remove ${save}/${LOCK_FILE} if that run has ended`,
  );
  assert.equal(Deno.readTextFileSync(`${save}/${LOCK_FILE}`), text);
  assert.deepEqual(listing(save), [LOCK_FILE]);
});

// ---- a model that cannot fit ------------------------------------------------------------------

Deno.test("cli: a model larger than the host's memory fails at start-up with the estimate, exit 1", async () => {
  const save = `${DIR}/too_big`;
  // GPT-3 175B's shape: far beyond any host.
  const L = 96, h = 12288, s = 2048;
  const r = await cli([
    ...["--num-layers", String(L), "--hidden-size", String(h), "--num-attention-heads", "96"],
    ...["--seq-length", String(s), "--max-position-embeddings", String(s), "--micro-batch-size", "1"],
    ...["--lr", "1e-4", "--train-iters", "2", "--save", save],
  ]);
  assert.equal(r.code, 1, r.stderr);
  const line = errorLine(r);
  // Independent count: L (12 h^2 + 13 h) + V h + s h + 2 h with the padded vocab of 56.
  const n = L * (12 * h * h + 13 * h) + 56 * h + s * h + 2 * h;
  const esc = (x: string) => x.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  assert.match(
    line,
    new RegExp(
      `^the model does not fit: memory estimate \\d+\\.\\d\\d [KMGTP]iB \\(params ${
        esc(formatBytes(4 * n))
      }, ` +
        `grads ${esc(formatBytes(4 * n))}, optimizer ${
          esc(formatBytes(8 * n))
        }, activations \\d+\\.\\d\\d [KMGTP]iB\\) ` +
        `exceeds the \\d+\\.\\d\\d [KMGTP]iB of available host memory \\(MemAvailable in /proc/meminfo\\)$`,
    ),
  );
  assert.ok(!r.stdout.includes("> model:"), "nothing was allocated");
  assert.deepEqual(listing(save), [], "no lock or probe file left");
});
