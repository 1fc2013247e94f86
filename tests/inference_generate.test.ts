// generate-gpt through the real CLI on a small random GPT (init std 0.3, so greedy decoding does not
// repeat one token): greedy output equals a greedy loop written here over GPTModel's full forward; the
// KV-cache path and --recompute give the same tokens, greedy and sampled; a seed fixes the samples;
// the cache's logits equal the full forward's; the streaming API yields the CLI's tokens.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { buildGptModel, KvCacheGpt, modelLogits, streamGpt } from "../src/inference/gpt_runner.ts";
import { type FullGpt, readGpt, writeGpt } from "../src/inference/gpt_weights.ts";
import { randomGpt } from "./helpers/random_gpt.ts";
import { errorLine, runScript } from "./helpers/run_cli.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const DIR = Deno.makeTempDirSync({ prefix: "mdeno_generate_" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const backend = createCpuBackend({ log: () => {} });
const VOCAB = 50, EOD = 49, SEQ = 32;

function randomCheckpoint(): FullGpt {
  const full = randomGpt(backend, {
    layers: 2,
    heads: 4,
    seq: SEQ,
    vocab: VOCAB,
    paddedVocab: 64,
    makeVocabSizeDivisibleBy: 64,
    seed: 5,
    iteration: 7,
  });
  writeGpt("megatron-deno", `${DIR}/ckpt`, full);
  return readGpt("megatron-deno", `${DIR}/ckpt`);
}
const full = randomCheckpoint();

/** Greedy decoding by hand: full forward of the whole prefix, argmax over the real vocabulary (lowest
 *  id on ties), stop at eod or min(seq - 1, context + out). */
async function greedyLoop(context: number[], out: number): Promise<number[]> {
  const model = buildGptModel(full, backend);
  const V = model.cfg.vocabSize;
  const tokens = [...context], gen: number[] = [];
  while (tokens.length < Math.min(SEQ - 1, context.length + out)) {
    const l = await modelLogits(model, [tokens]);
    let best = 0;
    for (let v = 1; v < VOCAB; v++) {
      if (l[(tokens.length - 1) * V + v] > l[(tokens.length - 1) * V + best]) best = v;
    }
    if (best === EOD) break;
    tokens.push(best);
    gen.push(best);
  }
  return gen;
}

const generate = (...args: string[]) => runScript(CLI, ["generate-gpt", "--load", `${DIR}/ckpt`, ...args]);
const genfile = (path: string) =>
  Deno.readTextFileSync(path).trim().split("\n").map((l) =>
    JSON.parse(l) as { context: string; text: string; tokens: number[] }
  );

Deno.test("generate-gpt --greedy: equals a greedy loop over the full forward; KV cache == --recompute", async () => {
  const contexts = ["3 1 4 1 5", "9 2 6"];
  Deno.writeTextFileSync(`${DIR}/in.txt`, contexts.join("\n") + "\n");
  const want = await Promise.all(contexts.map((c) => greedyLoop(c.split(" ").map(Number), 12)));
  assert.ok(want.some((w) => new Set(w).size > 2), `too repetitive to be a test: ${JSON.stringify(want)}`);
  for (const mode of [[], ["--recompute"]]) {
    const name = mode.length ? "re" : "kv";
    const r = await generate(
      ...["--greedy", "--out-seq-length", "12", "--sample-input-file", `${DIR}/in.txt`],
      ...["--sample-output-file", `${DIR}/${name}.out`, "--genfile", `${DIR}/${name}.jsonl`, ...mode],
    );
    assert.equal(r.code, 0, r.stderr);
    const g = genfile(`${DIR}/${name}.jsonl`);
    assert.deepEqual(g.map((s) => s.tokens), want, name);
    assert.deepEqual(g.map((s) => s.context), contexts);
    assert.deepEqual(g.map((s) => s.text), want.map((w) => w.join(" ")));
    assert.equal(
      Deno.readTextFileSync(`${DIR}/${name}.out`),
      contexts.map((c, i) => `\nContext:${c}\n\nMegatron-LM:${want[i].join(" ")}\n`).join(""),
    );
  }
});

