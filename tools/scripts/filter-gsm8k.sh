#!/usr/bin/env bash
# Makes (or extends) data/gsm8k/train-filtered.jsonl, the `gsm8k-train-filtered`
# dataset: the GSM8K train problems the default model solves 1 to 7 times in 8
# rollouts under the reference recipe's agent (measurements/grpo-recipe-rerun/
# config.toml), from the first N problems of the seeded order.
#   tools/scripts/filter-gsm8k.sh N [MEASUREMENT_DIR]
# The measurement is resumable: run it again with the same or a larger N. It
# takes about 1.5 minutes per problem on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:?usage: tools/scripts/filter-gsm8k.sh N [MEASUREMENT_DIR]}"
dir="${2:-${CLEANER_HOME:-$HOME/.cache/cleaner}/runs/passrate-qwen0.5b}"
. tools/scripts/setup.sh
cleaner passrate --config measurements/grpo-recipe-rerun/config.toml \
  --dataset gsm8k-train --samples 8 --chunk 2 --seed 0 --problems "$n" --out "$dir"
cp "$dir/filtered.jsonl" data/gsm8k/train-filtered.jsonl
echo "data/gsm8k/train-filtered.jsonl: $(wc -l < data/gsm8k/train-filtered.jsonl) problems of the first $n"
