// scripts/gpu_check.sh end to end without a GPU: a fake nvidia-smi that lists one GPU and the CPU
// emulator of the CUDA stack (tests/gpu/emulator) in place of the libraries. Checks that a kernel
// fault fails the run and the sync-check rerun names the kernel, that the launcher step (launch-nccl,
// here a one-process CPU dry run without NCCL) trains to the in-process run's losses, that missing CUDA on a host whose
// nvidia-smi lists a GPU fails (not "skipped"), and that the table and logs land in $OUT. The
// "gpt-default" step (embedded default on CUDA vs CPU) runs as a dry run (both halves on the CPU, a
// shrunken model: the emulator is far too slow for a 50k vocabulary) that builds the corpus in a fresh
// cache, and fails in one line when CUDA is unusable; "gpt-generate" (greedy text from that checkpoint,
// CUDA, a CUDA layout and CPU identical) the same way.
// Skips with one line without a C++ compiler or bash.
import assert from "node:assert/strict";
import { buildEmulator } from "./gpu/emulator/build.ts";

const built = await buildEmulator();
const root = new URL("..", import.meta.url).pathname;
const opts = { sanitizeResources: false, sanitizeOps: false };

async function gpuCheck(
  env: Record<string, string>,
): Promise<{ code: number; out: string; table: string; files: string[] }> {
  const fake = await Deno.makeTempDir({ prefix: "md-fake-smi-" });
  await Deno.writeTextFile(
    `${fake}/nvidia-smi`,
    '#!/bin/sh\ncase "$*" in *-L*) echo "GPU 0: Fake H200 (UUID: GPU-0)";; *) echo "Fake H200, 580.65, 143771 MiB";; esac\n',
  );
  await Deno.chmod(`${fake}/nvidia-smi`, 0o755);
  const out = await Deno.makeTempDir({ prefix: "md-gpu-check-out-" });
  const cache = await Deno.makeTempDir({ prefix: "md-gpu-check-cache-" });
  try {
    const r = await new Deno.Command("bash", {
      args: ["scripts/gpu_check.sh"],
      cwd: root,
      env: {
        ...env,
        PATH: `${fake}:${Deno.env.get("PATH")}`,
        OUT: out,
        NO_COLOR: "1",
        GPU_CHECK_DEADLINE: "300",
        MEGATRON_DENO_CACHE: cache,
        GPU_CHECK_DEFAULT_ARGS: tinyDefault,
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
    const table = await Deno.readTextFile(`${out}/gpu_check_table.txt`);
    assert.ok((await Deno.stat(`${out}/gpu_check.log`)).size > 0, "the steps' logs come back under $OUT");
    const files = [...Deno.readDirSync(out)].map((e) => e.name).sort();
    return { code: r.code, out: text, table, files };
  } finally {
    await Deno.remove(fake, { recursive: true });
    await Deno.remove(out, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
}

/** The embedded default shrunken to seconds per run (the GPT-2 vocabulary stays). */
const tinyDefault =
  "--train-iters 3 --num-layers 1 --hidden-size 32 --num-attention-heads 2 --seq-length 16 " +
  "--micro-batch-size 2 --global-batch-size 2";

/** The table row of a step: "name seconds budget result". */
function row(table: string, name: string): string {
  const line = table.split("\n").find((l) => l.startsWith(`${name} `));
  assert.ok(line, `no row '${name}' in:\n${table}`);
  return line.replace(/^\S+\s+\d+\s+\d+\s+/, "");
}

if ("skip" in built) {
  console.log(`gpu_check script: skipped — ${built.skip}`);
} else {
  const lib = built.path;
  const libs = { MEGATRON_DENO_CUDART: lib, MEGATRON_DENO_CUDA: lib, MEGATRON_DENO_CUBLAS: lib };

  Deno.test(
    { name: "gpu_check: a faulting kernel fails the run; the sync rerun names it", ...opts },
    async () => {
      const r = await gpuCheck({
        ...libs,
        EMU_FAULT_KERNEL: "md_scale_f32_f32",
        GPU_CHECK_TEST_ARGS: "--filter copy",
        GPU_CHECK_DEFAULT_DEVICE: "cpu",
        GPU_CHECK_NCCL_BACKEND: "", // the dry run: launcher, one CPU process, no NCCL
        // The shrunken default has one layer: no PP 2.
        GPU_CHECK_GENERATE_LAYOUT: "--tensor-model-parallel-size 2",
      });
      assert.equal(r.code, 1, r.out);
      assert.match(r.table, /^gpu_check: GPU Fake H200, 580\.65, 143771 MiB; cuda driver: CUDA 13\.0 /);
      assert.match(row(r.table, "info"), /^ok \(deno \d/);
      assert.equal(row(r.table, "cuda-info"), "ok");
      assert.match(row(r.table, "ops"), /^FAILED \(exit 1\): /);
      assert.match(
        row(r.table, "sync:ops"),
        /^FAILED \(exit 1\): .*cuda sync check: kernel md_scale_f32_f32 grid \[4,1,1\] block \[256,1,1\] failed: an illegal memory access was encountered \(700\)/,
      );
      assert.equal(row(r.table, "gpt-train"), "ok");
      // The dry run: CPU vs CPU is bit-identical, so the worst difference is exactly 0 (at iteration 1).
      assert.match(
        row(r.table, "gpt-default"),
        /^ok \(3 iterations, cpu loss \d+\.\d{4} -> \d+\.\d{4}, max \|cuda - cpu\| \/ \|cpu\| 0\.00e\+0 at iteration 1 \(bound 1e-4\)\)$/,
      );
      assert.ok(r.out.includes("corpus: 233 documents"), "the step built the corpus in the fresh cache");
      // The launcher's run (one process) against the in-process run: the same losses.
      assert.match(
        row(r.table, "launch-nccl"),
        /^ok \(3 iterations, cuda loss \d+\.\d{4} -> \d+\.\d{4}, max \|nccl - cuda\| \/ \|cuda\| 0\.00e\+0 at iteration 1 \(bound 1e-6\)\)$/,
      );
      assert.match(
        row(r.table, "gpt-generate"),
        /^ok \((\d+) greedy tokens, cuda == cuda --tensor-model-parallel-size 2 == cpu\)$/,
      );
      assert.deepEqual(r.files, [
        "generate_cpu.jsonl",
        "generate_cuda-layout.jsonl",
        "generate_cuda.jsonl",
        "gpt_default_cpu.jsonl",
        "gpt_default_cuda.jsonl",
        "gpt_default_nccl.jsonl",
        "gpu_check.log",
        "gpu_check_table.txt",
      ]);
      assert.ok(
        r.out.includes(
          "first failing op (tests/gpu/ops.test.ts): kernel md_scale_f32_f32 grid [4,1,1] block [256,1,1] " +
            "failed: an illegal memory access was encountered (700)",
        ),
        r.out,
      );
      assert.ok(r.out.trimEnd().endsWith(r.table.trimEnd()), "the table is printed last");
      assert.match(r.table, /\ngpu_check: FAILED in \d+s\n?$/);
    },
  );

  Deno.test(
    { name: "gpu_check: a GPU listed but CUDA unusable is a failure, not a skip", ...opts },
    async () => {
      const none = "/nonexistent/libcuda.so";
      const r = await gpuCheck({
        MEGATRON_DENO_CUDART: lib,
        MEGATRON_DENO_CUBLAS: lib,
        MEGATRON_DENO_CUDA: none,
        LD_LIBRARY_PATH: "/nonexistent",
        GPU_CHECK_TEST_ARGS: "--filter copy",
      });
      assert.equal(r.code, 1, r.out);
      assert.match(row(r.table, "cuda-info"), /^FAILED \(exit 1\): gpu_info: cuda: library not found/);
      assert.match(
        row(r.table, "gpt-default"),
        /^FAILED \(exit 1\): pretrain_gpt: MEGATRON_DENO_REQUIRE_CUDA=1 but CUDA is not usable: cuda: library not found/,
      );
      // No libnccl here: the step says so instead of failing (NCCL is not in the payload).
      assert.match(
        row(r.table, "launch-nccl"),
        /^skipped \(nccl: library not found or not loadable \(set MEGATRON_DENO_NCCL\); tried: /,
      );
      assert.match(
        row(r.table, "gpt-generate"),
        /^FAILED \(exit 1\): generate: no checkpoint at .*ckpt-cuda \(gpt-default did not save one\)$/,
      );
      for (const step of ["ops", "gpt-train"]) {
        assert.match(
          row(r.table, step),
          /^FAILED \(exit 1\): .*MEGATRON_DENO_REQUIRE_CUDA=1 but CUDA is not usable: cuda: library not found/,
          step,
        );
      }
    },
  );
}
