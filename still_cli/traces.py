"""Reasoning traces as training rows: thought formats, SFT rows, selection, preference pairs, merge + dedup.

Shared by `still distill` and `still explore` (stages never import each other).

Thought formats (the assistant turn of an SFT row):
  * `think`:  `<think>\\n{thought}\\n</think>\\n\\n{solution}` (DeepSeek-R1, QwQ, STILL-3);
  * `still2`: `<|begin_of_thought|>{thought}<|end_of_thought|>\\n\\n<|begin_of_solution|>{solution}<|end_of_solution|>`
              (STILL-2, arXiv 2412.09413).
The thought and the solution text are kept verbatim; only the tags change.
"""

from __future__ import annotations

import re
from typing import Any

from .sampling import PROMPT_TEMPLATES

_THINK = re.compile(r"^\s*<think>(.*?)</think>(.*)$", re.DOTALL)
_STILL2 = re.compile(r"^\s*<\|begin_of_thought\|>(.*?)<\|end_of_thought\|>\s*(?:<\|begin_of_solution\|>(.*?)"
                     r"(?:<\|end_of_solution\|>)?)?\s*$", re.DOTALL)
FORMATS = ("think", "still2")


def split_thought(response: str, prompt_prefilled_think: bool = False) -> tuple[str, str] | None:
    """(thought, solution) of a response in either format, or None when it has no thought section.
    With `prompt_prefilled_think` the opening `<think>` sat in the prompt, not in the response."""
    text = ("<think>" + response) if prompt_prefilled_think and "<think>" not in response else response
    m = _THINK.match(text)
    if m:
        return m.group(1).strip("\n"), m.group(2).strip()
    m = _STILL2.match(text)
    if m:
        return m.group(1).strip(), (m.group(2) or "").strip()
    return None


def to_format(response: str, fmt: str, prompt_prefilled_think: bool = False) -> str:
    """The response with its thought in `fmt`'s tags; a response without a thought section is kept as is."""
    parts = split_thought(response, prompt_prefilled_think)
    if parts is None:
        return response
    thought, solution = parts
    if fmt == "still2":
        return (f"<|begin_of_thought|>\n\n{thought}\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n{solution}\n\n"
                f"<|end_of_solution|>")
    return f"<think>\n{thought}\n</think>\n\n{solution}"


def prompt_messages(problem: str, template: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The conversation a training row starts with: the same wording the model was sampled with."""
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": PROMPT_TEMPLATES[template].format(problem=problem)}]


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    w = text.split()
    return {tuple(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def select(candidates: list[dict[str, Any]], k: int | None, order: str) -> list[dict[str, Any]]:
    """At most k of `candidates` (dicts with `response`, `num_tokens`, `sample_idx`).
    shortest: fewest tokens first. diverse: shortest first, then each next pick is the one least
    similar (max Jaccard over word 3-grams) to those already picked. first: sampling order."""
    if order == "first":
        ranked = sorted(candidates, key=lambda c: c["sample_idx"])
    else:
        ranked = sorted(candidates, key=lambda c: (c["num_tokens"], c["sample_idx"]))
    if order == "diverse" and ranked:
        grams = {id(c): _shingles(c["response"]) for c in ranked}
        picked, rest = [ranked[0]], ranked[1:]
        while rest and (k is None or len(picked) < k):
            def closeness(c: dict[str, Any]) -> float:
                g = grams[id(c)]
                return max(len(g & grams[id(p)]) / max(1, len(g | grams[id(p)])) for p in picked)
            best = min(rest, key=lambda c: (closeness(c), c["num_tokens"], c["sample_idx"]))
            picked.append(best)
            rest.remove(best)
        ranked = picked
    return ranked if k is None else ranked[:k]


def pairs(correct: list[dict[str, Any]], wrong: list[dict[str, Any]], k: int | None) -> list[tuple[dict, dict]]:
    """Up to k (chosen, rejected) pairs: shortest correct answers against wrong ones (answered-but-wrong
    before unfinished), each sample used at most once."""
    c = sorted(correct, key=lambda x: (x["num_tokens"], x["sample_idx"]))
    w = sorted(wrong, key=lambda x: (x["extracted"] is None, x["sample_idx"]))
    out = list(zip(c, w))
    return out if k is None else out[:k]


def normalize_text(text: str) -> str:
    return " ".join(text.lower().split())


def row_key(row: dict[str, Any]) -> tuple[str, str]:
    """Dedup key of a training row: (normalised problem, normalised assistant text)."""
    msgs = row.get("messages") or []
    problem = row.get("problem") or next((m["content"] for m in msgs if m.get("role") == "user"), "")
    answer = next((m["content"] for m in reversed(msgs) if m.get("role") == "assistant"), row.get("completion", ""))
    return normalize_text(str(problem)), normalize_text(str(answer))


def merge_dedup(previous: list[dict[str, Any]], new: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """previous + the new rows whose (problem, text) is not already there; (merged, duplicates dropped)."""
    seen, out, dup = set(), [], 0
    for r in [*previous, *new]:
        key = row_key(r)
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        out.append(r)
    return out, dup
