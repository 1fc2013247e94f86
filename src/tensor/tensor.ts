// Tensor: a handle (dtype, shape, storage, element offset) owned by a backend. Tensors are
// contiguous row-major; `view` reshapes and `narrow` takes a contiguous sub-range of the leading
// dimension (or a flat range) without copying. Everything else goes through Backend ops.

import { type DType, DTYPE_BYTES } from "./dtype.ts";

/** Anything a backend stores: a host TypedArray (CPU) or a device allocation (CUDA). */
export interface Storage {
  /** Size in elements of the underlying allocation. */
  readonly length: number;
  /** Set by Backend.free; any later use is an error (catches use-after-free on CPU). */
  freed: boolean;
}

export type Shape = readonly number[];

export function numel(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function shapeStr(shape: Shape): string {
  return `[${shape.join(", ")}]`;
}

export function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export class Tensor<S extends Storage = Storage> {
  readonly size: number;
  constructor(
    readonly dtype: DType,
    readonly shape: Shape,
    readonly storage: S,
    /** Offset in elements into storage. */
    readonly offset = 0,
  ) {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new Error(`tensor: invalid shape ${shapeStr(shape)}`);
    }
    this.size = numel(shape);
    if (offset + this.size > storage.length) {
      throw new Error(
        `tensor: view ${shapeStr(shape)} at offset ${offset} exceeds storage of ${storage.length} elements`,
      );
    }
  }

  get bytes(): number {
    return this.size * DTYPE_BYTES[this.dtype];
  }

  get rank(): number {
    return this.shape.length;
  }

  /** Same storage, new shape with the same number of elements. */
  view(shape: Shape): Tensor<S> {
    if (numel(shape) !== this.size) {
      throw new Error(`view: cannot view ${shapeStr(this.shape)} as ${shapeStr(shape)}`);
    }
    return new Tensor(this.dtype, shape, this.storage, this.offset);
  }

  /** Rows [start, start+len) of the leading dimension, as a contiguous view. */
  narrow(start: number, len: number): Tensor<S> {
    const rows = this.shape[0];
    if (start < 0 || len < 0 || start + len > rows) {
      throw new Error(`narrow: rows [${start}, ${start + len}) out of range for ${shapeStr(this.shape)}`);
    }
    const inner = rows === 0 ? 0 : this.size / rows;
    return new Tensor(this.dtype, [len, ...this.shape.slice(1)], this.storage, this.offset + start * inner);
  }

  /** A flat range of elements [start, start+len) as a 1-D view. */
  flat(start = 0, len = this.size - start): Tensor<S> {
    if (start < 0 || len < 0 || start + len > this.size) {
      throw new Error(`flat: range [${start}, ${start + len}) out of range for ${this.size} elements`);
    }
    return new Tensor(this.dtype, [len], this.storage, this.offset + start);
  }

  toString(): string {
    return `Tensor(${this.dtype}, ${shapeStr(this.shape)})`;
  }
}

/** Throws a clear error naming the op and both shapes when shapes differ. */
export function assertShape(op: string, t: Tensor, expected: Shape, what = "tensor"): void {
  if (!sameShape(t.shape, expected)) {
    throw new Error(`${op}: ${what} has shape ${shapeStr(t.shape)}, expected ${shapeStr(expected)}`);
  }
}

export function assertDType(
  op: string,
  t: Tensor,
  expected: DType | readonly DType[],
  what = "tensor",
): void {
  const ok = typeof expected === "string" ? t.dtype === expected : expected.includes(t.dtype);
  if (!ok) {
    const exp = typeof expected === "string" ? expected : expected.join(" or ");
    throw new Error(`${op}: ${what} has dtype ${t.dtype}, expected ${exp}`);
  }
}

export function assertSameShape(op: string, a: Tensor, b: Tensor): void {
  if (!sameShape(a.shape, b.shape)) {
    throw new Error(`${op}: shape mismatch ${shapeStr(a.shape)} vs ${shapeStr(b.shape)}`);
  }
}
