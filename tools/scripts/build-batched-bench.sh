#!/usr/bin/env bash
# Builds llama.cpp's own `llama-batched-bench`, the baseline of
# `cleaner bench rollout`, from the same llama.cpp tree our engine links
# (the one inside the llama-cpp-sys-2 crate), with the same CMake options.
# That crate ships tools/ as READMEs only, so the tool's sources come from the
# llama.cpp tree vendored in the llama-cpp-python source distribution on PyPI.
# Prints the path of the built binary on its last line.
set -euo pipefail
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
work="${CLEANER_HOME:-$HOME/.cache/cleaner}/llama-batched-bench"
bin="$work/build/bin/llama-batched-bench"
if [ -x "$bin" ] && [ -z "${REBUILD:-}" ]; then echo "$bin"; exit 0; fi
mkdir -p "$work"
crate_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp | head -n 1)
[ -d "$crate_src" ] || { echo "llama-cpp-sys-2 0.1.161 sources not found; run 'cargo fetch' first" >&2; exit 1; }
sdist="$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  python3 -m pip download --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >&2
fi
# The pinned version's checksum (PyPI's sha256 of the file); another
# version needs its own: set LLAMA_CPP_PYTHON_SHA256.
if [ "$LLAMA_CPP_PYTHON_VERSION" = 0.3.36 ]; then
  LLAMA_CPP_PYTHON_SHA256="${LLAMA_CPP_PYTHON_SHA256:-832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e}"
fi
if [ -n "${LLAMA_CPP_PYTHON_SHA256:-}" ]; then
  echo "$LLAMA_CPP_PYTHON_SHA256  $sdist" | sha256sum -c --quiet - >&2 \
    || { echo "$sdist: sha256 is not $LLAMA_CPP_PYTHON_SHA256; delete it to download again" >&2; exit 1; }
fi
rm -rf "$work/src" && mkdir -p "$work/src"
cp -r "$crate_src/." "$work/src/"
tar -xzf "$sdist" -C "$work" "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp/tools/batched-bench"
cp "$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp/tools/batched-bench/"* "$work/src/tools/batched-bench/"
# Only the one tool: the crate's tools/CMakeLists.txt lists all of them.
echo "add_subdirectory(batched-bench)" > "$work/src/tools/CMakeLists.txt"
# Same options as llama-cpp-sys-2 builds with here (no OpenMP, GGML_NATIVE off,
# AVX2/FMA/F16C on by ggml's defaults, Release).
cmake -S "$work/src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF ${CLEANER_CMAKE_ARGS:-} >&2
cmake --build "$work/build" --target llama-batched-bench -j "$(nproc)" >&2
echo "$bin"
