#!/usr/bin/env python3
"""Generate the small fixtures of tests/interop_*.test.ts (run once; outputs are committed).

Needs torch, transformers, safetensors and numpy. Writes tests/data/interop/:
  megatron_gpt_zip.pt / megatron_gpt_legacy.pt  a Megatron-2021-structured GPT checkpoint (model ->
      language_model -> embedding / encoder, checkpoint_version 3.0, args Namespace, iteration, RNG
      states) in torch's zip and pre-1.6 formats, plus odd tensors (strided, fp16, bf16, int64, bool)
  megatron_gpt_v0.pt / _v1.pt  the same model saved as checkpoint_version 0 and 1 (older names, QKV
      orders [3, np, hn] and [np, hn, 3])
  megatron_gpt_expected.json   every tensor's dtype, shape and values (as float64) and the metadata
  hf_gpt2/, hf_bert/           tiny random GPT2LMHeadModel / BertForPreTraining (save_pretrained)
  hf_gpt2_megatron.safetensors, hf_bert_megatron.safetensors  the same weights in Megatron 2021 names
      and layouts, computed here with torch ops (an implementation independent of the TypeScript one)
  reference_logits.json        logits (fp32, CPU, input ids 1..7) of the tiny HF GPT-2 and BERT and of the
      Megatron fixture run as a GPT2LMHeadModel, for the model-level import tests
  deno_written_check.json      with --check-deno DIR: torch.load(weights_only=True) of the .pt files
      scripts/interop_write_sample.ts wrote, summarized
"""

import argparse
import collections
import json
import os
import random
import sys

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "interop")


def tensor_json(t):
    t = t.detach().contiguous()
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
            "values": t.to(torch.float64).flatten().tolist() if t.dtype != torch.bool
            else t.to(torch.int64).flatten().tolist()}


def megatron_gpt():
    g = torch.Generator().manual_seed(1234)
    h, heads, layers, vocab_padded, pos = 8, 2, 2, 128, 16
    r = lambda *s: torch.randn(*s, generator=g)
    emb = collections.OrderedDict(
        word_embeddings=collections.OrderedDict(weight=r(vocab_padded, h)),
        position_embeddings=collections.OrderedDict(weight=r(pos, h)))
    enc = collections.OrderedDict()
    for i in range(layers):
        p = f"layers.{i}."
        enc[p + "input_layernorm.weight"] = r(h)
        enc[p + "input_layernorm.bias"] = r(h)
        enc[p + "self_attention.query_key_value.weight"] = r(3 * h, h)
        enc[p + "self_attention.query_key_value.bias"] = r(3 * h)
        enc[p + "self_attention.dense.weight"] = r(h, h)
        enc[p + "self_attention.dense.bias"] = r(h)
        enc[p + "post_attention_layernorm.weight"] = r(h)
        enc[p + "post_attention_layernorm.bias"] = r(h)
        enc[p + "mlp.dense_h_to_4h.weight"] = r(4 * h, h)
        enc[p + "mlp.dense_h_to_4h.bias"] = r(4 * h)
        enc[p + "mlp.dense_4h_to_h.weight"] = r(h, 4 * h)
        enc[p + "mlp.dense_4h_to_h.bias"] = r(h)
    enc["final_layernorm.weight"] = r(h)
    enc["final_layernorm.bias"] = r(h)
    args = argparse.Namespace(num_layers=layers, hidden_size=h, num_attention_heads=heads,
                              max_position_embeddings=pos, seq_length=pos, padded_vocab_size=vocab_padded,
                              make_vocab_size_divisible_by=128, tokenizer_type="GPT2BPETokenizer",
                              tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                              params_dtype=torch.half, fp16=True, lr=1.5e-4, consumed_train_samples=640,
                              consumed_valid_samples=0, data_path=["my-gpt2_text_document"], seed=1234)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    random.seed(3)
    np.random.seed(5)
    state = {
        "args": args,
        "checkpoint_version": 3.0,
        "iteration": 5000,
        "model": collections.OrderedDict(language_model=collections.OrderedDict(embedding=emb, encoder=enc)),
        "extra": collections.OrderedDict(
            strided=base.t(),                       # non-contiguous (stride (1, 6))
            sliced=base[1:3, ::2],                  # offset + step
            half=(r(5) * 3).half(),
            bf16=r(4).bfloat16(),
            long=torch.tensor([-(2 ** 40), 7, 0], dtype=torch.int64),
            flags=torch.tensor([True, False, True]),
            size=torch.Size([2, 3]),
            tags={"a", "b"},
            big=2 ** 70,
            neg=-3,
            text="héllo",
        ),
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
    }
    return state


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, name))
        elif isinstance(v, torch.Tensor):
            out[name] = v
    return out


