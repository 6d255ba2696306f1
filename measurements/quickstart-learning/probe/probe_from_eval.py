"""The probe's trajectories from `cleaner eval`'s trajectories (JSONL): the
first N right (reward > 0) and the first N wrong, in file order, as
probe_logprobs' TSV (label, token ids, one role digit per token: 1 for a
model token).

    python3 probe_from_eval.py EVAL.jsonl PROBE.tsv N
"""
import json
import sys

src, dest, n_each = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [json.loads(line) for line in open(src)]
right = [r for r in rows if r["reward"] is not None and r["reward"] > 0][:n_each]
wrong = [r for r in rows if r["reward"] is not None and r["reward"] <= 0][:n_each]
if len(right) < n_each or len(wrong) < n_each:
    sys.exit(f"{src}: {len(right)} right and {len(wrong)} wrong, {n_each} of each needed")
with open(dest, "w") as f:
    for r in right + wrong:
        roles = "".join("1" if role == "model" else "0" for role in r["roles"])
        tokens = ",".join(map(str, r["tokens"]))
        f.write(f"{1 if r['reward'] > 0 else 0}\t{tokens}\t{roles}\n")
print(f"{dest}: {2 * n_each} trajectories, {sum(len(r['tokens']) for r in right + wrong)} tokens")
