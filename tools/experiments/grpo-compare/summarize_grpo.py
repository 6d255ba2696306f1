#!/usr/bin/env python3
"""Summary of tools/experiments/grpo-compare/compare-grpo.sh: GSM8K test accuracy before and after, and
per-step training curves of GRPO without (off) and with (on) CLEANER."""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "runs/grpo-compare"


def metrics(mode):
    path = os.path.join(out, f"train-{mode}", "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


print("| model | eval purify | pass@1 | 95% interval | tool calls / traj | failed calls / traj (raw, kept) | generated tokens |")
print("|---|---|---:|---|---:|---|---:|")
for name, purify in [("base", "off"), ("grpo-off", "off"), ("grpo-on", "off"), ("grpo-on", "on")]:
    path = os.path.join(out, f"eval-{name}-purify-{purify}.json")
    if not os.path.exists(path):
        continue
    r = json.load(open(path))
    s = r["stats"]
    print(f"| {name} | {purify} | {r['accuracy']:.3f} | {r['ci95'][0]:.3f}..{r['ci95'][1]:.3f} | "
          f"{r['tool_calls_per_trajectory']:.2f} | "
          f"{s['failures_per_trajectory_raw']:.2f}, {s['failures_per_trajectory_kept']:.2f} | {s['generated_tokens']} |")


def solved(name, purify="off"):
    path = os.path.join(out, f"eval-{name}-purify-{purify}.json")
    if not os.path.exists(path):
        return None
    return [p["solved"] / p["samples"] for p in json.load(open(path))["per_problem"]]


# Paired differences: the evaluations share problems and seeds, so the
# per-problem difference has a much smaller spread than two separate intervals.
for a, b in [("grpo-off", "base"), ("grpo-on", "base"), ("grpo-on", "grpo-off")]:
    xa, xb = solved(a), solved(b)
    if xa is None or xb is None or len(xa) != len(xb) or len(xa) < 2:
        continue
    ds = [p - q for p, q in zip(xa, xb)]
    n = len(ds)
    m = sum(ds) / n
    sd = (sum((x - m) ** 2 for x in ds) / (n - 1)) ** 0.5
    print(f"\n- {a} - {b}: {m:+.3f} +- {1.96 * sd / n ** 0.5:.3f} (95 %, paired over {n} problems)", end="")
print()
print()
print("| step | acc off | acc on | failures/traj off | failures/traj on (raw -> kept) | step s off | step s on |")
print("|---:|---:|---:|---:|---:|---:|---:|")
off, on = metrics("off"), metrics("on")
for a, b in zip(off, on):
    print(f"| {a['step']} | {a['accuracy']:.3f} | {b['accuracy']:.3f} | {a['failures_raw']:.2f} | "
          f"{b['failures_raw']:.2f} -> {b['failures_kept']:.2f} | {a['time_step_s']:.0f} | {b['time_step_s']:.0f} |")
