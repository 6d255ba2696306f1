#!/usr/bin/env bash
# Makes (or extends) data/gsm8k/train-filtered.jsonl, the `gsm8k-train-filtered`
# dataset: the GSM8K train problems the default model solves 1 to 7 times in 8
# rollouts under the reference recipe's agent (measurements/grpo-recipe-rerun/
# config.toml), from the first N problems of the seeded order.
#   tools/scripts/filter-gsm8k.sh N [MEASUREMENT_DIR]
# The measurement is resumable, on any machine: run it again with the same or
# a larger N, then commit data/gsm8k/train-filtered.jsonl and the records in
# data/gsm8k/passrate-qwen0.5b/. It takes about 1.5 minutes per problem on 2
# CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:?usage: tools/scripts/filter-gsm8k.sh N [MEASUREMENT_DIR]}"
dir="${2:-${CLEANER_HOME:-$HOME/.cache/cleaner}/runs/passrate-qwen0.5b}"
# The measurement's records are committed beside the set (a new machine's
# cache starts empty): the cache's copy resumes from whichever has more.
committed=data/gsm8k/passrate-qwen0.5b
lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
if [ "$(lines "$committed/passrates.jsonl")" -gt "$(lines "$dir/passrates.jsonl")" ]; then
  mkdir -p "$dir"
  cp "$committed/passrate.json" "$committed/passrates.jsonl" "$dir/"
fi
. tools/scripts/setup.sh
cleaner passrate --config measurements/grpo-recipe-rerun/config.toml \
  --dataset gsm8k-train --samples 8 --chunk 2 --seed 0 --problems "$n" --out "$dir"
cp "$dir/filtered.jsonl" data/gsm8k/train-filtered.jsonl
mkdir -p "$committed"
cp "$dir/passrate.json" "$dir/passrates.jsonl" "$committed/"
echo "data/gsm8k/train-filtered.jsonl: $(wc -l < data/gsm8k/train-filtered.jsonl) problems of the first $n"
