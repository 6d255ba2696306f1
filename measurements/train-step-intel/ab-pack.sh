#!/bin/bash
# A/B: d3f5985 (scalar pack) vs the transposing pack, alternating. The binaries are
# copies of each commit's `cleaner` (cargo build --release -p cleaner-tools).
OLD=~/.cache/cleaner/bin/cleaner-panel
NEW=~/.cache/cleaner/bin/cleaner-pack
cd "$(dirname "$0")/../.."
for r in 1 2 3 4 5 6; do
  for b in OLD NEW; do
    echo "=== kernels $b round $r $(date +%T)"
    ${!b} bench kernels --types F32,Q8_0,Q4_K,Q6_K --tokens 512 --forward-models none --reps 15 2>&1 | grep -E "^\|"
  done
done
for r in 1 2 3 4; do
  for b in OLD NEW; do
    echo "=== train $b round $r $(date +%T)"
    ${!b} bench train --python none --precision f32 --backend cpu --keep-mib 2048 --tokens 512 --models qwen2.5-coder-0.5b --reps 2 2>&1 | grep -E "qwen"
  done
done
echo "=== end $(date +%T)"
