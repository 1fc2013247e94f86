#!/usr/bin/env bash
# GPT-345M pretraining on one GPU: the model and schedule of Megatron-LM's 2021 single-GPU GPT example
# (24 layers, hidden 1024, 16 heads, sequence 1024, micro batch 4, global batch 8, Adam at 1.5e-4
# with cosine decay to 1e-5 over 320k of 500k iterations, 1% warmup, fp16), run with megatron-deno's
# CUDA backend.
#
# Set the paths (environment variables or edit the defaults), then:
#   DATA_PATH=/data/my-gpt2_text_document CHECKPOINT_PATH=/ckpt/gpt345m scripts/pretrain_gpt.sh
# Extra arguments are passed through and override the ones below, e.g. `--train-iters 1000`.
#
# DATA_PATH       prefix of a preprocessed dataset (<prefix>.bin/.idx from `deno task preprocess
#                 --tokenizer-type GPT2BPETokenizer --append-eod ...`), or "w1 p1 w2 p2 ..." to blend
# CHECKPOINT_PATH saved to and resumed from (Megatron's iter_XXXXXXX/mp_rank_00 layout)
# VOCAB_FILE      GPT-2 encoder.json; MERGE_FILE GPT-2 merges (both unset: the bundled GPT-2 files)
# TENSORBOARD_DIR optional TensorBoard log directory
# DEVICE          cuda (default); cpu works too but is far too slow for this size
set -euo pipefail

DATA_PATH=${DATA_PATH:?set DATA_PATH to the preprocessed dataset prefix (e.g. /data/my-gpt2_text_document)}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-checkpoints/gpt2_345m}
VOCAB_FILE=${VOCAB_FILE:-}
MERGE_FILE=${MERGE_FILE:-}
TENSORBOARD_DIR=${TENSORBOARD_DIR:-}
DEVICE=${DEVICE:-cuda}

# `deno task` runs from the repository root: make user paths absolute first.
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
data_args=()
for p in $DATA_PATH; do
  if [[ $p =~ ^[0-9.eE+-]+$ ]]; then data_args+=("$p"); else data_args+=("$(abs "$p")"); fi
done
CHECKPOINT_PATH=$(abs "$CHECKPOINT_PATH")

model=(
  --num-layers 24
  --hidden-size 1024
  --num-attention-heads 16
  --seq-length 1024
  --max-position-embeddings 1024
)
schedule=(
  --micro-batch-size 4
  --global-batch-size 8
  --train-iters 500000
  --lr 0.00015
  --min-lr 1.0e-5
  --lr-decay-style cosine
  --lr-decay-iters 320000
  --lr-warmup-fraction .01
  --weight-decay 1e-2
  --clip-grad 1.0
  --fp16
  --checkpoint-activations
)
data=(--data-path "${data_args[@]}" --data-impl mmap --split 949,50,1 --tokenizer-type GPT2BPETokenizer)
if [[ -n $VOCAB_FILE || -n $MERGE_FILE ]]; then
  data+=(--vocab-file "$(abs "${VOCAB_FILE:?MERGE_FILE is set, VOCAB_FILE is not}")")
  data+=(--merge-file "$(abs "${MERGE_FILE:?VOCAB_FILE is set, MERGE_FILE is not}")")
fi
output=(
  --save "$CHECKPOINT_PATH"
  --load "$CHECKPOINT_PATH"
  --save-interval 10000
  --log-interval 100
  --eval-interval 1000
  --eval-iters 10
  --exit-signal-handler
)
if [[ -n $TENSORBOARD_DIR ]]; then output+=(--tensorboard-dir "$(abs "$TENSORBOARD_DIR")"); fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec deno task pretrain:gpt "${model[@]}" "${schedule[@]}" "${data[@]}" "${output[@]}" --device "$DEVICE" "$@"
