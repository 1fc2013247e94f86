#!/usr/bin/env python3
"""PyTorch-CPU reference for the embedded-default GPT: same architecture (Megatron 2021 GPT: pre-LN,
fused QKV, causal softmax, tanh-GeLU MLP, tied logits), same shapes, AdamW, fp32. Prints tokens/s of full
training steps (forward, backward, optimizer) so `deno task bench` numbers can be compared on one machine.

    pip install torch   # CPU wheel
    python3 bench/pytorch_cpu_gpt.py --num-layers 4 --hidden-size 128 --num-attention-heads 4 \
        --seq-length 128 --micro-batch-size 8 --vocab 50304 --iters 20
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--num-layers", type=int, default=4)
p.add_argument("--hidden-size", type=int, default=128)
p.add_argument("--num-attention-heads", type=int, default=4)
p.add_argument("--seq-length", type=int, default=128)
p.add_argument("--micro-batch-size", type=int, default=8)
p.add_argument("--vocab", type=int, default=50304)
p.add_argument("--dropout", type=float, default=0.1)
p.add_argument("--iters", type=int, default=20)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--threads", type=int, default=0)
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)


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

    def forward(self, x):
        b, s, h = x.shape
        hn = h // self.heads
        qkv = self.qkv(self.ln1(x)).view(b, s, self.heads, 3, hn)
        q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hn)
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)
        probs = F.dropout(torch.softmax(scores.masked_fill(mask, -10000.0), -1), self.drop, self.training)
        ctx = (probs @ v).transpose(1, 2).reshape(b, s, h)
        x = x + F.dropout(self.dense(ctx), self.drop, self.training)
        y = self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))
        return x + F.dropout(y, self.drop, self.training)


class GPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(a.vocab, a.hidden_size)
        self.wpe = torch.nn.Embedding(a.seq_length, a.hidden_size)
        self.layers = torch.nn.ModuleList(
            [Layer(a.hidden_size, a.num_attention_heads, a.dropout) for _ in range(a.num_layers)])
        self.lnf = torch.nn.LayerNorm(a.hidden_size, eps=1e-5)

    def forward(self, tokens, labels):
        pos = torch.arange(tokens.shape[1])
        x = F.dropout(self.wte(tokens) + self.wpe(pos), a.dropout, self.training)
        for layer in self.layers:
            x = layer(x)
        logits = self.lnf(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, a.vocab).float(), labels.view(-1))


torch.manual_seed(1234)
model = GPT()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
tokens = torch.randint(0, 50257, (a.micro_batch_size, a.seq_length))
labels = torch.randint(0, 50257, (a.micro_batch_size, a.seq_length))


def step():
    opt.zero_grad(set_to_none=True)
    loss = model(tokens, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


for _ in range(a.warmup):
    step()
t0 = time.perf_counter()
for _ in range(a.iters):
    step()
dt = time.perf_counter() - t0
tok = a.iters * a.micro_batch_size * a.seq_length
print(f"pytorch-cpu {torch.__version__} threads={torch.get_num_threads()}: "
      f"{dt / a.iters * 1000:.1f} ms/step, {tok / dt:.0f} tokens/s")
