// The kernel library: fatbins from kernels/dist (built by scripts/build_kernels.ts), loaded into
// the current CUDA context, functions resolved once on first use, and the argument layout of
// every kernel family (must match the extern "C" signatures in kernels/*.cu).

import type { ArgKind, CudaDriver, CuFunction, CuModule } from "../../../ffi/cuda.ts";

export const FATBINS = [
  "elementwise.fatbin",
  "transformer.fatbin",
  "train.fatbin",
  "attention.fatbin",
] as const;

/** The flash-attention kernels' arguments after the pointers (kernels/attention.cu FA_RNG_PARAMS):
 *  maskKind, scale, p, keepScale, seed, stream, iteration, base, rowStride, rowLen, np, sq, sk, hn, and
 *  (batch stride, head stride, row stride) of q, k, v and o. */
const FLASH_TAIL: readonly ArgKind[] = [
  "i32",
  "f32",
  "f32",
  "f32",
  "u32",
  "u32",
  "u32",
  ...Array<ArgKind>(19).fill("u64"),
];

/** Argument kinds per kernel family (the name prefix before the dtype suffixes). */
export const KERNEL_ARGS: Readonly<Record<string, readonly ArgKind[]>> = {
  md_copy: ["ptr", "ptr", "u64"],
  md_fill: ["ptr", "u64", "f32"],
  md_fill_i32: ["ptr", "u64", "i32"],
  md_scale: ["ptr", "ptr", "u64", "f32"],
  md_add: ["ptr", "ptr", "ptr", "u64", "f32", "f32"],
  md_transpose12: ["ptr", "ptr", "u64", "u64", "u64", "u64"],
  md_colpartial: ["ptr", "ptr", "u64", "u64"],
  md_colfinish: ["ptr", "ptr", "u64", "u64", "i32"],
  md_sumsquares: ["ptr", "ptr", "u64"],
  md_countzeros: ["ptr", "ptr", "u64"],
  md_sumpartials: ["ptr", "ptr", "u64", "i32"],
  md_nonfinite: ["ptr", "ptr", "u64"],
  md_layernorm_fwd: ["ptr", "ptr", "ptr", "f32", "ptr", "ptr", "ptr", "u64"],
  md_layernorm_bwd_dx: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "u64"],
  md_layernorm_bwd_params: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "u64", "u64"],
  md_bias_gelu_fwd: ["ptr", "ptr", "ptr", "u64", "u64"],
  md_bias_gelu_bwd: ["ptr", "ptr", "ptr", "ptr", "u64", "u64"],
  md_act_fwd: ["ptr", "ptr", "u64", "i32"],
  md_act_bwd: ["ptr", "ptr", "ptr", "u64", "i32"],
  md_softmax_fwd: ["ptr", "ptr", "ptr", "i32", "f32", "u64", "u64", "u64"],
  md_softmax_bwd: ["ptr", "ptr", "f32", "ptr", "u64"],
  md_dropout: ["ptr", "ptr", "u64", "f32", "f32", "u32", "u32", "u32", "u64", "u64", "u64"],
  md_bias_dropout_add: [
    "ptr",
    "ptr",
    "ptr",
    "ptr",
    "u64",
    "u64",
    "f32",
    "f32",
    "u32",
    "u32",
    "u32",
    "u64",
    "u64",
    "u64",
  ],
  md_embedding_fwd: ["ptr", "ptr", "ptr", "u64", "u64", "u64", "i64"],
  md_embedding_bwd: ["ptr", "ptr", "ptr", "u64", "u64", "u64", "i64"],
  md_ce_stats: ["ptr", "ptr", "i64", "ptr", "ptr", "u64"],
  md_ce_sumexp: ["ptr", "ptr", "ptr", "u64"],
  md_ce_loss: ["ptr", "ptr", "ptr", "ptr", "u64"],
  md_ce_bwd: ["ptr", "ptr", "i64", "ptr", "ptr", "ptr", "ptr", "u64"],
  md_adam: ["ptr", "ptr", "ptr", "ptr", "u64", "f32", "f32", "f32", "f32", "f32", "f32", "f32"],
  md_adam_multi: ["ptr", "f32", "f32", "f32", "f32", "f32", "f32", "f32"],
  md_sgd: ["ptr", "ptr", "ptr", "u64", "f32", "f32", "f32", "i32"],
  md_init_normal: ["ptr", "u64", "f64", "u32", "u32", "u32", "u64", "u64", "u64"],
  md_flash_attn_fwd: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr", ...FLASH_TAIL],
  md_flash_attn_bwd_dq: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", ...FLASH_TAIL],
  md_flash_attn_bwd_dkv: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", ...FLASH_TAIL],
};

