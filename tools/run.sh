#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, fetch the default model
# (Qwen2.5-Coder-0.5B-Instruct) and the Python interpreter, then let the
# tool-using agent solve GSM8K problems with CLEANER purification on, print
# accuracy and purification statistics, and show the first trajectory.
# Extra arguments go to `cleaner solve` (e.g. --limit 20 --purify off).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/setup.sh
export CLEANER_DATA="${CLEANER_DATA:-$(cd .. && pwd)/shared/data}"
out="runs/main-$(date +%Y%m%d-%H%M%S).jsonl"
cleaner solve --model qwen2.5-coder-0.5b --dataset gsm8k --limit 2 --rollouts 4 --purify on --out "$out" "$@"
cleaner show "$out" --index 0