Deno.test("generate-gpt sampling: cache == --recompute, fixed by the seed, rows differ", async () => {
  const run = async (seed: string, mode: string[]) => {
    const out = `${DIR}/s${seed}${mode.length}.jsonl`;
    const r = await generate(
      ...["--num-samples", "3", "--top_k", "5", "--top_p", "0.9", "--temperature", "0.8"],
      ...["--out-seq-length", "10", "--seed", seed, "--genfile", out, ...mode],
    );
    assert.equal(r.code, 0, r.stderr);
    return genfile(out);
  };
  const a = await run("7", []), b = await run("7", ["--recompute"]), c = await run("8", []);
  assert.deepEqual(a, b);
  assert.equal(a.length, 3);
  assert.ok(a.every((s) => s.context === "" && s.tokens.every((t) => t >= 0 && t < EOD)));
  assert.notDeepEqual(a[0].tokens, a[1].tokens);
  assert.notDeepEqual(a.map((s) => s.tokens), c.map((s) => s.tokens));
  assert.deepEqual(await run("7", []), a);
});

Deno.test("KV cache: each step's logits equal GPTModel's full forward", async () => {
  const tokens = Array.from({ length: SEQ }, (_, i) => (i * 13 + 5) % VOCAB);
  const model = buildGptModel(full, backend);
  const V = model.cfg.vocabSize;
  const l = await modelLogits(model, [tokens]);
  const scale = Math.max(...Array.from(l, Math.abs));
  // Products in TypeScript, and as the backend's GEMMs.
  for (const kv of [new KvCacheGpt(full), new KvCacheGpt(full, backend)]) {
    tokens.forEach((t, i) => {
      const k = kv.step(t);
      for (let v = 0; v < V; v++) {
        assert.ok(Math.abs(k[v] - l[i * V + v]) <= 1e-5 * scale, `pos ${i} id ${v}`);
      }
    });
    assert.throws(() => kv.step(1), /KV cache: position 32 exceeds max-position-embeddings 32/);
    kv.close();
  }
});

Deno.test("streamGpt: the library's async iterator yields the greedy tokens", async () => {
  const got: number[] = [];
  for await (
    const t of streamGpt(full, [3, 1, 4, 1, 5], {
      greedy: true,
      outSeqLength: 12,
      seqLength: SEQ,
      eod: EOD,
      seed: 1,
    })
  ) {
    got.push(t);
  }
  assert.deepEqual(got, await greedyLoop([3, 1, 4, 1, 5], 12));
});

Deno.test("generate-gpt: bad usage is one line, exit 2", async () => {
  let r = await generate("--greedy");
  assert.equal(r.code, 2);
  assert.equal(
    errorLine(r, "generate-gpt"),
    "--num-samples 0 is the interactive prompt and needs a terminal; give --sample-input-file or --num-samples N",
  );
  r = await generate("--num-samples", "1", "--top_p", "2");
  assert.equal(r.code, 2);
  assert.equal(errorLine(r, "generate-gpt"), "--top_p 2: expected a number in [0, 1]");
  Deno.writeTextFileSync(`${DIR}/bad.txt`, "1 2\n1 99\n");
  r = await generate("--sample-input-file", `${DIR}/bad.txt`, "--sample-output-file", `${DIR}/bad.out`);
  assert.equal(r.code, 1);
  assert.equal(errorLine(r, "generate-gpt"), "NullTokenizer: expected token ids in 0..49, found '99'");
  assert.throws(() => Deno.statSync(`${DIR}/bad.out`));
});

const hasScript = (() => {
  try {
    return Deno.statSync("/usr/bin/script").isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name:
    "generate-gpt --num-samples 0 on a terminal: prompt, continuation, stop (util-linux script as the TTY)",
  ignore: !hasScript,
  fn: async () => {
    const want = await greedyLoop([3, 1, 4], 6);
    const cmd =
      `NO_COLOR=1 '${Deno.execPath()}' run -A '${CLI}' generate-gpt --load '${DIR}/ckpt' --greedy ` +
      `--out-seq-length 6 --num-samples 0`;
    const child = new Deno.Command("/usr/bin/script", {
      args: ["-qec", cmd, "/dev/null"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode("3 1 4\nstop\n"));
    await w.close();
    const out = await child.output();
    const text = new TextDecoder().decode(out.stdout).replaceAll("\r", "");
    assert.equal(out.code, 0, text);
    assert.ok(text.includes("Context prompt (stop to exit) >>> "), text);
    assert.ok(text.includes(`\nMegatron-LM: ${want.map((t) => `${t} `).join("")}\n`), text);
  },
});
