// The performance kernels (multi-tensor Adam, fused attention) on the CPU kernel emulator
// (tests/gpu/emulator: the real kernels/*.cu, fibers for threads) through the real CudaBackend; the
// tests themselves are tests/gpu/perf_kernels_cases.ts, which test:gpu runs on a GPU.
// Skips with one line without a C++ compiler.
import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { createCudaBackend } from "../src/backend/cuda/cuda_backend.ts";
import type { Backend } from "../src/backend/backend.ts";
import type { DiscoverEnv } from "../ffi/discover.ts";
import { buildEmulator } from "./gpu/emulator/build.ts";
import { registerPerfKernelTests } from "./gpu/perf_kernels_cases.ts";

const built = await buildEmulator();
const opts = { sanitizeResources: false, sanitizeOps: false };

if ("skip" in built) {
  console.log(`cuda perf kernels (emulated): skipped — ${built.skip}`);
} else {
  const vars: Record<string, string> = {
    MEGATRON_DENO_CUDART: built.path,
    MEGATRON_DENO_CUDA: built.path,
    MEGATRON_DENO_CUBLAS: built.path,
  };
  const env: DiscoverEnv = { get: (n) => vars[n], sitePackages: [], pythonSitePackages: () => [] };
  const cuda = await createCudaBackend({ env, fusedAttention: true });
  const cpu = createCpuBackend({ log: () => {} });
  // Without the option the backend offers no fused op, so attention stays unfused.
  const plain = await createCudaBackend({ env });

  Deno.test({ name: "emulated: fused attention offered only when enabled", ...opts }, () => {
    assert.ok(cuda.fusedAttentionFwd && cuda.fusedAttentionBwd);
    assert.equal(plain.fusedAttentionFwd, undefined);
    assert.equal((cpu as Backend).fusedAttentionFwd, undefined);
  });
  registerPerfKernelTests(cuda, cpu, "emulated: ");
}
