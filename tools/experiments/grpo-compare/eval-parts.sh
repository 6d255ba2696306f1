# Sourced by compare-grpo.sh and compare-seeds.sh: one `cleaner eval` of the
# first N GSM8K test problems in parts of PART, each its own `--offset
# --limit` (so an interrupted evaluation resumes at the part it was in),
# merged by merge_eval_parts.py into OUT/eval-NAME-purify-PURIFY.json.
# Seeds follow each part's problem indices, the same for every model.
# Uses C (the cleaner binary), OUT, N and PART, and RECORDS if set: a folder
# in the repository that keeps each finished part's report (not its
# trajectories), so that an evaluation resumes on a machine whose cache
# lacks the parts. Finished parts are copied there, parts found there are
# copied into OUT/parts and count as done, and RECORDS/eval-NAME-purify-
# PURIFY.model names the model they evaluated (the adapter's sha256, or
# "none"): records of another model stop the evaluation rather than mix
# into its score.

# The model an evaluation runs: the sha256 of the adapter file (a run
# directory's newest checkpoint's, as `cleaner eval --adapter DIR` takes),
# or "none" for the base model.
model_id() { # adapter
  local f="$1"
  if [ "$f" = none ]; then
    echo none
    return
  fi
  if [ -d "$f" ]; then
    f="$(ls -d "$f"/checkpoints/step-*/ | sort | tail -1)adapter.gguf"
  fi
  sha256sum "$f" | cut -d' ' -f1
}

evaluate_in_parts() { # name adapter purify samples
  local name="eval-$1-purify-$3"
  local f="$OUT/$name.json"
  local adapter=()
  [ "$2" != none ] && adapter=(--adapter "$2")
  if [ -n "${RECORDS:-}" ]; then
    local id idf="$RECORDS/$name.model"
    id="$(model_id "$2")"
    mkdir -p "$RECORDS"
    if [ -s "$idf" ] && [ "$(cat "$idf")" != "$id" ]; then
      echo "eval-parts.sh: $RECORDS holds parts of $name made with another model" \
        "($(cat "$idf")), not $2 ($id): move them away to evaluate this one" >&2
      return 1
    fi
    echo "$id" > "$idf"
  fi
  local parts=() off ran=0
  mkdir -p "$OUT/parts"
  for ((off = 0; off < N; off += PART)); do
    local part="$OUT/parts/$name.from-$off.json"
    local record="${RECORDS:+$RECORDS/$(basename "$part")}"
    parts+=("$part")
    if [ -n "$record" ] && [ -s "$record" ] && [ ! -s "$part" ]; then
      cp "$record" "$part"
    fi
    # `cleaner eval` writes its report, then the trajectories: a part is
    # finished when both are here, or when its report is a record.
    if ! { [ -s "$part" ] && { [ -s "${part%.json}.jsonl" ] || [ -s "$record" ]; }; }; then
      "$C" eval "${adapter[@]}" --dataset gsm8k --offset "$off" \
        --limit "$((N - off < PART ? N - off : PART))" --samples "$4" --purify "$3" \
        --seed 11 --out "$part"
      ran=1
    fi
    if [ -n "$record" ] && [ ! -s "$record" ]; then
      cp "$part" "$record.tmp"
      mv "$record.tmp" "$record"
    fi
  done
  if [ "$ran" = 1 ] || [ ! -s "$f" ]; then
    python3 tools/experiments/grpo-compare/merge_eval_parts.py "$f" "${parts[@]}"
  fi
}
