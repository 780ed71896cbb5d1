"""Answer extraction and equivalence, shared by eval, explore, distill and the RL rewards.

    extract_answer(response) -> str | None     the final answer of a model's output
    answers_match(gold, pred) -> bool          mathematical equivalence
    grade(response, gold) -> bool              extract, then match
    grade_batch(responses, golds) -> list[bool]  the same over all cores, every answer time-bounded

Equivalence builds on Math-Verify (LaTeX parsing, sympy equivalence, intervals, sets, matrices,
equations). Written by hand here, because Math-Verify does not do it:
  * extraction policy: the answer after `</think>` only; unfinished thinking has no answer; the
    *last* answer-bearing span wins (an intermediate `\\boxed{}` does not), an unclosed `\\boxed{`
    (output cut off) yields no answer instead of an earlier one; STILL-2's solution blocks; GSM8K `####`;
  * multiple-choice letters ("(B)", "C. 42"), `1e-3`, `0.\\overline{3}`, which Math-Verify mis-parses;
  * a fast path for numbers (integers with commas / leading zeros, decimals, simple fractions,
    percents, scientific notation) on exact rationals, which never touches sympy;
  * bounds: Math-Verify's own timeouts use `signal.alarm`, which only works on the main thread. On the
    main thread we use them; elsewhere (and in `grade_batch`) the slow path runs in worker processes
    that are killed when an answer exceeds its time limit, so a call never hangs.
"""

from __future__ import annotations

import atexit
import os
import re
import threading
from fractions import Fraction
from functools import lru_cache

DEFAULT_TIMEOUT = 5.0  # seconds per answer, slow path only

# ---------------------------------------------------------------------------------------------
# extraction

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_BOT, _EOT = "<|begin_of_thought|>", "<|end_of_thought|>"
_BOS, _EOS = "<|begin_of_solution|>", "<|end_of_solution|>"
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE_RE = re.compile(r"\\boxed\s+([^\s{$][^\s$]*)")
_ANSWER_IS_RE = re.compile(
    r"(?:final\s+answer\s*(?:is|:)|the\s+answer\s+is|answer\s*:)\s*:?\s*(.+?)\s*(?:$|\n|(?<=[^\d\\])\.(?:\s|$))",
    re.IGNORECASE)
_GSM_RE = re.compile(r"####\s*([^\n]+)")


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at text[start] == '{', nested braces matched; None if unclosed."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            continue
        if c == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif c == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    return None


def _answer_region(response: str) -> str | None:
    """The part of the output that may hold the final answer, or None when thinking never finished."""
    text = response
    if _THINK_CLOSE in text:
        text = text.rsplit(_THINK_CLOSE, 1)[1]
    elif _THINK_OPEN in text:
        return None
    if _BOT in text and _EOT not in text:
        return None
    if _BOS in text:
        text = text.rsplit(_BOS, 1)[1].split(_EOS, 1)[0]
    elif _EOT in text:
        text = text.rsplit(_EOT, 1)[1]
    return text


def extract_answer(response: str, truncated: bool = False) -> str | None:
    """The final answer of a model's output, as a string, or None.

    `truncated=True` (the sampler hit max tokens) means no answer: the papers count an unfinished
    response as wrong, and an answer lifted from a cut-off output is usually an intermediate value.
    Among `\\boxed{}`, "The (final) answer is ...", "Final Answer: ...", and `#### N`, the one that
    ends *last* in the answer region wins. An unclosed `\\boxed{` at the end (output cut off) is no answer.
    """
    if truncated or not response:
        return None
    text = _answer_region(response)
    if text is None:
        return None
    best: tuple[int, str] | None = None

    def offer(pos: int, value: str | None) -> None:
        nonlocal best
        if value is not None and value.strip() and (best is None or pos >= best[0]):
            best = (pos, value.strip())

    for m in _BOXED_RE.finditer(text):
        inner = _braced(text, m.end() - 1)
        if inner is None:  # cut off inside the box: the real final answer is unknown
            if best is None or m.start() >= best[0]:
                best = (m.start(), "")
            continue
        offer(m.start(), inner)
    for m in _BOXED_BARE_RE.finditer(text):
        offer(m.start(), m.group(1))
    for m in _ANSWER_IS_RE.finditer(text):
        value = m.group(1)
        if "\\boxed" in value or "\\fbox" in value:
            continue  # the boxed span itself was offered above
        offer(m.start(1), value.strip().strip("$").rstrip(".").strip())
    for m in _GSM_RE.finditer(text):
        offer(m.start(1), m.group(1))
    if best is None or not best[1]:
        return None
    return best[1]


