// CBLAS via Deno FFI: finds a system BLAS (OpenBLAS, BLIS, MKL, Accelerate) and binds sgemm/dgemm.
// Choice: an explicit path or "none" (option or env MEGATRON_DENO_BLAS), else the first candidate
// that opens and exports cblas_sgemm. Typed arrays are passed as "buffer" arguments, which carry
// their byteOffset, so a subarray is the way to point at a view's first element.

export const CBLAS_ROW_MAJOR = 101;
export const CBLAS_NO_TRANS = 111;
export const CBLAS_TRANS = 112;

const GEMM_SYMBOLS = {
  cblas_sgemm: {
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "i32",
    ],
    result: "void",
  },
  cblas_dgemm: {
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f64",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f64",
      "buffer",
      "i32",
    ],
    result: "void",
  },
} as const;

const CONFIG_SYMBOL = { openblas_get_config: { parameters: [], result: "pointer" } } as const;
const THREAD_SYMBOLS = {
  openblas_get_num_threads: { parameters: [], result: "i32" },
  openblas_set_num_threads: { parameters: ["i32"], result: "void" },
} as const;

export interface Cblas {
  /** Path (or soname) that was opened. */
  readonly path: string;
  /** Library name and version when known, e.g. "OpenBLAS 0.3.21"; else the file name. */
  readonly name: string;
  /** openblas_get_config() output when the library has it. */
  readonly config: string | null;
  /** Row-major sgemm; a/b/c point at the first element of each matrix (use subarray). */
  sgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    lda: number,
    b: Float32Array,
    ldb: number,
    beta: number,
    c: Float32Array,
    ldc: number,
  ): void;
  /** Threads the library uses for one call (1 when it cannot be told). */
  readonly threads: number;
  /** Sets the thread count for later calls (no-op for libraries without openblas_set_num_threads). */
  setThreads(n: number): void;
  dgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float64Array,
    lda: number,
    b: Float64Array,
    ldb: number,
    beta: number,
    c: Float64Array,
    ldc: number,
  ): void;
  close(): void;
}

/** Where the BLAS choice came from, for the backend's log line. */
export type BlasResult =
  | { blas: Cblas; reason?: undefined; notFound?: undefined }
  /** notFound: the search found no library (as opposed to "none" being chosen). */
  | { blas: null; reason: string; notFound?: boolean };

export function blasCandidates(): string[] {
  switch (Deno.build.os) {
    case "darwin":
      return [
        "/System/Library/Frameworks/Accelerate.framework/Accelerate",
        "libopenblas.dylib",
        "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
        "/usr/local/opt/openblas/lib/libopenblas.dylib",
      ];
    case "windows":
      return ["libopenblas.dll", "openblas.dll", "mkl_rt.dll"];
    default: {
      const dirs = [
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/",
        "/usr/lib/aarch64-linux-gnu/openblas-pthread/",
        "",
      ];
      const out: string[] = [];
      for (const d of dirs) out.push(`${d}libopenblas.so.0`, `${d}libopenblas.so`);
      out.push("libblis.so.4", "libblis.so", "libmkl_rt.so.2", "libmkl_rt.so");
      return out;
    }
  }
}

function readCString(p: Deno.PointerValue): string | null {
  if (p === null) return null;
  return new Deno.UnsafePointerView(p).getCString();
}

function tryOpen(path: string): Cblas | null {
  let lib: Deno.DynamicLibrary<typeof GEMM_SYMBOLS>;
  try {
    lib = Deno.dlopen(path, GEMM_SYMBOLS);
  } catch {
    return null;
  }
  let config: string | null = null;
  try {
    const cfg = Deno.dlopen(path, CONFIG_SYMBOL);
    config = readCString(cfg.symbols.openblas_get_config());
    cfg.close();
  } catch {
    // Not OpenBLAS: no config string.
  }
  let threadLib: Deno.DynamicLibrary<typeof THREAD_SYMBOLS> | null = null;
  try {
    threadLib = Deno.dlopen(path, THREAD_SYMBOLS);
  } catch {
    // Not OpenBLAS: the library manages its own threads.
  }
  let name = path.split("/").pop() ?? path;
  if (config) {
    const m = /^(OpenBLAS\s+\S+)/.exec(config);
    if (m) name = m[1];
  } else if (path.includes("Accelerate")) name = "Accelerate";
  else if (path.includes("blis")) name = "BLIS";
  else if (path.includes("mkl")) name = "MKL";
  const s = lib.symbols;
  const tr = (t: boolean) => (t ? CBLAS_TRANS : CBLAS_NO_TRANS);
  const threads = threadLib ? threadLib.symbols.openblas_get_num_threads() : 1;
  return {
    path,
    name,
    config,
    threads,
    setThreads(n) {
      threadLib?.symbols.openblas_set_num_threads(n);
    },
    sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) {
      s.cblas_sgemm(CBLAS_ROW_MAJOR, tr(ta), tr(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    },
    dgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) {
      s.cblas_dgemm(CBLAS_ROW_MAJOR, tr(ta), tr(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    },
    close() {
      threadLib?.close();
      lib.close();
    },
  };
}

/**
 * Opens a CBLAS. `choice`: a library path, "none", or undefined (then env MEGATRON_DENO_BLAS, then
 * the candidates). An explicit path that fails to open is an error, not a silent fallback.
 */
export function loadCblas(choice?: string, candidates: string[] = blasCandidates()): BlasResult {
  let sel = choice;
  let source = "option blas";
  if (sel === undefined) {
    try {
      sel = Deno.env.get("MEGATRON_DENO_BLAS") || undefined;
    } catch {
      sel = undefined; // no env permission: just search
    }
    source = "MEGATRON_DENO_BLAS";
  }
  if (sel === "none") return { blas: null, reason: `no BLAS: ${source}=none` };
  if (sel !== undefined) {
    const b = tryOpen(sel);
    if (!b) {
      throw new Error(
        `cblas: ${source}=${sel}: expected a CBLAS library exporting cblas_sgemm/cblas_dgemm, could not open it`,
      );
    }
    return { blas: b };
  }
  for (const p of candidates) {
    const b = tryOpen(p);
    if (b) return { blas: b };
  }
  return { blas: null, reason: "no BLAS found (tried OpenBLAS, BLIS, MKL, Accelerate)", notFound: true };
}
