#!/usr/bin/env bash
# Issue 4's measurement: the agent on the first N GSM8K test problems, G
# rollouts each, purification off vs on with the same seeds. Prints both
# summaries; trajectories land in runs/compare-{off,on}.jsonl.
#   tools/experiments/purify-compare/compare-purify.sh [N=100] [G=4] [MODEL=qwen2.5-coder-0.5b]
set -euo pipefail
cd "$(dirname "$0")/../../.."
N="${1:-100}"; G="${2:-4}"; MODEL="${3:-qwen2.5-coder-0.5b}"
CLEANER="${CLEANER:-${CARGO_TARGET_DIR:-$HOME/.cache/cleaner/target}/release/cleaner}"
[ -x "$CLEANER" ] || { . tools/scripts/setup.sh; CLEANER=cleaner; }
mkdir -p runs
for mode in off on; do
  echo "=== purify $mode"
  "$CLEANER" solve --model "$MODEL" --dataset gsm8k --limit "$N" --rollouts "$G" --purify "$mode" \
    --seed 7 --out "runs/compare-$mode.jsonl" | tee "runs/compare-$mode.txt"
done
