#!/usr/bin/env python3
"""Generates test vectors for the difflib-exact similarity (engine agent::similarity).

Each line of the output JSONL holds {"a": ..., "b": ..., "ratio": ...} with
ratio = difflib.SequenceMatcher(None, a, b).ratio() as Python computes it.
Pairs are random edits of real code snippets (what SAAR compares: a failed
tool call and its correction), short and long, so both sides of difflib's
200-element autojunk threshold are covered.

    python3 tests/data/gen_difflib_vectors.py > tests/data/difflib_vectors.jsonl
"""
import difflib
import json
import random
import sys

SNIPPETS = [
    "print(12 * 7)",
    "x = 5\ny = x ** 2\nprint(y)",
    "from fractions import Fraction\nprint(Fraction(3, 4) + Fraction(1, 6))",
    "import math\nprint(math.comb(10, 3))",
    "eggs = 16 - 3 - 4\nprint(eggs * 2)",
    "def f(n):\n    return n * (n + 1) // 2\nprint(f(100))",
    "total = 0\nfor i in range(1, 101):\n    if i % 3 == 0 or i % 5 == 0:\n        total += i\nprint(total)",
    "import itertools\ncount = sum(1 for p in itertools.permutations(range(5)) if p[0] < p[-1])\nprint(count)",
    "price = 80\ndiscount = 0.25\nfinal = price * (1 - discount)\nprint(f'{final:.2f}')",
    "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - 4, x))",
    "import numpy as np\na = np.array([1, 2, 3])\nprint(a.mean())",
    "numbers = [3, 1, 4, 1, 5, 9, 2, 6]\nnumbers.sort()\nmedian = (numbers[3] + numbers[4]) / 2\nprint(median)",
    "def is_prime(n):\n    if n < 2:\n        return False\n    for d in range(2, int(n ** 0.5) + 1):\n        if n % d == 0:\n            return False\n    return True\nprint([p for p in range(50) if is_prime(p)])",
    "speed = 60\ntime_hours = 2.5\ndistance = speed * time_hours\nprint(distance)",
    "from decimal import Decimal, getcontext\ngetcontext().prec = 30\nprint(Decimal(1) / Decimal(7))",
    "import statistics\ndata = [2, 4, 4, 4, 5, 5, 7, 9]\nprint(statistics.pstdev(data))",
]

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ()[]{}=+-*/%<>:.,'\"_\n#é→"


def edit(s, rng, n_edits):
    s = list(s)
    for _ in range(n_edits):
        op = rng.random()
        pos = rng.randrange(len(s) + 1)
        if op < 0.35 and s:
            del s[min(pos, len(s) - 1)]
        elif op < 0.7:
            s.insert(pos, rng.choice(ALPHABET))
        elif s:
            s[min(pos, len(s) - 1)] = rng.choice(ALPHABET)
    return "".join(s)


def long_snippet(rng, target):
    parts = []
    while sum(len(p) for p in parts) < target:
        parts.append(rng.choice(SNIPPETS))
    return "\n".join(parts)


def main():
    rng = random.Random(20260125)
    out = sys.stdout
    n = 0
    for k in range(1200):
        if k % 2 == 0:
            a = rng.choice(SNIPPETS)
        else:
            a = long_snippet(rng, rng.choice([200, 300, 600, 1200]))
        kind = rng.random()
        if kind < 0.6:
            b = edit(a, rng, rng.randint(0, max(1, len(a) // 8)))
        elif kind < 0.8:
            b = rng.choice(SNIPPETS) if k % 2 == 0 else long_snippet(rng, len(a))
        else:
            b = edit(a, rng, rng.randint(len(a) // 4, len(a)))
        ratio = difflib.SequenceMatcher(None, a, b).ratio()
        out.write(json.dumps({"a": a, "b": b, "ratio": ratio}, ensure_ascii=False) + "\n")
        n += 1
    print(f"{n} vectors", file=sys.stderr)


if __name__ == "__main__":
    main()
