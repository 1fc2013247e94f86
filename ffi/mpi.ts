// MPI bindings through Deno FFI for MPICH 4 (libmpich.so.12) and Open MPI 4/5 (libmpi.so.40). Only the
// non-blocking calls are bound (plus set-up): the communicator polls their requests so that every wait
// is bounded by a timeout and never blocks the event loop for long. The two ABIs differ in handles:
// MPICH's are 32-bit integer constants (mpi.h), Open MPI's are addresses of global objects
// (ompi_mpi_comm_world, ...) looked up with dlsym, and its library must be loaded RTLD_GLOBAL because
// its plugins resolve symbols from it.
// Discovery: MEGATRON_DENO_MPI (a full path: used or reported, no fallback), else LD_LIBRARY_PATH,
// then the system library dirs; MPICH first unless Open MPI's launcher started this process.

import { cStr } from "./discover.ts";

export type MpiFlavor = "mpich" | "openmpi";

/** A communicator, datatype, op or request handle: an int (MPICH) or an address (Open MPI). */
export type MpiHandle = number | bigint;

function symbolsFor(h: "i32" | "usize") {
  return {
    MPI_Initialized: { parameters: ["buffer"], result: "i32" },
    MPI_Finalized: { parameters: ["buffer"], result: "i32" },
    MPI_Init_thread: { parameters: ["pointer", "pointer", "i32", "buffer"], result: "i32" },
    MPI_Finalize: { parameters: [], result: "i32" },
    MPI_Abort: { parameters: [h, "i32"], result: "i32" },
    MPI_Get_library_version: { parameters: ["buffer", "buffer"], result: "i32" },
    MPI_Error_string: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
    MPI_Comm_set_errhandler: { parameters: [h, h], result: "i32" },
    MPI_Comm_rank: { parameters: [h, "buffer"], result: "i32" },
    MPI_Comm_size: { parameters: [h, "buffer"], result: "i32" },
    MPI_Comm_split: { parameters: [h, "i32", "i32", "buffer"], result: "i32" },
    MPI_Comm_free: { parameters: ["buffer"], result: "i32" },
    MPI_Isend: { parameters: ["pointer", "i32", h, "i32", "i32", h, "buffer"], result: "i32" },
    MPI_Issend: { parameters: ["pointer", "i32", h, "i32", "i32", h, "buffer"], result: "i32" },
    MPI_Irecv: { parameters: ["pointer", "i32", h, "i32", "i32", h, "buffer"], result: "i32" },
    MPI_Ibarrier: { parameters: [h, "buffer"], result: "i32" },
    MPI_Ibcast: { parameters: ["pointer", "i32", h, "i32", h, "buffer"], result: "i32" },
    MPI_Iallreduce: { parameters: ["pointer", "pointer", "i32", h, h, h, "buffer"], result: "i32" },
    MPI_Iallgather: { parameters: ["pointer", "i32", h, "pointer", "i32", h, h, "buffer"], result: "i32" },
    MPI_Iallgatherv: {
      parameters: ["pointer", "i32", h, "pointer", "buffer", "buffer", h, h, "buffer"],
      result: "i32",
    },
    MPI_Ialltoallv: {
      parameters: ["pointer", "buffer", "buffer", h, "pointer", "buffer", "buffer", h, h, "buffer"],
      result: "i32",
    },
    MPI_Test: { parameters: ["buffer", "buffer", "pointer"], result: "i32" },
    MPI_Testall: { parameters: ["i32", "buffer", "buffer", "pointer"], result: "i32" },
    MPI_Get_count: { parameters: ["buffer", h, "buffer"], result: "i32" },
  } as const satisfies Deno.ForeignLibraryInterface;
}

type MpichSymbols = ReturnType<typeof symbolsFor>;

export const MPI_UNDEFINED = -32766;
export const MPI_SUCCESS = 0;
export const MPI_THREAD_SINGLE = 0;

/** An opened MPI library with its handle constants. Symbol argument types differ by flavor, so the
 *  functions are typed loosely (handles as MpiHandle). */
