// Whether NCCL can be used here: prints "nccl: <version> (<path>)", or the discovery's one line and exits
// 1. scripts/gpu_check.sh asks it before the launch-nccl step: NCCL is not in the GPU payload (the
// library alone is far larger than a device call may carry), so a host without it skips that step
// with this line instead of failing it.
//
//   deno run -A scripts/nccl_info.ts        (honours MEGATRON_DENO_NCCL, LD_LIBRARY_PATH, pip wheels)

import { Nccl, ncclVersionString } from "../ffi/nccl.ts";

export function ncclInfo(open: () => Nccl = () => Nccl.open()): { ok: boolean; line: string } {
  try {
    const lib = open();
    const line = `nccl: ${ncclVersionString(lib.version())} (${lib.path})${
      lib.hasSplit ? "" : ", without ncclCommSplit"
    }`;
    lib.close();
    return { ok: true, line };
  } catch (e) {
    return { ok: false, line: (e as Error).message.split("\n")[0] };
  }
}

if (import.meta.main) {
  const r = ncclInfo();
  console.log(r.line);
  Deno.exit(r.ok ? 0 : 1);
}
