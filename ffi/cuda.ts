// libcuda (driver API) bindings: module loading from fatbin bytes and kernel launches. Kernel
// arguments are packed into one persistent buffer (8-byte slot per argument) plus an array of
// pointers to the slots, which is what cuLaunchKernel's kernelParams expects; the driver copies
// the values during the call, so the buffers are reused for every launch.

import { cStr, cString, type DiscoverEnv, openLibrary, statusError } from "./discover.ts";

export const SYMBOLS = {
  cuInit: { parameters: ["u32"], result: "i32" },
  cuDriverGetVersion: { parameters: ["buffer"], result: "i32" },
  cuGetErrorString: { parameters: ["i32", "buffer"], result: "i32" },
  cuDeviceGet: { parameters: ["buffer", "i32"], result: "i32" },
  cuDeviceGetName: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  cuModuleLoadData: { parameters: ["buffer", "buffer"], result: "i32" },
  cuModuleUnload: { parameters: ["pointer"], result: "i32" },
  cuModuleGetFunction: { parameters: ["buffer", "pointer", "buffer"], result: "i32" },
  cuLaunchKernel: {
    parameters: ["pointer", "u32", "u32", "u32", "u32", "u32", "u32", "u32", "pointer", "pointer", "pointer"],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** Kernel parameter kinds: device pointer / 64-bit ints / double take 8 bytes, the rest 4. */
export type ArgKind = "ptr" | "u64" | "i64" | "i32" | "u32" | "f32" | "f64";

export const MAX_KERNEL_ARGS = 48;

/**
 * Writes argument values into `slots` (8 bytes each) and the address of each slot into `table`.
 * `slotsAddr` is the address of slots[0]. Pure apart from writing the two buffers (unit-tested).
 */
export function packKernelArgs(
  kinds: readonly ArgKind[],
  values: readonly (number | bigint)[],
  slots: DataView,
  table: BigUint64Array,
  slotsAddr: bigint,
): void {
  if (kinds.length !== values.length) {
    throw new Error(`packKernelArgs: ${kinds.length} parameter kinds but ${values.length} values`);
  }
  if (kinds.length > table.length || kinds.length * 8 > slots.byteLength) {
    throw new Error(`packKernelArgs: ${kinds.length} arguments exceed the ${table.length}-slot buffer`);
  }
  for (let i = 0; i < kinds.length; i++) {
    const off = i * 8;
    const v = values[i];
    switch (kinds[i]) {
      case "ptr":
      case "u64":
        slots.setBigUint64(off, BigInt(v), true);
        break;
      case "i64":
        slots.setBigInt64(off, BigInt(v), true);
        break;
      case "i32":
        slots.setInt32(off, Number(v), true);
        break;
      case "u32":
        slots.setUint32(off, Number(v) >>> 0, true);
        break;
      case "f32":
        slots.setFloat32(off, Number(v), true);
        break;
      case "f64":
        slots.setFloat64(off, Number(v), true);
        break;
    }
    table[i] = slotsAddr + BigInt(off);
  }
}

/** CUresult of a symbol lookup that found nothing (cuModuleGetFunction on the wrong module). */
export const CUDA_ERROR_NOT_FOUND = 500;

export type CuFunction = Deno.PointerValue;
export type CuModule = Deno.PointerValue;

export class CudaDriver {
  readonly sym: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
  private readonly out = new BigUint64Array(1);
  private readonly i32out = new Int32Array(1);
  // Launch scratch, owned by this instance (one launch at a time on the JS thread).
  private readonly slotBuf = new ArrayBuffer(MAX_KERNEL_ARGS * 8);
  private readonly slots = new DataView(this.slotBuf);
  private readonly table = new BigUint64Array(MAX_KERNEL_ARGS);
  private readonly slotsAddr: bigint;
  private readonly tablePtr: Deno.PointerValue;

  constructor(private readonly lib: Deno.DynamicLibrary<typeof SYMBOLS>, readonly path: string) {
    this.sym = lib.symbols;
    this.slotsAddr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.slotBuf)));
    this.tablePtr = Deno.UnsafePointer.of(this.table);
  }

  static open(env?: DiscoverEnv): CudaDriver {
    const { lib, path } = openLibrary("cuda", SYMBOLS, env);
    return new CudaDriver(lib, path);
  }

  errorString(code: number): string {
    const rc = this.sym.cuGetErrorString(code, this.out);
    if (rc !== 0) return "unknown CUDA driver error";
    return cString(Deno.UnsafePointer.create(this.out[0]), "unknown CUDA driver error");
  }

  check(call: string, code: number): void {
    if (code !== 0) throw statusError(call, this.errorString(code), code);
  }

  init(): void {
    this.check("cuInit", this.sym.cuInit(0));
  }
  driverVersion(): number {
    this.check("cuDriverGetVersion", this.sym.cuDriverGetVersion(this.i32out));
    return this.i32out[0];
  }
  deviceName(ordinal: number): string {
    this.check("cuDeviceGet", this.sym.cuDeviceGet(this.i32out, ordinal));
    const buf = new Uint8Array(256);
    this.check("cuDeviceGetName", this.sym.cuDeviceGetName(buf, buf.length, this.i32out[0]));
    const end = buf.indexOf(0);
    return new TextDecoder().decode(buf.subarray(0, end < 0 ? buf.length : end));
  }
  /** Loads a module into the current context (the runtime's primary context). */
  loadModule(image: Uint8Array<ArrayBuffer>): CuModule {
    this.check("cuModuleLoadData", this.sym.cuModuleLoadData(this.out, image));
    return Deno.UnsafePointer.create(this.out[0]);
  }
  unloadModule(m: CuModule): void {
    this.check("cuModuleUnload", this.sym.cuModuleUnload(m));
  }
  getFunction(m: CuModule, name: string): CuFunction {
    const fn = this.findFunction(m, name);
    if (fn === undefined) {
      throw statusError(`cuModuleGetFunction(${name})`, this.errorString(CUDA_ERROR_NOT_FOUND), 500);
    }
    return fn;
  }
  /** The function, or undefined when this module has no such symbol (CUDA_ERROR_NOT_FOUND only:
   *  every other failure, e.g. a lost context, throws with its code). */
  findFunction(m: CuModule, name: string): CuFunction | undefined {
    const rc = this.sym.cuModuleGetFunction(this.out, m, cStr(name));
    if (rc === CUDA_ERROR_NOT_FOUND) return undefined;
    if (rc !== 0) throw statusError(`cuModuleGetFunction(${name})`, this.errorString(rc), rc);
    return Deno.UnsafePointer.create(this.out[0]);
  }

  launch(
    fn: CuFunction,
    grid: readonly [number, number, number],
    block: readonly [number, number, number],
    sharedBytes: number,
    stream: Deno.PointerValue,
    kinds: readonly ArgKind[],
    values: readonly (number | bigint)[],
    name = "kernel",
  ): void {
    packKernelArgs(kinds, values, this.slots, this.table, this.slotsAddr);
    const rc = this.sym.cuLaunchKernel(
      fn,
      grid[0],
      grid[1],
      grid[2],
      block[0],
      block[1],
      block[2],
      sharedBytes,
      stream,
      this.tablePtr,
      null,
    );
    if (rc !== 0) throw statusError(`cuLaunchKernel(${name})`, this.errorString(rc), rc);
  }
  close(): void {
    this.lib.close();
  }
}
