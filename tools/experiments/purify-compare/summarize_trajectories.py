#!/usr/bin/env python3
"""Summarizes trajectory files written by `cleaner solve` (one or more JSONL
files per setting), e.g. to merge runs over disjoint problem ranges:

    python3 tools/experiments/purify-compare/summarize_trajectories.py off runs/compare-off.jsonl runs/compare2-off.jsonl \
                                        -- on runs/compare-on.jsonl runs/compare2-on.jsonl
"""
import json
import math
import sys


def load(paths):
    out = []
    for p in paths:
        with open(p) as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out


def summary(ts):
    n = len(ts)
    correct = sum(1 for t in ts if (t.get("reward") or 0) > 0)
    acc = correct / n
    se = math.sqrt(acc * (1 - acc) / n)
    failed = lambda c: c["status"] != "ok"
    raw = sum(sum(1 for c in t["tool_calls"] if failed(c)) for t in ts) / n
    kept = sum(sum(1 for c in t["tool_calls"] if failed(c) and c["kept"]) for t in ts) / n
    corr = sum(t["correction_tokens"] for t in ts)
    resp = sum(t["response_tokens"] for t in ts)
    ev = [e for t in ts for e in t["purification"]]
    return {
        "problems": len({t["problem_id"] for t in ts}),
        "rollouts": n,
        "accuracy": round(acc, 4),
        "std_error": round(se, 4),
        "failed_calls_per_trajectory_raw": round(raw, 4),
        "failed_calls_per_trajectory_kept": round(kept, 4),
        "rollbacks_shallow": sum(1 for e in ev if e.get("repair") == "shallow"),
        "rollbacks_deep": sum(1 for e in ev if e.get("repair") == "deep"),
        "exhausted": sum(1 for e in ev if e["result"] == "exhausted"),
        "generated_tokens": resp + corr,
        "correction_tokens": corr,
        "purification_overhead": round(corr / max(1, resp + corr), 4),
    }


def main(argv):
    groups, cur = [], []
    for a in argv:
        if a == "--":
            groups.append(cur)
            cur = []
        else:
            cur.append(a)
    groups.append(cur)
    for g in groups:
        if not g:
            continue
        print(g[0], json.dumps(summary(load(g[1:])), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
