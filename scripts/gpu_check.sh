#!/usr/bin/env bash
# One-shot check on the offline GPU host, in one device call that ends well inside its 10 minutes
# (every step has a time budget and all of them share a deadline, GPU_CHECK_DEADLINE=450 s, so a
# second call still fits in the device time). Here, first: bash scripts/gpu_payload.sh (writes
# .gpu/, <= 40 MiB); carry .gpu; there, from the project root:
#     bash scripts/gpu_check.sh [--bench]
# Steps, in order, with their budgets in seconds (a step still running at its budget is killed and
# its row says TIMEOUT; no step runs past the shared deadline, and one that would start with 5 s or
# less left is NOT RUN):
#   info         15  nvidia-smi (GPU, driver, memory), deno --version
#   kernels      75  only when the host's nvcc is not the one in kernels/dist/manifest.json: build the
#                    fatbins into a temporary folder and use them (MEGATRON_DENO_KERNELS_DIR)
#   cuda-info    30  scripts/gpu_info.ts: driver and runtime CUDA versions, libraries, GPU; fails in
#                    one line when the driver is older than the fatbins need
#   ops         100  tests/gpu/ops.test.ts: every op x dtype against the CPU backend
#   perf-kernels 30  tests/gpu/perf_kernels.test.ts: flash attention and multi-tensor Adam vs the CPU
#   gpt-train    95  tests/gpu/gpt_train.test.ts: tiny GPT 20 steps CUDA vs CPU (f32, fp16, bf16)
#   gpt-default  75  the embedded default (pretrain_gpt without --data-path, --train-iters 20, no eval)
#                    with --device cuda, then on the CPU (which costs more: 20 iterations of a 4-layer,
#                    128-wide GPT-2-vocabulary model), building the bundled corpus first on a fresh
#                    host; every iteration's loss within 1e-4 relative (scripts/compare_losses.ts)
#   launch-nccl  30  the launcher with NCCL, world size 1: `launch --nproc-per-node 1 -- pretrain_gpt
#                    --device cuda --distributed-backend nccl` with gpt-default's flags; its losses must
#                    equal gpt-default's in-process CUDA run's (within 1e-6 relative; one rank is the
#                    identity through NCCL's all-gathers, so the row should show 0); skipped, with
#                    scripts/nccl_info.ts's line, on a host without libnccl.so.2 (not in the payload)
#   gpt-generate 30  generate-gpt --greedy from gpt-default's CUDA checkpoint (two prompts, 24 tokens each)
#                    with --device cuda, with --device cuda split TP 2 x PP 2, and with --device cpu: the
#                    three genfiles (tokens and text) must be identical
#   sync:<f>    120  for each failed test file (ops, perf-kernels, gpt-train): once more with MEGATRON_DENO_CUDA_SYNC=1
#                    (sync and check after every launch/GEMM): the table shows the first op that failed
#   bench       150  with --bench: bench:gpu --steps 20 (GEMMs, kernels, GPT-345M)
#   pytorch     120  with --bench, when python3 has torch: bench/pytorch_gpt345m.py (the same GPT-345M,
#                    eager bf16); the table then gives both tokens/s and their ratio
#   bench-generate 90 with --bench: bench/generate.bench.ts --filter cuda (greedy decoding on the GPU, KV
#                    cache and --recompute, embedded-default and 125M shapes)
# The plan: the checks' budgets sum to 15 + 30 + 100 + 30 + 95 + 75 + 30 + 30 = 405 s, 480 s with a kernel
# rebuild: then gpt-generate, the last check, gets what the others left (they should end well below their
# budgets) or shows NOT RUN; the deadline stays 450 s. The sync reruns (after a failure) and --bench's
# three steps come after and get what the checks left unused, each up to its own budget (passing checks should end well below their
# budgets; the seconds column shows by how much), and one cut short by the deadline shows TIMEOUT or
# NOT RUN rather than overrunning the device call. gpt-default's CPU half, measured on a loaded 2-core
# box: the full 20-iteration CPU run took 45 s with OpenBLAS (corpus build included), ~5 s per
# iteration with the WebAssembly GEMM; the GPU host has 16 cores. The GPU-side times are unmeasured.
# When nvidia-smi lists a GPU, MEGATRON_DENO_REQUIRE_CUDA=1 is set: a test or bench that would skip
# for want of CUDA fails instead, and the table says why. Logs: $OUT/gpu_check.log,
# $OUT/gpt_default_{cuda,cpu,nccl}.jsonl (the embedded default's metrics; nccl: launch-nccl's run),
# $OUT/generate_{cuda,cuda-layout,cpu}.jsonl (gpt-generate's samples) and $OUT/gpu_check_table.txt
# when $OUT is set (they come back with the call), else /tmp/gpu_check.*/.
# Deno runs with --cached-only (and the payload's --lock=.gpu/deno.lock): the host is offline, and
# the payload's node_modules must suffice.
# The table is printed last; the exit status is non-zero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
# The GPU host has no Deno: the payload's env.sh unpacks it, node_modules and the corpus's npm cache.
if ! command -v deno >/dev/null && [ -f .gpu/env.sh ]; then
  # shellcheck disable=SC1091
  source .gpu/env.sh
