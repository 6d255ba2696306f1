#!/usr/bin/env python3
"""Summary of compare-seeds.sh (docs/cleaner-vs-grpo-design.md): training
curves per arm and seed, steps to reach plain GRPO's final training
accuracy, tool failures raw and kept, tokens and wall time, and GSM8K test
pass@1 with paired intervals (per problem, averaged over the seeds).

    summarize_seeds.py OUT SEED...

Training metrics come from OUT/train-ARM-sSEED, or from the same folder
under $RECORDS where OUT lacks it.

Parts not run yet are left out of the tables."""
import json
import math
import os
import sys

out = sys.argv[1]
seeds = sys.argv[2:] or ["0", "1"]
ARMS = ["grpo", "cleaner"]
WINDOW = 3  # steps in a trailing mean of training accuracy


def metrics(arm, seed):
    # The run directory, else the run's record in the repository (RECORDS,
    # set by compare-seeds.sh) on a machine whose cache lacks the run.
    for root in [out, os.environ.get("RECORDS")]:
        path = os.path.join(root, f"train-{arm}-s{seed}", "metrics.jsonl") if root else None
        if path and os.path.exists(path):
            with open(path) as f:
                return [json.loads(line) for line in f if line.strip()]
    return []


def trailing(values):
    return [sum(values[max(0, i + 1 - WINDOW):i + 1]) / len(values[max(0, i + 1 - WINDOW):i + 1])
            for i in range(len(values))]


runs = {(a, s): metrics(a, s) for a in ARMS for s in seeds}
runs = {k: v for k, v in runs.items() if v}

if runs:
    print("## Training\n")
    cols = sorted(runs)
    print("| step | " + " | ".join(f"{a} s{s} accuracy" for a, s in cols) + " |")
    print("|---:|" + "---:|" * len(cols))
    for step in range(max(len(v) for v in runs.values())):
        cells = [f"{runs[c][step]['accuracy']:.3f}" if step < len(runs[c]) else "" for c in cols]
        print(f"| {step + 1} | " + " | ".join(cells) + " |")
    print()
    print("| arm, seed | steps | final accuracy (mean of last 3) | failed calls / traj raw, kept | "
          "SyntaxError raw, kept | \\boxed in code raw, kept | generated tokens | wall h |")
    print("|---|---:|---:|---|---|---|---:|---:|")
    for (a, s), m in sorted(runs.items()):
        n = len(m)
        final = trailing([x["accuracy"] for x in m])[-1]
        raw = sum(x["failures_raw"] for x in m) / n
        kept = sum(x["failures_kept"] for x in m) / n
        syn_raw = sum(x.get("failures_by_class_raw", {}).get("SyntaxError", 0) for x in m)
        syn_kept = sum(x.get("failures_by_class_kept", {}).get("SyntaxError", 0) for x in m)
        box_raw = sum(x.get("boxed_in_code_raw", 0) for x in m)
        box_kept = sum(x.get("boxed_in_code_kept", 0) for x in m)
        tokens = sum(x["generated_tokens"] for x in m)
        hours = sum(x["time_step_s"] for x in m) / 3600
        print(f"| {a} s{s} | {n} | {final:.3f} | {raw:.2f}, {kept:.2f} | {syn_raw}, {syn_kept} | "
              f"{box_raw}, {box_kept} | {tokens} | {hours:.2f} |")
    print()
    print(f"Steps to reach plain GRPO's final training accuracy (the mean of its last {WINDOW} "
          f"steps), each run's trailing {WINDOW}-step mean:\n")
    for s in seeds:
        base = runs.get(("grpo", s))
        if not base:
            continue
        target = trailing([x["accuracy"] for x in base])[-1]
        cells = []
        for a in ARMS:
            m = runs.get((a, s))
            if not m:
                continue
            curve = trailing([x["accuracy"] for x in m])
            hit = next((i + 1 for i, v in enumerate(curve) if v >= target), None)
            cells.append(f"{a} {hit if hit else 'not reached in ' + str(len(m))}")
        print(f"- seed {s} (target {target:.3f}): " + ", ".join(cells))
    print()


