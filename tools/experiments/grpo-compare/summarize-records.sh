#!/bin/bash
# summary.md of measurements/cleaner-vs-grpo from the committed records alone
# (no run directories needed): merges each model's part reports in eval-parts/
# with merge_eval_parts.py and runs summarize_seeds.py over them and the
# committed training metrics.
#
#     tools/experiments/grpo-compare/summarize-records.sh > measurements/cleaner-vs-grpo/summary.md
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
records="$(cd "$here/../../.." && pwd)/measurements/cleaner-vs-grpo"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for model in "$records"/eval-parts/*.model; do
  name="$(basename "$model" .model)"
  # Parts in problem order: from-0, from-12, ..., not the shell's text order.
  mapfile -t parts < <(ls "$records/eval-parts/$name".from-*.json | sort -V)
  python3 "$here/merge_eval_parts.py" "$out/$name.json" "${parts[@]}" 2>/dev/null
done
RECORDS="$records" python3 "$here/summarize_seeds.py" "$out" 0 1
