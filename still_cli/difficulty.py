"""Problem difficulty = pass rate of a model over several samples (arXiv 2504.00829, section 2).

Shared by `still explore` (which writes the difficulty table) and `still rl` (which reads it, or
estimates it on the fly with the current model, and builds curriculum levels from it).

Table rows (JSONL, one per problem): `{"id", "pass_rate", "num_samples", "num_correct",
"mean_length", "model"}` plus whatever the writer adds (explore adds `round`, `problem`, `answer`).
"""

from __future__ import annotations

from typing import Any, Iterable

from .errors import DataError


def pass_rate_row(pid: str, correct: list[bool], lengths: list[int], model: str) -> dict[str, Any]:
    n = len(correct)
    return {"id": pid, "pass_rate": sum(correct) / n if n else 0.0, "num_samples": n,
            "num_correct": int(sum(correct)), "mean_length": sum(lengths) / n if n else 0.0, "model": model}


def read_table(path: str) -> dict[str, dict[str, Any]]:
    """Difficulty table -> {problem id: row}. Rows need `id` and `pass_rate` in [0, 1]."""
    from .data import iter_rows

    table: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(iter_rows(path), 1):
        pr = r.get("pass_rate")
        if "id" not in r or not isinstance(pr, (int, float)) or not 0 <= pr <= 1:
            raise DataError(f"{path} row {i}: a difficulty row needs 'id' and 'pass_rate' in [0, 1] (got "
                            f"id={r.get('id')!r}, pass_rate={pr!r}); use the difficulty.jsonl that explore writes")
        table[str(r["id"])] = r
    if not table:
        raise DataError(f"difficulty table {path} is empty; run `still explore` to fill it")
    return table


def level_of(pass_rate: float, levels: dict[str, list[float]]) -> str | None:
    """The first level whose [low, high] bounds hold `pass_rate` (bounds inclusive), or None."""
    for name, (lo, hi) in levels.items():
        if lo <= pass_rate <= hi:
            return name
    return None


def informative(pass_rate: float, drop_always_solved: bool = True, drop_never_solved: bool = True) -> bool:
    """Problems solved always or never give every sample of a group the same reward: no gradient."""
    if drop_always_solved and pass_rate >= 1.0:
        return False
    if drop_never_solved and pass_rate <= 0.0:
        return False
    return True


def estimate(sampler: Any, problems: list[dict[str, Any]], *, n: int, max_tokens: int, temperature: float,
             top_p: float, template: str, system_prompt: str | None, prefill_think: bool, seed: int,
             model_name: str, batch_size: int = 32, timeout: float = 5.0) -> Iterable[dict[str, Any]]:
    """Sample `n` completions per problem and yield one difficulty row per problem, as they finish."""
    from .grading import grade_batch
    from .sampling import SamplingParams, render_prompt

    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    per_call = max(1, batch_size // n)
    for start in range(0, len(problems), per_call):
        chunk = problems[start:start + per_call]
        prompts = [render_prompt(sampler.tokenizer, p["problem"], template, system_prompt, prefill_think)
                   for p in chunk]
        params.seed = seed + start
        outs = sampler.generate(prompts, params)  # (len(chunk), n)
        for p, cs in zip(chunk, outs):
            ok = grade_batch([c.text for c in cs], [p["answer"]] * len(cs), truncated=[c.truncated for c in cs],
                             timeout=timeout)
            yield pass_rate_row(p["id"], ok, [c.num_tokens for c in cs], model_name)
