"""Per model: the mean log-prob per model token of the probe's right and
wrong trajectories, their margin, and the change from the base model
(mean over trajectories, with the standard error of the margin's change).

    python3 summarize.py probe.tsv.base probe.tsv.NAME ...
"""
import math
import statistics as st
import sys


def load(path):
    return [(int(label), float(mean)) for label, mean, _ in (l.split() for l in open(path))]


base = load(sys.argv[1])
print("| model | right | wrong | margin | change, right | change, wrong | change of the margin |")
print("|---|---:|---:|---:|---:|---:|---:|")
for path in sys.argv[1:]:
    rows = load(path)
    right = [v for label, v in rows if label == 1]
    wrong = [v for label, v in rows if label == 0]
    d_right = [v - b for (label, v), (_, b) in zip(rows, base) if label == 1]
    d_wrong = [v - b for (label, v), (_, b) in zip(rows, base) if label == 0]
    se = math.sqrt(st.pvariance(d_right) / len(d_right) + st.pvariance(d_wrong) / len(d_wrong))
    name = path.split("probe.tsv.")[-1]
    print(
        f"| {name} | {st.mean(right):.4f} | {st.mean(wrong):.4f} "
        f"| {st.mean(right) - st.mean(wrong):+.4f} | {st.mean(d_right):+.4f} "
        f"| {st.mean(d_wrong):+.4f} | {st.mean(d_right) - st.mean(d_wrong):+.4f} +- {1.96 * se:.4f} |"
    )
