#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and run cleaner,
# then builds it in release mode. Sourced by run.sh and test.sh; safe to rerun.
set -euo pipefail

need_pkgs=()
command -v cmake >/dev/null 2>&1 || need_pkgs+=(cmake)
# bindgen (llama-cpp-sys-2) needs libclang.
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1 || need_pkgs+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || need_pkgs+=(g++)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3 python3-pip)
python3 -m pip --version >/dev/null 2>&1 || need_pkgs+=(python3-pip)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }

# One build directory per machine, outside any clone, so fresh clones (CI)
# reuse the llama.cpp build instead of spending 5-12 minutes on it again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cleaner/target}"
FEATURES="${CLEANER_FEATURES:-}"
cargo build --release --workspace ${FEATURES:+--features "$FEATURES"}
export PATH="$CARGO_TARGET_DIR/release:$PATH"
