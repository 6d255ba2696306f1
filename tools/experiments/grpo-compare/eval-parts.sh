# Sourced by compare-grpo.sh and compare-seeds.sh: one `cleaner eval` of the
# first N GSM8K test problems in parts of PART, each its own `--offset
# --limit` (so an interrupted evaluation resumes at the part it was in),
# merged by merge_eval_parts.py into OUT/eval-NAME-purify-PURIFY.json.
# Seeds follow each part's problem indices, the same for every model.
# Uses C (the cleaner binary), OUT, N and PART, and RECORDS if set: a folder
# in the repository that keeps each finished part's report (not its
# trajectories), so that an evaluation resumes on a machine whose cache
# lacks the parts; finished parts are copied there, and parts found there
# are copied into OUT/parts and count as done.
evaluate_in_parts() { # name adapter purify samples
  local f="$OUT/eval-$1-purify-$3.json"
  [ -s "$f" ] && return 0
  local adapter=()
  [ "$2" != none ] && adapter=(--adapter "$2")
  local parts=() off
  mkdir -p "$OUT/parts"
  for ((off = 0; off < N; off += PART)); do
    local part="$OUT/parts/eval-$1-purify-$3.from-$off.json"
    parts+=("$part")
    local record="${RECORDS:+$RECORDS/$(basename "$part")}"
    if [ -n "$record" ] && [ -s "$record" ] && [ ! -s "$part" ]; then
      cp "$record" "$part"
    fi
    # A report is written before its trajectories: both mean finished.
    [ -s "$part" ] && { [ -s "${part%.json}.jsonl" ] || [ -s "$record" ]; } && continue
    "$C" eval "${adapter[@]}" --dataset gsm8k --offset "$off" \
      --limit "$((N - off < PART ? N - off : PART))" --samples "$4" --purify "$3" \
      --seed 11 --out "$part"
    if [ -n "$record" ]; then
      mkdir -p "$RECORDS"
      cp "$part" "$record"
    fi
  done
  python3 tools/experiments/grpo-compare/merge_eval_parts.py "$f" "${parts[@]}"
}