export interface MpiLib {
  readonly flavor: MpiFlavor;
  readonly path: string;
  // deno-lint-ignore no-explicit-any
  readonly fn: Record<keyof MpichSymbols, (...args: any[]) => number>;
  readonly COMM_WORLD: MpiHandle;
  readonly COMM_NULL: MpiHandle;
  readonly BYTE: MpiHandle;
  /** MPI_FLOAT (for MPI's own reductions in the benchmark; the communicator moves bytes only). */
  readonly FLOAT: MpiHandle;
  readonly SUM: MpiHandle;
  readonly MAX: MpiHandle;
  readonly ERRORS_RETURN: MpiHandle;
  /** MPI_STATUS_IGNORE / MPI_STATUSES_IGNORE (1 for MPICH, NULL for Open MPI). */
  readonly STATUS_IGNORE: Deno.PointerValue;
  /** Bytes of MPI_Status (MPICH 20, Open MPI 24). */
  readonly STATUS_BYTES: number;
  /** A zeroed array of n request (or communicator) handles, as the library stores them. */
  handles(n: number): Int32Array | BigUint64Array;
  /** The library's MPI_Get_library_version string (first line). */
  version(): string;
  /** "<call>: <MPI_Error_string> (code)". */
  errorString(code: number): string;
  close(): void;
}

const SYSTEM_DIRS = [
  "/usr/lib/x86_64-linux-gnu",
  "/usr/lib/aarch64-linux-gnu",
  "/usr/lib64",
  "/usr/lib",
  "/usr/local/lib",
];
const NAMES: Record<MpiFlavor, string[]> = {
  mpich: ["libmpich.so.12", "libmpich.so"],
  openmpi: ["libmpi.so.40", "libmpi.so"],
};

/** Paths to try, in order (pure: testable with a fake env). */
export function mpiCandidatePaths(
  get: (k: string) => string | undefined,
  systemDirs: readonly string[] = SYSTEM_DIRS,
): string[] {
  const out: string[] = [];
  const explicit = get("MEGATRON_DENO_MPI");
  if (explicit) out.push(explicit);
  const ompiFirst = get("OMPI_COMM_WORLD_RANK") !== undefined;
  const order: MpiFlavor[] = ompiFirst ? ["openmpi", "mpich"] : ["mpich", "openmpi"];
  const dirs = [...(get("LD_LIBRARY_PATH") ?? "").split(":").filter((d) => d), ...systemDirs];
  for (const f of order) for (const d of dirs) for (const n of NAMES[f]) out.push(`${d}/${n}`);
  return [...new Set(out)];
}

const RTLD_NOW = 2;
const RTLD_GLOBAL = 0x100;

/** libc's dlopen/dlsym: Open MPI needs RTLD_GLOBAL and the addresses of its predefined objects. */
function openDl() {
  for (const p of ["libc.so.6", "libdl.so.2"]) {
    try {
      return Deno.dlopen(
        p,
        {
          dlopen: { parameters: ["buffer", "i32"], result: "pointer" },
          dlsym: { parameters: ["pointer", "buffer"], result: "pointer" },
          dlerror: { parameters: [], result: "pointer" },
        } as const,
      );
    } catch {
      // next
    }
  }
  throw new Error("mpi: cannot open libc's dlopen");
}

function isFile(p: string): boolean {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
}

