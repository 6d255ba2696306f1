#!/usr/bin/env bash
# The checks run on a lent CUDA machine, which has no Rust toolchain and no
# network: everything arrives prebuilt in STAGE (see tools/scripts/gpu-stage.sh).
#   tools/scripts/gpu-check.sh STAGE [OUT]
# STAGE: bin/ (cleaner, llama-batched-bench, test binaries), lib/ (llama.cpp's
# shared libraries), smollm2.part-* (the test model in pieces), python.wasm.xz,
# qwen.skel (Qwen2.5-Coder-0.5B's header, for a random-weight stand-in).
# Writes logs and the bench tables to OUT and prints a summary last.
set -uo pipefail
stage=$(realpath "$1")
out=${2:-${OUT:-/tmp/gpu-out}}
mkdir -p "$out"
export CLEANER_HOME=/tmp/cleaner-home
mkdir -p "$CLEANER_HOME/assets"
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
# Every step ends by DEADLINE_S seconds into the script (the lease is short):
# `limit N` prints the smaller of N and the time left.
deadline=${DEADLINE_S:-520}
limit() { local left=$((deadline - SECONDS)); echo $((left < $1 ? (left > 0 ? left : 1) : $1)); }

# Test binaries resolve repository files through the build machine's path.
[ -e /work/main ] || { mkdir -p /work && ln -sfn "$PWD" /work/main; }

cublas=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13' 2>/dev/null | head -n 1)
[ -n "$cublas" ] || { note "no libcublas.so.13 on this machine"; exit 1; }
export LD_LIBRARY_PATH="$stage/lib:$(dirname "$cublas"):${LD_LIBRARY_PATH:-}"
note "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
note "cpus: $(nproc); cuBLAS from $(dirname "$cublas")"
missing=$(ldd "$stage/bin/cleaner" | grep 'not found')
[ -z "$missing" ] || { note "unresolved libraries: $missing"; exit 1; }

cat "$stage"/smollm2.part-* >"$CLEANER_HOME/assets/SmolLM2-135M-Instruct.Q4_1.gguf"
# The interpreter is needed by the sandboxed tests only (GPU_TESTS may leave them out).
[ ! -f "$stage/python.wasm.xz" ] || xz -dc "$stage/python.wasm.xz" >"$CLEANER_HOME/assets/python-3.12.0.wasm"
python3 tools/scripts/synth_gguf.py fill "$stage/qwen.skel" /tmp/qwen2.5-coder-0.5b-random.gguf

# Most wanted first: the rollout bench, then the tests, then the trainer.
start=$SECONDS
timeout "$(limit 240)" "$stage/bin/cleaner" bench rollout \
  --models smollm2-135m,/tmp/qwen2.5-coder-0.5b-random.gguf --batch 1,8,32,128 \
  --baseline "$stage/bin/llama-batched-bench" >"$out/bench-rollout.md" 2>"$out/bench-rollout.log"
note "bench rollout: rc $?, $((SECONDS - start)) s"
cat "$out/bench-rollout.md" | tee -a "$summary"


# Tests that drive llama.cpp (GPU offload) or the trainer against it. The
# Qwen forward comparison needs the real Qwen file, which cannot travel.
# Every test binary gpu-stage.sh staged (all but the two tools), unless
# GPU_TESTS names a subset.
staged=$(ls "$stage/bin" | grep -vx 'cleaner\|llama-batched-bench' | tr '\n' ' ')
for t in ${GPU_TESTS:-$staged}; do
  filter=""
  [ "$t" = forward ] && filter="smollm2"
  start=$SECONDS
  [ $((deadline - SECONDS)) -gt 20 ] || { note "test $t: not run (deadline)"; continue; }
  # The ggml trainer's tests compare it on the GPU against the CPU trainer.
  device=""
  case "$t" in ggml-*) device=cuda ;; esac
  CLEANER_GGML_DEVICE=$device timeout "$(limit 90)" "$stage/bin/$t" $filter >"$out/test-$t.log" 2>&1
  rc=$?
  note "test $t: rc $rc, $((SECONDS - start)) s, $(grep -h '^test result' "$out/test-$t.log" | tail -n 1)"
  [ $rc -eq 0 ] || grep -h -A12 -- '---- \|panicked' "$out/test-$t.log" | head -n 40 | tee -a "$summary"
done


# The bf16 x W^T on AMX tiles against vdpbf16ps on this machine's Xeon cores
# (`CLEANER_BF16=amx` is opt-in until measured): a bf16 training step each
# way, same run. The `kernels` tests above compared the instructions with
# their model where the CPU has AMX.
if [ -z "${NO_AMX_BENCH:-}" ] && [ $((deadline - SECONDS)) -gt 100 ]; then
  note "amx: $(grep -o 'amx_[a-z0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  for bf16 in avx512 amx; do
    start=$SECONDS
    CLEANER_BF16=$bf16 timeout "$(limit 45)" "$stage/bin/cleaner" bench train \
      --models /tmp/qwen2.5-coder-0.5b-random.gguf --tokens 512 --backend cpu --keep-mib 2048 \
      --precision bf16 --python none --reps 2 >"$out/bench-train-bf16-$bf16.md" 2>"$out/bench-train-bf16-$bf16.log"
    note "bench train bf16 ($bf16): rc $?, $((SECONDS - start)) s"
    grep -h 'CLEANER_BF16\|^ours:\|qwen' "$out/bench-train-bf16-$bf16.log" "$out/bench-train-bf16-$bf16.md" | tee -a "$summary"
  done
fi

# The trainer on the GPU (ggml graphs on CUDA) against our CPU kernels on this
# machine's cores, same run: tok/s and peak memory. The Qwen row uses the
# random-weight stand-in (same shapes and types, so the same work per token).
if [ -z "${NO_GPU_TRAIN_BENCH:-}" ] && [ $((deadline - SECONDS)) -gt 120 ]; then
  start=$SECONDS
  timeout "$(limit 180)" "$stage/bin/cleaner" bench train \
    --models smollm2-135m,/tmp/qwen2.5-coder-0.5b-random.gguf --tokens 512,4096 \
    --backend cpu,ggml --device cuda --keep-mib 2048 --precision f32 --python none \
    >"$out/bench-train-gpu.md" 2>"$out/bench-train-gpu.log"
  note "bench train (ggml on CUDA vs CPU kernels): rc $?, $((SECONDS - start)) s"
  cat "$out/bench-train-gpu.md" | tee -a "$summary"
fi

# The trainer runs on the CPU: its bench against PyTorch + PEFT (CPU, same
# threads) on this machine's cores, when time is left. transformers reads
# GGUF through the `gguf` package, which travels as a wheel.
if [ -z "${NO_TRAIN_BENCH:-}" ] && [ $((deadline - SECONDS)) -gt 150 ] && ls "$stage"/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$stage"/wheels/*.whl &&
    export PYTHONPATH=/tmp/site
  start=$SECONDS
  timeout "$(limit 200)" "$stage/bin/cleaner" bench train --models smollm2-135m --tokens 512,2048 --reps 2 \
    --keep-mib 2048 --precision f32,bf16 --python python3 >"$out/bench-train.md" 2>"$out/bench-train.log"
  note "bench train: rc $?, $((SECONDS - start)) s"
  cat "$out/bench-train.md" | tee -a "$summary"
else
  note "bench train: skipped (${SECONDS} s used)"
fi
