"""still's grader vs Math-Verify called directly: accuracy and answers/s, side by side, one run.

    python benchmarks/grading.py            # all case sets
    python benchmarks/grading.py --quick    # fewer realistic rows

Case sets (every case: a model-style response, a gold answer, the right verdict):
  * hand   - benchmarks/grading_cases.jsonl: equivalence rules and near misses, written for still
             (categories follow Math-Verify's own regression tests: numbers, fractions, percents,
             intervals, sets, matrices, units, plus the weak spots listed in the grading issue);
  * math500  - every MATH-500 gold answer boxed at the end of a response (right), and the gold of
             another problem with a different value (wrong);
  * integers - AIME 2024/2025 + GSM8K answers, right and off by one.
Math-Verify is called the way TRL's accuracy reward and open-r1 call it: parse(gold), parse(response),
verify. Single process for both; then still's `grade_batch` with 1 and 2 worker processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from still_cli.data import read_problems  # noqa: E402
from still_cli.grading import grade, grade_batch, normalize, to_number  # noqa: E402

HERE = Path(__file__).parent
TEMPLATE = "Let me work through this carefully.\n\nAfter simplifying, we conclude the result.\n\nThe final answer is $\\boxed{{{}}}$."


def hand_cases() -> list[dict]:
    return [json.loads(x) for x in (HERE / "grading_cases.jsonl").read_text().splitlines() if x.strip()]


def math500_cases(limit: int | None) -> list[dict]:
    rows = read_problems("math500")[:limit]
    rng = random.Random(0)
    cases = [{"gold": r["answer"], "response": TEMPLATE.format(r["answer"]), "expected": True} for r in rows]
    for r in rows:
        for _ in range(20):  # another problem's answer that is plainly a different value
            other = rng.choice(rows)["answer"]
            a, b = normalize(other), normalize(r["answer"])
            na, nb = to_number(a), to_number(b)
            if a.replace(" ", "") != b.replace(" ", "") and not (na and nb and na[0] == nb[0]) \
                    and (na is not None) == (nb is not None):
                cases.append({"gold": r["answer"], "response": TEMPLATE.format(other), "expected": False})
                break
    return cases


def integer_cases(limit: int | None) -> list[dict]:
    rows = (read_problems("aime2024") + read_problems("aime2025") + read_problems("gsm8k"))[:limit]
    cases = []
    for r in rows:
        cases.append({"gold": r["answer"], "response": TEMPLATE.format(r["answer"]), "expected": True})
        wrong = str(int(float(r["answer"])) + 1)
        cases.append({"gold": r["answer"], "response": TEMPLATE.format(wrong), "expected": False})
    return cases


def mathverify_grade(response: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(f"${gold}$"), parse(response)))
    except Exception:
        return False


def measure(fn, cases: list[dict]) -> tuple[float, float]:
    t = time.perf_counter()
    verdicts = [fn(c["response"], c["gold"]) for c in cases]
    elapsed = time.perf_counter() - t
    acc = sum(v == c["expected"] for v, c in zip(verdicts, cases)) / len(cases)
    return acc, len(cases) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100 realistic rows per set instead of all")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # Math-Verify logs every timeout/parse failure
    limit = 100 if args.quick else None
    sets = {"hand": hand_cases(), "math500": math500_cases(limit), "integers": integer_cases(limit)}
    sets["all"] = [c for s in sets.values() for c in s]
    # warm both (imports, sympy caches) outside the timings
    grade("\\boxed{x^2}", "x^2"), mathverify_grade("\\boxed{x^2}", "x^2")
    print(f"{'set':10} {'cases':>6} | {'still acc':>9} {'ans/s':>8} | {'math-verify acc':>15} {'ans/s':>8} | speed-up")
    for name, cases in sets.items():
        s_acc, s_rate = measure(grade, cases)
        m_acc, m_rate = measure(mathverify_grade, cases)
        print(f"{name:10} {len(cases):6d} | {s_acc:9.3f} {s_rate:8.0f} | {m_acc:15.3f} {m_rate:8.0f} | {s_rate / m_rate:6.1f}x")
    # batch scaling on the slow-path-heavy set
    slow = sets["math500"]
    for workers in (1, 2):
        grade_batch(["\\boxed{x}"] * 4, ["x"] * 4, workers=workers)  # start the pool
        t = time.perf_counter()
        grade_batch([c["response"] for c in slow], [c["gold"] for c in slow], workers=workers)
        print(f"grade_batch math500, {workers} worker(s): {len(slow) / (time.perf_counter() - t):.0f} ans/s")
        import still_cli.grading as g

        g._pool.stop()
        g._pool = None
    wrong = [c for c in sets["hand"] if grade(c["response"], c["gold"]) != c["expected"]]
    for c in wrong:
        print("still disagrees with the label:", json.dumps(c))


if __name__ == "__main__":
    main()