def per_problem(name, purify="off"):
    path = os.path.join(out, f"eval-{name}-purify-{purify}.json")
    if not os.path.exists(path):
        return None
    report = json.load(open(path))
    return {q["id"]: q["solved"] / max(q["samples"], 1) for q in report["per_problem"]}, report


def interval(diffs):
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    return mean, 1.96 * sd / math.sqrt(n), sd


def mean_over_seeds(arm, purify="off"):
    got = [per_problem(f"{arm}-s{s}", purify) for s in seeds]
    if any(g is None for g in got):
        return None
    ids = set.intersection(*(set(g[0]) for g in got))
    return {i: sum(g[0][i] for g in got) / len(got) for i in ids}


evals = [("base", "off")] + [(f"{a}-s{s}", "off") for s in seeds for a in ARMS] + \
    [(f"cleaner-s{s}", "on") for s in seeds]
rows = [(n, p, per_problem(n, p)) for n, p in evals]
rows = [(n, p, r) for n, p, r in rows if r]
if rows:
    print("## GSM8K test\n")
    print("| model | purify at eval | problems | pass@1 | 95 % interval | failed calls / traj raw, kept | generated tokens |")
    print("|---|---|---:|---:|---|---|---:|")
    for name, purify, (_, r) in rows:
        st = r["stats"]
        print(f"| {name} | {purify} | {r['problems']} | {r['accuracy']:.3f} | "
              f"{r['ci95'][0]:.3f}..{r['ci95'][1]:.3f} | {st['failures_per_trajectory_raw']:.2f}, "
              f"{st['failures_per_trajectory_kept']:.2f} | {st['generated_tokens']} |")
    print()
    print("Tool use at evaluation, per trajectory (one sample a problem): interpreter calls, "
          "failed calls, the failed share of calls, and the commonest failure classes:\n")
    print("| model | purify at eval | problems | calls | failed | failed / call | classes |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, purify, (_, r) in rows:
        st = r["stats"]
        n = max(st["rollouts"], 1)
        calls = st["tool_calls"] / n
        failed = st["failures_per_trajectory_raw"]
        classes = sorted(st.get("failures_by_class", {}).items(), key=lambda kv: -kv[1])[:3]
        print(f"| {name} | {purify} | {r['problems']} | {calls:.2f} | {failed:.3f} | "
              f"{failed / calls if calls else 0:.2f} | "
              + ", ".join(f"{k} {v}" for k, v in classes) + " |")
    print()
    print("Paired differences in pass@1 points (per problem; an arm's value is the mean of its "
          "seeds), with the 95 % interval mean +- 1.96 sd / sqrt(n):\n")
    base = per_problem("base")
    pairs = [("cleaner", "grpo", mean_over_seeds("cleaner"), mean_over_seeds("grpo"))]
    if base:
        pairs += [(a, "base", mean_over_seeds(a), base[0]) for a in ARMS]
    on = mean_over_seeds("cleaner", "on")
    if on:
        pairs += [("cleaner evaluated with purification", "grpo", on, mean_over_seeds("grpo"))]
    for s in seeds:
        a, b = per_problem(f"cleaner-s{s}"), per_problem(f"grpo-s{s}")
        if a and b:
            pairs.append((f"cleaner s{s}", f"grpo s{s}", a[0], b[0]))
    if base:
        for s in seeds:
            for arm in ARMS:
                m = per_problem(f"{arm}-s{s}")
                if m:
                    pairs.append((f"{arm} s{s}", "base", m[0], base[0]))
    for a, b, x, y in pairs:
        if not x or not y:
            continue
        ids = sorted(set(x) & set(y))
        mean, half, sd = interval([x[i] - y[i] for i in ids])
        print(f"- {a} - {b}: {100 * mean:+.1f} +- {100 * half:.1f} points "
              f"(n = {len(ids)}, sd {sd:.2f})")