# ---------------------------------------------------------------------------------------------
# normalisation and the fast path

_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|textnormal|operatorname)\s*\{([^{}]*)\}")
_UNIT_WORDS = re.compile(
    r"\s*(?:units?|cm|m|km|mm|inches|inch|in|feet|foot|ft|meters?|miles?|degrees?|dollars?|cents?|"
    r"hours?|minutes?|seconds?|days?|years?|sq\s*units|square\s*units)\s*(?:\^\s*\{?[23]\}?)?$", re.IGNORECASE)
_MC_RE = re.compile(r"^\(?\s*([A-Ea-e])\s*\)?(?:\s*[.:)]\s*.*|\s+.*)?$", re.DOTALL)
_NUM_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_COMMA_INT_RE = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SCI_RE = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:[eE]([+-]?\d+)|\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?)$")
_FRAC_RE = re.compile(r"^([+-]?)\\[dt]?frac\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))$")
_SLASH_RE = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")
_REPEAT_RE = re.compile(r"^([+-]?)(\d*)\.(\d*)\\overline\s*\{?(\d+)\}?$")
_SPACING_RE = re.compile(r"(?<!\\)\\[,;! ]")
_VAR_EQ_RE = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?!.*=)")


def normalize(ans: str) -> str:
    """Strip presentation that never changes the value: `$`, `\\left`/`\\right`, spacing commands,
    `\\text{}` wrappers, trailing units and periods, degrees. Used before both paths."""
    s = ans.strip()
    s = s.strip("$").strip()
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2].strip()
    if s.startswith("\\[") and s.endswith("\\]"):
        s = s[2:-2].strip()
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = _SPACING_RE.sub(lambda m: " " if m[0].endswith(" ") else "", s)  # not the `\\` of a matrix row
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s).replace("°", "")
    prev = None
    while prev != s:
        prev = s
        s = _TEXT_RE.sub(r"\1", s).strip()
    s = _UNIT_WORDS.sub("", s).strip() if re.search(r"\d", s) else s
    return s.rstrip(".").strip()


def to_number(s: str) -> tuple[Fraction, bool] | None:
    """Exact value of a plain numeric answer, and whether it was a percent; None if not plain numeric."""
    s = _VAR_EQ_RE.sub("", s).strip()
    percent = False
    if s.endswith("\\%") or s.endswith("%"):
        percent, s = True, s[:-2 if s.endswith("\\%") else -1].strip()
    s = s.replace("{,}", ",").replace(" ", "") if not _FRAC_RE.match(s) else s
    if _COMMA_INT_RE.match(s):
        s = s.replace(",", "")
    try:
        if _NUM_RE.match(s):
            return Fraction(s), percent
        if m := _SLASH_RE.match(s):
            return (Fraction(int(m[1]), int(m[2])), percent) if int(m[2]) != 0 else None
        if m := _FRAC_RE.match(s):
            num, den = int(m[2] or m[3]), int(m[4] or m[5])
            return (Fraction(-num if m[1] == "-" else num, den), percent) if den != 0 else None
        if m := _SCI_RE.match(s):
            return Fraction(m[1]) * Fraction(10) ** int(m[2] or m[3]), percent
        if m := _REPEAT_RE.match(s):
            sign, whole, fixed, rep = m[1], m[2] or "0", m[3], m[4]
            # x = whole.fixed(rep)(rep)...  ->  exact rational
            value = Fraction(int(whole)) + (Fraction(int(fixed or "0"), 10 ** len(fixed)) +
                                            Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed)))
            return (-value if sign == "-" else value), percent
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _numbers_match(g: tuple[Fraction, bool], p: tuple[Fraction, bool]) -> bool:
    (gv, gp), (pv, pp) = g, p
    if gv == pv:
        return True  # "50%" vs "50", "50%" vs "50\%"
    if gp != pp:  # "50%" vs "0.5"
        return (gv / 100 if gp else gv) == (pv / 100 if pp else pv)
    return False


