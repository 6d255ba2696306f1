#!/usr/bin/env bash
# The test suite on a fresh machine: set up, build, fetch the test assets,
# run every test (unit, integration against the real llama.cpp and model).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/setup.sh
cleaner fetch smollm2-135m python-wasm
cargo test --release --workspace ${FEATURES:+--features "$FEATURES"}
