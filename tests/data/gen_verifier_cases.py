#!/usr/bin/env python3
"""Test vectors for the math verifier (engine/src/tasks/verify.rs).

Pairs (prediction, reference) labelled by Hugging Face's `math-verify`
(sympy-based, independent of our code), from four sources:
  real   - answers Qwen2.5-Coder-0.5B actually boxed in the issue 4 runs
           (measurements/purify-compare, runs/) against the GSM8K reference;
  forms  - real reference answers of GSM8K, AIME24 and AMC23 written the ways
           models write them ($, commas, .00, units, \\boxed) and off by one;
  latex  - LaTeX forms (fractions, roots, powers, tuples, choices).
Where our verifier follows a convention math-verify does not (GSM8K's "50%"
means 50), the case carries `convention` with the reason and the label we
expect; the test checks every case against `expected`.

    pip install math-verify
    python3 tests/data/gen_verifier_cases.py data > tests/data/verifier_cases.jsonl
"""
import glob
import gzip
import json
import os
import random
import sys

from math_verify import parse, verify

DATA = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "data")
rng = random.Random(7)


def label(pred, truth):
    gold = parse("$" + truth + "$")
    ans = parse("$" + pred + "$")
    return bool(gold) and bool(ans) and verify(gold, ans)


def read_jsonl(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def gsm8k_answer(raw):
    return raw.rsplit("####", 1)[1].strip().replace(",", "")


gsm = [gsm8k_answer(r["answer"]) for r in read_jsonl(f"{DATA}/gsm8k/test.jsonl")]
cases = []


def add(source, pred, truth):
    cases.append({"source": source, "pred": pred, "truth": truth})


# real: what the model boxed, against the reference (problem ids are 1-based lines).
seen = set()
files = sorted(glob.glob("measurements/purify-compare/*.jsonl.gz")) + sorted(glob.glob("runs/range-*.jsonl"))
for path in files:
    for t in read_jsonl(path):
        if t.get("answer") is None:
            continue
        key = (t["problem_id"], t["answer"])
        if key in seen:
            continue
        seen.add(key)
        add("real", t["answer"], gsm[int(t["problem_id"]) - 1])

# forms: real references written as models write them.
refs = [("gsm8k", a) for a in rng.sample(gsm, 120)]
refs += [("aime24", r["answer"]) for r in read_jsonl(f"{DATA}/aime24/test.jsonl")]
refs += [("amc23", str(r["answer"])) for r in read_jsonl(f"{DATA}/amc23/test.jsonl")]
for name, ref in refs:
    value = float(ref)
    n = int(value) if value == int(value) else None
    forms = [ref, f"\\boxed{{{ref}}}"]
    if n is not None:
        forms += [f"{n:,}", f"\\${n:,}", f"{n}.00", f"{n} \\text{{ dollars}}", f"{n}.0"]
        wrong = [str(n + 1), str(-n) if n else "1", f"{n * 10}", f"{n}.5"]
    else:
        forms += [f"{value:.4f}"]
        wrong = [f"{value + 1}"]
    for f in forms:
        add(f"forms-{name}", f, ref)
    for w in wrong:
        add(f"forms-{name}", w, ref)

# latex: forms of the same value, and near misses.
latex = [
    ("\\frac{1}{2}", "0.5"), ("\\dfrac{3}{4}", "0.75"), ("\\tfrac{2}{3}", "\\frac{4}{6}"),
    ("\\frac12", "\\frac{1}{2}"), ("\\frac{1}{3}", "0.33"), ("\\frac{1}{3}", "0.3333"),
    ("\\sqrt{2}", "1.4142135623730951"), ("2\\sqrt{3}", "\\sqrt{12}"), ("\\sqrt{8}", "2\\sqrt{2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2"), ("\\sqrt{3}", "\\sqrt{2}"), ("\\sqrt[3]{8}", "2"),
    ("2^{10}", "1024"), ("2^10", "1024"), ("10^{3}", "1000"), ("3^2", "6"),
    ("-\\frac{1}{2}", "-0.5"), ("\\frac{-1}{2}", "-0.5"), ("-0.5", "0.5"),
    ("3 \\times 4", "12"), ("3 \\cdot 4", "12"), ("6/4", "\\frac{3}{2}"), ("1.5", "\\frac{3}{2}"),
    ("(1, 2)", "(1,2)"), ("(1,2)", "(2,1)"), ("(0, -3)", "(0,-3)"), ("\\left(3, 4\\right)", "(3,4)"),
    ("x = 5", "5"), ("x=-2", "-2"), ("y = 7", "8"),
    ("90^\\circ", "90"), ("45^{\\circ}", "45"),
    ("\\pi", "3.141592653589793"), ("2\\pi", "6.283185307179586"), ("\\pi", "3.14"),
    ("1.5e3", "1500"), ("0.000", "0"), ("007", "7"), ("025", "25"), ("1000000", "10^6"),
    ("12", "12.0001"), ("100", "99.99999"), ("\\frac{22}{7}", "\\pi"),
    ("1,234", "1234"), ("1{,}234", "1234"), ("12,345,678", "12345678"), ("1,234.5", "1234.5"),
    ("\\$5", "5"), ("5\\text{ cm}", "5"), ("7 \\text{hours}", "7"), ("\\text{18}", "18"),
    ("\\boxed{42}", "42"), ("-42", "42"), ("4.20", "4.2"), ("0.1", "\\frac{1}{10}"),
    ("\\frac{6}{8}", "\\frac{3}{4}"), ("\\frac{5}{0.5}", "10"), ("\\frac{100}{3}", "33.3333333333"),
]
for p, t in latex:
    add("latex", p, t)
    add("latex", t, p)

CONVENTIONS = {
    # GSM8K answers are percentages written as plain numbers.
    "percent": "GSM8K convention: 'N%' answers the question 'what percent', so it equals N",

    # Python prints large and small floats in e-notation; models copy it.
    "e-notation": "1.5e3 is the number 1500 (Python's float output), not 1.5 times e to the 3",
}

out = []
for c in cases:
    expected = label(c["pred"], c["truth"])
    row = dict(c, expected=expected)
    if "e3" in c["pred"] + c["truth"] and not expected:
        row["expected"] = True
        row["convention"] = CONVENTIONS["e-notation"]
    if "%" in c["pred"] and not expected:
        pred = c["pred"].replace("\\%", "").replace("%", "")
        if label(pred, c["truth"]):
            row["expected"] = True
            row["convention"] = CONVENTIONS["percent"]
    out.append(row)
for row in out:
    print(json.dumps(row, ensure_ascii=False))
print(f"{len(out)} cases, {sum(r['expected'] for r in out)} equal", file=sys.stderr)
