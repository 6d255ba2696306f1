#!/usr/bin/env python3
"""Writes the corrupt-GGUF corpus in tests/data/corrupt/: small files, each
broken in one way, and expected.json naming the error kind our reader
(GgufErrorKind) or model loader (ModelErrorKind) must report for it.
models/tests/corrupt.rs opens every file and checks the kind.

The files are written byte by byte (not with the gguf package, which refuses
to write most of these). Run: python3 tests/data/gen_corrupt_gguf.py; the output
is committed.
"""
import json
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "corrupt")
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def s(text):
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def kv(key, ty, payload):
    return s(key) + struct.pack("<I", ty) + payload


def kv_u32(key, v):
    return kv(key, U32, struct.pack("<I", v))


def kv_f32(key, v):
    return kv(key, F32, struct.pack("<f", v))


def kv_str(key, v):
    return kv(key, STR, s(v))


def tinfo(name, dims, ty, offset):
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ty, offset)


def gguf(kvs, tensors, data, version=3, n_kv=None, n_tensors=None, align=32):
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    pad = (-len(body)) % align
    return body + b"\0" * pad + data


def f32s(n, start=0.0):
    return b"".join(struct.pack("<f", start + i * 0.01) for i in range(n))


def basic(**kw):
    """A valid file: one key, two f32 tensors of 4 and 8 values."""
    kvs = kw.pop("kvs", [kv_str("general.architecture", "test")])
    tensors = kw.pop("tensors", [tinfo("a", [4], 0, 0), tinfo("b", [8], 0, 32)])
    data = kw.pop("data", f32s(4) + b"\0" * 16 + f32s(8))
    return gguf(kvs, tensors, data, **kw)


# A tiny but complete llama model (n_embd 8, 2 heads, 1 layer, n_ff 16, 32 tokens).
N_EMBD, N_FF, N_VOCAB = 8, 16, 32


def tiny_llama(arch="llama", overrides=None, drop=None, head_count=2):
    overrides = overrides or {}
    kvs = [kv_str("general.architecture", arch), kv_u32(f"{arch}.embedding_length", N_EMBD),
           kv_u32(f"{arch}.block_count", 1), kv_u32(f"{arch}.feed_forward_length", N_FF),
           kv_u32(f"{arch}.attention.head_count", head_count), kv_u32(f"{arch}.context_length", 64),
           kv_f32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)]
    shapes = {"token_embd.weight": [N_EMBD, N_VOCAB], "output_norm.weight": [N_EMBD],
              "blk.0.attn_norm.weight": [N_EMBD], "blk.0.attn_q.weight": [N_EMBD, N_EMBD],
              "blk.0.attn_k.weight": [N_EMBD, N_EMBD], "blk.0.attn_v.weight": [N_EMBD, N_EMBD],
              "blk.0.attn_output.weight": [N_EMBD, N_EMBD], "blk.0.ffn_norm.weight": [N_EMBD],
              "blk.0.ffn_gate.weight": [N_EMBD, N_FF], "blk.0.ffn_up.weight": [N_EMBD, N_FF],
              "blk.0.ffn_down.weight": [N_FF, N_EMBD]}
    shapes.update(overrides)
    tensors, data = [], b""
    for name, dims in shapes.items():
        if name == drop:
            continue
        n = 1
        for d in dims:
            n *= d
        tensors.append(tinfo(name, dims, 0, len(data)))
        data += f32s(n) + b"\0" * ((-4 * n) % 32)
    return gguf(kvs, tensors, data)


