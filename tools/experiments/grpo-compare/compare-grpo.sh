#!/usr/bin/env bash
# Issue 7's method comparison: GRPO without purification vs GRPO with CLEANER,
# same config, seed and budget (steps, prompts, rollouts), then GSM8K test
# accuracy of the base model and of both adapters, and a summary table.
#
#   tools/experiments/grpo-compare/compare-grpo.sh [STEPS] [EVAL_PROBLEMS] [EVAL_SAMPLES]
#
# Resumable: finished runs and evaluations are skipped, interrupted runs
# continue from their last checkpoint, interrupted evaluations from the part
# of PART problems they were in; raise STEPS to extend both runs.
# CONFIG (default gsm8k-qwen0.5b) picks the shipped config or a TOML file.
set -euo pipefail
cd "$(dirname "$0")/../../.."
STEPS="${1:-40}"
N="${2:-100}"
K="${3:-4}"
CONFIG="${CONFIG:-gsm8k-qwen0.5b}"
C="${CLEANER:-${CARGO_TARGET_DIR:-$HOME/.cache/cleaner/target}/release/cleaner}"
OUT="${OUT:-runs/grpo-compare}"
mkdir -p "$OUT"
for mode in off on; do
  run="$OUT/train-$mode"
  if [ -e "$run/checkpoints/latest" ]; then
    "$C" train --resume "$run" --steps "$STEPS"
  else
    "$C" train --config "$CONFIG" --purify "$mode" --steps "$STEPS" --run "$run"
  fi
  "$C" report "$run" > /dev/null
done
# Evaluations run in parts of PART problems (default 10), merged at the end.
PART="${PART:-10}"
. tools/experiments/grpo-compare/eval-parts.sh
evaluate() { evaluate_in_parts "$1" "$2" "$3" "$K"; } # name adapter purify
evaluate base none off
evaluate grpo-off "$OUT/train-off" off
evaluate grpo-on "$OUT/train-on" off
evaluate grpo-on "$OUT/train-on" on
python3 tools/experiments/grpo-compare/summarize_grpo.py "$OUT"
