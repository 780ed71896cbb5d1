"""Reward functions for `still rl`: pure functions `(completions, answer, **kw) -> list[float | None]`.

Each takes the batch TRL's GRPOTrainer hands a reward function (one entry per completion, groups of
`num_generations` completions of the same prompt) and returns one reward per completion; `None`
means "no opinion" (TRL turns it into NaN and skips it). They share the grading module with
`still eval`, so a completion is rewarded exactly when eval would count it correct.

Keyword arguments used (all lists, one entry per completion, as TRL passes them):
  * `answer`    the gold answer column of the dataset;
  * `truncated` True when the completion hit the length limit (no answer then, as in eval);
  * `prompts`   the rendered prompts (the format reward looks at whether `<think>` was pre-filled).

Reward shapes follow the papers:
  * `accuracy`     1 correct / 0 otherwise (DeepSeek-R1, difficulty-staged RL arXiv 2504.00829, CoRT).
  * `signed`       STILL-3 (arXiv 2503.04548): +1 correct, -1 wrong, -2 no `\\boxed{}` at all.
  * `strict_accuracy` STILL-3 zero-RL: 1 only when correct and the output is exactly
                   `<think>...</think><answer>...</answer>`, else 0.
  * `format`       1 when the output is `<think> ... </think>` followed by a non-empty answer, else 0;
                   correct whether or not the chat template pre-filled `<think>` into the prompt (a
                   frequent open-r1 complaint: format reward stuck at 0 with R1-style templates).
  * `length`       Kimi k1.5-style length shaping within a group (shorter correct answers earn more).
                   STILL-3 reports length rewards are *hacked* (length grows, accuracy falls): off by
                   default, documented as hackable; use a small weight.
  * `code_use`     CoRT (arXiv 2506.09820): -0.1 when a completion ran code and every code output was an
                   error or empty, else 0 (needs `tool_calls` from TIR rollouts).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .grading import DEFAULT_TIMEOUT, extract_answer, grade_batch, match_batch

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _flags(kw: dict[str, Any], name: str, n: int) -> list[Any]:
    v = kw.get(name)
    return list(v) if v is not None else [None] * n


def accuracy(completions: list[str], answer: list[str], *, timeout: float = DEFAULT_TIMEOUT, **kw: Any) -> list[float]:
    """1.0 when the extracted final answer equals the gold answer (grading module), else 0.0."""
    truncated = [bool(t) for t in _flags(kw, "truncated", len(completions))]
    return [1.0 if ok else 0.0 for ok in grade_batch(completions, [str(a) for a in answer], truncated=truncated,
                                                     timeout=timeout)]


def signed(completions: list[str], answer: list[str], *, timeout: float = DEFAULT_TIMEOUT, **kw: Any) -> list[float]:
    """STILL-3: +1 correct, -1 wrong, -2 when the completion has no `\\boxed{}` (net -1 vs wrong)."""
    acc = accuracy(completions, answer, timeout=timeout, **kw)
    return [1.0 if a else (-1.0 if _BOXED.search(c) else -2.0) for c, a in zip(completions, acc, strict=True)]


def format_ok(completion: str, prompt: str | None) -> bool:
    """`<think> reasoning </think> answer`, where the opening tag may sit at the end of the prompt."""
    prefilled = prompt is not None and prompt.rstrip().endswith(_THINK_OPEN)
    text = completion if prefilled else completion.lstrip()
    if not prefilled:
        if not text.startswith(_THINK_OPEN):
            return False
        text = text[len(_THINK_OPEN):]
    if text.count(_THINK_CLOSE) != 1 or _THINK_OPEN in text:
        return False
    thought, answer = text.split(_THINK_CLOSE)
    return bool(thought.strip()) and bool(answer.strip())


def format_reward(completions: list[str], **kw: Any) -> list[float]:
    """1.0 for a well-formed `<think>...</think>answer` completion, else 0.0 (pre-filled `<think>` aware)."""
    prompts = _flags(kw, "prompts", len(completions))
    return [1.0 if format_ok(c, p) else 0.0 for c, p in zip(completions, prompts, strict=True)]


_ANSWER_TAG = re.compile(r"^\s*<answer>(.*?)</answer>\s*$", re.DOTALL)


def strict_accuracy(completions: list[str], answer: list[str], *, timeout: float = DEFAULT_TIMEOUT,
                    **kw: Any) -> list[float]:
    """STILL-3 zero-RL: 1.0 only when the output is exactly `<think>...</think><answer>...</answer>`
    (opening `<think>` possibly pre-filled) and the answer is correct, else 0.0."""
    prompts = _flags(kw, "prompts", len(completions))
    truncated = [bool(t) for t in _flags(kw, "truncated", len(completions))]
    preds: list[str | None] = []
    for c, p, t in zip(completions, prompts, truncated, strict=True):
        m = _ANSWER_TAG.match(c.rsplit(_THINK_CLOSE, 1)[-1]) if format_ok(c, p) and not t else None
        inner = m.group(1).strip() if m else ""
        preds.append((extract_answer(inner) or inner) if inner else None)
    return [1.0 if ok else 0.0 for ok in match_batch([str(a) for a in answer], preds, timeout=timeout)]


def length(completions: list[str], answer: list[str], *, timeout: float = DEFAULT_TIMEOUT, **kw: Any) -> list[float]:
    """Kimi k1.5 length penalty within each group (same prompt): lam = 0.5 - (len - min) / (max - min);
    correct -> lam, wrong -> min(0, lam). Lengths in tokens when `completion_ids` is given, else chars.
    Hackable (STILL-3): keep its weight small next to accuracy."""
    ids = kw.get("completion_ids")
    lens = [len(x) for x in ids] if ids is not None else [len(c) for c in completions]
    acc = accuracy(completions, answer, timeout=timeout, **kw)
    prompts = _flags(kw, "prompts", len(completions))
    groups: dict[Any, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p if p is not None else i, []).append(i)
    out = [0.0] * len(completions)
    for idx in groups.values():
        lo, hi = min(lens[i] for i in idx), max(lens[i] for i in idx)
        for i in idx:
            lam = 0.0 if hi == lo else 0.5 - (lens[i] - lo) / (hi - lo)
            out[i] = lam if acc[i] else min(0.0, lam)
    return out


def code_use(completions: list[str], **kw: Any) -> list[float | None]:
    """CoRT: -0.1 when the completion called code and every call's output was an error or empty, else 0.
    `tool_calls` (one list of {"output", "error"} per completion) comes from TIR rollouts."""
    calls = _flags(kw, "tool_calls", len(completions))
    out: list[float | None] = []
    for cs in calls:
        if not cs:
            out.append(0.0)
        else:
            useless = all(c.get("error") or not str(c.get("output", "")).strip() for c in cs)
            out.append(-0.1 if useless else 0.0)
    return out


REWARDS: dict[str, Callable[..., list[Any]]] = {
    "accuracy": accuracy,
    "signed": signed,
    "strict_accuracy": strict_accuracy,
    "format": format_reward,
    "length": length,
    "code_use": code_use,
}
