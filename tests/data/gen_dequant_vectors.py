#!/usr/bin/env python3
"""Writes tests/data/dequant_vectors.gguf: for every quant format the kernels
decode, random blocks (`q.<TYPE>`) next to their dequantization by the reference
`gguf` Python package (`ref.<TYPE>`, f32). models/tests/dequant.rs reads the
file with our GGUF reader and compares our decoders with the references.

Blocks are random bytes, so every bit pattern of the packed fields occurs; the
f16 scale fields are overwritten with finite random values so that references
are numbers, not NaN. Run: python3 tests/data/gen_dequant_vectors.py (needs
`pip install gguf numpy`); the output is committed.
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

ROWS, COLS = 8, 512
# Byte offsets of the f16 scale fields inside each block (ggml-common.h).
HALF_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}


def random_blocks(rng, qtype):
    block_len, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = ROWS * COLS // block_len
    if qtype == Q.F32:
        vals = rng.standard_normal(ROWS * COLS).astype(np.float32) * 3
        return vals.view(np.uint8).reshape(ROWS, COLS * 4)
    if qtype == Q.F16:
        bits = rng.integers(0, 1 << 16, ROWS * COLS, dtype=np.uint16)
        bits[(bits & 0x7C00) == 0x7C00] &= 0x3FFF  # no inf/NaN
        return bits.view(np.uint8).reshape(ROWS, COLS * 2)
    if qtype == Q.BF16:
        bits = rng.integers(0, 1 << 16, ROWS * COLS, dtype=np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] &= 0x3FFF  # no inf/NaN
        return bits.view(np.uint8).reshape(ROWS, COLS * 2)
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        scales = (rng.uniform(-2, 2, n_blocks)).astype(np.float16)
        blocks[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(ROWS, -1)


def main():
    out = os.path.join(os.path.dirname(__file__), "dequant_vectors.gguf")
    rng = np.random.default_rng(20261126)
    w = gguf.GGUFWriter(out, "dequant-vectors")
    w.add_string("cleaner.generator", "tests/data/gen_dequant_vectors.py")
    w.add_string("cleaner.gguf_package_version", getattr(gguf, "__version__", "unknown"))
    types = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
             Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
    for qtype in types:
        raw = random_blocks(rng, qtype)
        ref = dequantize(raw, qtype).astype(np.float32).reshape(ROWS, COLS)
        assert np.isfinite(ref).all(), qtype.name
        w.add_tensor(f"q.{qtype.name}", raw, raw_shape=raw.shape, raw_dtype=qtype)
        w.add_tensor(f"ref.{qtype.name}", ref)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {os.path.normpath(out)} ({len(types)} formats, {ROWS}x{COLS} values each)")


if __name__ == "__main__":
    sys.exit(main())
