// Builds the CPU CUDA emulator (cuda_emulator.cpp + the real kernels/*.cu) into a shared
// library. Returns its path, or null with a reason when no C++ compiler is available.
import { allKernelNames } from "../../../src/backend/cuda/kernels.ts";

export async function buildEmulator(): Promise<{ path: string } | { skip: string }> {
  const dir = await Deno.makeTempDir({ prefix: "md-cudaemu-" });
  await Deno.writeTextFile(`${dir}/kernel_list.inc`, allKernelNames().map((n) => `K(${n})\n`).join(""));
  const src = new URL("./cuda_emulator.cpp", import.meta.url).pathname;
  const kernels = new URL("../../../kernels/", import.meta.url).pathname;
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("c++", {
      args: [
        "-std=c++17",
        "-O1",
        "-ffp-contract=off", // no FMA contraction: the kernels' rounding as written
        "-shared",
        "-fPIC",
        "-w",
        "-I",
        dir,
        "-I",
        kernels,
        "-o",
        `${dir}/libcudaemu.so`,
        src,
      ],
      stderr: "piped",
    }).output();
  } catch (e) {
    return { skip: `no C++ compiler (${(e as Error).message.split("\n")[0]})` };
  }
  if (!out.success) {
    throw new Error(`emulator build failed:\n${new TextDecoder().decode(out.stderr).slice(0, 3000)}`);
  }
  return { path: `${dir}/libcudaemu.so` };
}
