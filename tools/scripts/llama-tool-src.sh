# Sourced by the build-*.sh scripts that build one of llama.cpp's own tools
# as a baseline. With $work set, it lays out $work/src: the llama.cpp tree
# the engine links (inside the llama-cpp-sys-2 crate, whose tools/ are
# stripped), and sets $sdist and $vendored, the llama-cpp-python source
# distribution (checked against its pinned sha256) and the path of the
# llama.cpp tree inside it, from which a script takes the tool's sources.
# $cmake_common holds the CMake options llama-cpp-sys-2 builds with here (no
# OpenMP, GGML_NATIVE off, AVX2/FMA/F16C on by ggml's defaults, Release).
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
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
vendored="llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
rm -rf "$work/src" "$work/$vendored" && mkdir -p "$work/src"
cp -r "$crate_src/." "$work/src/"
cmake_common=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF)
