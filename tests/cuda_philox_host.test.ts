// The dropout randomness of the CUDA kernels, checked without a GPU: kernels/common.cuh's
// Philox, uniform and counter-index functions are __host__ __device__, so nvcc builds them into
// a host program here; its bits and keep decisions must equal src/rng/philox.ts bit for bit
// (including counters above 2^32 and non-contiguous rows). Skips with one line without nvcc.
import assert from "node:assert/strict";
import { PhiloxStream } from "../src/rng/philox.ts";

const PROGRAM = String.raw`
#include <cstdio>
#include <cstdlib>
#include "common.cuh"
int main(int argc, char** argv) {
  if (argc != 9) return 2;
  const uint32_t seed = strtoul(argv[1], 0, 10), stream = strtoul(argv[2], 0, 10), it = strtoul(argv[3], 0, 10);
  const u64 base = strtoull(argv[4], 0, 10), rowStride = strtoull(argv[5], 0, 10), rowLen = strtoull(argv[6], 0, 10);
  const u64 n = strtoull(argv[7], 0, 10);
  const float p = strtof(argv[8], 0);
  for (u64 i = 0; i < n; i++) {
    const u64 e = rngIndex(i, base, rowStride, rowLen);
    printf("%llu %u %d\n", e, philoxBits(e, seed, stream, it), philoxUniform(e, seed, stream, it) >= p ? 1 : 0);
  }
  return 0;
}
`;

function findNvcc(): string | null {
  for (
    const c of [
      Deno.env.get("NVCC"),
      `${Deno.env.get("CUDA_HOME") ?? "/usr/local/cuda"}/bin/nvcc`,
      "/usr/local/cuda/bin/nvcc",
    ]
  ) {
    if (!c) continue;
    try {
      if (Deno.statSync(c).isFile) return c;
    } catch { /* next */ }
  }
  return null;
}

async function build(): Promise<string | null> {
  const nvcc = findNvcc();
  if (!nvcc) {
    console.log("cuda philox host check: skipped — nvcc not found");
    return null;
  }
  const dir = await Deno.makeTempDir({ prefix: "md-philox-" });
  await Deno.writeTextFile(`${dir}/check.cu`, PROGRAM);
  const inc = new URL("../kernels/", import.meta.url).pathname;
  const out = await new Deno.Command(nvcc, {
    args: ["-O2", "-I", inc, "-o", `${dir}/check`, `${dir}/check.cu`],
    stderr: "piped",
    stdout: "piped",
  }).output();
  if (!out.success) throw new Error(`nvcc failed: ${new TextDecoder().decode(out.stderr)}`);
  return `${dir}/check`;
}

const bin = await build();

if (bin) {
  Deno.test("cuda philox: kernel bits, counter indices and keep decisions equal src/rng/philox.ts", async () => {
    const cases = [
      { seed: 1234, stream: 0x300005, iteration: 7, base: 0, rowStride: 8, rowLen: 8, n: 64, p: 0.1 },
      {
        seed: 0xffffffff,
        stream: 0x200001,
        iteration: 0xfffffff0,
        base: 2 ** 33 + 3,
        rowStride: 4099,
        rowLen: 5,
        n: 40,
        p: 0.5,
      },
      {
        seed: 42,
        stream: 0x400000,
        iteration: 1,
        base: 2 ** 52 - 100,
        rowStride: 1,
        rowLen: 1,
        n: 50,
        p: 0.3,
      },
    ];
    for (const c of cases) {
      const out = await new Deno.Command(bin, {
        args: [c.seed, c.stream, c.iteration, c.base, c.rowStride, c.rowLen, c.n, c.p].map(String),
        stdout: "piped",
      }).output();
      assert.ok(out.success);
      const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
      assert.equal(lines.length, c.n);
      const g = new PhiloxStream(c.seed, c.stream, c.iteration);
      const p32 = Math.fround(c.p);
      let kept = 0;
      for (let i = 0; i < c.n; i++) {
        const [e, bits, keep] = lines[i].split(" ");
        const want = c.base + Math.floor(i / c.rowLen) * c.rowStride + (i % c.rowLen);
        assert.equal(e, String(want), `case seed=${c.seed} i=${i}: counter index`);
        assert.equal(Number(bits), g.bits(want), `case seed=${c.seed} i=${i}: bits`);
        assert.equal(keep === "1", g.uniform(want) >= p32, `case seed=${c.seed} i=${i}: keep`);
        kept += Number(keep);
      }
      assert.ok(kept > 0 && kept < c.n, "both outcomes occur");
    }
  });
}