/** Full kernel name: family plus dtype suffixes, e.g. kernelName("md_add", "f32", "bf16", "f32"). */
export function kernelName(family: string, ...suffixes: string[]): string {
  return [family, ...suffixes].join("_");
}

/** Every kernel name the backend may request (used to check the fatbins on CPU). */
export function allKernelNames(): string[] {
  const F = ["f32", "f16", "bf16"];
  const I = ["i32", "i64"];
  const out: string[] = [];
  const pairs = F.flatMap((a) => F.map((b) => [a, b]));
  for (const [a, b] of pairs) {
    out.push(kernelName("md_copy", a, b), kernelName("md_scale", a, b), kernelName("md_softmax_fwd", a, b));
    out.push(kernelName("md_bias_dropout_add", a, b), kernelName("md_adam_multi", a, b));
    for (const c of F) out.push(kernelName("md_add", a, b, c));
  }
  for (const t of F) {
    for (
      const fam of [
        "md_fill",
        "md_colpartial",
        "md_colfinish",
        "md_sumsquares",
        "md_countzeros",
        "md_nonfinite",
        "md_layernorm_fwd",
        "md_layernorm_bwd_dx",
        "md_layernorm_bwd_params",
        "md_bias_gelu_fwd",
        "md_bias_gelu_bwd",
        "md_act_fwd",
        "md_act_bwd",
        "md_softmax_bwd",
        "md_dropout",
        "md_ce_sumexp",
        "md_adam",
        "md_sgd",
      ]
    ) out.push(kernelName(fam, t));
    for (const fam of ["md_flash_attn_fwd", "md_flash_attn_bwd_dq", "md_flash_attn_bwd_dkv"]) {
      out.push(kernelName(fam, t), kernelName(fam, t, "d64"));
    }
    for (const i of I) {
      for (const fam of ["md_embedding_fwd", "md_embedding_bwd", "md_ce_stats", "md_ce_bwd"]) {
        out.push(kernelName(fam, i, t));
      }
    }
  }
  out.push("md_fill_i32", "md_ce_loss", "md_sumpartials");
  for (const t of [...F, "f64"]) out.push(kernelName("md_init_normal", t));
  for (const w of [1, 2, 4, 8]) out.push(`md_transpose12_b${w}`);
  return out;
}

/** The argument kinds of a full kernel name (longest matching family prefix). */
export function argKindsFor(name: string): readonly ArgKind[] {
  if (name in KERNEL_ARGS) return KERNEL_ARGS[name];
  let best = "";
  for (const fam of Object.keys(KERNEL_ARGS)) {
    if (name.startsWith(fam + "_") && fam.length > best.length) best = fam;
  }
  if (!best) throw new Error(`cuda kernels: no argument layout for kernel ${name}`);
  return KERNEL_ARGS[best];
}

/** Reads a fatbin next to this module's package: fetch for http(s), the file system otherwise. */
export async function readFatbin(url: URL): Promise<Uint8Array<ArrayBuffer>> {
  if (url.protocol === "http:" || url.protocol === "https:") {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`cuda kernels: GET ${url.href} returned ${r.status}`);
    return new Uint8Array(await r.arrayBuffer());
  }
  try {
    return await Deno.readFile(url);
  } catch (e) {
    throw new Error(
      `cuda kernels: cannot read ${url.href} (${
        (e as Error).message
      }); build it with 'deno task build:kernels'`,
    );
  }
}

/** What kernels/dist/manifest.json (scripts/build_kernels.ts) says about how the fatbins were built. */
export interface KernelManifest {
  /** nvcc's release line, e.g. "release 13.0, V13.0.88". */
  nvcc: string;
}

/** The CUDA version (as cuDriverGetVersion reports it: 1000 major + 10 minor) the fatbins need. */
export function requiredDriverVersion(m: KernelManifest): number {
  const r = /release (\d+)\.(\d+)/.exec(m.nvcc ?? "");
  if (!r) throw new Error(`cuda kernels: manifest nvcc '${m.nvcc}' has no 'release X.Y'`);
  return Number(r[1]) * 1000 + Number(r[2]) * 10;
}

