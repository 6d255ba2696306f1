#!/usr/bin/env bash
# Builds cleaner with --features cuda on this (GPU-less) machine and stages
# what tools/scripts/gpu-check.sh needs on a lent CUDA machine, which has no Rust
# toolchain, no network, and takes at most 64 MiB per call.
#   tools/scripts/gpu-stage.sh STAGE
# CUDA comes from NVIDIA's pip wheels (13.0, the version the lent machines'
# driver and libraries have): nvcc, crt, nvvm, runtime, cccl, cuBLAS.
# llama.cpp is linked as shared libraries (LLAMA_BUILD_SHARED_LIBS=1): the
# wheels have no static cuBLAS, and the GPU machine has the shared one.
# Only sm_90 (H100/H200) code is built, which keeps the nvcc work to ~25 min
# on 2 cores.
set -euo pipefail
stage=$(realpath -m "$1")
cache="${CLEANER_HOME:-$HOME/.cache/cleaner}"
cuda="$cache/cuda13"
if [ ! -x "$cuda/bin/nvcc" ]; then
  mkdir -p "$cache/cuda-wheels/x"
  python3 -m pip download --no-deps -d "$cache/cuda-wheels" "nvidia-cuda-nvcc==13.0.*" \
    "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*" \
    "nvidia-cuda-cccl==13.0.*" "nvidia-cublas==13.0.*" >&2
  for w in "$cache"/cuda-wheels/*.whl; do unzip -q -o "$w" -d "$cache/cuda-wheels/x"; done
  root="$cache/cuda-wheels/x/nvidia/cu13"
  # The layout CMake and nvcc.profile expect of a toolkit.
  mkdir -p "$root/targets/x86_64-linux"
  ln -sfn ../../include "$root/targets/x86_64-linux/include"
  ln -sfn ../../lib "$root/targets/x86_64-linux/lib"
  ln -sfn lib "$root/lib64"
  for l in cudart cublas cublasLt; do ln -sf "lib$l.so.13" "$root/lib/lib$l.so"; done
  ln -sfn "$root" "$cuda"
fi
export CUDA_PATH="$cuda" CUDAToolkit_ROOT="$cuda" CMAKE_CUDA_COMPILER="$cuda/bin/nvcc"
export CMAKE_CUDA_ARCHITECTURES=90 GGML_CUDA_NO_VMM=ON LLAMA_BUILD_SHARED_LIBS=1
export PATH="$cuda/bin:$PATH"
# The linker follows libggml-cuda.so to the CUDA runtime it needs.
export LD_LIBRARY_PATH="$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
target="${CARGO_TARGET_DIR:-$cache/target}"
export CARGO_TARGET_DIR="$target"
tests=(rollout lora forward train grpo agent_real agent_saar bad_input)

cargo build --release -p cleaner-tools --features cuda >&2
test_args=()
for t in "${tests[@]}"; do test_args+=(--test "$t"); done
mapfile -t exes < <(cargo test --release --features cuda --no-run "${test_args[@]}" \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])')
# The ggml trainer's agreement tests (they run on CLEANER_GGML_DEVICE), staged
# as ggml-NAME: the root package has a `forward` test of its own.
mapfile -t ggml_exes < <(cargo test --release -p cleaner-ggml --features cuda --no-run \
  --test forward --test grad --test errors --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print("ggml-" + m["target"]["name"], m["executable"])')
exes+=("${ggml_exes[@]}")
# The kernels' unit tests, staged as `kernels`: on the lent machine's Xeon
# cores they compare the AMX tile instructions with their software model.
mapfile -t kernel_exes < <(cargo test --release -p cleaner-kernels --lib --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print("kernels", m["executable"])')
exes+=("${kernel_exes[@]}")

# llama-batched-bench on the same ggml build (CUDA included): only llama and
# the tool are compiled again, for the CPU.
libdir=$(dirname "$(ls -t "$target"/release/build/llama-cpp-sys-2-*/out/lib/libggml-cuda.so | head -n 1)")
sys_out="$libdir/cmake/ggml"
bench=$(CLEANER_HOME="$cache/cuda-batched-bench" CLEANER_CMAKE_ARGS="-DLLAMA_USE_SYSTEM_GGML=ON -Dggml_DIR=$sys_out" \
  bash "$(dirname "$0")/build-batched-bench.sh" | tail -n 1)

rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/lib"
cp "$target/release/cleaner" "$bench" "$stage/bin/"
for e in "${exes[@]}"; do cp "${e#* }" "$stage/bin/${e%% *}"; done
cp -a "$libdir"/*.so* "$stage/lib/"
strip "$stage"/bin/* "$stage"/lib/* 2>/dev/null || true
models="$cache/assets"
split -b 40M "$models/SmolLM2-135M-Instruct.Q4_1.gguf" "$stage/smollm2.part-"
xz -T2 -6 -c "$models/python-3.12.0.wasm" >"$stage/python.wasm.xz"
mkdir -p "$stage/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$stage/wheels" gguf==0.17.1 >&2
python3 "$(dirname "$0")/synth_gguf.py" skeleton "$models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf" "$stage/qwen.skel" >&2
du -sh "$stage"/* >&2
