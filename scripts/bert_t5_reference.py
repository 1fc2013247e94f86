#!/usr/bin/env python3
"""Writes tests/data/bert_t5_reference.jsonl: BERT and T5 samples for a small synthetic document set,
computed here independently of the TypeScript (Python + the real numpy RandomState) from Megatron
2021's algorithm as documented in shared/reference/megatron-2021-facts.md section 2.

Run: python3 scripts/bert_t5_reference.py  (needs numpy; the tests only read the JSON).

The 32-bit std::mt19937(seed) stream is numpy's own MT19937 with the same init_genrand seeding
(RandomState(seed)'s raw output); std::mt19937_64 is written out below and checked against the
C++ standard's 10000th output of the default-seeded engine.
"""

import json
import math
import os

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "bert_t5_reference.jsonl")
LONG = 512


class Std32:
    """std::mt19937(seed): numpy's legacy seeding is the same init_genrand."""

    def __init__(self, seed):
        self.bg = np.random.RandomState(seed)._bit_generator

    def __call__(self):
        return int(self.bg.random_raw())


class Std64:
    """std::mt19937_64 from its published parameters."""

    M = (1 << 64) - 1

    def __init__(self, seed=5489):
        self.s = [seed & self.M]
        for i in range(1, 312):
            p = self.s[-1]
            self.s.append((6364136223846793005 * (p ^ (p >> 62)) + i) & self.M)
        self.k = 312

    def __call__(self):
        if self.k == 312:
            s = self.s
            for i in range(312):
                y = (s[i] & 0xFFFFFFFF80000000) | (s[(i + 1) % 312] & 0x7FFFFFFF)
                v = s[(i + 156) % 312] ^ (y >> 1)
                if y & 1:
                    v ^= 0xB5026F5AA96619E9
                s[i] = v
            self.k = 0
        y = self.s[self.k]
        self.k += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        y ^= y >> 43
        return y & self.M


def check_engines():
    g = Std64()
    for _ in range(9999):
        g()
    assert g() == 9981545732273789042
    g = Std32(5489)
    for _ in range(9999):
        g()
    assert g() == 4123659995


def samples_mapping(docs, sizes, max_num_samples, max_len, ssp, seed, min_sent):
    ratio = int(math.floor(1.0 / ssp + 0.5)) if ssp > 0 else 0

    def rows():
        gen = Std32(seed)

        def target():
            if ratio == 0:
                return max_len
            r = gen()
            return 2 + r % (max_len - 1) if r % ratio == 0 else max_len

        out = []
        while len(out) < max_num_samples:
            for d in range(len(docs) - 1):
                lo, hi = docs[d], docs[d + 1]
                n = hi - lo
                if n < min_sent:
                    continue
                if n > 1 and max(sizes[lo:hi]) > LONG:
                    continue
                t = target()
                acc, cnt, begin = 0, 0, lo
                for s in range(lo, hi):
                    acc += sizes[s]
                    cnt += 1
                    left = hi - s - 1
                    if left == 0 or (acc >= t and left > 1 and cnt >= min_sent):
                        out.append([begin, s + 1, t])
                        begin, acc, cnt = s + 1, 0, 0
                        t = target()
        return out

    m = rows()
    g = Std64(seed + 1)
    for i in range(len(m) - 1, 0, -1):
        j = g() % (i + 1)
        m[i], m[j] = m[j], m[i]
    return m


def word_spans(tokens, starts_word, cls, sep):
    words = []
    for i, t in enumerate(tokens):
        if t in (cls, sep):
            continue
        if words and not starts_word[t]:
            words[-1].append(i)
        else:
            words.append([i])
    return words


