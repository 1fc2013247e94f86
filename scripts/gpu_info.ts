// First step of a GPU run (scripts/gpu_check.sh): prints what the run depends on — the driver's and
// the runtime's CUDA versions, the libraries found, the GPU, and the kernels' manifest — and exits 1
// with one line when CUDA is not usable or the driver is older than the CUDA the fatbins need.
//
//   deno run -A scripts/gpu_info.ts        (honours MEGATRON_DENO_KERNELS_DIR and MEGATRON_DENO_<LIB>)

import { Cudart } from "../ffi/cudart.ts";
import { CudaDriver } from "../ffi/cuda.ts";
import { Cublas } from "../ffi/cublas.ts";
import { realDiscoverEnv } from "../ffi/discover.ts";
import {
  cudaVersionString,
  driverMismatch,
  kernelsDirUrl,
  readManifest,
  requiredDriverVersion,
} from "../src/backend/cuda/kernels.ts";

async function main(): Promise<number> {
  const env = realDiscoverEnv();
  const drv = CudaDriver.open(env);
  const dv = drv.driverVersion();
  console.log(`cuda driver:  CUDA ${cudaVersionString(dv)} (cuDriverGetVersion ${dv}) from ${drv.path}`);
  const rt = Cudart.open(env);
  const rv = rt.runtimeVersion();
  console.log(`cuda runtime: CUDA ${cudaVersionString(rv)} (cudaRuntimeGetVersion ${rv}) from ${rt.path}`);
  console.log(`cublas:       ${Cublas.open(env).path}`);
  const dir = kernelsDirUrl(
    env.get("MEGATRON_DENO_KERNELS_DIR"),
    new URL("../kernels/dist/", import.meta.url),
  );
  const manifest = await readManifest(dir);
  console.log(
    `kernels:      ${dir.pathname} (nvcc ${manifest.nvcc}; needs CUDA ${
      cudaVersionString(requiredDriverVersion(manifest))
    }+)`,
  );
  const count = rt.deviceCount();
  drv.init();
  for (let d = 0; d < count; d++) {
    const cc = `${rt.attribute(75, d)}${rt.attribute(76, d)}`;
    console.log(`gpu ${d}:        ${drv.deviceName(d)} (sm_${cc}, ${rt.attribute(16, d)} SMs)`);
  }
  if (count < 1) throw new Error("cudaGetDeviceCount: no CUDA device visible");
  if (rv > dv) {
    throw new Error(
      `the CUDA runtime (${cudaVersionString(rv)}) is newer than the driver (${cudaVersionString(dv)}): ` +
        "point MEGATRON_DENO_CUDART at a runtime the driver supports",
    );
  }
  const bad = driverMismatch(dv, manifest, dir.pathname);
  if (bad) throw new Error(bad);
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`gpu_info: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
