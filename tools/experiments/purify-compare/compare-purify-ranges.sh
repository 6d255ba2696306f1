#!/usr/bin/env bash
# Issue 4's comparison in ranges of 10 problems, off then on, same seed.
cd "$(dirname "$0")/../../.."
C="${CLEANER:-${CARGO_TARGET_DIR:-$HOME/.cache/cleaner/target}/release/cleaner}"
for off in 0 10 20 30 40 50 60 70 80 90; do
  for mode in off on; do
    f=runs/range-$off-$mode
    mkdir -p runs
    [ -s $f.txt ] && continue
    $C solve --model qwen2.5-coder-0.5b --dataset gsm8k --offset $off --limit 10 --rollouts 4 --purify $mode --seed 7 --out $f.jsonl > $f.txt.tmp 2>$f.err && mv $f.txt.tmp $f.txt
  done
done
