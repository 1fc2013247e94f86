#!/usr/bin/env python3
"""Independent PyTorch training of the reference run (scripts/pytorch_reference/run.ts), whose
per-iteration loss, grad norm and learning rate tests/training_pytorch_reference.test.ts compares with
the CLI's. Inputs (initial weights, samples in consumption order) come from dump_inputs.ts; everything
else is PyTorch's: forward (Megatron GPT: pre-LN, fused QKV laid out [heads, 3, hn], causal softmax
with 1/sqrt(hn), tanh GeLU, tied logits, masked-mean cross entropy), autograd backward, micro-batch
averaging (loss / num_micro per backward), global-norm clipping (coeff = max / (norm + 1e-6), applied
when < 1), torch.optim.AdamW with Megatron's two weight-decay groups, Megatron's AnnealingLR (warmup
then cosine, counted in samples).

    pip install torch numpy
    deno run -A scripts/pytorch_reference/dump_inputs.ts /tmp/ref
    python3 scripts/pytorch_reference/train_reference.py /tmp/ref tests/data/pytorch_gpt_reference.json

The output is small: one {iteration, loss, grad_norm, lr} per iteration.
"""
import argparse
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("inputs")
ap.add_argument("output")
ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
a = ap.parse_args()
torch.set_num_threads(2)
dtype = getattr(torch, a.dtype)

run = json.load(open(os.path.join(a.inputs, "run.json")))
flags = run["flags"]
arg = {flags[i][2:]: flags[i + 1] for i in range(0, len(flags), 2)}
L, H, NH = int(arg["num-layers"]), int(arg["hidden-size"]), int(arg["num-attention-heads"])
S, MB, GBS, ITERS = int(arg["seq-length"]), int(arg["micro-batch-size"]), int(arg["global-batch-size"]), int(
    arg["train-iters"])
MAX_LR, MIN_LR, WARMUP = float(arg["lr"]), float(arg["min-lr"]), int(arg["lr-warmup-iters"])
WD, CLIP = float(arg["weight-decay"]), float(arg["clip-grad"])
assert arg["lr-decay-style"] == "cosine" and float(arg["hidden-dropout"]) == 0 and float(arg["attention-dropout"]) == 0
HN = H // NH
NUM_MICRO = GBS // MB

params = {}
no_decay = set()
for p in json.load(open(os.path.join(a.inputs, "params.json"))):
    data = np.fromfile(os.path.join(a.inputs, p["file"]), dtype="<f4").reshape(p["shape"])
    params[p["name"]] = torch.tensor(data, dtype=dtype, requires_grad=True)
    if p["noWeightDecay"]:
        no_decay.add(p["name"])
samples = torch.from_numpy(np.fromfile(os.path.join(a.inputs, "samples.i32"), dtype="<i4").astype(np.int64))
samples = samples.view(ITERS * GBS, S + 1)


def P(n):
    return params["language_model." + n]


def forward(tokens, labels):
    b, s = tokens.shape
    x = P("embedding.word_embeddings.weight")[tokens] + P("embedding.position_embeddings.weight")[:s][None]
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)
    for i in range(L):
        pre = f"encoder.layers.{i}."
        ln = F.layer_norm(x, (H,), P(pre + "input_layernorm.weight"), P(pre + "input_layernorm.bias"), 1e-5)
        qkv = F.linear(ln, P(pre + "self_attention.query_key_value.weight"),
                       P(pre + "self_attention.query_key_value.bias")).view(b, s, NH, 3, HN)
        q, k, v = (qkv[:, :, :, j].transpose(1, 2) for j in range(3))
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(HN))
        probs = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
        ctx = (probs @ v).transpose(1, 2).reshape(b, s, H)
        x = x + F.linear(ctx, P(pre + "self_attention.dense.weight"), P(pre + "self_attention.dense.bias"))
        ln = F.layer_norm(x, (H,), P(pre + "post_attention_layernorm.weight"), P(pre + "post_attention_layernorm.bias"),
                          1e-5)
        h4 = F.gelu(F.linear(ln, P(pre + "mlp.dense_h_to_4h.weight"), P(pre + "mlp.dense_h_to_4h.bias")),
                    approximate="tanh")
        x = x + F.linear(h4, P(pre + "mlp.dense_4h_to_h.weight"), P(pre + "mlp.dense_4h_to_h.bias"))
    x = F.layer_norm(x, (H,), P("encoder.final_layernorm.weight"), P("encoder.final_layernorm.bias"), 1e-5)
    logits = x @ P("embedding.word_embeddings.weight").t()
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    mask = torch.ones_like(losses)  # no --eod-mask-loss
    return (losses * mask).sum() / mask.sum()


def megatron_lr(num_samples):
    """AnnealingLR.get_lr with steps counted in samples (warmup, then cosine to min_lr)."""
    warmup, decay = WARMUP * GBS, ITERS * GBS
    if warmup > 0 and num_samples <= warmup:
        return MAX_LR * float(num_samples) / float(warmup)
    if num_samples > decay:
        return MIN_LR
    ratio = float(num_samples - warmup) / float(decay - warmup)
    coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
    return MIN_LR + coeff * (MAX_LR - MIN_LR)


names = list(params)
opt = torch.optim.AdamW(
    [{"params": [params[n] for n in names if n not in no_decay], "weight_decay": WD},
     {"params": [params[n] for n in names if n in no_decay], "weight_decay": 0.0}],
    lr=0.0, betas=(0.9, 0.999), eps=1e-8, foreach=False)
out = []
for it in range(1, ITERS + 1):
    consumed = (it - 1) * GBS
    for g in opt.param_groups:
        g["lr"] = megatron_lr(consumed)
    opt.zero_grad(set_to_none=False)
    micro_losses = []
    for m in range(NUM_MICRO):
        batch = samples[consumed + m * MB: consumed + (m + 1) * MB]
        loss = forward(batch[:, :-1], batch[:, 1:])
        (loss / NUM_MICRO).backward()
        micro_losses.append(loss.item())
    # Global L2 norm over every gradient, summed in float64.
    grads = [params[n].grad for n in names]
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    coeff = CLIP / (norm + 1e-6)
    if coeff < 1.0:
        for g in grads:
            g.mul_(coeff)
    opt.step()
    out.append({"iteration": it, "loss": sum(micro_losses) / len(micro_losses), "grad_norm": norm,
                "lr": megatron_lr(consumed + GBS)})
    if it % 10 == 0 or it == 1:
        print(f"iteration {it}: loss {out[-1]['loss']:.7f} grad norm {norm:.7f} lr {out[-1]['lr']:.6e}")

with open(a.output, "w") as f:
    json.dump({"generator": "scripts/pytorch_reference/train_reference.py", "torch": torch.__version__,
               "dtype": a.dtype, "flags": flags, "iterations": out}, f, indent=1)
    f.write("\n")
