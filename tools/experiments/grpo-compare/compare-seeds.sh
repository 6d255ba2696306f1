#!/usr/bin/env bash
# The comparison of docs/cleaner-vs-grpo-design.md: plain GRPO (--purify off)
# against CLEANER (--purify 0.7) under the reference recipe on the filtered
# GSM8K-train set, two seeds per arm; then the first N GSM8K test problems,
# one sample each, for the base model and the four adapters with
# purification off, and for the two CLEANER adapters with it on; then the
# summary (summarize_seeds.py).
#
#   tools/experiments/grpo-compare/compare-seeds.sh [STEPS] [EVAL_PROBLEMS]
#
# Defaults 12 and 432, the design's. Everything is resumable: finished runs
# and evaluation parts are skipped, an interrupted run continues from its
# last checkpoint and an evaluation from the part of PART (default 12)
# problems it was in. STAGES (default "train eval-off eval-on summary")
# picks the parts to run, so the comparison can go one part per sitting.
# Run directories go to OUT (default ~/.cache/cleaner/runs/cleaner-vs-grpo);
# what to commit is copied to measurements/cleaner-vs-grpo (RECORDS below).
# CLEANER names the binary; one binary for every run and evaluation of a
# comparison (this one's: commit ab00600's, see its README).
set -euo pipefail
cd "$(dirname "$0")/../../.."
STEPS="${1:-12}"
N="${2:-432}"
PART="${PART:-12}"
SEEDS="${SEEDS:-0 1}"
STAGES="${STAGES:-train eval-off eval-on summary}"
C="${CLEANER:-${CARGO_TARGET_DIR:-$HOME/.cache/cleaner/target}/release/cleaner}"
OUT="${OUT:-${CLEANER_HOME:-$HOME/.cache/cleaner}/runs/cleaner-vs-grpo}"
mkdir -p "$OUT"
# This clone's data, whichever clone built the binary (its compiled-in
# data directory may be a clone that is gone).
export CLEANER_DATA="${CLEANER_DATA:-$PWD/data}"
# What to commit after each sitting: the training runs' metrics and
# reports, the evaluation parts' reports (eval-parts.sh), the summary.
RECORDS="$PWD/measurements/cleaner-vs-grpo"

# The rerun's recipe (issue 18) with the filtered training set, frozen for
# this comparison in measurements/cleaner-vs-grpo/train-set.jsonl: the
# filter in data/gsm8k/ may grow between sittings, and all four runs must
# draw from the same problems whichever sitting trains them.
train_set="$PWD/measurements/cleaner-vs-grpo/train-set.jsonl"
config="$OUT/config.toml"
sed "s|^dataset = \"gsm8k-train\"\$|dataset = \"$train_set\"|" \
  measurements/grpo-recipe-rerun/config.toml > "$config.new"
if ! grep -qF "dataset = \"$train_set\"" "$config.new"; then
  echo "compare-seeds.sh: measurements/grpo-recipe-rerun/config.toml has no line" \
    '`dataset = "gsm8k-train"` to point at the frozen training set' >&2
  exit 1
fi
mv "$config.new" "$config"

purify_of() { # arm
  case "$1" in
    grpo) echo off ;;
    cleaner) echo 0.7 ;; # the reference's probability for Qwen2.5 models
  esac
}

stage() { [[ " $STAGES " == *" $1 "* ]]; }

if stage train; then
  for seed in $SEEDS; do
    for arm in grpo cleaner; do
      run="$OUT/train-$arm-s$seed"
      if [ -e "$run/checkpoints/latest" ]; then
        "$C" train --resume "$run" --steps "$STEPS"
      else
        "$C" train --config "$config" --purify "$(purify_of "$arm")" --seed "$seed" \
          --steps "$STEPS" --run "$run"
      fi
      "$C" report "$run" > /dev/null
      # The run's record in the repository (its checkpoints and adapters,
      # 35 MB and more, stay in the cache).
      mkdir -p "$RECORDS/train-$arm-s$seed"
      cp "$run/metrics.jsonl" "$run/report.html" "$RECORDS/train-$arm-s$seed/"
    done
  done
fi

# Evaluations in parts of PART problems, merged at the end; one sample each.
. tools/experiments/grpo-compare/eval-parts.sh
evaluate() { RECORDS="$RECORDS/eval-parts" evaluate_in_parts "$1" "$2" "$3" 1; } # name adapter purify

if stage eval-off; then
  evaluate base none off
  for seed in $SEEDS; do
    for arm in grpo cleaner; do
      evaluate "$arm-s$seed" "$OUT/train-$arm-s$seed" off
    done
  done
fi
if stage eval-on; then
  for seed in $SEEDS; do
    evaluate "cleaner-s$seed" "$OUT/train-cleaner-s$seed" on
  done
fi
if stage summary; then
  RECORDS="$RECORDS" python3 tools/experiments/grpo-compare/summarize_seeds.py "$OUT" $SEEDS |
    tee "$OUT/summary.md" "$RECORDS/summary.md"
fi
