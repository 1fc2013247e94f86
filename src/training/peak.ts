// The peak FLOP/s that MFU is measured against, with a statement of where the number comes from:
// the datasheet dense peak for known GPUs, otherwise the best GEMM rate measured on this backend
// (for a CPU, the BLAS library's own sgemm/dgemm rate on this machine).

import type { Backend } from "../backend/backend.ts";
import type { DType } from "../tensor/dtype.ts";

/** Dense (no sparsity) datasheet peaks, FLOP/s. f32 is the non-tensor-core rate (TF32 is off). */
const DATASHEET: { match: RegExp; name: string; half: number; f32: number }[] = [
  { match: /H200/, name: "NVIDIA H200 datasheet", half: 989e12, f32: 67e12 },
  { match: /H100/, name: "NVIDIA H100 SXM datasheet", half: 989e12, f32: 67e12 },
  { match: /A100/, name: "NVIDIA A100 datasheet", half: 312e12, f32: 19.5e12 },
];

export interface DevicePeak {
  flops: number;
  what: string;
  /** The utilization's name in the log line: "MFU" against a datasheet peak; against a measured GEMM
   *  rate (a CPU, an unknown GPU) it says so, since that is not the hardware's peak. */
  label: string;
}

/** Best of a few n x n x n GEMMs in `dtype` on the backend. */
export function measureGemmPeak(backend: Backend, dtype: DType, n: number, reps = 3): number {
  const a = backend.zeros(dtype, [n, n]);
  const b = backend.zeros(dtype, [n, n]);
  const c = backend.zeros(dtype === "f64" ? "f64" : "f32", [n, n]);
  backend.fill(a, 0.5);
  backend.fill(b, 0.25);
  let best = Infinity;
  for (let i = 0; i < reps + 1; i++) {
    const t0 = performance.now();
    backend.gemm({ transA: false, transB: false, m: n, n, k: n, a, b, c });
    backend.synchronize();
    const dt = performance.now() - t0;
    if (i > 0) best = Math.min(best, dt); // the first run warms up (thread pools, JIT)
  }
  for (const t of [a, b, c]) backend.free(t);
  return (2 * n * n * n) / (best / 1000);
}

export function devicePeak(backend: Backend, dtype: DType): DevicePeak {
  const half = dtype === "f16" || dtype === "bf16";
  if (backend.name === "cuda") {
    const d = DATASHEET.find((e) => e.match.test(backend.description));
    if (d) {
      return {
        flops: half ? d.half : d.f32,
        what: `${d.name} dense ${half ? dtype : "f32"} peak`,
        label: "MFU",
      };
    }
    return {
      flops: measureGemmPeak(backend, dtype, 4096),
      what: `measured ${dtype} cuBLAS GEMM 4096^3`,
      label: "MFU (vs measured GEMM peak)",
    };
  }
  // Half GEMMs on the CPU convert to f32 and run sgemm, so the f32 rate is the ceiling.
  const d = dtype === "f64" ? "f64" : "f32";
  return {
    flops: measureGemmPeak(backend, d, 512),
    what: `measured ${d} GEMM 512^3 on ${backend.description}`,
    label: "MFU (vs measured CPU GEMM peak)",
  };
}
