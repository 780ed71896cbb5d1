"""Benchmark decontamination by word n-gram overlap (the check open-r1 and most distillation sets use).

A training problem is dropped when the share of its word n-grams that also occur in some benchmark
problem exceeds `threshold` (0 = any shared n-gram). Text is lower-cased and split on word
characters, so LaTeX spacing and punctuation do not hide a copy. Problems shorter than n words are
compared as one whole gram. Written by hand: none of our libraries ships this check.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class BenchmarkIndex:
    """All n-grams of the named benchmarks' problems, each mapped to the benchmark it came from."""

    def __init__(self, benchmarks: list[str], n: int = 8):
        from .data import read_problems

        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}
        for b in benchmarks:
            for p in read_problems(b):
                for g in ngrams(p["problem"], n):
                    self.grams.setdefault(g, b)

    def match(self, problem: str, threshold: float = 0.0) -> str | None:
        """The benchmark `problem` overlaps beyond `threshold`, or None."""
        grams = ngrams(problem, self.n)
        if not grams:
            return None
        hits = Counter(self.grams[g] for g in grams if g in self.grams)
        if not hits:
            return None
        bench, count = hits.most_common(1)[0]
        return bench if count / len(grams) > threshold else None


def filter_problems(problems: list[dict], benchmarks: list[str], n: int = 8,
                    threshold: float = 0.0) -> tuple[list[dict], Counter]:
    """(kept problems, dropped count per benchmark)."""
    if not benchmarks:
        return problems, Counter()
    index = BenchmarkIndex(benchmarks, n)
    kept, dropped = [], Counter()
    for p in problems:
        b = index.match(p["problem"], threshold)
        if b is None:
            kept.append(p)
        else:
            dropped[b] += 1
    return kept, dropped
