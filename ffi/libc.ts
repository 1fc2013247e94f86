// Raw libc bindings used to memory-map dataset files read-only.
// Only what the indexed dataset needs: open/close/mmap/munmap and errno. File sizes come from Deno.stat.

const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
} as const;

const ERRNO_SYMBOLS = {
  linux: { __errno_location: { parameters: [], result: "pointer" } },
  darwin: { __error: { parameters: [], result: "pointer" } },
} as const;

export const O_RDONLY = 0;
export const PROT_READ = 1;
/** MAP_PRIVATE is 2 on both Linux and macOS. */
export const MAP_PRIVATE = 2;

export interface Libc {
  /** Path of the library that was opened. */
  readonly path: string;
  open(path: string, flags: number): number;
  close(fd: number): number;
  /** Returns the mapping, or null on failure (MAP_FAILED). */
  mmap(length: number, prot: number, flags: number, fd: number, offset: number): Deno.PointerObject | null;
  munmap(ptr: Deno.PointerObject, length: number): number;
  /** The calling thread's errno (meaningful right after a failed call). */
  errno(): number;
  closeLibrary(): void;
}

function candidatePaths(): string[] {
  switch (Deno.build.os) {
    case "linux":
      return ["libc.so.6", "libc.so"];
    case "darwin":
      return ["/usr/lib/libSystem.B.dylib", "libSystem.B.dylib"];
    default:
      return [];
  }
}

/**
 * Opens libc through Deno FFI. Returns null when FFI is not permitted, the OS is unsupported or no
 * candidate library loads; callers then fall back to reading files into memory.
 */
export function openLibc(): Libc | null {
  const os = Deno.build.os;
  if (os !== "linux" && os !== "darwin") return null;
  for (const path of candidatePaths()) {
    let lib;
    try {
      lib = Deno.dlopen(path, { ...SYMBOLS, ...ERRNO_SYMBOLS[os] });
    } catch {
      continue;
    }
    const sym = lib.symbols as Record<string, (...a: unknown[]) => unknown>;
    const errnoFn = os === "linux" ? sym.__errno_location : sym.__error;
    const enc = new TextEncoder();
    const mapFailed = 0xffffffffffffffffn;
    return {
      path,
      open(p, flags) {
        // NUL-terminated C string.
        const bytes = enc.encode(p + "\0");
        return lib.symbols.open(bytes, flags);
      },
      close(fd) {
        return lib.symbols.close(fd);
      },
      mmap(length, prot, flags, fd, offset) {
        const p = lib.symbols.mmap(null, BigInt(length), prot, flags, fd, BigInt(offset));
        if (p === null || BigInt(Deno.UnsafePointer.value(p)) === mapFailed) return null;
        return p;
      },
      munmap(ptr, length) {
        return lib.symbols.munmap(ptr, BigInt(length));
      },
      errno() {
        const p = errnoFn() as Deno.PointerObject | null;
        return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
      },
      closeLibrary() {
        lib.close();
      },
    };
  }
  return null;
}
