// test:gpu: multi-tensor Adam and fused attention on the GPU against the CPU reference (the tests are
// tests/gpu/perf_kernels_cases.ts; CI runs them on the kernel emulator). Without CUDA: one skip line.
import type { CudaBackend } from "../../src/backend/cuda/cuda_backend.ts";
import { setup } from "./harness.ts";
import { registerPerfKernelTests } from "./perf_kernels_cases.ts";

const ctx = await setup();
if (ctx) {
  if (ctx.cuda.name !== "cuda") {
    console.log("test:gpu perf kernels: skipped — the dry run's stand-in backend has no fused ops");
  } else {
    const cuda = ctx.cuda as CudaBackend;
    cuda.setFusedAttention(true);
    registerPerfKernelTests(cuda, ctx.cpu, "gpu: ");
  }
}
