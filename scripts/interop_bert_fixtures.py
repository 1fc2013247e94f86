#!/usr/bin/env python3
"""Generate the BERT conversion fixtures of tests/inference_convert_bert.test.ts (run once; outputs are
committed). Needs torch, transformers and safetensors. Writes tests/data/interop/:

  hf_bert_rand/        a tiny BertForPreTraining (2 layers, hidden 16, 2 heads, intermediate 48, vocab 100,
                       16 positions) whose every weight is random (LayerNorms and biases too, so each path
                       counts), saved with save_pretrained (config.json + model.safetensors)
  megatron_bert/       the same weights as a Megatron-LM BERT release checkpoint with the 2021 structure
                       (model -> language_model -> embedding / transformer / pooler, lm_head, binary_head;
                       the older "transformer" and ".attention." names of the published BERT-345M,
                       checkpoint_version 3.0 QKV rows [np, 3, hn], args Namespace with
                       apply_residual_connection_post_layernorm and bias_gelu_fusion=False); the padded
                       vocabulary rows (100 -> 128) are random, as Megatron's are
  bert_reference_logits.json  transformers' MLM and NSP logits (fp32, CPU) for two rows of 8 tokens with
                       token types, the second row's last two tokens padded (attention_mask 0)

With --check-export DIR it writes nothing: it loads DIR (a folder `deno task convert --to hf` wrote from
megatron_bert/ or hf_bert_rand/) with BertForPreTraining.from_pretrained and prints the largest difference
of its logits from bert_reference_logits.json (0.0 when the export is exact).
"""

import argparse
import collections
import json
import os

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "interop")


