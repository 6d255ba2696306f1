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
# Evaluations run in parts of PART problems (default 10), each its own
# `cleaner eval --offset --limit`, so an interrupted one resumes at the part
# it was in; merge_eval_parts.py then writes the whole report. Seeds follow
# each part's problem indices, the same for every model evaluated.
PART="${PART:-10}"
evaluate() { # name adapter purify
  local f="$OUT/eval-$1-purify-$3.json"
  [ -s "$f" ] && return 0
  local adapter=()
  [ "$2" != none ] && adapter=(--adapter "$2")
  local parts=() off
  for ((off = 0; off < N; off += PART)); do
    local part="$OUT/parts/eval-$1-purify-$3.from-$off.json"
    parts+=("$part")
    [ -s "$part" ] && [ -s "${part%.json}.jsonl" ] && continue
    mkdir -p "$OUT/parts"
    "$C" eval "${adapter[@]}" --dataset gsm8k --offset "$off" --limit "$(( N - off < PART ? N - off : PART ))" \
      --samples "$K" --purify "$3" --seed 11 --out "$part"
  done
  python3 tools/experiments/grpo-compare/merge_eval_parts.py "$f" "${parts[@]}"
}
evaluate base none off
evaluate grpo-off "$OUT/train-off" off
evaluate grpo-on "$OUT/train-on" off
evaluate grpo-on "$OUT/train-on" on
python3 tools/experiments/grpo-compare/summarize_grpo.py "$OUT"