def megatron_qkv_from_blocks(w, heads):
    """[3h, ...] in q|k|v blocks -> [np, 3, hn, ...] rows (Megatron checkpoint_version 3)."""
    rest = w.shape[1:]
    hn = w.shape[0] // 3 // heads
    return w.reshape(3, heads, hn, *rest).transpose(0, 1).reshape(3 * heads * hn, *rest).contiguous()


def pad_rows(w, rows):
    out = torch.zeros((rows,) + tuple(w.shape[1:]), dtype=w.dtype)
    out[: w.shape[0]] = w
    return out


def old_versions(state):
    """The same model as checkpoint_version 0 and 1.0: 'transformer' key, '.attention.' names and the
    old QKV row orders, made from the version-3 rows with torch view/transpose."""
    heads = state["args"].num_attention_heads
    for version in (0, 1):
        enc = collections.OrderedDict()
        for k, v in state["model"]["language_model"]["encoder"].items():
            if "query_key_value" in k:
                rest = tuple(v.shape[1:])
                hn = v.shape[0] // 3 // heads
                per_head = v.reshape(heads, 3, hn, *rest)  # version 3: [np, 3, hn]
                v = (per_head.transpose(0, 1) if version == 0 else per_head.transpose(1, 2)).reshape(v.shape)
            enc[k.replace(".self_attention.", ".attention.")] = v.contiguous()
        old = {"args": state["args"], "iteration": state["iteration"],
               "model": {"language_model": {"embedding": state["model"]["language_model"]["embedding"],
                                            "transformer": enc}}}
        if version == 1:
            old["checkpoint_version"] = 1.0
        torch.save(old, os.path.join(OUT, f"megatron_gpt_v{version}.pt"))


def hf_fixtures():
    import transformers
    from safetensors.torch import save_file
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=2, n_head=2)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    m.save_pretrained(os.path.join(OUT, "hf_gpt2"), safe_serialization=True)
    sd = m.state_dict()
    meg = {"language_model.embedding.word_embeddings.weight": pad_rows(sd["transformer.wte.weight"], 128),
           "language_model.embedding.position_embeddings.weight": sd["transformer.wpe.weight"]}
    for i in range(cfg.n_layer):
        h, g = f"transformer.h.{i}.", f"language_model.encoder.layers.{i}."
        meg[g + "input_layernorm.weight"] = sd[h + "ln_1.weight"]
        meg[g + "input_layernorm.bias"] = sd[h + "ln_1.bias"]
        meg[g + "self_attention.query_key_value.weight"] = megatron_qkv_from_blocks(
            sd[h + "attn.c_attn.weight"].t(), cfg.n_head)
        meg[g + "self_attention.query_key_value.bias"] = megatron_qkv_from_blocks(
            sd[h + "attn.c_attn.bias"], cfg.n_head)
        meg[g + "self_attention.dense.weight"] = sd[h + "attn.c_proj.weight"].t()
        meg[g + "self_attention.dense.bias"] = sd[h + "attn.c_proj.bias"]
        meg[g + "post_attention_layernorm.weight"] = sd[h + "ln_2.weight"]
        meg[g + "post_attention_layernorm.bias"] = sd[h + "ln_2.bias"]
        meg[g + "mlp.dense_h_to_4h.weight"] = sd[h + "mlp.c_fc.weight"].t()
        meg[g + "mlp.dense_h_to_4h.bias"] = sd[h + "mlp.c_fc.bias"]
        meg[g + "mlp.dense_4h_to_h.weight"] = sd[h + "mlp.c_proj.weight"].t()
        meg[g + "mlp.dense_4h_to_h.bias"] = sd[h + "mlp.c_proj.bias"]
    meg["language_model.encoder.final_layernorm.weight"] = sd["transformer.ln_f.weight"]
    meg["language_model.encoder.final_layernorm.bias"] = sd["transformer.ln_f.bias"]
    save_file({k: v.contiguous() for k, v in meg.items()}, os.path.join(OUT, "hf_gpt2_megatron.safetensors"))

    bcfg = transformers.BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=16, type_vocab_size=2)
    b = transformers.BertForPreTraining(bcfg).eval()
    b.save_pretrained(os.path.join(OUT, "hf_bert"), safe_serialization=True)
    sd = b.state_dict()
    L = bcfg.num_hidden_layers
    ln = lambda i: (f"language_model.encoder.layers.{i}.input_layernorm" if i < L
                    else "language_model.encoder.final_layernorm")
    meg = {"language_model.embedding.word_embeddings.weight": pad_rows(sd["bert.embeddings.word_embeddings.weight"], 128),
           "language_model.embedding.position_embeddings.weight": sd["bert.embeddings.position_embeddings.weight"],
           "language_model.embedding.tokentype_embeddings.weight": sd["bert.embeddings.token_type_embeddings.weight"],
           ln(0) + ".weight": sd["bert.embeddings.LayerNorm.weight"],
           ln(0) + ".bias": sd["bert.embeddings.LayerNorm.bias"]}
    for i in range(L):
        h, g = f"bert.encoder.layer.{i}.", f"language_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = torch.cat([sd[h + f"attention.self.{p}.{kind}"] for p in ("query", "key", "value")])
            meg[g + f"self_attention.query_key_value.{kind}"] = megatron_qkv_from_blocks(qkv, bcfg.num_attention_heads)
            meg[g + f"self_attention.dense.{kind}"] = sd[h + f"attention.output.dense.{kind}"]
            meg[g + f"post_attention_layernorm.{kind}"] = sd[h + f"attention.output.LayerNorm.{kind}"]
            meg[g + f"mlp.dense_h_to_4h.{kind}"] = sd[h + f"intermediate.dense.{kind}"]
            meg[g + f"mlp.dense_4h_to_h.{kind}"] = sd[h + f"output.dense.{kind}"]
            meg[ln(i + 1) + f".{kind}"] = sd[h + f"output.LayerNorm.{kind}"]
    for kind in ("weight", "bias"):
        meg[f"language_model.pooler.dense.{kind}"] = sd[f"bert.pooler.dense.{kind}"]
        meg[f"lm_head.dense.{kind}"] = sd[f"cls.predictions.transform.dense.{kind}"]
        meg[f"lm_head.layernorm.{kind}"] = sd[f"cls.predictions.transform.LayerNorm.{kind}"]
        meg[f"binary_head.{kind}"] = sd[f"cls.seq_relationship.{kind}"]
    meg["lm_head.bias"] = pad_rows(sd["cls.predictions.bias"], 128)
    save_file({k: v.contiguous() for k, v in meg.items()}, os.path.join(OUT, "hf_bert_megatron.safetensors"))


