#!/usr/bin/env bash
# Builds .gpu/ (ignored by git): everything a device run must carry besides the working tree, in
# at most 40 MiB (a device call carries 64 MiB in all, the tree included).
#   .gpu/deno.xz      the Deno binary, xz-compressed
#   .gpu/npm.tar.xz   node_modules with only the npm packages that the GPU checks, the GPU bench and
#                     pretrain_gpt (the embedded default) import, resolved by `deno install
#                     --entrypoint` in a scratch copy of the tree (no test-only reference tokenizers)
#   .gpu/env.sh       `source .gpu/env.sh` on the GPU host: unpacks both, sets PATH and DENO_DIR
#
#   bash scripts/gpu_payload.sh            build, print the sizes, fail over 40 MiB
#   bash scripts/gpu_payload.sh --verify   also: in a scratch copy of the tree plus .gpu, with no
#                                          network (unshare -rn) and an empty DENO_DIR, type-check every
#                                          entry point's whole graph, run test:gpu (dry run: the GPU
#                                          suite with the CPU in place of CUDA) and pretrain_gpt --help
# Deno run there with --cached-only: node_modules alone must resolve every npm import (without it
# Deno would first try the registry for metadata, which an offline host answers with a delay).
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$root"
limit=$((40 * 1024 * 1024))
entries=(tasks/pretrain_gpt.ts tests/gpu/ops.test.ts tests/gpu/gpt_train.test.ts bench/gpu/gpt345m.ts
  scripts/gpu_info.ts scripts/build_kernels.ts)
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
(cd "$scratch/tree" && deno install --quiet --entrypoint "${entries[@]}")
tar -C "$scratch/tree" -cf - node_modules | xz -T2 -6 > .gpu/npm.tar.xz.tmp
mv .gpu/npm.tar.xz.tmp .gpu/npm.tar.xz

cat > .gpu/env.sh.tmp <<'ENV'
# source this on the GPU host, from the project root (scripts/gpu_payload.sh wrote it)
xz -dc .gpu/deno.xz > /tmp/deno && chmod +x /tmp/deno
[ -d node_modules/.deno ] || tar -xJf .gpu/npm.tar.xz
export PATH=/tmp:$PATH DENO_DIR=${DENO_DIR:-/tmp/denodir} DENO_NO_UPDATE_CHECK=1
ENV
mv .gpu/env.sh.tmp .gpu/env.sh

total=0
for f in .gpu/deno.xz .gpu/npm.tar.xz .gpu/env.sh; do
  n=$(stat -c %s "$f")
  total=$((total + n))
  printf 'gpu_payload: %-16s %8.1f MiB\n' "$f" "$(echo "$n / 1048576" | bc -l)"
done
printf 'gpu_payload: total            %8.1f MiB (limit 40 MiB; carry .gpu)\n' "$(echo "$total / 1048576" | bc -l)"
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
    export DENO_DIR="$1/.denodir" MEGATRON_DENO_CACHE="$1/.cache" HOME="$1/.home"
    source .gpu/env.sh
    deno --version | head -1
    deno check --cached-only "${@:2}"
    MEGATRON_DENO_GPU_TEST_DRYRUN=1 deno test --cached-only -A --no-check tests/gpu/
    deno run --cached-only -A tasks/pretrain_gpt.ts --help | head -1
  ' verify "$scratch/verify" "${entries[@]}"
  echo "gpu_payload: verified offline in a scratch copy: type-check, test:gpu (dry run), pretrain_gpt --help from .gpu alone"
fi
