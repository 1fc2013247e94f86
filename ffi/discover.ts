// Locating NVIDIA shared libraries. Order per library: its env var (MEGATRON_DENO_<LIB>, a full
// path), LD_LIBRARY_PATH, CUDA toolkit dirs (CUDA_HOME, CUDA_PATH, /usr/local/cuda), the driver
// dirs (/usr/local/nvidia/lib64), system lib dirs, then Python wheel dirs
// (<site-packages>/nvidia/<pkg>/lib, and the CUDA 13/12 wheels' shared nvidia/cu13/lib,
// nvidia/cu12/lib). Pure path logic is separated from file-system probing so it
// can be unit-tested.

export type CudaLib = "cudart" | "cuda" | "cublas" | "cublaslt" | "cudnn" | "nccl";

export interface LibSpec {
  /** Environment variable holding an explicit path. */
  env: string;
  /** File names to try in each directory, most specific first. */
  names: readonly string[];
  /** nvidia wheel package directory (site-packages/nvidia/<pkg>/lib). */
  wheel: string;
}

export const LIB_SPECS: Readonly<Record<CudaLib, LibSpec>> = {
  cudart: {
    env: "MEGATRON_DENO_CUDART",
    names: ["libcudart.so", "libcudart.so.13", "libcudart.so.12"],
    wheel: "cuda_runtime",
  },
  cuda: { env: "MEGATRON_DENO_CUDA", names: ["libcuda.so", "libcuda.so.1"], wheel: "cuda_driver" },
  cublas: {
    env: "MEGATRON_DENO_CUBLAS",
    names: ["libcublas.so", "libcublas.so.13", "libcublas.so.12"],
    wheel: "cublas",
  },
  cublaslt: {
    env: "MEGATRON_DENO_CUBLASLT",
    names: ["libcublasLt.so", "libcublasLt.so.13", "libcublasLt.so.12"],
    wheel: "cublas",
  },
  cudnn: {
    env: "MEGATRON_DENO_CUDNN",
    names: ["libcudnn.so", "libcudnn.so.9", "libcudnn.so.8"],
    wheel: "cudnn",
  },
  nccl: { env: "MEGATRON_DENO_NCCL", names: ["libnccl.so", "libnccl.so.2"], wheel: "nccl" },
};

/** What the candidate list depends on: env lookups and a list of site-packages dirs. */
export interface DiscoverEnv {
  get(name: string): string | undefined;
  sitePackages: readonly string[];
  /** Extra site-packages from asking python3; called only when nothing else was found. */
  pythonSitePackages?: () => string[];
}

const SYSTEM_DIRS = [
  "/usr/local/nvidia/lib64",
  "/usr/local/nvidia/lib",
  "/usr/lib/x86_64-linux-gnu",
  "/usr/lib/aarch64-linux-gnu",
  "/usr/lib64",
  "/usr/lib",
  "/lib/x86_64-linux-gnu",
  "/lib64",
];

/** Shared library folders of the per-CUDA-major wheels, newest first. */
const WHEEL_SHARED_DIRS = ["cu13", "cu12"];

function uniq(xs: string[]): string[] {
  return [...new Set(xs)];
}

/** Directories searched for every library, in order (excluding wheel dirs). */
export function searchDirs(env: DiscoverEnv): string[] {
  const dirs: string[] = [];
  for (const d of (env.get("LD_LIBRARY_PATH") ?? "").split(":")) if (d) dirs.push(d);
  for (const v of ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]) {
    const root = env.get(v);
    if (root) dirs.push(`${root}/lib64`, `${root}/lib`, `${root}/targets/x86_64-linux/lib`);
  }
  dirs.push("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", ...SYSTEM_DIRS);
  return uniq(dirs);
}

/** Every path to try for `lib`, in order. */
export function candidatePaths(lib: CudaLib, env: DiscoverEnv): string[] {
  const spec = LIB_SPECS[lib];
  const out: string[] = [];
  const explicit = env.get(spec.env);
  if (explicit) out.push(explicit);
  const dirs = searchDirs(env);
  // CUDA 13 wheels (and some CUDA 12 ones) put every library in one nvidia/cu<major>/lib.
  for (const sp of env.sitePackages) {
    dirs.push(`${sp}/nvidia/${spec.wheel}/lib`, ...WHEEL_SHARED_DIRS.map((d) => `${sp}/nvidia/${d}/lib`));
  }
  // cuBLASLt ships in the cublas wheel; the driver is never in a wheel but harmless to list.
  for (const d of dirs) for (const n of spec.names) out.push(`${d}/${n}`);
  return uniq(out);
}