def mask_tokens(tokens, vocab, prob, max_pred, rng, style):
    starts_word = vocab["starts_word"]
    words = word_spans(tokens, starts_word, vocab["cls"], vocab["sep"])
    out = list(tokens)
    budget = min(max_pred, max(1, int(round(len(tokens) * prob))))
    max_n = 3 if style == "bert" else 10
    grams = [[words[w:w + n] for n in range(1, max_n + 1)] for w in range(len(words))]
    rng.shuffle(grams)
    p = 1.0 / np.arange(1, max_n + 1)
    p /= p.sum(keepdims=True)
    picked = []  # (position, original)
    spans = []
    used = set()
    for g in grams:
        if len(picked) >= budget:
            break
        if style == "bert":
            n = int(rng.choice(np.arange(1, max_n + 1), p=p / p.sum(keepdims=True)))
        else:
            n = min(int(rng.geometric(0.2)), max_n)
        pos = [i for w in g[n - 1] for i in w]
        while len(picked) + len(pos) > budget and n > 1:
            n -= 1
            pos = [i for w in g[n - 1] for i in w]
        if len(picked) + len(pos) > budget or any(i in used for i in pos):
            continue
        for i in pos:
            used.add(i)
            if style == "t5" or rng.random() < 0.8:
                out[i] = vocab["mask"]
            elif rng.random() < 0.5:
                out[i] = tokens[i]
            else:
                ids = vocab["id_list"]
                out[i] = ids[rng.randint(0, len(ids))]
            picked.append((i, tokens[i]))
        spans.append((pos, [tokens[i] for i in pos]))
    rng.shuffle(grams)
    picked.sort()
    spans.sort(key=lambda s: s[0][0])
    return out, picked, spans


def bert_sample(sents, target, seq_len, prob, binary_head, vocab, rng):
    if binary_head:
        k = rng.randint(1, len(sents)) if len(sents) >= 3 else 1
        a = [t for s in sents[:k] for t in s]
        b = [t for s in sents[k:] for t in s]
        swapped = rng.random() < 0.5
        if swapped:
            a, b = b, a
    else:
        a = [t for s in sents for t in s]
        b = []
        swapped = False
    truncated = len(a) + len(b) > target
    while len(a) + len(b) > target:
        seg = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            seg.pop(0)
        else:
            seg.pop()
    tokens = [vocab["cls"]] + a + [vocab["sep"]]
    types = [0] * len(tokens)
    if b:
        tokens += b + [vocab["sep"]]
        types += [1] * (len(b) + 1)
    out, picked, _ = mask_tokens(tokens, vocab, prob, prob * target, rng, "bert")
    pad = seq_len - len(out)
    labels = [-1] * seq_len
    loss = [0] * seq_len
    for i, orig in picked:
        labels[i] = orig
        loss[i] = 1
    return {
        "text": out + [vocab["pad"]] * pad,
        "types": types + [vocab["pad"]] * pad,
        "labels": labels,
        "is_random": int(swapped),
        "loss_mask": loss,
        "padding_mask": [1] * len(out) + [0] * pad,
        "truncated": int(truncated),
    }


def bits(m):
    return "".join("1" if v else "0" for v in np.asarray(m).reshape(-1))


def t5_sample(sents, target, enc_len, dec_len, prob, vocab, rng):
    flat = [t for s in sents for t in s]
    truncated = len(flat) > target
    tokens = flat[:target]
    out, _, spans = mask_tokens(tokens, vocab, prob, prob * target, rng, "t5")
    enc, dec_in, dec_out = [], [vocab["bos"]], []
    prev = 0
    for k, (pos, orig) in enumerate(spans):
        s = vocab["sentinels"][k]
        dec_in += [s] + orig
        dec_out += [s] + orig
        enc += out[prev:pos[0]] + [s]
        prev = pos[-1] + 1
    enc += out[prev:]
    dec_out.append(vocab["eos"])
    assert len(enc) <= enc_len and len(dec_in) <= dec_len
    e = np.array(enc + [vocab["pad"]] * (enc_len - len(enc)))
    d = np.array(dec_in + [vocab["pad"]] * (dec_len - len(dec_in)))
    real_e = e >= 1
    real_d = d >= 1
    causal = np.tril(np.ones((dec_len, dec_len), dtype=bool))
    return {
        "text_enc": e.tolist(),
        "text_dec": d.tolist(),
        "labels": dec_out + [-1] * (dec_len - len(dec_out)),
        "loss_mask": [1] * len(dec_in) + [0] * (dec_len - len(dec_in)),
        "truncated": int(truncated),
        "enc_mask": bits(np.outer(real_e, real_e)),
        "dec_mask": bits(np.outer(real_d, real_d) & causal),
        "enc_dec_mask": bits(np.outer(real_d, real_e)),
    }


def split_bounds(split, size):
    w = [float(x) for x in split.split(",")]
    w = [x / sum(w) for x in w]
    b = [0]
    for x in w:
        b.append(b[-1] + int(round(x * size)))
    diff = b[-1] - size
    return [b[0]] + [v - diff for v in b[1:]]


def fmt_name(prefix, name, mns, msl, ssp, seed):
    return "{}_{}_indexmap_{}mns_{}msl_{:0.2f}ssp_{}s.npy".format(prefix, name, mns, msl, ssp, seed)


