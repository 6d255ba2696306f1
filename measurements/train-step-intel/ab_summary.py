# Per-cell medians of an A/B log of ab-pack.sh: python3 ab_summary.py LOG
import re, sys, statistics as st
from collections import defaultdict
cur=None; kern=defaultdict(list); train=defaultdict(list); header=None
for line in open(sys.argv[1]):
    m=re.match(r"=== (kernels|train) (OLD|NEW)", line)
    if m: cur=(m.group(1), m.group(2)); continue
    if not line.startswith("|") or cur is None: continue
    cells=[c.strip() for c in line.strip().strip("|").split("|")]
    if cur[0]=="kernels":
        if cells[0].startswith("n_in"): header=cells; continue
        if cells[0].startswith("---"): continue
        for name,c in zip(header[3:], cells[3:]):
            r=re.search(r"\(([\d.]+)\)", c)
            if r: kern[(cells[0],name,cur[1])].append(float(r.group(1)))
    else:
        train[cur[1]].append(float(cells[3].split()[0]))
keys=sorted({(a,b) for a,b,_ in kern})
print("| shape | type | ratio to sgemm, old: median (range) | new: median (range) |")
print("|---|---|---|---|")
for a,b in keys:
    o,n=kern[(a,b,"OLD")],kern[(a,b,"NEW")]
    print(f"| {a} | {b} | {st.median(o):.2f} ({min(o):.2f}-{max(o):.2f}) | {st.median(n):.2f} ({min(n):.2f}-{max(n):.2f}) |")
o,n=train["OLD"],train["NEW"]
print(f"\ntrain f32 tok/s old {o} new {n}; per-round ratios {[round(b/a,3) for a,b in zip(o,n)]}, median {st.median([b/a for a,b in zip(o,n)]):.3f}")
