#!/usr/bin/env python3
"""Merges `cleaner eval` reports of consecutive parts of one problem list
(`--offset k*P --limit P`) into one report, as `cleaner eval` would have
written it for the whole list: pass@1 and its interval from the per-problem
means (rl/eval.rs), batch counters summed, per-trajectory rates weighted by
rollouts. Trajectories (`.jsonl` next to each part) are concatenated where
they exist (a part restored from a committed record has only its report).

    merge_eval_parts.py OUT.json PART0.json PART1.json ...

Seeds follow each part's own problem indices, so a split evaluation samples
differently from an unsplit one; compare runs split the same way."""
import json
import math
import os
import sys

SUMMED = ["problems", "rollouts", "tool_calls", "rollbacks_shallow", "rollbacks_deep",
          "retries_exhausted", "no_tool_call_stops", "generated_tokens", "correction_tokens",
          "graft_tokens", "sandbox_ms", "wall_s"]
PER_ROLLOUT = ["failures_per_trajectory_raw", "failures_per_trajectory_kept"]


def wilson(p, n):
    if n <= 0:
        return (0.0, 1.0)
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt((p * (1 - p) + z * z / (4 * n)) / n) / (1 + z * z / n)
    return (max(centre - half, 0.0), min(centre + half, 1.0))


def merge(parts):
    if not parts:
        sys.exit("merge_eval_parts.py: no part reports given")
    samples = {p["samples"] for p in parts}
    purify = {p["purify"] for p in parts}
    if len(samples) != 1 or len(purify) != 1:
        sys.exit(f"merge_eval_parts.py: parts differ in samples {samples} or purify {purify}")
    per_problem = [q for p in parts for q in p["per_problem"]]
    ids = [q["id"] for q in per_problem]
    if len(set(ids)) != len(ids):
        sys.exit("merge_eval_parts.py: a problem appears in two parts")
    stats = {k: sum(p["stats"][k] for p in parts) for k in SUMMED}
    rollouts = max(stats["rollouts"], 1)
    for k in PER_ROLLOUT:
        stats[k] = sum(p["stats"][k] * p["stats"]["rollouts"] for p in parts) / rollouts
    stats["failures_by_class"] = {}
    for p in parts:
        for name, n in p["stats"]["failures_by_class"].items():
            stats["failures_by_class"][name] = stats["failures_by_class"].get(name, 0) + n
    stats["purification_overhead"] = (stats["correction_tokens"] / stats["generated_tokens"]
                                      if stats["generated_tokens"] else 0.0)
    means = [q["solved"] / max(q["samples"], 1) for q in per_problem]
    n = max(len(means), 1)
    accuracy = sum(means) / n
    var = sum((m - accuracy) ** 2 for m in means) / (n - 1) if len(means) > 1 else 0.0
    stderr = math.sqrt(var / n)
    ci95 = ((max(accuracy - 1.96 * stderr, 0.0), min(accuracy + 1.96 * stderr, 1.0))
            if stderr > 0 else wilson(accuracy, float(stats["rollouts"])))
    return {
        "problems": len(per_problem),
        "samples": samples.pop(),
        "purify": purify.pop(),
        "accuracy": accuracy,
        "stderr": stderr,
        "ci95": list(ci95),
        "tool_calls_per_trajectory": stats["tool_calls"] / rollouts,
        "stats": stats,
        "per_problem": per_problem,
    }


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, paths = sys.argv[1], sys.argv[2:]
    parts = []
    for path in paths:
        try:
            with open(path) as f:
                parts.append(json.load(f))
        except (OSError, ValueError) as e:
            sys.exit(f"merge_eval_parts.py: {path}: {e}")
    report = merge(parts)
    with open(out + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    # Parts restored from committed records have no trajectories here.
    missing = []
    with open(os.path.splitext(out)[0] + ".jsonl", "w") as f:
        for path in paths:
            try:
                with open(os.path.splitext(path)[0] + ".jsonl") as part:
                    f.write(part.read())
            except FileNotFoundError:
                missing.append(path)
    if missing:
        print(f"merge_eval_parts.py: {len(missing)} of {len(paths)} parts have no trajectories "
              f"here (restored from records; the report is complete): {missing[0]} ...",
              file=sys.stderr)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