def reference_logits():
    """Logits a converted model must reproduce (fp32, CPU): the tiny HF GPT-2 and BERT from their
    folders, and the Megatron fixture's weights run as a GPT2LMHeadModel (Megatron 2021 GPT = GPT-2's
    architecture with the tanh GeLU, LayerNorm eps 1e-5, logits over the padded vocabulary)."""
    import transformers
    from safetensors.torch import load_file
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    out = {"input_ids": ids[0].tolist()}
    g = transformers.GPT2LMHeadModel.from_pretrained(os.path.join(OUT, "hf_gpt2")).eval()
    with torch.no_grad():
        out["hf_gpt2_logits"] = g(ids).logits[0].flatten().tolist()
    b = transformers.BertForPreTraining.from_pretrained(os.path.join(OUT, "hf_bert")).eval()
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    out["bert_token_type_ids"] = types[0].tolist()
    with torch.no_grad():
        r = b(input_ids=ids, token_type_ids=types, attention_mask=torch.ones_like(ids))
        out["hf_bert_prediction_logits"] = r.prediction_logits[0].flatten().tolist()
        out["hf_bert_seq_relationship_logits"] = r.seq_relationship_logits[0].tolist()
    # The Megatron fixture as GPT-2: undo the per-head QKV interleaving and transpose to Conv1D.
    state = torch.load(os.path.join(OUT, "megatron_gpt_zip.pt"), weights_only=False)
    a = state["args"]
    lm = state["model"]["language_model"]
    cfg = transformers.GPT2Config(vocab_size=a.padded_vocab_size, n_positions=a.max_position_embeddings,
                                  n_embd=a.hidden_size, n_layer=a.num_layers, n_head=a.num_attention_heads,
                                  activation_function="gelu_new", layer_norm_epsilon=1e-5)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    sd = {"transformer.wte.weight": lm["embedding"]["word_embeddings"]["weight"],
          "transformer.wpe.weight": lm["embedding"]["position_embeddings"]["weight"],
          "transformer.ln_f.weight": lm["encoder"]["final_layernorm.weight"],
          "transformer.ln_f.bias": lm["encoder"]["final_layernorm.bias"]}
    heads = a.num_attention_heads
    for i in range(a.num_layers):
        e = lambda k: lm["encoder"][f"layers.{i}.{k}"]
        h = f"transformer.h.{i}."
        def blocks(w):
            rest = tuple(w.shape[1:])
            hn = w.shape[0] // 3 // heads
            return w.reshape(heads, 3, hn, *rest).transpose(0, 1).reshape(w.shape)
        sd[h + "ln_1.weight"], sd[h + "ln_1.bias"] = e("input_layernorm.weight"), e("input_layernorm.bias")
        sd[h + "attn.c_attn.weight"] = blocks(e("self_attention.query_key_value.weight")).t()
        sd[h + "attn.c_attn.bias"] = blocks(e("self_attention.query_key_value.bias"))
        sd[h + "attn.c_proj.weight"] = e("self_attention.dense.weight").t()
        sd[h + "attn.c_proj.bias"] = e("self_attention.dense.bias")
        sd[h + "ln_2.weight"] = e("post_attention_layernorm.weight")
        sd[h + "ln_2.bias"] = e("post_attention_layernorm.bias")
        sd[h + "mlp.c_fc.weight"] = e("mlp.dense_h_to_4h.weight").t()
        sd[h + "mlp.c_fc.bias"] = e("mlp.dense_h_to_4h.bias")
        sd[h + "mlp.c_proj.weight"] = e("mlp.dense_4h_to_h.weight").t()
        sd[h + "mlp.c_proj.bias"] = e("mlp.dense_4h_to_h.bias")
    missing, unexpected = m.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=False)
    assert not unexpected and all(k == "lm_head.weight" or k.endswith((".attn.bias", ".attn.masked_bias"))
                                  for k in missing), (missing, unexpected)
    m.tie_weights()
    with torch.no_grad():
        out["megatron_gpt_logits"] = m(ids).logits[0].flatten().tolist()
    with open(os.path.join(OUT, "reference_logits.json"), "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


def check_deno(directory):
    """Load the TypeScript writer's files with weights_only=True (Namespace allowed explicitly: torch
    does not allow it by default) and record what torch saw."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        full = torch.load(os.path.join(directory, "deno_written.pt"), weights_only=True)
    plain = torch.load(os.path.join(directory, "deno_written_weights_only.pt"), weights_only=True)
    summary = {}
    for name, obj in (("deno_written.pt", full), ("deno_written_weights_only.pt", plain)):
        s = {"keys": sorted(obj.keys()), "tensors": {k: tensor_json(v) for k, v in flatten(obj).items()},
             "scalars": {k: [type(v).__name__, v] for k, v in obj.items() if isinstance(v, (int, float, str))}}
        if "args" in obj:
            s["args"] = {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in vars(obj["args"]).items()}
        summary[name] = s
    # The Megatron fixture exported by the TypeScript code as a GPT-2 folder: transformers loads it and
    # its logits are compared with reference_logits.json's (computed from the .pt with torch ops).
    import transformers
    g = transformers.GPT2LMHeadModel.from_pretrained(os.path.join(directory, "deno_exported_gpt2")).eval()
    ref = json.load(open(os.path.join(OUT, "reference_logits.json")))
    with torch.no_grad():
        logits = g(torch.tensor([ref["input_ids"]])).logits[0].flatten()
    want = torch.tensor(ref["megatron_gpt_logits"], dtype=torch.float32)
    summary["deno_exported_gpt2"] = {"max_abs_diff": float((logits - want).abs().max()),
                                     "max_abs": float(want.abs().max())}
    summary["torch"] = torch.__version__
    with open(os.path.join(OUT, "deno_written_check.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    print("torch.load(weights_only=True) accepted both files in", directory,
          "; exported GPT-2 logits max abs diff", summary["deno_exported_gpt2"]["max_abs_diff"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-deno", metavar="DIR",
                    help="the folder where `deno run -A scripts/interop_write_sample.ts DIR` wrote its .pt files")
    ap.add_argument("--logits-only", action="store_true", help="only (re)write reference_logits.json")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if a.logits_only:
        reference_logits()
        return
    if a.check_deno:
        check_deno(a.check_deno)
        return
    state = megatron_gpt()
    torch.save(state, os.path.join(OUT, "megatron_gpt_zip.pt"))
    torch.save(state, os.path.join(OUT, "megatron_gpt_legacy.pt"), _use_new_zipfile_serialization=False)
    expected = {
        "tensors": {k: tensor_json(v) for k, v in flatten(state["model"], "model").items()},
        "extra": {k: tensor_json(v) for k, v in state["extra"].items() if isinstance(v, torch.Tensor)},
        "args": {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in vars(state["args"]).items()},
        "checkpoint_version": state["checkpoint_version"],
        "iteration": state["iteration"],
        "np_rng_state_first": int(state["np_rng_state"][1][0]),
        "np_rng_state_pos": int(state["np_rng_state"][2]),
        "torch_rng_state_len": int(state["torch_rng_state"].numel()),
        "random_rng_state_version": state["random_rng_state"][0],
    }
    with open(os.path.join(OUT, "megatron_gpt_expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=True)
        f.write("\n")
    old_versions(state)
    hf_fixtures()
    reference_logits()
    print("fixtures written to", os.path.abspath(OUT), file=sys.stderr)


if __name__ == "__main__":
    main()