fi
# Offline: resolve npm imports from node_modules only, against the payload's cut lockfile.
dflags=(--cached-only)
[ -f .gpu/deno.lock ] && dflags+=(--lock=.gpu/deno.lock)
deadline=$((SECONDS + ${GPU_CHECK_DEADLINE:-450}))
log_dir=$(mktemp -d /tmp/gpu_check.XXXXXX)
names=() results=() times=() budgets=()
failed=0

# Seconds left for a step with budget $1 (never past the shared deadline).
budget_for() {
  local left=$((deadline - SECONDS))
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}

# The line of a log that best explains a failure: the most specific pattern found first.
why() {
  local p line
  for p in "cuda sync check:" "MEGATRON_DENO_REQUIRE_CUDA=1 but" "gpu_info:" "compare_losses:" "pretrain_gpt:" \
    "launch-nccl:" "generate:" "generate-gpt:" "exceeds" "error: " "FAILED"; do
    line=$(sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -a -m1 -F "$p") && { echo "${line:0:200}"; return; }
  done
}

record() { # name result seconds budget
  names+=("$1") results+=("$2") times+=("$3") budgets+=("$4")
  case "$2" in ok* | skipped*) ;; *) failed=1 ;; esac
}

run_step() { # name budget command...
  local name=$1 want=$2
  shift 2
  local b
  b=$(budget_for "$want")
  if [ "$b" -le 5 ]; then
    record "$name" "NOT RUN (deadline reached)" 0 "$want"
    return 1
  fi
  local log="$log_dir/${name//[^a-zA-Z0-9_.-]/_}.log" t0=$SECONDS rc
  echo "=== $name (budget ${b}s): $*"
  timeout -k 5 "$b" "$@" > >(tee "$log") 2>&1
  rc=$?
  sleep 0.2 # let tee finish the log
  local res="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    res="TIMEOUT after ${b}s"
  elif [ "$rc" -ne 0 ]; then
    res="FAILED (exit $rc): $(why "$log")"
  elif grep -aq "skipped — no CUDA" "$log"; then
    res="SKIPPED: $(grep -a -m1 'skipped — no CUDA' "$log" | cut -c1-140)"
    [ "$gpu_listed" = 1 ] && res="FAILED (skipped although nvidia-smi lists a GPU): ${res#SKIPPED: }"
  fi
  record "$name" "$res" $((SECONDS - t0)) "$want"
  [ "$res" = ok ]
}

