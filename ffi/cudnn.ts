// cuDNN bindings: only handle lifetime and version for now (probing; fused attention later).

import { cString, type DiscoverEnv, openLibrary, statusError } from "./discover.ts";

export const SYMBOLS = {
  cudnnCreate: { parameters: ["buffer"], result: "i32" },
  cudnnDestroy: { parameters: ["pointer"], result: "i32" },
  cudnnGetVersion: { parameters: [], result: "usize" },
  cudnnSetStream: { parameters: ["pointer", "pointer"], result: "i32" },
  cudnnGetErrorString: { parameters: ["i32"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

export class Cudnn {
  readonly sym: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
  private readonly out = new BigUint64Array(1);

  constructor(private readonly lib: Deno.DynamicLibrary<typeof SYMBOLS>, readonly path: string) {
    this.sym = lib.symbols;
  }
  static open(env?: DiscoverEnv): Cudnn {
    const { lib, path } = openLibrary("cudnn", SYMBOLS, env);
    return new Cudnn(lib, path);
  }
  check(call: string, code: number): void {
    if (code !== 0) {
      throw statusError(call, cString(this.sym.cudnnGetErrorString(code), "unknown cuDNN status"), code);
    }
  }
  /** e.g. 91900 for 9.19.0. */
  version(): number {
    return Number(this.sym.cudnnGetVersion());
  }
  create(): Deno.PointerValue {
    this.check("cudnnCreate", this.sym.cudnnCreate(this.out));
    return Deno.UnsafePointer.create(this.out[0]);
  }
  destroy(h: Deno.PointerValue): void {
    this.check("cudnnDestroy", this.sym.cudnnDestroy(h));
  }
  setStream(h: Deno.PointerValue, stream: Deno.PointerValue): void {
    this.check("cudnnSetStream", this.sym.cudnnSetStream(h, stream));
  }
  close(): void {
    this.lib.close();
  }
}
