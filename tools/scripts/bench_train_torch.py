#!/usr/bin/env python3
"""Baseline for `cleaner bench train`: one LoRA training step with PyTorch +
PEFT on the CPU, on the same GGUF model dequantized to f32 by transformers.

    python3 tools/scripts/bench_train_torch.py MODEL.gguf N_TOK REPS THREADS

Prints one JSON line: {"tok_s": ..., "peak_mib": ...}. Needs torch,
transformers, peft and gguf (pip).
"""
import json
import os
import resource
import sys
import time


def main():
    path, n_tok, reps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    import torch
    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=torch.float32)
    model.config.use_cache = False
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    model.train()
    vocab = model.config.vocab_size
    ids = torch.tensor([[(i * 7919 + 11) % min(vocab, 32000) for i in range(n_tok)]])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for _ in range(reps + 1):
        s = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - s)
    times = sorted(times[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"tok_s": n_tok / times[len(times) // 2], "peak_mib": peak}))


if __name__ == "__main__":
    main()
