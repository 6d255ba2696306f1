# PyTorch's bare products on this machine, 2 threads: x W^T at the step's
# shapes (T = 512, Qwen2.5-0.5B), f32 and bf16, GFLOP/s. Run with the bench's
# environment: ~/.cache/cleaner/venv-torch/bin/python torch_matmul.py
import time

import torch

torch.set_num_threads(2)
for dtype in (torch.float32, torch.bfloat16):
    for m, k, n in [(512, 896, 4864), (512, 4864, 896), (512, 896, 896)]:
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        for _ in range(5):
            x @ w.T
        reps = 40
        start = time.perf_counter()
        for _ in range(reps):
            x @ w.T
        seconds = (time.perf_counter() - start) / reps
        print(dtype, m, k, n, round(2 * m * k * n / seconds / 1e9, 1), "GFLOP/s")
