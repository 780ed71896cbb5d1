"""A synthetic task family a tiny model learns on CPU, with difficulty levels and a scripted teacher.

"What is 7 + 15 - 3 + 12?": level = number of +/- operations (1-4), operands 1-20, running results
never negative (demo-prototype notes). The scripted teacher writes the long-form thought the papers'
teachers write: one line per step, then a reflection ("Wait, let me check: ...") that re-derives
the result backwards, then `\\boxed{}`. It is a `distill` backend (`--backend scripted`), so the same
pipeline runs with a real teacher model elsewhere.
"""

from __future__ import annotations

import random
import re
from typing import Any

_TERM = re.compile(r"(\d+)|([+-])")


def make_problem(rng: random.Random, level: int, max_operand: int = 20) -> dict[str, Any]:
    """One problem with `level` operations; ids are filled in by the caller."""
    total = rng.randint(1, max_operand)
    parts = [str(total)]
    for _ in range(level):
        x = rng.randint(1, max_operand)
        if rng.random() < 0.5 and total - x >= 0:
            parts += ["-", str(x)]
            total -= x
        else:
            parts += ["+", str(x)]
            total += x
    return {"problem": f"What is {' '.join(parts)}?", "answer": str(total), "level": level}


def problems(n: int, seed: int, levels: tuple[int, ...] = (1, 2, 3, 4), prefix: str = "arith",
             max_operand: int = 20) -> list[dict[str, Any]]:
    """`n` problems spread evenly over `levels`, deterministic in `seed`, ids `{prefix}-{seed}-{i}`."""
    rng = random.Random(seed)
    return [{"id": f"{prefix}-{seed}-{i}", **make_problem(rng, levels[i % len(levels)], max_operand)}
            for i in range(n)]


def big_problems(n: int, seed: int, digits: int = 3, prefix: str = "big", op: str = "+-") -> list[dict[str, Any]]:
    """Two-term problems with `digits`-digit operands ("What is 347 + 589?", or with `op="*"` "What is
    47 * 86?"): too long for a tiny model to compute in its head, easy to copy into code. Level "big"."""
    rng = random.Random(seed)
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    out = []
    for i in range(n):
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "*":
            sym, value = "*", a * b
        else:
            sym = "+" if rng.random() < 0.5 or a < b else "-"
            value = a + b if sym == "+" else a - b
        out.append({"id": f"{prefix}-{seed}-{i}", "problem": f"What is {a} {sym} {b}?", "answer": str(value),
                    "level": "big"})
    return out


def _terms(problem: str) -> list[tuple[str, int]]:
    expr = problem.split("What is", 1)[1].rstrip("?").strip()
    toks = [m.group(0) for m in _TERM.finditer(expr)]
    ops = [("+", int(toks[0]))]
    for i in range(1, len(toks), 2):
        ops.append((toks[i], int(toks[i + 1])))
    return ops


def teacher_trace(problem: str, think: bool = True) -> str:
    """The scripted teacher's response: the problem restated, steps, a backwards check (reflection),
    the boxed answer. `think=False`: a direct answer with an empty thought (no-thinking mode)."""
    if not think:
        return "<think>\n</think>\n\nThe answer is \\boxed{" + str(solve(problem)) + "}."
    terms = _terms(problem)
    total = terms[0][1]
    # restate the problem first, as reasoning models do ("Okay, so I need to compute ..."); it is also
    # the skill a tool call needs: copy the expression into code
    lines, history = [f"We need {problem[len('What is '):-1]}."], [total]
    for op, x in terms[1:]:
        new = total + x if op == "+" else total - x
        lines.append(f"{total} {op} {x} = {new}")
        total = new
        history.append(total)
    if len(terms) > 1:
        op, x = terms[-1]
        back = "-" if op == "+" else "+"
        lines.append(f"Wait, let me check: {total} {back} {x} = {history[-2]}. Correct.")
    else:
        lines.append(f"The number is {total}.")
    return "<think>\n" + "\n".join(lines) + "\n</think>\n\nThe answer is \\boxed{" + str(total) + "}."


def solve(problem: str) -> int:
    total = 0
    for op, x in _terms(problem):
        total = total + x if op == "+" else total - x
    return total
