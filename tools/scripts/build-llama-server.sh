#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server`, the baseline of `cleaner bench serve`,
# from the same llama.cpp tree our engine links (the one inside the
# llama-cpp-sys-2 crate), with the same CMake options as
# build-batched-bench.sh (which match how that crate builds here; both lay
# out their sources with llama-tool-src.sh).
# That crate ships tools/ stripped (no server sources, no web UI, no
# scripts/ui-assets.cmake), so those three come from the llama.cpp tree
# vendored in the llama-cpp-python source distribution on PyPI; the server is
# built without its web UI. Everything it links (ggml, llama, common, mtmd) is
# the crate's.
# Prints the path of the built binary on its last line.
set -euo pipefail
work="${CLEANER_HOME:-$HOME/.cache/cleaner}/llama-server"
bin="$work/build/bin/llama-server"
if [ -x "$bin" ] && [ -z "${REBUILD:-}" ]; then echo "$bin"; exit 0; fi
source "$(dirname "$0")/llama-tool-src.sh"
tar -xzf "$sdist" -C "$work" "$vendored/tools/server" "$vendored/tools/ui" "$vendored/scripts/ui-assets.cmake"
rm -rf "$work/src/tools/server" "$work/src/tools/ui"
cp -r "$work/$vendored/tools/server" "$work/$vendored/tools/ui" "$work/src/tools/"
mkdir -p "$work/src/scripts" && cp "$work/$vendored/scripts/ui-assets.cmake" "$work/src/scripts/"
# The two places the trees disagree, neither on the bench's path: the
# crate's mtmd returns the projector's memory estimate per device inside a
# struct (the server reads it as the map itself; multimodal only), and its
# common/ has no fs_open_ifstream (used to read an MCP config file).
sed -i -e 's/mmproj_mem\.empty()/mmproj_mem.backend_mem_usage.empty()/' \
  -e 's/: mmproj_mem)/: mmproj_mem.backend_mem_usage)/g' "$work/src/tools/server/server-context.cpp"
sed -i 's/fs_open_ifstream(params.mcp_servers_config, std::ios::in)/std::ifstream(params.mcp_servers_config, std::ios::in)/' \
  "$work/src/tools/server/server-mcp.cpp"
# Only what the server needs: the crate's tools/CMakeLists.txt lists every tool.
printf 'find_package(Threads REQUIRED)\nllama_add_compile_flags()\nadd_subdirectory(mtmd)\nadd_subdirectory(ui)\nadd_subdirectory(server)\n' \
  > "$work/src/tools/CMakeLists.txt"
cmake -S "$work/src" -B "$work/build" "${cmake_common[@]}" -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_USE_PREBUILT_UI=OFF ${CLEANER_CMAKE_ARGS:-} >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
echo "$bin"
