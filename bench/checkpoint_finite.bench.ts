// Cost of the NaN/Inf check every checkpoint load now does (src/training/checkpoint.ts
// firstNonFinite), per 16M elements (a 64 MB f32 tensor; GPT 345M's model + Adam state is ~1G
// elements). `deno bench -A bench/checkpoint_finite.bench.ts`.
import { firstNonFinite, type NamedTensor } from "../src/training/checkpoint.ts";

const N = 16 * 1024 * 1024;
const f32 = new Float32Array(N);
for (let i = 0; i < N; i++) f32[i] = ((i * 2654435761) >>> 8) / 16777216 - 0.5;
const bf16 = new Uint16Array(N);
for (let i = 0; i < N; i++) bf16[i] = 0x3c00 + (i & 0x3ff);
const t = (dtype: NamedTensor["dtype"], data: NamedTensor["data"]): NamedTensor => ({
  name: "w",
  dtype,
  shape: [N],
  data,
});

Deno.bench("finite check: f32, 16M elements (all finite)", { group: "finite" }, () => {
  if (firstNonFinite(t("f32", f32)) !== null) throw new Error("unexpected");
});
Deno.bench("finite check: bf16, 16M elements (all finite)", { group: "finite" }, () => {
  if (firstNonFinite(t("bf16", bf16)) !== null) throw new Error("unexpected");
});
