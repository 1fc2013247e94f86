// Generation on the CUDA backend without a GPU: the real kernels compiled for the CPU by
// tests/gpu/emulator, driven through CudaBackend and Deno FFI (as tests/cuda_emulated_ops.test.ts).
// The cached forward (LayoutGpt: every op on the backend) and --recompute give the CPU's logits (1e-5 of
// the largest) and its greedy and sampled tokens, on one rank and split TP 2 x PP 2; generate-gpt
// --device cuda writes the CPU run's tokens. Skips with one line without a C++ compiler.

import assert from "node:assert/strict";
import type { DiscoverEnv } from "../ffi/discover.ts";
import type { Backend } from "../src/backend/backend.ts";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { createCudaBackend } from "../src/backend/cuda/cuda_backend.ts";
import { generateAll } from "../src/generation/generate.ts";
import { LayoutGpt } from "../src/inference/gpt_layout.ts";
import { nextLogitsFn } from "../src/inference/gpt_runner.ts";
import { writeGpt } from "../src/inference/gpt_weights.ts";
import { buildEmulator } from "./gpu/emulator/build.ts";
import { randomGpt } from "./helpers/random_gpt.ts";
import { runScript } from "./helpers/run_cli.ts";

const built = await buildEmulator();
const opts = { sanitizeResources: false, sanitizeOps: false };

if ("skip" in built) {
  console.log(`cuda generate emulated: skipped — ${built.skip}`);
} else {
  const vars: Record<string, string> = {
    MEGATRON_DENO_CUDART: built.path,
    MEGATRON_DENO_CUDA: built.path,
    MEGATRON_DENO_CUBLAS: built.path,
  };
  const env: DiscoverEnv = { get: (n) => vars[n], sitePackages: [], pythonSitePackages: () => [] };
  const cuda = await createCudaBackend({ env });
  const cpu = createCpuBackend({ log: () => {} });
  const VOCAB = 50, EOD = 49, SEQ = 24;

  // A random GPT (init std 0.3, so greedy decoding does not repeat one token), 4 heads, 2 layers.
  const full = randomGpt(cpu, {
    layers: 2,
    heads: 4,
    seq: SEQ,
    vocab: VOCAB,
    paddedVocab: 64,
    makeVocabSizeDivisibleBy: 64,
    seed: 17,
  });

  Deno.test({
    name: "cuda (emulated) generation: the CPU's logits, cached and recomputed, one rank and TP 2 x PP 2",
    ...opts,
    fn: async () => {
      const seq = [3, 1, 4, 1, 5, 9, 2, 6];
      for (const [tp, pp] of [[1, 1], [2, 2]]) {
        for (const cache of [true, false]) {
          const g = new LayoutGpt(full, cuda, { tp, pp, cache }),
            r = new LayoutGpt(full, cpu, { tp, pp, cache });
          // A prompt of 3, then 3 positions at once, then one at a time.
          for (const n of [3, 6, 7, 8]) {
            const got = await g.next(seq.slice(0, n)), want = await r.next(seq.slice(0, n));
            assert.equal(got.length, want.length);
            const scale = Math.max(...want.map(Math.abs));
            for (let v = 0; v < want.length; v++) {
              assert.ok(
                Math.abs(got[v] - want[v]) <= 1e-5 * scale,
                `TP ${tp} PP ${pp} cache ${cache} len ${n} id ${v}: cuda ${got[v]}, cpu ${want[v]}`,
              );
            }
          }
          g.close();
          r.close();
        }
      }
    },
  });

  Deno.test({
    name: "cuda (emulated) generation: greedy and sampled tokens equal the CPU's",
    ...opts,
    fn: async () => {
      for (const greedy of [true, false]) {
        const run = (backend: Backend, cache: boolean) =>
          generateAll([7, 2, 9], nextLogitsFn(full, { cache, backend }), {
            greedy,
            temperature: 0.9,
            topK: greedy ? 0 : 6,
            topP: 0,
            vocabSize: VOCAB,
            outSeqLength: 14,
            seqLength: SEQ,
            eod: EOD,
            seed: 3,
          });
        const want = await run(cpu, true);
        assert.ok(want.length >= 6 && new Set(want).size > 2, `too short or repetitive: ${want}`);
        assert.deepEqual(await run(cuda, true), want, `greedy ${greedy}: cached`);
        assert.deepEqual(await run(cuda, false), want, `greedy ${greedy}: --recompute`);
      }
    },
  });

  Deno.test({
    name: "generate-gpt --device cuda (emulated) writes the --device cpu run's tokens",
    ...opts,
    fn: async () => {
      const dir = await Deno.makeTempDir({ prefix: "md-cuda-generate-" });
      try {
        writeGpt("megatron-deno", `${dir}/ckpt`, full);
        const cli = new URL("../cli.ts", import.meta.url).pathname;
        const tokens = async (device: string, extra: string[]) => {
          const out = `${dir}/${device}${extra.length}.jsonl`;
          const r = await runScript(cli, [
            ...["generate-gpt", "--load", `${dir}/ckpt`, "--device", device, "--greedy"],
            ...["--num-samples", "2", "--out-seq-length", "10", "--genfile", out, ...extra],
          ], vars);
          assert.equal(r.code, 0, r.stderr);
          if (device === "cuda") assert.match(r.stderr, /^device: cuda/m);
          return Deno.readTextFileSync(out).trim().split("\n").map((l) => JSON.parse(l).tokens as number[]);
        };
        const want = await tokens("cpu", []);
        assert.ok(want.every((t) => t.length > 0), JSON.stringify(want));
        assert.deepEqual(await tokens("cuda", []), want);
        assert.deepEqual(
          await tokens("cuda", ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
          want,
        );
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
