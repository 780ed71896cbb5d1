"""Where to put code-use hints in a reasoning trace (CoRT Hint-Engineering, arXiv 2506.09820;
STILL-3-TOOL, arXiv 2503.04548). Pure functions over text; `still hint-engineer` uses them.

Hints (CoRT's wording):
  * `prompt`  right after `<think>`: "Okay, let's try to solve this problem step by step using multiple
              python code calls."
  * `python`  where a long manual calculation starts: "It looks tedious, and we can use python code to
              simplify the reasoning." followed by an opened ```python fence.
  * `trust`   where the model starts re-checking a result python computed: "We don't need to doubt the
              accuracy of python calculations."
  * `reflect` STILL-3-TOOL: cut at a reflection word ("Wait", "But", "Alternatively", "Hmm") and append a
              code invitation: "Wait, let me use python to check this.\\n```python\\n".

Detection heuristics (CoRT placed hints by hand on 30 problems and found automatic placement imprecise;
these are ours, documented so users can judge them, and `--positions FILE` overrides them):
  * long calculation: the first line of the thought that computes (has "=" and an arithmetic operator
    between numbers) and either has a number with >= `long_digits` digits, or starts a run of >=
    `long_lines` computing lines;
  * re-checking python: the first reflection phrase ("wait", "let me check", "let me verify",
    "double-check", "verify") after a ```output block;
  * reflection: the first reflection word at the start of a sentence after at least one line of thought.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROMPT_HINT = "Okay, let's try to solve this problem step by step using multiple python code calls.\n"
PYTHON_HINT = "It looks tedious, and we can use python code to simplify the reasoning.\n```python\n"
TRUST_HINT = "We don't need to doubt the accuracy of python calculations.\n"
REFLECT_HINT = "Wait, let me use python to check this.\n```python\n"
KINDS = ("prompt", "python", "trust", "reflect")

_CALC = re.compile(r"\d\s*[-+*/×÷^]\s*\(?\s*\d.*=|=\s*.*\d\s*[-+*/×÷^]\s*\d")
_NUM = re.compile(r"\d+")
_RECHECK = re.compile(r"\b(wait|let me (?:double-)?check|let me verify|double-check|verify)\b", re.IGNORECASE)
_REFLECT = re.compile(r"(?:(?<=\n)|(?<=[.!?]\s))(Wait|But|Alternatively|Hmm)\b")


@dataclass
class Hint:
    kind: str
    position: int   # character offset in the response where the trace is cut
    text: str       # what is inserted there; generation continues after it


def _thought_start(response: str) -> int | None:
    i = response.find("<think>")
    return None if i < 0 else i + len("<think>") + (1 if response[i + 7:i + 8] == "\n" else 0)


def find_prompt(response: str) -> Hint | None:
    start = _thought_start(response)
    return None if start is None else Hint("prompt", start, PROMPT_HINT)


def find_long_calc(response: str, long_digits: int = 3, long_lines: int = 3) -> Hint | None:
    start = _thought_start(response)
    if start is None:
        return None
    end = response.find("</think>", start)
    body = response[start:end if end >= 0 else len(response)]
    offsets, pos = [], start
    for line in body.splitlines(keepends=True):
        offsets.append((pos, line))
        pos += len(line)
    calc = [bool(_CALC.search(line)) for _, line in offsets]
    for k, (off, line) in enumerate(offsets):
        if not calc[k]:
            continue
        big = any(len(n) >= long_digits for n in _NUM.findall(line))
        run = all(calc[k:k + long_lines]) and k + long_lines <= len(calc)
        if big or run:
            return Hint("python", off, PYTHON_HINT)
    return None


def find_recheck(response: str) -> Hint | None:
    i = response.find("```output")
    if i < 0:
        return None
    close = response.find("```", i + 9)
    m = _RECHECK.search(response, close + 3 if close >= 0 else i)
    return None if m is None else Hint("trust", m.start(), TRUST_HINT)


def find_reflection(response: str) -> Hint | None:
    start = _thought_start(response)
    if start is None:
        return None
    first_line = response.find("\n", start)
    m = _REFLECT.search(response, first_line + 1 if first_line >= 0 else start)
    return None if m is None else Hint("reflect", m.start(), REFLECT_HINT)


FINDERS = {"prompt": find_prompt, "python": find_long_calc, "trust": find_recheck, "reflect": find_reflection}


def hinted_prefix(response: str, hint: Hint) -> str:
    """The trace up to the hint position, then the hint: what generation continues from."""
    return response[: hint.position] + hint.text
