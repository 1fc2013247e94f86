#!/usr/bin/env bash
# One-shot check on the offline GPU host (one device call). From the project root, after
# ../shared/gpu/pack-deno.sh and `deno install` here, carry .gpu and node_modules and run:
#     bash scripts/gpu_check.sh [--bench]
# Steps: device info, `deno task build:kernels --check` (only when nvcc exists),
# `deno task test:gpu` (op-by-op vs the CPU reference + tiny GPT training), with --bench also
# `deno task bench:gpu` (GEMM TFLOP/s, kernel GB/s, GPT-345M-shape step); a short table last.
# Exit status: non-zero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f .gpu/env.sh ]; then
  # shellcheck disable=SC1091
  source .gpu/env.sh
fi
log_dir=${GPU_CHECK_LOG_DIR:-/tmp/gpu_check}
mkdir -p "$log_dir"
names=()
results=()
times=()

run_step() { # name, command...
  local name=$1
  shift
  local t0=$SECONDS
  echo "=== $name: $*"
  "$@" 2>&1 | tee "$log_dir/${name// /_}.log"
  local rc=${PIPESTATUS[0]}
  names+=("$name")
  times+=($((SECONDS - t0)))
  if [ "$rc" -eq 0 ]; then results+=("ok"); else results+=("FAILED (exit $rc)"); fi
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
deno --version | head -1 || { echo "gpu_check: no deno on PATH (run ../shared/gpu/pack-deno.sh and carry .gpu)"; exit 1; }

nvcc_bin=$(command -v nvcc || true)
[ -z "$nvcc_bin" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc_bin=/usr/local/cuda/bin/nvcc
if [ -n "$nvcc_bin" ]; then
  run_step "kernels --check" env NVCC="$nvcc_bin" deno task build:kernels --check
else
  names+=("kernels --check"); results+=("skipped (no nvcc)"); times+=(0)
fi
run_step "test:gpu" deno task test:gpu
if [ "${1:-}" = "--bench" ]; then
  run_step "bench:gpu" deno task bench:gpu
fi

echo
echo "gpu_check summary (logs in $log_dir)"
printf '%-18s %-22s %6s\n' step result seconds
status=0
for i in "${!names[@]}"; do
  printf '%-18s %-22s %6s\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
  case "${results[$i]}" in FAILED*) status=1 ;; esac
done
if grep -q "test:gpu: skipped" "$log_dir/test:gpu.log" 2>/dev/null; then
  echo "note: test:gpu skipped (no CUDA) — see the skip line above"
fi
exit $status