/** 13000 -> "13.0". */
export function cudaVersionString(v: number): string {
  return `${Math.floor(v / 1000)}.${(v % 1000) / 10}`;
}

/** Oldest driver branch per CUDA major (NVIDIA's compatibility table), for the error line. */
const DRIVER_BRANCH: Readonly<Record<number, string>> = { 11: "r450", 12: "r525", 13: "r580" };

/**
 * One line when the driver is older than the CUDA the fatbins were built with (their ELF ABI and
 * PTX version then cannot load), else null. `dir` names the folder in the message.
 */
export function driverMismatch(driverVersion: number, m: KernelManifest, dir: string): string | null {
  const need = requiredDriverVersion(m);
  if (driverVersion >= need) return null;
  const branch = DRIVER_BRANCH[Math.floor(need / 1000)];
  return `cuda kernels: ${dir} was built with nvcc ${cudaVersionString(need)} and needs a CUDA ${
    cudaVersionString(need)
  }+ driver${branch ? ` (${branch}+)` : ""}, but this driver supports CUDA ${
    cudaVersionString(driverVersion)
  } (cuDriverGetVersion ${driverVersion}); rebuild with this host's nvcc ` +
    `(deno task build:kernels --out DIR) and set MEGATRON_DENO_KERNELS_DIR=DIR`;
}

/** The kernels folder: MEGATRON_DENO_KERNELS_DIR (a path, relative to the working directory) or
 *  the package's kernels/dist. */
export function kernelsDirUrl(envDir: string | undefined, fallback: URL): URL {
  if (!envDir) return fallback;
  const abs = envDir.startsWith("/") ? envDir : `${Deno.cwd()}/${envDir}`;
  return new URL(`file://${abs.endsWith("/") ? abs : abs + "/"}`);
}

/** Reads and parses manifest.json in `distUrl`; one line naming the file when it cannot. */
export async function readManifest(distUrl: URL): Promise<KernelManifest> {
  const url = new URL("manifest.json", distUrl);
  const bytes = await readFatbin(url);
  try {
    const m = JSON.parse(new TextDecoder().decode(bytes));
    if (typeof m?.nvcc !== "string") throw new Error("no nvcc field");
    return m as KernelManifest;
  } catch (e) {
    throw new Error(`cuda kernels: ${url.href} is not a kernel manifest (${(e as Error).message})`);
  }
}

export class KernelLibrary {
  private readonly fns = new Map<string, { fn: CuFunction; kinds: readonly ArgKind[] }>();

  private constructor(private readonly drv: CudaDriver, private readonly modules: CuModule[]) {}

  /** Loads every fatbin of `distUrl` after checking the driver against its manifest. */
  static async load(drv: CudaDriver, distUrl: URL): Promise<KernelLibrary> {
    const bad = driverMismatch(drv.driverVersion(), await readManifest(distUrl), distUrl.pathname);
    if (bad) throw new Error(bad);
    const mods: CuModule[] = [];
    for (const f of FATBINS) {
      const bytes = await readFatbin(new URL(f, distUrl));
      try {
        mods.push(drv.loadModule(bytes));
      } catch (e) {
        throw new Error(`${(e as Error).message} while loading ${new URL(f, distUrl).pathname}`);
      }
    }
    return new KernelLibrary(drv, mods);
  }

  get(name: string): { fn: CuFunction; kinds: readonly ArgKind[] } {
    let k = this.fns.get(name);
    if (k) return k;
    // Only "not in this module" moves on; any other error is real and keeps its code.
    for (const m of this.modules) {
      const fn = this.drv.findFunction(m, name);
      if (fn !== undefined) {
        k = { fn, kinds: argKindsFor(name) };
        break;
      }
    }
    if (!k) {
      throw new Error(
        `cuda kernels: ${name} not found in kernels/dist (rebuild with deno task build:kernels)`,
      );
    }
    this.fns.set(name, k);
    return k;
  }

  unload(): void {
    for (const m of this.modules) this.drv.unloadModule(m);
    this.modules.length = 0;
    this.fns.clear();
  }
}
