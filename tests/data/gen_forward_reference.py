#!/usr/bin/env python3
"""Writes tests/data/forward_reference.json: an independent float64 forward
pass (numpy over the `gguf` package's dequantization) of the test models on
fixed token ids, for tests/forward_reference.rs. Per position it records the
log-probability of the next token, the log-sum-exp of the logits, and the
top-5 token ids.

    python3 tests/data/gen_forward_reference.py [MODEL.gguf ...]

(defaults: the SmolLM2 and Qwen2.5-Coder files in the asset cache). Needs
`pip install gguf numpy`; the output is committed.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf.quants import dequantize

N_TOK = 24


def forward(path):
    r = gguf.GGUFReader(path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()

    def kv(key, default=None):
        f = r.fields.get(f"{arch}.{key}")
        return default if f is None else f.parts[-1][0]

    tensors = {t.name: t for t in r.tensors}

    def w(name):
        t = tensors[name]
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        return a.reshape([int(d) for d in reversed(t.shape)])

    n_embd, n_head = int(kv("embedding_length")), int(kv("attention.head_count"))
    n_kv, n_layer = int(kv("attention.head_count_kv", n_head)), int(kv("block_count"))
    eps, base = float(kv("attention.layer_norm_rms_epsilon")), float(kv("rope.freq_base", 10000.0))
    hd = int(kv("attention.key_length", n_embd // n_head))
    emb = w("token_embd.weight")
    n_vocab = emb.shape[0]
    toks = [(i * 7919 + 13) % n_vocab for i in range(N_TOK)]
    x = emb[toks].copy()
    n = len(toks)

    def rms(v, weight):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * weight

    ang = np.arange(n)[:, None] * base ** (-np.arange(0, hd, 2) / hd)[None, :]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]

    def rope(q, nh):
        q = q.reshape(n, nh, hd).copy()
        if arch == "llama":  # pairs (2i, 2i+1)
            a, b = q[..., 0::2].copy(), q[..., 1::2].copy()
            q[..., 0::2], q[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        else:  # neox: pairs (i, i + hd/2)
            a, b = q[..., : hd // 2].copy(), q[..., hd // 2:].copy()
            q[..., : hd // 2], q[..., hd // 2:] = a * cos - b * sin, a * sin + b * cos
        return q

    for layer in range(n_layer):
        p = f"blk.{layer}."
        h = rms(x, w(p + "attn_norm.weight"))
        q, k, v = (h @ w(p + f"attn_{m}.weight").T for m in "qkv")
        if p + "attn_q.bias" in tensors:
            q, k, v = q + w(p + "attn_q.bias"), k + w(p + "attn_k.bias"), v + w(p + "attn_v.bias")
        if p + "attn_q_norm.weight" in tensors:
            q = rms(q.reshape(n, n_head, hd), w(p + "attn_q_norm.weight")).reshape(n, -1)
            k = rms(k.reshape(n, n_kv, hd), w(p + "attn_k_norm.weight")).reshape(n, -1)
        q, k, v = rope(q, n_head), rope(k, n_kv), v.reshape(n, n_kv, hd)
        out = np.zeros((n, n_head, hd))
        mask = np.triu(np.full((n, n), -np.inf), 1)
        for hh in range(n_head):
            kv_h = hh // (n_head // n_kv)
            s = q[:, hh] @ k[:, kv_h].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, kv_h]
        x = x + out.reshape(n, -1) @ w(p + "attn_output.weight").T
        h = rms(x, w(p + "ffn_norm.weight"))
        g, u = h @ w(p + "ffn_gate.weight").T, h @ w(p + "ffn_up.weight").T
        x = x + (g / (1 + np.exp(-g)) * u) @ w(p + "ffn_down.weight").T
    h = rms(x, w("output_norm.weight"))
    logits = h @ (w("output.weight") if "output.weight" in tensors else emb).T
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    return {
        "tokens": toks,
        "logprob_next": [float(logits[t, toks[t + 1]] - lse[t]) for t in range(n - 1)],
        "lse": [float(v) for v in lse],
        "top5": [[int(i) for i in np.argsort(-logits[t])[:5]] for t in range(n)],
    }


def main():
    cache = os.environ.get("CLEANER_HOME", os.path.expanduser("~/.cache/cleaner"))
    paths = sys.argv[1:] or [
        os.path.join(cache, "assets", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        os.path.join(cache, "assets", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"),
    ]
    out = {"generator": "tests/data/gen_forward_reference.py", "models": {}}
    for path in paths:
        out["models"][os.path.basename(path)] = forward(path)
        print(f"{os.path.basename(path)}: done")
    dest = os.path.join(os.path.dirname(__file__), "forward_reference.json")
    with open(dest, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print(f"wrote {os.path.normpath(dest)}")


if __name__ == "__main__":
    main()
