#!/usr/bin/env python3
"""PyTorch eager reference for bench/gpu/gpt345m.ts: the same GPT (Megatron 2021: pre-LN, fused QKV,
explicit causal softmax, tanh-GeLU MLP, tied logits), GPT-345M shapes, dropout 0.1, bf16 compute with f32
master weights (torch.autocast, as Megatron's --bf16 keeps f32 main params), AdamW. Prints tokens/s,
TFLOP/s (Megatron's formula, as the Deno bench), MFU, peak memory and the first and last loss, so
scripts/gpu_check.sh --bench can put both on one line.

    python3 bench/pytorch_gpt345m.py [--steps 20] [--device cuda] [--layers 24 --hidden 1024 ...]
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=24)
p.add_argument("--hidden", type=int, default=1024)
p.add_argument("--heads", type=int, default=16)
p.add_argument("--seq", type=int, default=1024)
p.add_argument("--micro-batch", type=int, default=8)
p.add_argument("--vocab", type=int, default=50304)
p.add_argument("--dropout", type=float, default=0.1)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--device", default="cuda")
p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 datasheet)")
a = p.parse_args()
dev = torch.device(a.device)


class Layer(torch.nn.Module):
    def __init__(self, h, heads, drop):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(h, eps=1e-5)
        self.qkv = torch.nn.Linear(h, 3 * h)
        self.dense = torch.nn.Linear(h, h)
        self.ln2 = torch.nn.LayerNorm(h, eps=1e-5)
        self.fc1 = torch.nn.Linear(h, 4 * h)
        self.fc2 = torch.nn.Linear(4 * h, h)
        self.heads, self.drop = heads, drop

    def forward(self, x, mask):
        b, s, h = x.shape
        hn = h // self.heads
        qkv = self.qkv(self.ln1(x)).view(b, s, self.heads, 3, hn)
        q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hn)
        probs = F.dropout(torch.softmax(scores.masked_fill(mask, -10000.0), -1), self.drop, self.training)
        ctx = (probs @ v).transpose(1, 2).reshape(b, s, h)
        x = x + F.dropout(self.dense(ctx), self.drop, self.training)
        y = self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))
        return x + F.dropout(y, self.drop, self.training)


class GPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(a.vocab, a.hidden)
        self.wpe = torch.nn.Embedding(a.seq, a.hidden)
        self.layers = torch.nn.ModuleList([Layer(a.hidden, a.heads, a.dropout) for _ in range(a.layers)])
        self.lnf = torch.nn.LayerNorm(a.hidden, eps=1e-5)
        self.register_buffer("mask", torch.triu(torch.ones(a.seq, a.seq, dtype=torch.bool), 1))

    def forward(self, tokens, labels):
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        x = F.dropout(self.wte(tokens) + self.wpe(pos), a.dropout, self.training)
        for layer in self.layers:
            x = layer(x, self.mask)
        logits = self.lnf(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, a.vocab).float(), labels.view(-1))


torch.manual_seed(1234)
model = GPT().to(dev)
for mod in model.modules():  # Megatron's init: N(0, 0.02) weights, zero biases
    if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
        torch.nn.init.normal_(mod.weight, 0.0, 0.02)
    if isinstance(mod, torch.nn.Linear):
        torch.nn.init.zeros_(mod.bias)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
tok = (torch.arange(a.micro_batch * a.seq, device=dev) * 7919 % a.vocab).view(a.micro_batch, a.seq)
lab = (tok + 1) % a.vocab  # the Deno bench's tokens and labels
n_params = sum(t.numel() for t in model.parameters())


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
        loss = model(tok, lab)
    loss.backward()
    opt.step()
    return loss.item()


losses = [step() for _ in range(a.warmup)]
sync()
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
losses += [step() for _ in range(a.steps)]
sync()
sec = (time.perf_counter() - t0) / a.steps
tokens = a.micro_batch * a.seq
L, h, s, V = a.layers, a.hidden, a.seq, a.vocab
flops = 72 * a.micro_batch * s * L * h * h * (1 + s / (6 * h) + V / (12 * L * h))
peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
print(f"pytorch {torch.__version__} eager bf16 autocast on {name}: GPT ({L} layers, {n_params / 1e6:.1f}M params) "
      f"mb={a.micro_batch} s={s}: {sec * 1000:.1f} ms/step, {tokens / sec:.0f} tokens/s, "
      f"{flops / sec / 1e12:.0f} TFLOP/s, MFU {100 * flops / sec / (a.peak_tflops * 1e12):.1f}% of "
      f"{a.peak_tflops:.0f} TFLOP/s, loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps, "
      f"peak {peak:.1f} GiB")
if not losses[-1] < losses[0]:
    print("pytorch: FAILED (loss did not fall)")
    raise SystemExit(1)