CASES = {
    # name: (bytes, layer, expected kind)
    "empty": (b"", "gguf", "BadMagic"),
    "bad_magic": (b"GGML" + basic()[4:], "gguf", "BadMagic"),
    "version_1": (basic(version=1), "gguf", "UnsupportedVersion"),
    "version_4": (basic(version=4), "gguf", "UnsupportedVersion"),
    "truncated_header": (basic()[:80], "gguf", "Truncated"),
    "truncated_data": (basic()[:-5], "gguf", "TensorOutOfBounds"),
    "absurd_kv_count": (basic(n_kv=1 << 62), "gguf", "CountTooLarge"),
    "absurd_tensor_count": (basic(n_tensors=1 << 40), "gguf", "CountTooLarge"),
    "absurd_string_length": (basic(kvs=[struct.pack("<Q", 1 << 60) + b"general.architecture"]), "gguf", "Truncated"),
    "absurd_array_length": (basic(kvs=[kv("x", ARR, struct.pack("<IQ", U32, 1 << 59))]), "gguf", "CountTooLarge"),
    "unknown_value_type": (basic(kvs=[kv("x", 99, b"\0" * 8)]), "gguf", "UnknownValueType"),
    "invalid_utf8_key": (basic(kvs=[kv(b"\xff\xfe", U32, b"\0" * 4)]), "gguf", "InvalidUtf8"),
    "deep_nesting": (basic(kvs=[kv("x", ARR, struct.pack("<IQ", ARR, 1) * 20 + struct.pack("<IQ", U8, 0))]), "gguf", "TooDeep"),
    "duplicate_key": (basic(kvs=[kv_u32("x", 1), kv_u32("x", 2)]), "gguf", "DuplicateKey"),
    "duplicate_tensor": (basic(tensors=[tinfo("a", [4], 0, 0), tinfo("a", [8], 0, 32)]), "gguf", "DuplicateTensor"),
    "bad_alignment": (basic(kvs=[kv_u32("general.alignment", 3)]), "gguf", "BadAlignment"),
    "alignment_wrong_type": (basic(kvs=[kv_str("general.alignment", "32")]), "gguf", "WrongType"),
    "unknown_tensor_type": (basic(tensors=[tinfo("a", [4], 4, 0), tinfo("b", [8], 0, 32)]), "gguf", "UnknownTensorType"),
    "too_many_dims": (basic(tensors=[tinfo("a", [1, 1, 1, 1, 4], 0, 0), tinfo("b", [8], 0, 32)]), "gguf", "BadShape"),
    "zero_dim": (basic(tensors=[tinfo("a", [4, 0], 0, 0), tinfo("b", [8], 0, 32)]), "gguf", "BadShape"),
    "dims_overflow": (basic(tensors=[tinfo("a", [1 << 40, 1 << 40], 0, 0), tinfo("b", [8], 0, 32)]), "gguf", "BadShape"),
    "ragged_quant_row": (basic(tensors=[tinfo("a", [33], 2, 0), tinfo("b", [8], 0, 32)]), "gguf", "BadShape"),
    "offset_out_of_bounds": (basic(tensors=[tinfo("a", [4], 0, 0), tinfo("b", [8], 0, 1 << 20)]), "gguf", "TensorOutOfBounds"),
    "size_out_of_bounds": (basic(tensors=[tinfo("a", [4], 0, 0), tinfo("b", [4096], 0, 32)]), "gguf", "TensorOutOfBounds"),
    "misaligned_tensor": (basic(tensors=[tinfo("a", [4], 0, 0), tinfo("b", [8], 0, 20)]), "gguf", "MisalignedTensor"),
    "overlapping_tensors": (basic(tensors=[tinfo("a", [16], 0, 0), tinfo("b", [8], 0, 32)]), "gguf", "OverlappingTensors"),
    # Valid GGUF files that are not valid models.
    "model_unknown_architecture": (tiny_llama(arch="gpt2"), "model", "UnknownArchitecture"),
    "model_missing_tensor": (tiny_llama(drop="blk.0.ffn_up.weight"), "model", "MissingTensor"),
    "model_wrong_shape": (tiny_llama(overrides={"blk.0.attn_k.weight": [N_EMBD, 6]}), "model", "TensorShape"),
    "model_bad_head_count": (tiny_llama(head_count=3), "model", "BadConfig"),
    # The uncorrupted tiny model, which must load and run (and seeds the mutation test).
    "valid_tiny_llama": (tiny_llama(), "valid", "Ok"),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    for name, (data, layer, kind) in CASES.items():
        with open(os.path.join(OUT, f"{name}.gguf"), "wb") as f:
            f.write(data)
        expected[f"{name}.gguf"] = {"layer": layer, "kind": kind}
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(CASES)} files to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
