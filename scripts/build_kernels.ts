// Builds kernels/*.cu into kernels/dist/<name>.fatbin (sm_80 + sm_90 SASS and compute_90 PTX) and
// writes kernels/dist/manifest.json with the nvcc version and sha256 of every source and fatbin.
//
//   deno task build:kernels            rebuild and rewrite dist/
//   deno task build:kernels --check    rebuild into a temp dir; fail if dist/ is stale
//   deno task build:kernels --out DIR  build into DIR (fatbins + manifest) for a host whose driver
//                                      is older than the committed fatbins' CUDA; then run with
//                                      MEGATRON_DENO_KERNELS_DIR=DIR
//
// nvcc 13.0 output was checked to be byte-for-byte deterministic (same bytes across runs and
// source directories), so --check compares fatbin bytes whenever the local nvcc version equals
// the manifest's; with another nvcc version it compares source hashes only and says so.

import { parseArgs } from "node:util";

export const NVCC_FLAGS = [
  "-O3",
  "--fatbin",
  "-gencode",
  "arch=compute_80,code=sm_80",
  "-gencode",
  "arch=compute_90,code=[sm_90,compute_90]",
] as const;

export interface Manifest {
  nvcc: string;
  flags: string[];
  /** sha256 (hex) of every kernels/*.cu and *.cuh file. */
  sources: Record<string, string>;
  /** sha256 (hex) of every dist/*.fatbin. */
  fatbins: Record<string, string>;
}

const KERNELS_DIR = new URL("../kernels/", import.meta.url);
const DIST_DIR = new URL("../kernels/dist/", import.meta.url);

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function findNvcc(): string {
  const cands: string[] = [];
  const env = (n: string) => Deno.env.get(n);
  if (env("NVCC")) cands.push(env("NVCC")!);
  for (const v of ["CUDA_HOME", "CUDA_PATH"]) if (env(v)) cands.push(`${env(v)}/bin/nvcc`);
  cands.push("/usr/local/cuda/bin/nvcc");
  for (const d of (env("PATH") ?? "").split(":")) if (d) cands.push(`${d}/nvcc`);
  for (const c of cands) {
    try {
      if (Deno.statSync(c).isFile) return c;
    } catch { /* next */ }
  }
  throw new Error(`build_kernels: nvcc not found; tried ${cands.join(", ")} (set NVCC or CUDA_HOME)`);
}

async function nvccVersion(nvcc: string): Promise<string> {
  const out = await new Deno.Command(nvcc, { args: ["--version"], stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  const m = text.match(/release [^\n]*/);
  if (!out.success || !m) {
    throw new Error(`build_kernels: '${nvcc} --version' failed or printed no release line`);
  }
  return m[0].trim();
}

async function listSources(): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(KERNELS_DIR)) {
    if (e.isFile && (e.name.endsWith(".cu") || e.name.endsWith(".cuh"))) names.push(e.name);
  }
  return names.sort();
}

async function sourceHashes(names: string[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const n of names) out[n] = await sha256(await Deno.readFile(new URL(n, KERNELS_DIR)));
  return out;
}

/** Compiles every .cu into outDir; returns fatbin name -> sha256. */
async function compileAll(nvcc: string, names: string[], outDir: string): Promise<Record<string, string>> {
  const fatbins: Record<string, string> = {};
  const srcDir = new URL(".", KERNELS_DIR).pathname;
  for (const n of names.filter((n) => n.endsWith(".cu"))) {
    const base = n.slice(0, -3);
    const tmp = `${outDir}/.${base}.fatbin.tmp`;
    const cmd = new Deno.Command(nvcc, {
      args: [...NVCC_FLAGS, "-I", srcDir, "-o", tmp, `${srcDir}${n}`],
      stdout: "inherit",
      stderr: "inherit",
    });
    const st = await cmd.output();
    if (!st.success) throw new Error(`build_kernels: nvcc failed on kernels/${n} (exit ${st.code})`);
    await Deno.rename(tmp, `${outDir}/${base}.fatbin`);
    fatbins[`${base}.fatbin`] = await sha256(await Deno.readFile(`${outDir}/${base}.fatbin`));
  }
  return fatbins;
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp`;
  await Deno.writeTextFile(tmp, text);
  await Deno.rename(tmp, path);
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { check: { type: "boolean", default: false }, out: { type: "string" } },
  });
  const nvcc = findNvcc();
  const version = await nvccVersion(nvcc);
  const names = await listSources();
  const sources = await sourceHashes(names);
  if (!values.check) {
    const outDir = values.out ? values.out.replace(/\/$/, "") : DIST_DIR.pathname.replace(/\/$/, "");
    await Deno.mkdir(outDir, { recursive: true });
    const fatbins = await compileAll(nvcc, names, outDir);
    const manifest: Manifest = { nvcc: version, flags: [...NVCC_FLAGS], sources, fatbins };
    await writeAtomic(`${outDir}/manifest.json`, JSON.stringify(manifest, null, 2) + "\n");
    console.log(
      `build_kernels: built ${Object.keys(fatbins).length} fatbins with nvcc ${version} in ${outDir}`,
    );
    return 0;
  }
  // --check
  let manifest: Manifest;
  try {
    manifest = JSON.parse(await Deno.readTextFile(new URL("manifest.json", DIST_DIR)));
  } catch (e) {
    console.error(`build_kernels --check: kernels/dist/manifest.json unreadable: ${(e as Error).message}`);
    return 1;
  }
  const problems: string[] = [];
  for (const [n, h] of Object.entries(sources)) {
    if (manifest.sources[n] !== h) problems.push(`kernels/${n} changed since the last build`);
  }
  for (const n of Object.keys(manifest.sources)) {
    if (!(n in sources)) problems.push(`kernels/${n} was removed`);
  }
  if (JSON.stringify(manifest.flags) !== JSON.stringify(NVCC_FLAGS)) problems.push("nvcc flags changed");
  const tmpDir = await Deno.makeTempDir({ prefix: "md-kernels-" });
  try {
    const fresh = await compileAll(nvcc, names, tmpDir);
    if (manifest.nvcc === version) {
      for (const [n, h] of Object.entries(fresh)) {
        let committed = "";
        try {
          committed = await sha256(await Deno.readFile(new URL(n, DIST_DIR)));
        } catch { /* missing */ }
        if (committed !== h) problems.push(`kernels/dist/${n} differs from a fresh build`);
        if (manifest.fatbins[n] !== committed) {
          problems.push(`manifest sha256 of ${n} does not match the file`);
        }
      }
    } else {
      console.log(
        `build_kernels --check: local nvcc is '${version}', manifest has '${manifest.nvcc}': comparing source hashes only`,
      );
    }
  } finally {
    await Deno.remove(tmpDir, { recursive: true });
  }
  if (problems.length > 0) {
    console.error(
      `build_kernels --check: stale kernels/dist (run deno task build:kernels): ${problems.join("; ")}`,
    );
    return 1;
  }
  console.log(`build_kernels --check: kernels/dist is up to date (nvcc ${version})`);
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(1);
  }
}
