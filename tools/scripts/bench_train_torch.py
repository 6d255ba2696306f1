#!/usr/bin/env python3
"""Baseline for `cleaner bench train`: one LoRA training step with PyTorch +
PEFT on the CPU, on the same GGUF model dequantized by transformers to
DTYPE: f32, or bf16 base weights (PEFT keeps the adapter in f32), the
precision our `--precision bf16` is compared with.

    python3 tools/scripts/bench_train_torch.py MODEL.gguf N_TOK REPS THREADS [f32|bf16] [WARMUP]

WARMUP steps (default 2) run before the REPS timed ones, whose median is
reported.

Prints one JSON line: {"tok_s": ..., "peak_mib": ..., "cpu": ...}, "cpu"
naming the instruction sets PyTorch dispatched to. Needs torch,
transformers, peft and gguf (pip).
"""
import json
import os
import resource
import sys
import time


def main():
    path, n_tok, reps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    dtype_name = sys.argv[5] if len(sys.argv) > 5 else "f32"
    warmup = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    import torch
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=dtype)
    model.config.use_cache = False
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    vocab = model.config.vocab_size
    ids = torch.tensor([[(i * 7919 + 11) % min(vocab, 32000) for i in range(n_tok)]])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for _ in range(warmup + reps):
        s = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - s)
    times = sorted(times[warmup:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    cpu = torch.backends.cpu.get_cpu_capability()
    if dtype_name == "bf16":
        bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        cpu += ", oneDNN bf16 " + ("native" if bf16 else "emulated")
    print(json.dumps({"tok_s": n_tok / times[len(times) // 2], "peak_mib": peak, "cpu": cpu}))


if __name__ == "__main__":
    main()