def _mc_letter(s: str) -> str | None:
    m = _MC_RE.match(s.strip())
    return m[1].upper() if m else None


def _fast_match(gold: str, pred: str) -> bool | None:
    """A verdict without sympy, or None when the slow path must decide."""
    g, p = normalize(gold), normalize(pred)
    if not p:
        return False
    if g == p:
        return True
    g_letter = _mc_letter(g) if len(g) <= 3 else None
    if g_letter:  # gold is a multiple-choice letter: compare letters only
        return _mc_letter(p) == g_letter
    gn, pn = to_number(g), to_number(p)
    if gn is not None and pn is not None:
        return _numbers_match(gn, pn)
    if gn is not None and re.fullmatch(r"[+-]?[\d.,\s]+", p.replace("\\%", "").replace("%", "")):
        return False  # gold numeric, pred plainly numeric but unparseable as equal (e.g. "1,2")
    return None


# ---------------------------------------------------------------------------------------------
# the slow path: Math-Verify


@lru_cache(maxsize=4096)
def _parse(text: str, timeout: int | None):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(f"${text}$", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                 parsing_timeout=timeout)


def _slow_match(gold: str, pred: str, timeout: int | None) -> bool:
    from math_verify import verify

    g, p = _parse(normalize(gold), timeout), _parse(normalize(pred), timeout)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=timeout))


def _slow_match_worker(gold: str, pred: str) -> bool:
    """Runs in a worker process; the pool's per-task timeout bounds it (no signals needed)."""
    import logging

    # Math-Verify warns on every call that its own timeout is off: here the pool's timeout is the bound
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        return _slow_match(gold, pred, None)
    except Exception:
        return False


_pool = None
_pool_lock = threading.Lock()


def _get_pool(workers: int | None = None):
    global _pool
    with _pool_lock:
        if _pool is None or not _pool.active:
            from pebble import ProcessPool

            _pool = ProcessPool(max_workers=workers or os.cpu_count() or 1)
            atexit.register(_pool.stop)
        return _pool


def answers_match(gold: str, pred: str | None, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """True when `pred` is mathematically equal to `gold`. Never raises; bounded by `timeout` seconds."""
    if pred is None or gold is None:
        return False
    verdict = _fast_match(gold, pred)
    if verdict is not None:
        return verdict
    if threading.current_thread() is threading.main_thread():
        try:
            return _slow_match(gold, pred, max(1, int(timeout)))
        except Exception:
            return False
    future = _get_pool().schedule(_slow_match_worker, args=(gold, pred), timeout=timeout)
    try:
        return bool(future.result())
    except Exception:  # TimeoutError (worker killed), crashed worker
        return False


def grade(response: str, gold: str, truncated: bool = False, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Extract the final answer of `response` and compare it with `gold`."""
    return answers_match(gold, extract_answer(response, truncated), timeout)


def match_batch(golds: list[str], preds: list[str | None], *, timeout: float = DEFAULT_TIMEOUT,
                workers: int | None = None) -> list[bool]:
    """`answers_match` over many pairs: fast path in this process, the rest spread over worker
    processes (all cores by default), each answer killed after `timeout` seconds."""
    out: list[bool | None] = []
    slow: list[int] = []
    for i, (g, p) in enumerate(zip(golds, preds, strict=True)):
        v = False if p is None or g is None else _fast_match(g, p)
        out.append(v)
        if v is None:
            slow.append(i)
    if slow:
        if len(slow) <= 2 and threading.current_thread() is threading.main_thread():
            for i in slow:  # not worth the IPC
                out[i] = answers_match(golds[i], preds[i], timeout)
        else:
            pool = _get_pool(workers)
            futures = [pool.schedule(_slow_match_worker, args=(golds[i], preds[i]), timeout=timeout) for i in slow]
            for i, fut in zip(slow, futures):
                try:
                    out[i] = bool(fut.result())
                except Exception:
                    out[i] = False
    return [bool(v) for v in out]


def grade_batch(responses: list[str], golds: list[str], *, truncated: list[bool] | None = None,
                timeout: float = DEFAULT_TIMEOUT, workers: int | None = None) -> list[bool]:
    truncated = truncated or [False] * len(responses)
    preds = [extract_answer(r, t) for r, t in zip(responses, truncated, strict=True)]
    return match_batch(golds, preds, timeout=timeout, workers=workers)
