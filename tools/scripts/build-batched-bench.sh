#!/usr/bin/env bash
# Builds llama.cpp's own `llama-batched-bench`, the baseline of
# `cleaner bench rollout`, from the same llama.cpp tree our engine links
# (the one inside the llama-cpp-sys-2 crate), with the same CMake options.
# That crate ships tools/ as READMEs only, so the tool's sources come from the
# llama.cpp tree vendored in the llama-cpp-python source distribution on PyPI.
# Prints the path of the built binary on its last line.
set -euo pipefail
work="${CLEANER_HOME:-$HOME/.cache/cleaner}/llama-batched-bench"
bin="$work/build/bin/llama-batched-bench"
if [ -x "$bin" ] && [ -z "${REBUILD:-}" ]; then echo "$bin"; exit 0; fi
source "$(dirname "$0")/llama-tool-src.sh"
tar -xzf "$sdist" -C "$work" "$vendored/tools/batched-bench"
cp "$work/$vendored/tools/batched-bench/"* "$work/src/tools/batched-bench/"
# Only the one tool: the crate's tools/CMakeLists.txt lists all of them.
echo "add_subdirectory(batched-bench)" > "$work/src/tools/CMakeLists.txt"
cmake -S "$work/src" -B "$work/build" "${cmake_common[@]}" -DLLAMA_BUILD_SERVER=OFF ${CLEANER_CMAKE_ARGS:-} >&2
cmake --build "$work/build" --target llama-batched-bench -j "$(nproc)" >&2
echo "$bin"
