#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, fetch the default model
# (Qwen2.5-Coder-0.5B-Instruct) and the Python interpreter, then train it with
# GRPO on purified trajectories (CLEANER) on GSM8K with the `quickstart`
# config (about 15 minutes on 2 CPU cores) and write the HTML report.
# Extra arguments go to `cleaner train` (e.g. --config gsm8k-qwen0.5b,
# --purify off, --steps 10, --resume DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/scripts/setup.sh
run="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
if [[ " $* " == *" --resume "* ]]; then
  cleaner train "$@"
  run="$(printf '%s\n' "$@" | sed -n '/^--resume$/{n;p}')"
else
  cleaner train --config quickstart --run "$run" "$@"
fi
cleaner report "$run"
