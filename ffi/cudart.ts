// libcudart bindings: devices, memory, copies, streams, events. Device pointers are passed as u64
// (bigint) so that offsets are plain arithmetic; stream/event handles are opaque pointers. Every
// checked call throws "<call>: <cudaGetErrorString> (<code>)".

import { cString, type DiscoverEnv, openLibrary, statusError } from "./discover.ts";

export const SYMBOLS = {
  cudaGetErrorString: { parameters: ["i32"], result: "pointer" },
  cudaGetLastError: { parameters: [], result: "i32" },
  cudaRuntimeGetVersion: { parameters: ["buffer"], result: "i32" },
  cudaDriverGetVersion: { parameters: ["buffer"], result: "i32" },
  cudaGetDeviceCount: { parameters: ["buffer"], result: "i32" },
  cudaSetDevice: { parameters: ["i32"], result: "i32" },
  cudaGetDevice: { parameters: ["buffer"], result: "i32" },
  cudaDeviceGetAttribute: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  cudaDeviceSynchronize: { parameters: [], result: "i32" },
  cudaMemGetInfo: { parameters: ["buffer", "buffer"], result: "i32" },
  cudaMalloc: { parameters: ["buffer", "usize"], result: "i32" },
  cudaFree: { parameters: ["u64"], result: "i32" },
  // cudaMemcpy/cudaMemcpyAsync under three signatures (host side as "buffer").
  memcpyHtoD: {
    name: "cudaMemcpyAsync",
    parameters: ["u64", "buffer", "usize", "i32", "pointer"],
    result: "i32",
  },
  memcpyDtoH: {
    name: "cudaMemcpyAsync",
    parameters: ["buffer", "u64", "usize", "i32", "pointer"],
    result: "i32",
  },
  memcpyDtoD: {
    name: "cudaMemcpyAsync",
    parameters: ["u64", "u64", "usize", "i32", "pointer"],
    result: "i32",
  },
  memcpyHtoDSync: { name: "cudaMemcpy", parameters: ["u64", "buffer", "usize", "i32"], result: "i32" },
  memcpyDtoHSync: { name: "cudaMemcpy", parameters: ["buffer", "u64", "usize", "i32"], result: "i32" },
  cudaMemset: { parameters: ["u64", "i32", "usize"], result: "i32" },
  cudaMemsetAsync: { parameters: ["u64", "i32", "usize", "pointer"], result: "i32" },
  cudaStreamCreateWithFlags: { parameters: ["buffer", "u32"], result: "i32" },
  cudaStreamDestroy: { parameters: ["pointer"], result: "i32" },
  cudaStreamSynchronize: { parameters: ["pointer"], result: "i32" },
  cudaEventCreate: { parameters: ["buffer"], result: "i32" },
  cudaEventDestroy: { parameters: ["pointer"], result: "i32" },
  cudaEventRecord: { parameters: ["pointer", "pointer"], result: "i32" },
  cudaEventSynchronize: { parameters: ["pointer"], result: "i32" },
  // Optional so that test doubles without it still load; every CUDA runtime has it.
  cudaEventQuery: { parameters: ["pointer"], result: "i32", optional: true },
  cudaEventElapsedTime: { parameters: ["buffer", "pointer", "pointer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

export const cudaMemcpyHostToDevice = 1;
export const cudaMemcpyDeviceToHost = 2;
export const cudaMemcpyDeviceToDevice = 3;
export const cudaStreamNonBlocking = 1;
export const cudaErrorMemoryAllocation = 2;
export const cudaErrorNotReady = 600;
export const cudaDevAttrMultiProcessorCount = 16;
export const cudaDevAttrComputeCapabilityMajor = 75;
export const cudaDevAttrComputeCapabilityMinor = 76;

export type CudaStream = Deno.PointerValue;
export type CudaEvent = Deno.PointerValue;

export class Cudart {
  readonly sym: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
  private readonly i32out = new Int32Array(1);
  private readonly u64out = new BigUint64Array(1);
  private readonly u64out2 = new BigUint64Array(1);
  private readonly f32out = new Float32Array(1);

  constructor(private readonly lib: Deno.DynamicLibrary<typeof SYMBOLS>, readonly path: string) {
    this.sym = lib.symbols;
  }

  static open(env?: DiscoverEnv): Cudart {
    const { lib, path } = openLibrary("cudart", SYMBOLS, env);
    return new Cudart(lib, path);
  }

  errorString(code: number): string {
    return cString(this.sym.cudaGetErrorString(code), "unknown CUDA runtime error");
  }

  /** Throws "<call>: <message> (<code>)" unless code is cudaSuccess. */
  check(call: string, code: number): void {
    if (code !== 0) throw statusError(call, this.errorString(code), code);
  }

  runtimeVersion(): number {
    this.check("cudaRuntimeGetVersion", this.sym.cudaRuntimeGetVersion(this.i32out));
    return this.i32out[0];
  }
  driverVersion(): number {
    this.check("cudaDriverGetVersion", this.sym.cudaDriverGetVersion(this.i32out));
    return this.i32out[0];
  }
  deviceCount(): number {
    this.check("cudaGetDeviceCount", this.sym.cudaGetDeviceCount(this.i32out));
    return this.i32out[0];
  }
  setDevice(d: number): void {
    this.check("cudaSetDevice", this.sym.cudaSetDevice(d));
  }
  getDevice(): number {
    this.check("cudaGetDevice", this.sym.cudaGetDevice(this.i32out));
    return this.i32out[0];
  }
  attribute(attr: number, device: number): number {
    this.check("cudaDeviceGetAttribute", this.sym.cudaDeviceGetAttribute(this.i32out, attr, device));
    return this.i32out[0];
  }
  memInfo(): { free: number; total: number } {
    this.check("cudaMemGetInfo", this.sym.cudaMemGetInfo(this.u64out, this.u64out2));
    return { free: Number(this.u64out[0]), total: Number(this.u64out2[0]) };
  }
  deviceSynchronize(): void {
    this.check("cudaDeviceSynchronize", this.sym.cudaDeviceSynchronize());
  }
  /** Returns the device pointer, or null on cudaErrorMemoryAllocation (caller may free caches and retry). */
  tryMalloc(bytes: number): bigint | null {
    const rc = this.sym.cudaMalloc(this.u64out, BigInt(bytes));
    if (rc === cudaErrorMemoryAllocation) {
      this.sym.cudaGetLastError(); // clear the sticky-free error state
      return null;
    }
    this.check("cudaMalloc", rc);
    return this.u64out[0];
  }
  free(ptr: bigint): void {
    this.check("cudaFree", this.sym.cudaFree(ptr));
  }
  htod(dst: bigint, src: ArrayBufferView<ArrayBuffer>, bytes: number, stream: CudaStream): void {
    this.check(
      "cudaMemcpyAsync(HtoD)",
      this.sym.memcpyHtoD(dst, src, BigInt(bytes), cudaMemcpyHostToDevice, stream),
    );
  }
  dtoh(dst: ArrayBufferView<ArrayBuffer>, src: bigint, bytes: number, stream: CudaStream): void {
    this.check(
      "cudaMemcpyAsync(DtoH)",
      this.sym.memcpyDtoH(dst, src, BigInt(bytes), cudaMemcpyDeviceToHost, stream),
    );
  }
  dtod(dst: bigint, src: bigint, bytes: number, stream: CudaStream): void {
    this.check(
      "cudaMemcpyAsync(DtoD)",
      this.sym.memcpyDtoD(dst, src, BigInt(bytes), cudaMemcpyDeviceToDevice, stream),
    );
  }
  memsetAsync(ptr: bigint, value: number, bytes: number, stream: CudaStream): void {
    this.check("cudaMemsetAsync", this.sym.cudaMemsetAsync(ptr, value, BigInt(bytes), stream));
  }
  streamCreate(): CudaStream {
    this.check(
      "cudaStreamCreateWithFlags",
      this.sym.cudaStreamCreateWithFlags(this.u64out, cudaStreamNonBlocking),
    );
    return Deno.UnsafePointer.create(this.u64out[0]);
  }
  streamDestroy(s: CudaStream): void {
    this.check("cudaStreamDestroy", this.sym.cudaStreamDestroy(s));
  }
  streamSynchronize(s: CudaStream): void {
    this.check("cudaStreamSynchronize", this.sym.cudaStreamSynchronize(s));
  }
  eventCreate(): CudaEvent {
    this.check("cudaEventCreate", this.sym.cudaEventCreate(this.u64out));
    return Deno.UnsafePointer.create(this.u64out[0]);
  }
  eventDestroy(e: CudaEvent): void {
    this.check("cudaEventDestroy", this.sym.cudaEventDestroy(e));
  }
  eventRecord(e: CudaEvent, s: CudaStream): void {
    this.check("cudaEventRecord", this.sym.cudaEventRecord(e, s));
  }
  eventSynchronize(e: CudaEvent): void {
    this.check("cudaEventSynchronize", this.sym.cudaEventSynchronize(e));
  }
  /** Whether the work before the event has finished (cudaEventQuery: success or not ready). */
  eventDone(e: CudaEvent): boolean {
    const q = this.sym.cudaEventQuery;
    if (q === null) throw new Error(`cudaEventQuery: not in ${this.path}`);
    const rc = q(e);
    if (rc === cudaErrorNotReady) return false;
    this.check("cudaEventQuery", rc);
    return true;
  }
  /** Milliseconds between two recorded events. */
  elapsedMs(start: CudaEvent, end: CudaEvent): number {
    this.check("cudaEventElapsedTime", this.sym.cudaEventElapsedTime(this.f32out, start, end));
    return this.f32out[0];
  }
  close(): void {
    this.lib.close();
  }
}
