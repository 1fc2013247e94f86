// Signals sent to the process the README's install path creates. Deno is installed from npm into a
// temporary prefix exactly as the README says (`npm install -g --allow-scripts=deno deno@2.9.6`), which
// yields the real binary, and `deno task pretrain:gpt ... --exit-signal-handler` from it gets SIGTERM
// and SIGINT: `deno task` passes the signal on, the trainer saves at the current iteration and exits 0,
// and no process of the run is left. Then the npm package installed without its install script (the
// Node wrapper bin.cjs, which does not pass signals on): a signal to the wrapper still stops the
// trainer (it watches the wrapper and sends itself SIGTERM), with the same save, and leaves no orphan.
// The wrapper detection itself is checked on a fake /proc. The npm cases are skipped without npm on PATH.

import assert from "node:assert/strict";
import { loadCheckpoint, readTracker } from "../src/training/checkpoint.ts";
import { findNpmWrapper, hasExited, WRAPPER_NOTE } from "../tasks/launcher_watch.ts";
import { preprocessTinyCorpus } from "./helpers/tiny_corpus.ts";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const dec = new TextDecoder();
const DENO_VERSION = "2.9.6";

function hasNpm(): boolean {
  try {
    return new Deno.Command("npm", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}
const NPM = hasNpm();
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_signpm_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));

/** npm install -g into `prefix` (from npm's cache when it has the package); returns bin/deno. */
async function npmInstall(prefix: string, extra: string[]): Promise<string> {
  const out = await new Deno.Command("npm", {
    args: ["install", "-g", ...extra, `deno@${DENO_VERSION}`, "--prefix", prefix, "--prefer-offline"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, dec.decode(out.stderr));
  return `${prefix}/bin/deno`;
}

let installs: Promise<{ real: string; wrapper: string; data: string }> | undefined;
function setup() {
  installs ??= (async () => {
    const [real, wrapper] = await Promise.all([
      // The README's install command.
      npmInstall(`${DIR}/npm-real`, ["--allow-scripts=deno"]),
      // What a user gets when npm does not run the package's install script.
      npmInstall(`${DIR}/npm-wrapper`, ["--ignore-scripts"]),
    ]);
    const docs = Array.from(
      { length: 60 },
      (_, d) => Array.from({ length: 50 + d }, (_, i) => (i * 7 + d) % 40),
    );
    const data = await preprocessTinyCorpus(DIR, docs.map((ids) => ids.join(" ")), 40);
    return { real, wrapper, data };
  })();
  return installs;
}

function flags(data: string, save: string, more: string[]): string[] {
  return [
    ...["--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2", "--seq-length", "16"],
    ...["--max-position-embeddings", "16", "--micro-batch-size", "2", "--global-batch-size", "4"],
    ...[
      "--lr",
      "1e-3",
      "--make-vocab-size-divisible-by",
      "8",
      "--log-interval",
      "1",
      "--eval-interval",
      "100000",
    ],
    ...["--eval-iters", "1", "--split", "90,10,0", "--data-path", data, "--tokenizer-type", "NullTokenizer"],
    ...["--vocab-size", "40", "--device", "cpu", "--no-progress", "--train-iters", "1000000", "--save", save],
    ...more,
  ];
}

/** Pids of live processes whose command line mentions `marker` (the run's unique --save folder). */
function processesWith(marker: string): number[] {
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const cmd = Deno.readTextFileSync(`/proc/${e.name}/cmdline`);
      const state = Deno.readTextFileSync(`/proc/${e.name}/stat`).split(") ")[1]?.[0];
      if (cmd.includes(marker) && state !== "Z") pids.push(Number(e.name));
    } catch {
      // exited while we looked
    }
  }
  return pids;
}

/** Waits up to `ms` for no process to mention `marker`; returns those still there. */
async function orphansAfter(marker: string, ms: number): Promise<number[]> {
  const end = Date.now() + ms;
  let left = processesWith(marker);
  while (left.length > 0 && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    left = processesWith(marker);
  }
  return left;
}

