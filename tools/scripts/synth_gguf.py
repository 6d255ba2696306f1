#!/usr/bin/env python3
"""A stand-in GGUF model with a real model's header and random weights.

For throughput measurements on a machine the real model cannot reach (the lent
GPU machine takes at most 64 MiB per call): the stand-in has the same metadata,
tokenizer, tensor names, shapes and quantization types as the real file, so
llama.cpp does exactly the same work per token; only the weights are random
(valid blocks, finite scales, sized so activations stay finite). Its outputs
are meaningless: use it for tokens/s, never for accuracy.

  synth_gguf.py skeleton REAL.gguf OUT.skel    # header + tensor table (small)
  synth_gguf.py fill OUT.skel MODEL.gguf [--seed 0]

`skeleton` needs the `gguf` package; `fill` needs only numpy.
"""
import json
import struct
import sys

import numpy as np

# Bytes per block and values per block of each quantization type we fill.
BLOCKS = {"F32": (4, 1), "F16": (2, 1), "Q8_0": (34, 32), "Q5_0": (22, 32),
          "Q4_0": (18, 32), "Q4_1": (20, 32), "Q4_K": (144, 256), "Q5_K": (176, 256),
          "Q6_K": (210, 256)}
WEIGHT_STD = 0.02


def skeleton(real, out):
    import gguf
    r = gguf.GGUFReader(real)
    tensors = [{"name": t.name, "type": t.tensor_type.name, "offset": int(t.data_offset),
                "nbytes": int(t.n_bytes)} for t in r.tensors]
    data_start = min(t["offset"] for t in tensors)
    end = max(t["offset"] + t["nbytes"] for t in tensors)
    with open(real, "rb") as f:
        header = f.read(data_start)
    table = json.dumps({"size": end, "tensors": tensors}).encode()
    with open(out, "wb") as f:
        f.write(struct.pack("<QQ", len(header), len(table)))
        f.write(header)
        f.write(table)
    print(f"{out}: header {len(header)} bytes, {len(tensors)} tensors, model {end} bytes")


def f16_bytes(value, n):
    return np.full(n, value, dtype=np.float16).view(np.uint8).reshape(n, 2)


def blocks(kind, n, rng, name):
    """n random blocks of `kind` as an (n, block_bytes) uint8 array."""
    size, _ = BLOCKS[kind]
    if kind == "F32":
        if name.endswith("norm.weight"):
            return np.ones(n, np.float32).view(np.uint8).reshape(n, 4)
        return (rng.standard_normal(n, np.float32) * WEIGHT_STD).view(np.uint8).reshape(n, 4)
    if kind == "F16":
        return (rng.standard_normal(n, np.float32) * WEIGHT_STD).astype(np.float16).view(
            np.uint8).reshape(n, 2)
    b = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    # Scale fields: sized so a weight's standard deviation is about WEIGHT_STD
    # given uniformly random quants (std of the quant range in parentheses).
    if kind == "Q8_0":  # d, int8 x32 (std 74)
        b[:, 0:2] = f16_bytes(WEIGHT_STD / 74, n)
    elif kind in ("Q5_0", "Q4_0"):  # d, quants centred on 16 or 8 (std 9.2 / 4.6)
        b[:, 0:2] = f16_bytes(WEIGHT_STD / (9.2 if kind == "Q5_0" else 4.6), n)
    elif kind == "Q4_1":  # d, m: w = d*q + m, q in 0..15
        b[:, 0:2] = f16_bytes(WEIGHT_STD / 4.6, n)
        b[:, 2:4] = f16_bytes(-7.5 * WEIGHT_STD / 4.6, n)
    elif kind in ("Q4_K", "Q5_K"):  # d, dmin, 6-bit scales/mins: w = d*sc*q - dmin*m
        qmax = 15 if kind == "Q4_K" else 31
        d = WEIGHT_STD / (31.5 * qmax / 3.5)
        b[:, 0:2] = f16_bytes(d, n)
        b[:, 2:4] = f16_bytes(d * qmax / 2, n)
    elif kind == "Q6_K":  # ql, qh, int8 scales, d at the end: w = d*sc*(q-32)
        b[:, 192:208] = rng.integers(-16, 17, size=(n, 16)).astype(np.int8).view(np.uint8)
        b[:, 208:210] = f16_bytes(WEIGHT_STD / (9.5 * 18.5), n)
    return b


def fill(skel, out, seed):
    rng = np.random.default_rng(seed)
    with open(skel, "rb") as f:
        header_len, table_len = struct.unpack("<QQ", f.read(16))
        header = f.read(header_len)
        table = json.loads(f.read(table_len))
    with open(out, "wb") as f:
        f.write(header)
        f.truncate(table["size"])
        for t in table["tensors"]:
            if t["type"] not in BLOCKS:
                sys.exit(f"{skel}: tensor {t['name']} has type {t['type']}, which fill does not know")
            size, _ = BLOCKS[t["type"]]
            if t["nbytes"] % size:
                sys.exit(f"{skel}: tensor {t['name']}: {t['nbytes']} bytes is not whole {t['type']} blocks")
            f.seek(t["offset"])
            f.write(blocks(t["type"], t["nbytes"] // size, rng, t["name"]).tobytes())
    print(f"{out}: {len(table['tensors'])} random tensors, {table['size']} bytes")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "skeleton":
        skeleton(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "fill":
        seed = int(sys.argv[5]) if len(sys.argv) >= 6 and sys.argv[4] == "--seed" else 0
        fill(sys.argv[2], sys.argv[3], seed)
    else:
        sys.exit(__doc__)
