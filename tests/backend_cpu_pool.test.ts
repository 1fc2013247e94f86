// CPU backend recycling of large freed f32 arrays: a recycled allocation comes back zeroed, and the
// freed tensor (and its views) stay unusable.
import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";

Deno.test("empty after free of a large f32 tensor is zero-filled and the old tensor stays freed", () => {
  const be = createCpuBackend({ blas: "none", log: () => {} });
  const n = (1 << 20) + 3;
  const a = be.empty("f32", [n]);
  be.fill(a, 7);
  const view = a.flat(5, 10);
  be.free(a);
  const b = be.empty("f32", [1, n]);
  const host = be.toHost(b) as Float32Array;
  assert.equal(host.length, n);
  assert.ok(host.every((v) => v === 0), "recycled memory is zero");
  assert.throws(() => be.toHost(a), /after free/);
  assert.throws(() => be.toHost(view), /after free/);
  be.fill(b, 1);
  const c = be.empty("f32", [n]); // b is live: must not share its memory
  assert.ok((be.toHost(c) as Float32Array).every((v) => v === 0));
  assert.ok((be.toHost(b) as Float32Array).every((v) => v === 1));
});
