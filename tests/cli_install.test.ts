// The one CLI entry point as a user outside the checkout gets it: `deno install -g` of cli.ts (from the
// checkout and from a URL served over HTTP, where deno.json plays no part), then `megatron --help`,
// bad usage, and `megatron preprocess` on a tiny input in a folder outside the checkout.

import assert from "node:assert/strict";
import { CLI_HELP, COMMAND_NAMES } from "../cli.ts";
import { MMapIndexedDataset } from "../src/data/indexed_dataset.ts";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const dec = new TextDecoder();
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_cli_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));

async function run(cmd: string, args: string[], cwd: string) {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    stdout: "piped",
    stderr: "piped",
    // INIT_CWD as `deno task test` leaves it: outside the checkout the command must ignore it.
    env: { NO_COLOR: "1", INIT_CWD: ROOT },
  })
    .output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** `deno install -g -A -n megatron --root <root> <source>`; returns the installed command's path. */
async function install(source: string, root: string): Promise<string> {
  const r = await run(
    Deno.execPath(),
    ["install", "-g", "-A", "-n", "megatron", "--root", root, source],
    DIR,
  );
  assert.equal(r.code, 0, r.stderr);
  return `${root}/bin/megatron`;
}

/** Checks the installed command from `cwd` (outside the checkout): help, usage errors, preprocess. */
async function checkInstalled(megatron: string, cwd: string) {
  Deno.mkdirSync(cwd, { recursive: true });
  const help = await run(megatron, ["--help"], cwd);
  assert.equal(help.code, 0, help.stderr);
  assert.equal(help.stdout, CLI_HELP + "\n");
  assert.match(help.stdout, /^ {2}pretrain-gpt /m);
  assert.match(help.stdout, /^ {2}preprocess /m);

  const none = await run(megatron, [], cwd);
  assert.equal(none.code, 2);
  assert.equal(none.stderr, CLI_HELP + "\n");
  const bad = await run(megatron, ["pretrain"], cwd);
  assert.equal(bad.code, 2);
  assert.equal(
    bad.stderr,
    `megatron: unknown command "pretrain"; expected one of ${COMMAND_NAMES.join(", ")}\n`,
  );

  const sub = await run(megatron, ["preprocess", "--help"], cwd);
  assert.equal(sub.code, 0, sub.stderr);
  assert.match(sub.stdout, /--output-prefix PREFIX/);

  // Pre-tokenized ids (NullTokenizer): the dataset holds exactly these ids plus eod (= vocab size).
  Deno.writeTextFileSync(`${cwd}/tiny.jsonl`, '{"text": "1 2 3"}\n{"text": "7 7"}\n{"text": "0"}\n');
  const pre = await run(megatron, [
    ...["preprocess", "--input", "tiny.jsonl", "--output-prefix", "tiny", "--append-eod"],
    ...["--tokenizer-type", "NullTokenizer", "--vocab-size", "10"],
  ], cwd);
  assert.equal(pre.code, 0, pre.stderr);
  assert.ok(pre.stderr.includes(`done: 3 documents`), pre.stderr);
  const ds = MMapIndexedDataset.open(`${cwd}/tiny_text_document`);
  try {
    assert.deepEqual([0, 1, 2].map((i) => Array.from(ds.get(i))), [[1, 2, 3, 10], [7, 7, 10], [0, 10]]);
  } finally {
    ds.close();
  }
}

Deno.test("cli: deno install -g of the checkout's cli.ts gives a megatron command that works outside it", async () => {
  const megatron = await install(`${ROOT}/cli.ts`, `${DIR}/local`);
  await checkInstalled(megatron, `${DIR}/user_local`);
});

Deno.test("cli: cli.ts runs and installs from a URL (no deno.json, relative imports only)", async () => {
  // Serve the checkout read-only over HTTP, as a static file host would.
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    async (req) => {
      const path = decodeURIComponent(new URL(req.url).pathname);
      if (path.includes("..")) return new Response("bad path", { status: 400 });
      try {
        return new Response(await Deno.readFile(ROOT + path), {
          headers: { "content-type": path.endsWith(".json") ? "application/json" : "application/typescript" },
        });
      } catch {
        return new Response("not found", { status: 404 });
      }
    },
  );
  try {
    const url = `http://127.0.0.1:${server.addr.port}/cli.ts`;
    const direct = await run(Deno.execPath(), ["run", "-A", url, "--help"], DIR);
    assert.equal(direct.code, 0, direct.stderr);
    assert.equal(direct.stdout, CLI_HELP + "\n");
    const megatron = await install(url, `${DIR}/url`);
    await checkInstalled(megatron, `${DIR}/user_url`);
  } finally {
    ac.abort();
    await server.finished;
  }
});
