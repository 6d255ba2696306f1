#!/usr/bin/env python3
"""Summary of tools/compare-grpo.sh: GSM8K test accuracy before and after, and
per-step training curves of GRPO without (off) and with (on) CLEANER."""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "runs/grpo-compare"


def metrics(mode):
    path = os.path.join(out, f"train-{mode}", "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


print("| model | eval purify | pass@1 | 95% interval | failed calls / traj (raw, kept) |")
print("|---|---|---:|---|---|")
for name, purify in [("base", "off"), ("grpo-off", "off"), ("grpo-on", "off"), ("grpo-on", "on")]:
    path = os.path.join(out, f"eval-{name}-purify-{purify}.json")
    if not os.path.exists(path):
        continue
    r = json.load(open(path))
    s = r["stats"]
    print(f"| {name} | {purify} | {r['accuracy']:.3f} | {r['ci95'][0]:.3f}..{r['ci95'][1]:.3f} | "
          f"{s['failures_per_trajectory_raw']:.2f}, {s['failures_per_trajectory_kept']:.2f} |")
print()
print("| step | acc off | acc on | failures/traj off | failures/traj on (raw -> kept) | step s off | step s on |")
print("|---:|---:|---:|---:|---:|---:|---:|")
off, on = metrics("off"), metrics("on")
for a, b in zip(off, on):
    print(f"| {a['step']} | {a['accuracy']:.3f} | {b['accuracy']:.3f} | {a['failures_raw']:.2f} | "
          f"{b['failures_raw']:.2f} -> {b['failures_kept']:.2f} | {a['time_step_s']:.0f} | {b['time_step_s']:.0f} |")
