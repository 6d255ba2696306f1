#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and run cleaner,
# then builds it in release mode. Sourced by run.sh and test.sh; safe to rerun.
set -euo pipefail

need_pkgs=()
if command -v dpkg >/dev/null 2>&1; then
  # bindgen (llama-cpp-sys-2) needs libclang itself, not just libclang-cpp.
  for p in cmake libclang-dev g++ python3-pip; do
    dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
  done
else
  command -v cmake >/dev/null 2>&1 || need_pkgs+=(cmake)
fi
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
