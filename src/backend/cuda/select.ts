// Backend selection for --device cuda|cpu|auto. auto picks CUDA when the driver, a GPU and the
// libraries are present and otherwise falls back to the CPU, reporting why.

import type { Backend } from "../backend.ts";
import { createCpuBackend } from "../cpu/cpu_backend.ts";
import { createCudaBackend, type CudaBackendOptions, type CudaProbe, probeCuda } from "./cuda_backend.ts";

export type DeviceFlag = "cuda" | "cpu" | "auto";

export interface SelectedBackend {
  backend: Backend;
  /** One line for the log: what was chosen and, for auto without CUDA, why. */
  note: string;
}

export function parseDeviceFlag(value: string): DeviceFlag {
  if (value === "cuda" || value === "cpu" || value === "auto") return value;
  throw new Error(`--device: expected cuda, cpu or auto, found '${value}'`);
}

/** `localRank`: this process's rank on its node when one process runs per GPU; it picks the GPU
 *  localRank % (visible GPUs), as Megatron's rank % device_count (which equals the local rank when
 *  every node runs one process per GPU, and stays right when SLURM shows each task one GPU). An
 *  explicit `device` wins. */
export async function selectBackend(
  device: DeviceFlag,
  opts: CudaBackendOptions & { probe?: () => CudaProbe; log?: (line: string) => void; localRank?: number } =
    {},
): Promise<SelectedBackend> {
  if (device === "cpu") {
    const b = createCpuBackend({ log: opts.log });
    return { backend: b, note: `device: ${b.description}` };
  }
  const probe = (opts.probe ?? (() => probeCuda(opts.env)))();
  if (!probe.ok) {
    if (device === "cuda") throw new Error(`--device cuda: CUDA is not usable: ${probe.reason}`);
    const b = createCpuBackend({ log: opts.log });
    return { backend: b, note: `device: auto chose cpu (no CUDA: ${probe.reason}); ${b.description}` };
  }
  const b = await createCudaBackend({ ...opts, device: opts.device ?? (opts.localRank ?? 0) % probe.count });
  return { backend: b, note: `device: ${b.description}` };
}