/** Rejects when `done` has not settled after `ms` (the run's processes are still alive). */
async function ended(done: Promise<void>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the run's output still open after ${ms} ms`)), ms);
  });
  try {
    await Promise.race([done, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** A failed check must not leave the run's processes behind. */
function killLeft(marker: string): void {
  for (const pid of processesWith(marker)) {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/** `<deno> task pretrain:gpt ...` from the project root; stdout lines collected as they come. */
function startTask(deno: string, args: string[]) {
  const child = new Deno.Command(deno, {
    args: ["task", "pretrain:gpt", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const lines: string[] = [];
  let wake = () => {};
  const stdoutDone = (async () => {
    let buf = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      const parts = buf.split("\n");
      buf = parts.pop()!;
      lines.push(...parts);
      wake();
    }
    if (buf) lines.push(buf);
    wake();
  })();
  const stderr = new Response(child.stderr).text();
  return {
    child,
    lines,
    stdoutDone,
    stderr,
    /** Resolves once a line matches (rejects when the output ends first). */
    async waitFor(re: RegExp): Promise<void> {
      let ended = false;
      stdoutDone.then(() => (ended = true));
      while (!lines.some((l) => re.test(l))) {
        if (ended) throw new Error(`output ended before ${re}:\n${lines.join("\n")}\n${await stderr}`);
        await new Promise<void>((r) => (wake = r));
      }
    },
  };
}

/** The run saved at the iteration it logged last and named the signal; returns that iteration. */
function assertSavedAtExit(lines: string[], save: string, signal: string): number {
  const exitLine = lines.find((l) => l.startsWith("exiting at iteration"));
  assert.ok(exitLine, lines.slice(-5).join("\n"));
  assert.ok(exitLine.endsWith(`(signal ${signal})`), exitLine);
  const it = Number(/exiting at iteration (\d+)/.exec(exitLine)![1]);
  const logged = lines.filter((l) => l.startsWith(" iteration")).map((l) =>
    Number(/iteration\s+(\d+)/.exec(l)![1])
  );
  assert.equal(logged.at(-1), it);
  assert.equal(readTracker(save)?.iteration, it);
  const ck = loadCheckpoint(save, { tp: 0, pp: 0 });
  assert.equal(ck.meta.iteration, it);
  assert.ok(ck.optim !== undefined && ck.optim.length > 0);
  return it;
}

Deno.test("launcher watch: finds npm's wrapper among the ancestors in a /proc; gone, zombie or reused pid = exited", () => {
  const root = Deno.makeTempDirSync({ dir: DIR, prefix: "proc_" });
  // npm's layout: <prefix>/bin/deno -> ../lib/node_modules/deno/bin.cjs
  Deno.mkdirSync(`${root}/npm/lib/node_modules/deno`, { recursive: true });
  Deno.mkdirSync(`${root}/npm/bin`);
  Deno.writeTextFileSync(`${root}/npm/lib/node_modules/deno/bin.cjs`, "");
  Deno.symlinkSync("../lib/node_modules/deno/bin.cjs", `${root}/npm/bin/deno`);
  Deno.writeTextFileSync(`${root}/npm/lib/node_modules/deno/deno`, "");
  const proc = `${root}/proc`;
  const fake = (pid: number, comm: string, state: string, ppid: number, start: number, argv: string[]) => {
    Deno.mkdirSync(`${proc}/${pid}`, { recursive: true });
    const mid = Array(17).fill("0").join(" ");
    Deno.writeTextFileSync(`${proc}/${pid}/stat`, `${pid} (${comm}) ${state} ${ppid} ${mid} ${start} 0 0\n`);
    Deno.writeTextFileSync(`${proc}/${pid}/cmdline`, argv.join("\0") + "\0");
  };
  // shell 10 -> node wrapper 20 (shebang through the bin/deno link) -> deno task 30 -> us (ppid 30)
  fake(10, "bash", "S", 1, 100, ["bash"]);
  fake(20, "node", "S", 10, 200, ["node", `${root}/npm/bin/deno`, "task", "pretrain:gpt"]);
  fake(30, "deno (task) x", "S", 20, 300, [`${root}/npm/lib/node_modules/deno/deno`, "task", "pretrain:gpt"]);
  assert.deepEqual(findNpmWrapper(proc, 30), { pid: 20, startTime: 200 });
  assert.equal(hasExited({ pid: 20, startTime: 200 }, proc), false);
  assert.equal(hasExited({ pid: 20, startTime: 199 }, proc), true); // pid reused by a later process
  fake(20, "node", "Z", 10, 200, ["node", `${root}/npm/bin/deno`]);
  assert.equal(hasExited({ pid: 20, startTime: 200 }, proc), true); // a zombie has exited
  Deno.removeSync(`${proc}/20`, { recursive: true });
  assert.equal(hasExited({ pid: 20, startTime: 200 }, proc), true);
  // The real binary through npm (no wrapper), or node running something else: nothing to watch.
  fake(20, "node", "S", 10, 200, ["node", `${root}/npm/lib/node_modules/deno/deno`]);
  assert.equal(findNpmWrapper(proc, 30), null);
  fake(20, "deno", "S", 10, 200, [`${root}/npm/bin/deno`, "task"]);
  assert.equal(findNpmWrapper(proc, 30), null);
  assert.equal(findNpmWrapper(`${root}/no-proc`, 30), null);
});

Deno.test({
  name: "npm install -g --allow-scripts=deno (the README's step) puts the real binary on the prefix's PATH",
  ignore: !NPM,
  async fn() {
    const { real, wrapper } = await setup();
    assert.match(Deno.realPathSync(real), /\/deno\/deno$/);
    assert.match(Deno.realPathSync(wrapper), /\/deno\/bin\.cjs$/);
    const v = new Deno.Command(real, { args: ["--version"], stdout: "piped" }).outputSync();
    assert.ok(dec.decode(v.stdout).startsWith(`deno ${DENO_VERSION} `));
  },
});

for (const sig of ["SIGTERM", "SIGINT"] as const) {
  Deno.test({
    name:
      `npm-installed deno task pretrain:gpt: ${sig} reaches the trainer, which saves and exits 0; no orphan`,
    ignore: !NPM,
    async fn() {
      const { real, data } = await setup();
      const save = `${DIR}/real_${sig}`;
      const p = startTask(real, flags(data, save, ["--exit-signal-handler"]));
      try {
        await p.waitFor(/^ iteration\s+\d+\//);
        p.child.kill(sig);
        const status = await p.child.status;
        await ended(p.stdoutDone, 30_000);
        assert.equal(status.code, 0, await p.stderr);
        assertSavedAtExit(p.lines, save, sig);
        assert.ok(!p.lines.includes(WRAPPER_NOTE));
        assert.deepEqual(await orphansAfter(save, 2000), []);
      } finally {
        killLeft(save);
      }
    },
  });
}

for (const sig of ["SIGTERM", "SIGINT"] as const) {
  Deno.test({
    name: `npm's Node wrapper: ${sig} to it stops the trainer (save, exit) and leaves no orphan`,
    ignore: !NPM,
    async fn() {
      const { wrapper, data } = await setup();
      const save = `${DIR}/wrapper_${sig}`;
      const p = startTask(wrapper, flags(data, save, ["--exit-signal-handler"]));
      try {
        await p.waitFor(/^ iteration\s+\d+\//);
        assert.ok(p.lines.includes(WRAPPER_NOTE), p.lines.slice(0, 5).join("\n"));
        p.child.kill(sig); // the wrapper (node) itself: it dies and passes nothing on
        const status = await p.child.status;
        assert.equal(status.signal, sig);
        // deno task and the trainer still hold the pipe: it ends when they have exited.
        await ended(p.stdoutDone, 30_000);
        assertSavedAtExit(p.lines, save, "SIGTERM");
        assert.deepEqual(await orphansAfter(save, 5000), []);
      } finally {
        killLeft(save);
      }
    },
  });
}

Deno.test({
  name: "npm's Node wrapper without --exit-signal-handler: SIGTERM to it ends the trainer; no orphan",
  ignore: !NPM,
  async fn() {
    const { wrapper, data } = await setup();
    const save = `${DIR}/wrapper_plain`;
    const p = startTask(wrapper, flags(data, save, ["--save-interval", "1000000"]));
    try {
      await p.waitFor(/^ iteration\s+\d+\//);
      p.child.kill("SIGTERM");
      assert.equal((await p.child.status).signal, "SIGTERM");
      await ended(p.stdoutDone, 30_000);
      assert.ok(!p.lines.some((l) => l.startsWith("exiting at iteration")));
      assert.deepEqual(await orphansAfter(save, 5000), []);
    } finally {
      killLeft(save);
    }
  },
});