def make_corpus():
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = ["w%d" % i for i in range(25)]
    pieces = ["##p%d" % i for i in range(10)]
    vocab_text = specials + words + pieces
    rs = np.random.RandomState(7)
    first_word, first_piece = len(specials), len(specials) + len(words)

    def sentence(n):
        toks = []
        while len(toks) < n:
            toks.append(first_word + int(rs.randint(len(words))))
            while len(toks) < n and rs.random_sample() < 0.35:
                toks.append(first_piece + int(rs.randint(len(pieces))))
        return toks

    docs = []
    for d in range(40):
        nsent = int(rs.randint(1, 7))
        docs.append([sentence(int(rs.randint(1, 13))) for _ in range(nsent)])
    # A multi-sentence document with a 513-token sentence (always skipped), and a one-sentence
    # document made of one (kept without the binary head, then truncated).
    docs[5] = [sentence(4), sentence(513), sentence(3)]
    docs[9] = [sentence(520)]
    return vocab_text, docs


def main():
    check_engines()
    vocab_text, docs = make_corpus()
    sizes = [len(s) for d in docs for s in d]
    doc_idx = [0]
    for d in docs:
        doc_idx.append(doc_idx[-1] + len(d))
    sentences = [s for d in docs for s in d]

    def vocab_for(extra):
        toks = vocab_text + ["[BOS]", "[EOS]"] + ["<extra_id_%d>" % i for i in range(extra)]
        ids = {t: i for i, t in enumerate(toks)}
        return {
            "id_list": list(range(len(toks))),
            "starts_word": [0 if t.startswith("##") else 1 for t in toks],
            "cls": ids["[CLS]"], "sep": ids["[SEP]"], "mask": ids["[MASK]"], "pad": ids["[PAD]"],
            "bos": ids["[BOS]"], "eos": ids["[EOS]"],
            "sentinels": [ids["<extra_id_%d>" % i] for i in range(extra)],
        }

    configs = [
        dict(type="bert", seq_length=24, mask_prob=0.15, short_seq_prob=0.3, seed=1234, binary_head=True,
             split="80,10,10", num_samples=[40, 10, 5], extra_ids=0),
        dict(type="bert", seq_length=20, mask_prob=0.15, short_seq_prob=0.1, seed=77, binary_head=False,
             split="70,20,10", num_samples=[30, 12, 5], extra_ids=0),
        dict(type="t5", seq_length=24, decoder_seq_length=16, mask_prob=0.3, short_seq_prob=0.2, seed=4321,
             split="80,10,10", num_samples=[30, 8, 4], extra_ids=10),
    ]
    results = []
    for c in configs:
        vocab = vocab_for(c["extra_ids"])
        bounds = split_bounds(c["split"], len(docs))
        splits = {}
        for k, name in enumerate(["train", "valid", "test"]):
            a, b = bounds[k], bounds[k + 1]
            sub = doc_idx[a:b + 1]
            bert = c["type"] == "bert"
            msl = c["seq_length"] - (3 if bert else 2)
            min_sent = 2 if bert and c["binary_head"] else 1
            m = samples_mapping(sub, sizes, c["num_samples"][k], msl, c["short_seq_prob"], c["seed"], min_sent)
            samples = []
            for idx, (s, e, t) in enumerate(m):
                sents = [list(x) for x in sentences[s:e]]
                if bert:
                    rng = np.random.RandomState((c["seed"] + idx) % 2**32)
                    samples.append(bert_sample(sents, t, c["seq_length"], c["mask_prob"], c["binary_head"],
                                               vocab, rng))
                else:
                    rng = np.random.RandomState(c["seed"] + idx)
                    samples.append(t5_sample(sents, t, c["seq_length"], c["decoder_seq_length"],
                                             c["mask_prob"], vocab, rng))
            splits[name] = {
                "docs": [a, b],
                "mapping_file": fmt_name("PREFIX", name, c["num_samples"][k], msl, c["short_seq_prob"],
                                         c["seed"]),
                "mapping": m,
                "samples": samples,
            }
        results.append({"config": c, "splits": splits})
    # JSON Lines (one compact line each, which deno fmt leaves alone): the corpus, then one line per
    # configuration.
    head = {"generator": "scripts/bert_t5_reference.py", "numpy": np.__version__, "vocab": vocab_text,
            "documents": docs}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        for obj in [head] + results:
            f.write(json.dumps(obj, separators=(",", ":")) + "\n")
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