def check_export(directory):
    import transformers
    m = transformers.BertForPreTraining.from_pretrained(directory).eval()
    with open(os.path.join(OUT, "bert_reference_logits.json")) as f:
        ref = json.load(f)
    with torch.no_grad():
        r = m(input_ids=torch.tensor(ref["input_ids"]), token_type_ids=torch.tensor(ref["token_type_ids"]),
              attention_mask=torch.tensor(ref["attention_mask"]))
    mlm = (r.prediction_logits.flatten() - torch.tensor(ref["mlm_logits"])).abs().max().item()
    nsp = (r.seq_relationship_logits.flatten() - torch.tensor(ref["nsp_logits"])).abs().max().item()
    print(f"{directory}: transformers loads it; max |logit difference| MLM {mlm}, NSP {nsp}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-export", metavar="DIR", help="check an exported HF BERT folder instead")
    a = ap.parse_args()
    if a.check_export:
        check_export(a.check_export)
        return
    import transformers
    torch.manual_seed(20211)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=48, max_position_embeddings=16, type_vocab_size=2,
                                  hidden_act="gelu", layer_norm_eps=1e-12)
    m = transformers.BertForPreTraining(cfg).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in m.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.3
            p.copy_(1 + noise if "LayerNorm.weight" in name else noise)
        m.tie_weights()
    m.save_pretrained(os.path.join(OUT, "hf_bert_rand"), safe_serialization=True)

    ids = torch.tensor([[2, 17, 45, 99, 3, 60, 8, 1], [2, 33, 5, 71, 90, 4, 0, 0]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]])
    keep = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])
    with torch.no_grad():
        r = m(input_ids=ids, token_type_ids=types, attention_mask=keep)
    ref = {"input_ids": ids.tolist(), "token_type_ids": types.tolist(), "attention_mask": keep.tolist(),
           "vocab": cfg.vocab_size, "mlm_logits": r.prediction_logits.flatten().tolist(),
           "nsp_logits": r.seq_relationship_logits.flatten().tolist()}
    with open(os.path.join(OUT, "bert_reference_logits.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")

    # The Megatron checkpoint, built with torch ops from the HF state dict (independent of the TypeScript
    # name map): HF's LayerNorms move one slot forward (post-LN), q/k/v interleave per head.
    sd = m.state_dict()
    L, h, heads, padded = cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, 128
    hn = h // heads

    def pad(t):
        extra = torch.randn((padded - t.shape[0],) + tuple(t.shape[1:]), generator=g) * 0.3
        return torch.cat([t, extra])

    def qkv(kind, i):
        p = f"bert.encoder.layer.{i}.attention.self."
        blocks = torch.stack([sd[p + f"{n}.{kind}"] for n in ("query", "key", "value")])  # [3, h, ...]
        rest = tuple(blocks.shape[2:])
        return blocks.reshape(3, heads, hn, *rest).transpose(0, 1).reshape(3 * h, *rest).contiguous()

    def ln_in(i):
        return "final_layernorm" if i == L else f"layers.{i}.input_layernorm"

    enc = collections.OrderedDict()
    src = {0: "bert.embeddings.LayerNorm"}
    for i in range(L):
        src[i + 1] = f"bert.encoder.layer.{i}.output.LayerNorm"
    for i in range(L):
        b = f"bert.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            enc[f"{ln_in(i)}.{kind}"] = sd[f"{src[i]}.{kind}"]
        for kind in ("weight", "bias"):
            enc[f"layers.{i}.attention.query_key_value.{kind}"] = qkv(kind, i)
        for kind in ("weight", "bias"):
            enc[f"layers.{i}.attention.dense.{kind}"] = sd[b + f"attention.output.dense.{kind}"]
        for kind in ("weight", "bias"):
            enc[f"layers.{i}.post_attention_layernorm.{kind}"] = sd[b + f"attention.output.LayerNorm.{kind}"]
        for kind in ("weight", "bias"):
            enc[f"layers.{i}.mlp.dense_h_to_4h.{kind}"] = sd[b + f"intermediate.dense.{kind}"]
        for kind in ("weight", "bias"):
            enc[f"layers.{i}.mlp.dense_4h_to_h.{kind}"] = sd[b + f"output.dense.{kind}"]
    for kind in ("weight", "bias"):
        enc[f"final_layernorm.{kind}"] = sd[f"{src[L]}.{kind}"]
    od = collections.OrderedDict
    lm = od(
        embedding=od(
            word_embeddings=od(weight=pad(sd["bert.embeddings.word_embeddings.weight"])),
            position_embeddings=od(weight=sd["bert.embeddings.position_embeddings.weight"]),
            tokentype_embeddings=od(weight=sd["bert.embeddings.token_type_embeddings.weight"])),
        transformer=enc,
        pooler=od([("dense.weight", sd["bert.pooler.dense.weight"]), ("dense.bias", sd["bert.pooler.dense.bias"])]))
    model = od(
        language_model=lm,
        lm_head=od([("bias", pad(sd["cls.predictions.bias"])),
                    ("dense.weight", sd["cls.predictions.transform.dense.weight"]),
                    ("dense.bias", sd["cls.predictions.transform.dense.bias"]),
                    ("layernorm.weight", sd["cls.predictions.transform.LayerNorm.weight"]),
                    ("layernorm.bias", sd["cls.predictions.transform.LayerNorm.bias"])]),
        binary_head=od(weight=sd["cls.seq_relationship.weight"], bias=sd["cls.seq_relationship.bias"]))
    model = {k: ({kk: (vv.clone() if isinstance(vv, torch.Tensor) else vv) for kk, vv in v.items()})
             for k, v in model.items()}
    args = argparse.Namespace(
        num_layers=L, hidden_size=h, num_attention_heads=heads, ffn_hidden_size=cfg.intermediate_size,
        kv_channels=hn, max_position_embeddings=cfg.max_position_embeddings, seq_length=8,
        make_vocab_size_divisible_by=128, padded_vocab_size=padded, tokenizer_type="BertWordPieceLowerCase",
        vocab_file="bert-vocab.txt", layernorm_epsilon=cfg.layer_norm_eps,
        apply_residual_connection_post_layernorm=True, bias_gelu_fusion=False, openai_gelu=False,
        onnx_safe=None, bert_binary_head=True, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
        fp16=False, bf16=False, params_dtype=torch.float32)
    root = os.path.join(OUT, "megatron_bert")
    os.makedirs(os.path.join(root, "release", "mp_rank_00"), exist_ok=True)
    torch.save({"args": args, "checkpoint_version": 3.0, "iteration": 0, "model": model},
               os.path.join(root, "release", "mp_rank_00", "model_optim_rng.pt"))
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("release")
    print("BERT fixtures written to", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