/** Opens the first loadable MPI library; one line naming every path tried when none loads. */
export function openMpi(
  get: (k: string) => string | undefined = (k) => Deno.env.get(k),
  systemDirs: readonly string[] = SYSTEM_DIRS,
): MpiLib {
  const dl = openDl();
  const tried: string[] = [];
  const explicit = get("MEGATRON_DENO_MPI");
  for (const path of mpiCandidatePaths(get, systemDirs)) {
    // A library the user named is used or reported, never silently replaced by another (as CBLAS).
    if (explicit && path !== explicit) break;
    if (!isFile(path)) {
      tried.push(path);
      continue;
    }
    const h = dl.symbols.dlopen(cStr(path), RTLD_NOW | RTLD_GLOBAL);
    if (h === null) {
      const e = dl.symbols.dlerror();
      tried.push(`${path} (${e === null ? "dlopen failed" : Deno.UnsafePointerView.getCString(e)})`);
      continue;
    }
    const addr = (name: string): bigint | null => {
      const p = dl.symbols.dlsym(h, cStr(name));
      return p === null ? null : BigInt(Deno.UnsafePointer.value(p));
    };
    const ompiWorld = addr("ompi_mpi_comm_world");
    try {
      const lib = ompiWorld !== null ? openOmpi(path, addr) : openMpich(path);
      dl.close();
      return lib;
    } catch (e) {
      tried.push(`${path} (${(e as Error).message})`);
    }
  }
  dl.close();
  throw new Error(
    `mpi: no MPI library found (set MEGATRON_DENO_MPI to libmpich.so.12 or libmpi.so.40, or install one: ` +
      `apt-get install mpich); tried: ${tried.join(", ")}`,
  );
}

function common(lib: Deno.DynamicLibrary<Deno.ForeignLibraryInterface>) {
  // deno-lint-ignore no-explicit-any
  const fn = lib.symbols as any;
  const version = () => {
    const buf = new Uint8Array(8192);
    const len = new Int32Array(1);
    if (fn.MPI_Get_library_version(buf, len) !== 0) return "unknown MPI";
    return new TextDecoder().decode(buf.subarray(0, len[0])).replace(/\0.*$/s, "").split("\n")[0].trim();
  };
  const errorString = (code: number) => {
    const buf = new Uint8Array(1024);
    const len = new Int32Array(1);
    if (fn.MPI_Error_string(code, buf, len) !== 0) return `MPI error ${code}`;
    return new TextDecoder().decode(buf.subarray(0, len[0])).replace(/\0.*$/s, "").split("\n")[0].trim();
  };
  return { fn, version, errorString, close: () => lib.close() };
}

function openMpich(path: string): MpiLib {
  const lib = Deno.dlopen(path, symbolsFor("i32"));
  return {
    flavor: "mpich",
    path,
    ...common(lib as unknown as Deno.DynamicLibrary<Deno.ForeignLibraryInterface>),
    // Values from MPICH 4's mpi.h (stable across 3.x and 4.x: the MPICH ABI).
    COMM_WORLD: 0x44000000,
    COMM_NULL: 0x04000000,
    BYTE: 0x4c00010d,
    FLOAT: 0x4c00040a,
    MAX: 0x58000001,
    SUM: 0x58000003,
    ERRORS_RETURN: 0x54000001,
    STATUS_IGNORE: Deno.UnsafePointer.create(1n),
    STATUS_BYTES: 20,
    handles: (n) => new Int32Array(new ArrayBuffer(Math.max(4 * n, 64))).subarray(0, n),
  };
}

function openOmpi(path: string, addr: (name: string) => bigint | null): MpiLib {
  const lib = Deno.dlopen(path, symbolsFor("usize"));
  const need = (name: string) => {
    const a = addr(name);
    if (a === null) throw new Error(`Open MPI symbol ${name} missing`);
    return a;
  };
  return {
    flavor: "openmpi",
    path,
    ...common(lib as unknown as Deno.DynamicLibrary<Deno.ForeignLibraryInterface>),
    COMM_WORLD: need("ompi_mpi_comm_world"),
    COMM_NULL: need("ompi_mpi_comm_null"),
    BYTE: need("ompi_mpi_byte"),
    FLOAT: need("ompi_mpi_float"),
    MAX: need("ompi_mpi_op_max"),
    SUM: need("ompi_mpi_op_sum"),
    ERRORS_RETURN: need("ompi_mpi_errors_return"),
    STATUS_IGNORE: null,
    STATUS_BYTES: 24,
    handles: (n) => new BigUint64Array(new ArrayBuffer(Math.max(8 * n, 64))).subarray(0, n),
  };
}
