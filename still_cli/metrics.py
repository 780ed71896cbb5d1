"""Pure metric functions over graded samples; eval and the reports share them.

A *sample* is a dict with at least `id`, `sample_idx`, `correct` (bool), `extracted` (str | None),
`num_tokens` (int) and `truncated` (bool); problem fields such as `level` / `subject` ride along.
"""

from __future__ import annotations

from collections import defaultdict
from math import comb
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for n samples of which c correct."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def answer_key(extracted: str | None) -> str | None:
    """Voting key: numbers by exact value (so `0.5` and `\\frac12` vote together), else normalised text."""
    if extracted is None:
        return None
    from .grading import normalize, to_number

    s = normalize(extracted)
    num = to_number(s)
    if num is not None:
        return f"num:{num[0]}{'%' if num[1] else ''}"
    return "txt:" + s.replace(" ", "")


def maj_at_k(samples: list[dict[str, Any]], k: int) -> float:
    """1.0 when the most frequent answer among the first k samples (by sample_idx) is correct.

    Ties go to the answer seen first; samples with no answer do not vote; no votes -> 0.
    """
    first = sorted(samples, key=lambda s: s["sample_idx"])[:k]
    votes: dict[str, list[dict[str, Any]]] = {}
    for s in first:
        key = answer_key(s.get("extracted"))
        if key is not None:
            votes.setdefault(key, []).append(s)
    if not votes:
        return 0.0
    winner = max(votes.values(), key=len)  # max keeps the first of equal counts: dicts keep insertion order
    return 1.0 if winner[0]["correct"] else 0.0


def per_problem_accuracy(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Each problem's mean correctness over its samples (pass@1 of one problem), by id."""
    by_id: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        by_id[s["id"]].append(bool(s["correct"]))
    return {pid: sum(c) / len(c) for pid, c in by_id.items()}


def summarize(samples: list[dict[str, Any]], *, pass_k: list[int] = (), maj_k: list[int] = (),
              group_by: tuple[str, ...] = ("level", "subject")) -> dict[str, Any]:
    """Metrics of one benchmark: pass@1 = mean correctness over the n samples of each problem, then
    over problems (the papers' protocol); pass@k, maj@k; lengths; truncation; accuracy per group."""
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        by_id[s["id"]].append(s)
    if not by_id:
        return {"problems": 0, "samples": 0}
    per_problem = per_problem_accuracy(samples)
    lengths = [s["num_tokens"] for s in samples]
    out: dict[str, Any] = {
        "problems": len(by_id),
        "samples": len(samples),
        "n_per_problem": min(len(ss) for ss in by_id.values()),
        "pass@1": sum(per_problem.values()) / len(per_problem),
    }
    for k in pass_k:
        vals = [pass_at_k(len(ss), sum(s["correct"] for s in ss), k) for ss in by_id.values() if len(ss) >= k]
        out[f"pass@{k}"] = sum(vals) / len(vals) if vals else None
    for k in maj_k:
        vals = [maj_at_k(ss, k) for ss in by_id.values() if len(ss) >= k]
        out[f"maj@{k}"] = sum(vals) / len(vals) if vals else None
    out["mean_length"] = sum(lengths) / len(lengths)
    out["max_length"] = max(lengths)
    out["truncated"] = sum(bool(s.get("truncated")) for s in samples) / len(samples)
    out["no_answer"] = sum(s.get("extracted") is None for s in samples) / len(samples)
    if any("tool_calls" in s for s in samples):  # TIR rollouts
        out["tool_calls"] = sum(s.get("tool_calls", 0) for s in samples) / len(samples)
        calls = [c for s in samples for c in s.get("calls", [])]
        out["tool_errors"] = sum(c.get("error") is not None for c in calls) / len(calls) if calls else 0.0
    for g in group_by:
        groups: dict[str, list[float]] = defaultdict(list)
        for pid, ss in by_id.items():
            v = ss[0].get(g)
            if v is not None:
                groups[str(v)].append(per_problem[pid])
        if groups:
            out[f"by_{g}"] = {k: {"pass@1": sum(v) / len(v), "problems": len(v)}
                              for k, v in sorted(groups.items())}
    return out
