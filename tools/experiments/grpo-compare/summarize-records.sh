#!/bin/bash
# summary.md of measurements/cleaner-vs-grpo from the committed records alone
# (no run directories needed): merges each model's part reports in eval-parts/
# with merge_eval_parts.py and runs summarize_seeds.py over them and the
# committed training metrics. LIMIT=N takes each model's parts on the
# first N problems only (a multiple of the 12-problem part), so that every
# model is compared on the same problems.
#
#     tools/experiments/grpo-compare/summarize-records.sh > measurements/cleaner-vs-grpo/summary.md
#     LIMIT=336 tools/experiments/grpo-compare/summarize-records.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
records="$(cd "$here/../../.." && pwd)/measurements/cleaner-vs-grpo"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for model in "$records"/eval-parts/*.model; do
  name="$(basename "$model" .model)"
  # Parts in problem order: from-0, from-12, ..., not the shell's text order.
  parts=()
  for part in $(ls "$records/eval-parts/$name".from-*.json | sort -V); do
    from="${part##*.from-}"
    if [ -z "${LIMIT:-}" ] || [ "${from%.json}" -lt "$LIMIT" ]; then
      parts+=("$part")
    fi
  done
  python3 "$here/merge_eval_parts.py" "$out/$name.json" "${parts[@]}" 2>/dev/null
done
RECORDS="$records" python3 "$here/summarize_seeds.py" "$out" 0 1