# ---- info --------------------------------------------------------------------------------------
gpu_listed=0 gpu_line="none listed by nvidia-smi"
t0=$SECONDS
if command -v nvidia-smi >/dev/null && timeout 15 nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  gpu_listed=1
  gpu_line=$(timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
  export MEGATRON_DENO_REQUIRE_CUDA=1
fi
echo "gpu: $gpu_line"
echo "kernels/dist: built with nvcc $(grep -o '"nvcc": *"[^"]*"' kernels/dist/manifest.json | sed 's/.*: *"\(.*\)"/\1/')"
if deno_v=$(deno --version 2>/dev/null | head -1); then
  record info "ok ($deno_v)" $((SECONDS - t0)) 15
else
  record info "FAILED: no deno on PATH (run scripts/gpu_payload.sh here and carry .gpu)" $((SECONDS - t0)) 15
fi

# ---- kernels: rebuild only for another nvcc -----------------------------------------------------
nvcc_bin=$(command -v nvcc || true)
[ -z "$nvcc_bin" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc_bin=/usr/local/cuda/bin/nvcc
built_with=$(grep -o '"nvcc": *"[^"]*"' kernels/dist/manifest.json | sed 's/.*: *"\(.*\)"/\1/')
if [ -z "$nvcc_bin" ]; then
  record kernels "skipped (no nvcc; using kernels/dist, $built_with)" 0 75
else
  host_nvcc=$("$nvcc_bin" --version | grep -o 'release .*' | head -1)
  if [ "$host_nvcc" = "$built_with" ]; then
    record kernels "skipped (host nvcc = manifest: $built_with)" 0 75
  else
    kdir=$(mktemp -d /tmp/md-kernels.XXXXXX)
    echo "host nvcc '$host_nvcc' differs from kernels/dist's '$built_with': rebuilding into $kdir"
    if run_step kernels 75 env NVCC="$nvcc_bin" deno run "${dflags[@]}" -A scripts/build_kernels.ts --out "$kdir"; then
      export MEGATRON_DENO_KERNELS_DIR=$kdir
    fi
  fi
fi

# ---- CUDA itself, then the suites ---------------------------------------------------------------
run_step cuda-info 30 deno run "${dflags[@]}" -A scripts/gpu_info.ts
failed_files=()
declare -A test_budget=([ops]=100 [perf_kernels]=30 [gpt_train]=95)
for f in ops perf_kernels gpt_train; do
  # GPU_CHECK_TEST_ARGS: extra deno test flags (tests/gpu_check_script.test.ts narrows with --filter).
  # shellcheck disable=SC2086
  run_step "${f//_/-}" "${test_budget[$f]}" deno test "${dflags[@]}" -A --no-check ${GPU_CHECK_TEST_ARGS:-} \
    "tests/gpu/$f.test.ts" || failed_files+=("$f")
done
# ---- the embedded default: CUDA trains to the CPU's losses ---------------------------------------
# `pretrain_gpt --device cuda` without --data-path (the bundled corpus, built on first use by the
# corpus child from the payload's npm cache), then the same on the CPU, then every iteration's loss
# compared (f32 params: within 1e-4 relative). CUDA first: it builds the corpus, and a broken CUDA
# fails before the CPU half is paid for. GPU_CHECK_DEFAULT_ARGS: flags for both runs (default
# --train-iters 20; tests/gpu_check_script.test.ts shrinks the model for the emulator).
default_losses() { # dir deno-flags...
  local dir=$1 run dev
  shift
  for run in cuda cpu; do
    dev=$run
    # GPU_CHECK_DEFAULT_DEVICE=cpu: a dry run of the step (both halves on the CPU; the script's test).
    [ "$run" = cuda ] && dev=${GPU_CHECK_DEFAULT_DEVICE:-cuda}
    echo "--- embedded default on $dev"
    # shellcheck disable=SC2086
    deno run "$@" -A --no-check tasks/pretrain_gpt.ts --device "$dev" ${GPU_CHECK_DEFAULT_ARGS:---train-iters 20} \
      --eval-iters 0 --log-interval 1 --no-progress --metrics-file "$dir/$run.jsonl" --save "$dir/ckpt-$run" ||
      return
  done
  deno run "$@" -A --no-check scripts/compare_losses.ts --rtol 1e-4 "$dir/cpu.jsonl" "$dir/cuda.jsonl"
}
export -f default_losses
export GPU_CHECK_DEFAULT_ARGS GPU_CHECK_DEFAULT_DEVICE
mkdir -p "$log_dir/default"
if run_step gpt-default 75 bash -c 'default_losses "$@"' _ "$log_dir/default" "${dflags[@]}"; then
  # The comparison's summary in the table: iterations, worst relative difference and where.
  summary=$(grep -a -m1 '^compare_losses: ok: ' "$log_dir/gpt-default.log" | sed 's/^compare_losses: ok: //')
  [ -n "$summary" ] && results[${#results[@]} - 1]="ok ($summary)"
fi

# ---- the launcher with NCCL, world size 1 ---------------------------------------------------------
# One process started by the launcher (torchrun's environment, rank 0 of 1) trains the embedded default
# through the NCCL communicator: every group's NCCL communicator, each all-reduce and broadcast through
# NCCL. Its losses must be those of gpt-default's in-process CUDA run. The launcher and the child get
# the offline flags, so the child is given as `deno run ...` rather than as pretrain:gpt (which would
# run without them). GPU_CHECK_NCCL_BACKEND: the --distributed-backend value (default nccl; empty:
# no flag, which the script's test uses for its CPU dry run).
nccl_losses() { # dir deno-flags...
  local dir=$1 dev=${GPU_CHECK_DEFAULT_DEVICE:-cuda} backend=()
  shift
  if [ ! -f "$dir/cuda.jsonl" ]; then
    echo "launch-nccl: no in-process CUDA losses to compare with (gpt-default did not finish)"
    return 1
  fi
  [ -n "${GPU_CHECK_NCCL_BACKEND-nccl}" ] && backend=(--distributed-backend "${GPU_CHECK_NCCL_BACKEND-nccl}")
  # shellcheck disable=SC2086
  deno run "$@" -A --no-check tasks/launch.ts --nproc-per-node 1 -- deno run "$@" -A --no-check \
    tasks/pretrain_gpt.ts --device "$dev" "${backend[@]}" ${GPU_CHECK_DEFAULT_ARGS:---train-iters 20} \
    --eval-iters 0 --log-interval 1 --no-progress --metrics-file "$dir/nccl.jsonl" || return
  deno run "$@" -A --no-check scripts/compare_losses.ts --rtol 1e-6 "$dir/cuda.jsonl" "$dir/nccl.jsonl"
}
export -f nccl_losses
export GPU_CHECK_NCCL_BACKEND
# NCCL is not in the payload (too large): a host without it skips the step, saying so.
if [ -n "${GPU_CHECK_NCCL_BACKEND-nccl}" ] && ! nccl_line=$(deno run "${dflags[@]}" -A --no-check scripts/nccl_info.ts 2>&1); then
  record launch-nccl "skipped (${nccl_line:0:160})" 0 30
elif run_step launch-nccl 30 bash -c 'nccl_losses "$@"' _ "$log_dir/default" "${dflags[@]}"; then
  summary=$(grep -a -m1 '^compare_losses: ok: ' "$log_dir/launch-nccl.log" | sed 's/^compare_losses: ok: //')
  [ -n "$summary" ] && results[${#results[@]} - 1]="ok ($summary)"
fi

# ---- generation: greedy text on CUDA (one rank and a TP x PP layout) equals the CPU's ----------------
# From the checkpoint gpt-default's CUDA run saved. GPU_CHECK_GENERATE_LAYOUT: the layout flags of the
# second CUDA run (tests/gpu_check_script.test.ts's one-layer model cannot take PP 2); the dry run
# (GPU_CHECK_DEFAULT_DEVICE=cpu) runs the "cuda" halves on the CPU as gpt-default does.
generate_compare() { # dir deno-flags...
  local dir=$1 dev=${GPU_CHECK_DEFAULT_DEVICE:-cuda} run n
  shift
  if [ ! -f "$dir/ckpt-cuda/latest_checkpointed_iteration.txt" ]; then
    echo "generate: no checkpoint at $dir/ckpt-cuda (gpt-default did not save one)"
    return 1
  fi
  mkdir -p "$dir/gen"
  printf 'The meaning of life is\nIn 1905, Albert Einstein\n' >"$dir/gen/prompts.txt"
  for run in cuda cuda-layout cpu; do
    local flags=(--device "$dev")
    [ "$run" = cpu ] && flags=(--device cpu)
    # shellcheck disable=SC2206
    [ "$run" = cuda-layout ] && flags+=(${GPU_CHECK_GENERATE_LAYOUT:---tensor-model-parallel-size 2 --pipeline-model-parallel-size 2})
    echo "--- generate-gpt ${flags[*]}"
    deno run "$@" -A --no-check tasks/generate_gpt.ts --load "$dir/ckpt-cuda" "${flags[@]}" --greedy \
      --out-seq-length 24 --sample-input-file "$dir/gen/prompts.txt" --sample-output-file "$dir/gen/$run.txt" \
      --genfile "$dir/gen/$run.jsonl" || return
  done
  for run in cuda cuda-layout; do
    if ! cmp -s "$dir/gen/$run.jsonl" "$dir/gen/cpu.jsonl"; then
      echo "generate: the $run tokens differ from the cpu's:"
      diff "$dir/gen/$run.jsonl" "$dir/gen/cpu.jsonl" | head -6
      return 1
    fi
  done
  n=$(grep -o '"tokens":\[[^]]*\]' "$dir/gen/cpu.jsonl" | tr -cd ',\n' | awk '{ n += length($0) + 1 } END { print n }')
  echo "generate: ok: $n greedy tokens, cuda == cuda ${GPU_CHECK_GENERATE_LAYOUT:-TP 2 x PP 2} == cpu"
}
export -f generate_compare
export GPU_CHECK_GENERATE_LAYOUT
if run_step gpt-generate 30 bash -c 'generate_compare "$@"' _ "$log_dir/default" "${dflags[@]}"; then
  summary=$(grep -a -m1 '^generate: ok: ' "$log_dir/gpt-generate.log" | sed 's/^generate: ok: //')
  [ -n "$summary" ] && results[${#results[@]} - 1]="ok ($summary)"
fi

# ---- after the checks: failed test files once more, synchronizing after every launch and GEMM -----
for f in "${failed_files[@]}"; do
  # shellcheck disable=SC2086
  run_step "sync:${f//_/-}" 120 env MEGATRON_DENO_CUDA_SYNC=1 deno test "${dflags[@]}" -A --no-check ${GPU_CHECK_TEST_ARGS:-} \
    "tests/gpu/$f.test.ts"
  first=$(grep -a -m1 "cuda sync check:" "$log_dir/sync_${f//_/-}.log" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g')
  [ -n "$first" ] && echo "first failing op (tests/gpu/$f.test.ts): ${first#*cuda sync check: }"
done

compare_line=""
if [ "${1:-}" = "--bench" ]; then
  # GPU_CHECK_BENCH_ARGS / GPU_CHECK_TORCH_ARGS: other sizes (the defaults are GPT-345M, 20 steps).
  # shellcheck disable=SC2086
  run_step bench 150 deno run "${dflags[@]}" -A bench/gpu/gpt345m.ts ${GPU_CHECK_BENCH_ARGS:---steps 20}
  if command -v python3 >/dev/null && timeout 60 python3 -c "import torch" 2>/dev/null; then
    # shellcheck disable=SC2086
    run_step pytorch 120 env PYTHONUNBUFFERED=1 python3 bench/pytorch_gpt345m.py ${GPU_CHECK_TORCH_ARGS:---steps 20}
  else
    record pytorch "skipped (no python3 with torch)" 0 120
  fi
  run_step bench-generate 90 deno bench "${dflags[@]}" -A --no-check --filter cuda bench/generate.bench.ts
  ours=$(grep -ao '[0-9]* tok/s' "$log_dir/bench.log" 2>/dev/null | tail -1 | cut -d' ' -f1)
  theirs=$(grep -ao '[0-9]* tokens/s' "$log_dir/pytorch.log" 2>/dev/null | tail -1 | cut -d' ' -f1)
  if [ -n "$ours" ] && [ -n "$theirs" ] && [ "$theirs" -gt 0 ]; then
    compare_line="GPT train step tokens/s: megatron-deno $ours, PyTorch eager $theirs, ratio $(
      awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", a / b }'
    )"
  fi
fi

# ---- table -------------------------------------------------------------------------------------
table=$(
  echo "gpu_check: GPU $gpu_line; $(grep -a -m1 '^cuda driver:' "$log_dir/cuda-info.log" 2>/dev/null | sed 's/  */ /g')"
  printf '%-14s %7s %7s  %s\n' step seconds budget result
  for i in "${!names[@]}"; do
    printf '%-14s %7s %7s  %s\n' "${names[$i]}" "${times[$i]}" "${budgets[$i]}" "${results[$i]}"
  done
  [ -n "$compare_line" ] && echo "$compare_line"
  echo "gpu_check: $([ $failed = 0 ] && echo ok || echo FAILED) in $((SECONDS - deadline + ${GPU_CHECK_DEADLINE:-450}))s"
)
if [ -n "${OUT:-}" ]; then
  for l in "$log_dir"/*.log; do echo "=== $(basename "$l")"; cat "$l"; done > "$OUT/gpu_check.log" 2>/dev/null
  echo "$table" > "$OUT/gpu_check_table.txt"
  # The embedded default's per-iteration metrics, CUDA and CPU (full precision, for a failed compare).
  for m in "$log_dir"/default/*.jsonl; do [ -f "$m" ] && cp "$m" "$OUT/gpt_default_$(basename "$m")"; done
  # The generated text of each gpt-generate run ({context, text, tokens} lines).
  for m in "$log_dir"/default/gen/*.jsonl; do [ -f "$m" ] && cp "$m" "$OUT/generate_$(basename "$m")"; done
fi
echo
echo "$table"
exit $failed