/** site-packages dirs under common prefixes (venvs, conda, system, user), found without python. */
export function sitePackagesDirs(env: DiscoverEnv, listDir: (p: string) => string[]): string[] {
  const prefixes: string[] = [];
  for (const v of ["VIRTUAL_ENV", "CONDA_PREFIX"]) {
    const p = env.get(v);
    if (p) prefixes.push(p);
  }
  const home = env.get("HOME");
  if (home) prefixes.push(`${home}/.local`);
  prefixes.push("/usr/local", "/usr", "/opt/conda", "/opt/venv", "/venv");
  const out: string[] = [];
  for (const pre of prefixes) {
    for (const lib of ["lib", "lib64"]) {
      for (const py of listDir(`${pre}/${lib}`)) {
        if (!py.startsWith("python3")) continue;
        for (const kind of ["site-packages", "dist-packages"]) out.push(`${pre}/${lib}/${py}/${kind}`);
      }
    }
  }
  return uniq(out);
}

function listDirReal(p: string): string[] {
  try {
    return [...Deno.readDirSync(p)].map((e) => e.name);
  } catch {
    return [];
  }
}

function existsFile(p: string): boolean {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
}

/** The process environment, or an empty one when env access is not permitted. */
export function realDiscoverEnv(): DiscoverEnv {
  const get = (n: string): string | undefined => {
    try {
      return Deno.env.get(n);
    } catch {
      return undefined;
    }
  };
  const base = { get, sitePackages: [] as string[] };
  // python3 is spawned at most once per environment object, and only on demand.
  let py: string[] | null = null;
  const pythonSitePackages = () => (py ??= askPython());
  return { get, sitePackages: sitePackagesDirs(base, listDirReal), pythonSitePackages };
}

/** Asks python3 once for its site-packages (used only when nothing else was found). */
function askPython(): string[] {
  try {
    const out = new Deno.Command("python3", {
      args: ["-c", "import site,sys; print('\\n'.join(site.getsitepackages()))"],
      stdout: "piped",
      stderr: "null",
    }).outputSync();
    if (!out.success) return [];
    return new TextDecoder().decode(out.stdout).split("\n").filter((s) => s.length > 0);
  } catch {
    return [];
  }
}

/**
 * Opens `lib` with the given symbol table: the first candidate that exists and dlopens wins.
 * Throws one line naming every path tried (and the dlopen error of existing files) otherwise.
 */
export function openLibrary<S extends Deno.ForeignLibraryInterface>(
  lib: CudaLib,
  symbols: S,
  env: DiscoverEnv = realDiscoverEnv(),
): { lib: Deno.DynamicLibrary<S>; path: string } {
  const tried: string[] = [];
  const attempt = (paths: string[]) => {
    for (const p of paths) {
      if (tried.includes(p)) continue;
      if (!existsFile(p)) {
        tried.push(p);
        continue;
      }
      try {
        return { lib: Deno.dlopen(p, symbols), path: p };
      } catch (e) {
        tried.push(`${p} (${(e as Error).message.split("\n")[0]})`);
      }
    }
    return null;
  };
  const found = attempt(candidatePaths(lib, env));
  if (found) return found;
  const py = (env.pythonSitePackages?.() ?? []).filter((p) => !env.sitePackages.includes(p));
  if (py.length > 0) {
    const again = attempt(candidatePaths(lib, { get: env.get, sitePackages: py }));
    if (again) return again;
  }
  throw new Error(
    `${lib}: library not found or not loadable (set ${LIB_SPECS[lib].env}); tried: ${tried.join(", ")}`,
  );
}

/** The error line every checked call throws: "<callName>: <library error string> (<code>)". */
export function statusError(call: string, message: string, code: number): Error {
  return new Error(`${call}: ${message} (${code})`);
}

/** Reads a NUL-terminated C string returned by a library (null -> fallback). */
export function cString(p: Deno.PointerValue, fallback: string): string {
  if (p === null) return fallback;
  try {
    return Deno.UnsafePointerView.getCString(p);
  } catch {
    return fallback;
  }
}

/** NUL-terminated UTF-8 bytes for passing a name as a "buffer" argument. */
export function cStr(s: string): Uint8Array<ArrayBuffer> {
  const b = new TextEncoder().encode(s);
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}
