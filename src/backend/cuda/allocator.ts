// Caching device allocator. Blocks are rounded to size classes (512 B granules below 1 MiB, 2 MiB
// granules above) and kept on per-class free lists when released, so a steady-state training step
// performs no cudaMalloc/cudaFree. All work runs on one stream, so a block freed by the host can
// be handed out again immediately: later uses are ordered after earlier ones on that stream.
// The device calls are injected, which keeps the bookkeeping testable without a GPU.

export interface DeviceMemoryOps {
  /** Returns the new block's address, or null when the device is out of memory. */
  malloc(bytes: number): bigint | null;
  free(ptr: bigint): void;
  /** Waits for queued work before cached blocks are returned to the driver. */
  synchronize(): void;
}

export interface MemoryStats {
  /** Bytes in blocks currently handed out (rounded sizes). */
  allocatedBytes: number;
  peakAllocatedBytes: number;
  /** Bytes obtained from the driver (handed out + cached). */
  reservedBytes: number;
  peakReservedBytes: number;
  /** Number of driver allocations so far (flat in steady state). */
  deviceMallocs: number;
}

const SMALL_LIMIT = 1 << 20;
const SMALL_GRANULE = 512;
const LARGE_GRANULE = 2 << 20;

/** Size class of a request: what is actually allocated and cached. */
export function sizeClass(bytes: number): number {
  if (!Number.isFinite(bytes) || bytes < 0) throw new Error(`cuda allocator: invalid size ${bytes} bytes`);
  const b = Math.max(bytes, 1);
  const g = b <= SMALL_LIMIT ? SMALL_GRANULE : LARGE_GRANULE;
  return Math.ceil(b / g) * g;
}

export interface Block {
  readonly ptr: bigint;
  /** Size-class bytes. */
  readonly size: number;
}

export class CachingAllocator {
  private readonly freeLists = new Map<number, bigint[]>();
  private readonly live = new Map<bigint, number>();
  private allocated = 0;
  private peakAllocated = 0;
  private reserved = 0;
  private peakReserved = 0;
  private mallocs = 0;

  constructor(private readonly ops: DeviceMemoryOps) {}

  alloc(bytes: number): Block {
    const size = sizeClass(bytes);
    const list = this.freeLists.get(size);
    let ptr = list?.pop();
    if (ptr === undefined) {
      ptr = this.ops.malloc(size) ?? undefined;
      if (ptr === undefined) {
        // Out of memory: hand every cached block back to the driver and try once more.
        this.emptyCache();
        ptr = this.ops.malloc(size) ?? undefined;
      }
      if (ptr === undefined) {
        throw new Error(
          `cuda: out of device memory allocating ${size} bytes (allocated ${this.allocated}, reserved ${this.reserved})`,
        );
      }
      this.mallocs++;
      this.reserved += size;
      this.peakReserved = Math.max(this.peakReserved, this.reserved);
    }
    this.live.set(ptr, size);
    this.allocated += size;
    this.peakAllocated = Math.max(this.peakAllocated, this.allocated);
    return { ptr, size };
  }

  release(ptr: bigint): void {
    const size = this.live.get(ptr);
    if (size === undefined) {
      throw new Error(`cuda allocator: free of unknown or already freed block 0x${ptr.toString(16)}`);
    }
    this.live.delete(ptr);
    this.allocated -= size;
    let list = this.freeLists.get(size);
    if (!list) this.freeLists.set(size, list = []);
    list.push(ptr);
  }

  /** Returns all cached (not live) blocks to the driver. */
  emptyCache(): void {
    if (this.freeLists.size === 0) return;
    this.ops.synchronize();
    for (const [size, list] of this.freeLists) {
      for (const p of list) {
        this.ops.free(p);
        this.reserved -= size;
      }
    }
    this.freeLists.clear();
  }

  /** Frees everything, live blocks included (backend shutdown). */
  releaseAll(): void {
    for (const p of [...this.live.keys()]) this.release(p);
    this.emptyCache();
  }

  stats(): MemoryStats {
    return {
      allocatedBytes: this.allocated,
      peakAllocatedBytes: this.peakAllocated,
      reservedBytes: this.reserved,
      peakReservedBytes: this.peakReserved,
      deviceMallocs: this.mallocs,
    };
  }

  resetPeaks(): void {
    this.peakAllocated = this.allocated;
    this.peakReserved = this.reserved;
  }
}
