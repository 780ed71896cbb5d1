"""`still explore`: many rollouts per problem from the current model; keep what is verified.

STILL-2 (arXiv 2412.09413) explore + self-improve: sample many rollouts, keep the trajectories whose
final answer is verified correct, add them to the training set, train again, repeat. The per-problem
pass rates are the difficulty table the RL curriculum reads (arXiv 2504.00829), and correct/incorrect
responses to the same problem become preference pairs (STILL-2 found preference training on the
thought effective).

Reads problem rows (`--data`: file, pool name, or `-`). Writes to the `-o DIR` folder:
  samples.jsonl     every rollout, one line per problem (the unit of resume): response, extracted
                    answer, verdict, tokens, truncation; plus the model and round that produced it
  difficulty.jsonl  per problem: pass_rate, num_samples, num_correct, mean_length, model, round
  sft.jsonl         kept correct trajectories (at most `keep_per_problem` per problem, `keep_order`)
  pairs.jsonl       `{prompt, chosen, rejected}` preference pairs (conversational), for `sft --method dpo`
  merged.jsonl      with `--merge-with FILE`: FILE's rows + the new ones, deduplicated by
                    (normalised problem, normalised response): the next round's SFT set.
                    `--merge-scope explored` keeps only FILE's rows of the problems explored in this
                    run, matched by id (by problem text for rows without one): the teacher's and the
                    model's own solutions of the same problems;
                    `--no-merge-dedup` keeps the new rows that repeat one of FILE's, so a trace the
                    model reproduced counts twice
  config.yaml, summary.json
`-o -` writes no folder and prints the training rows (merged ones with --merge-with) on stdout.

Resume: rerun the same command after a kill (SIGKILL included); problems already in samples.jsonl are
not sampled again, a torn last line is cut, and the derived files are rebuilt from samples.jsonl.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import require
from ..sampling import BackendSettings, ToolSettings

log = logging.getLogger("still.explore")


@dataclass
class ExploreConfig(BackendSettings, ToolSettings):
    """Many rollouts per problem: difficulty table, verified trajectories, preference pairs, self-improve merge."""

    model: str = field(default="", metadata={"help": "Model folder or hub id (hf/vllm), or served model name (openai)."})
    data: str = field(default="", metadata={"help": "Problem rows: file, pool name (still data list), or - for stdin."})
    output: str = field(default="", metadata={"help": "Run folder (samples, difficulty, sft, pairs, merged), or - for stdout."})
    backend: Literal["hf", "vllm", "openai", "scripted"] = field(default="hf", metadata={"help": "Sampler backend."})
    n: int = field(default=16, metadata={"help": "Rollouts per problem."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (exploration wants > eval's 0.6)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    top_k: int = field(default=0, metadata={"help": "Sample from the k most likely tokens only; 0 = off."})
    max_tokens: int = field(default=32768, metadata={"help": "Max new tokens per rollout."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    prompt_template: Literal["r1", "still2", "raw"] = field(default="r1", metadata={"help": "Prompt wording (as in eval)."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    prefill_think: bool = field(default=False, metadata={"help": "hf/vllm: append '<think>\\n' to the prompt."})
    response_format: Literal["think", "still2"] = field(default="think", metadata={"help": "Thought tags in kept rows."})
    keep_per_problem: int | None = field(default=4, metadata={"help": "Correct trajectories kept per problem; None = all."})
    keep_order: Literal["shortest", "diverse", "first"] = field(default="diverse", metadata={
        "help": "Which correct trajectories first: shortest, diverse (least similar), first (sampling order)."})
    max_pairs_per_problem: int | None = field(default=2, metadata={"help": "Preference pairs per problem; None = all."})
    merge_with: str | None = field(default=None, metadata={"help": "Previous training rows to merge the new ones into (dedup)."})
    merge_scope: Literal["all", "explored"] = field(default="all", metadata={
        "help": "Rows of --merge-with to keep: all, or explored (only those of this run's problems: by id, else text)."})
    merge_dedup: bool = field(default=True, metadata={
        "help": "Drop new rows that repeat a --merge-with row; --no-merge-dedup keeps them (a reproduced trace counts twice)."})
    round: int | None = field(default=None, metadata={"help": "Self-improve round recorded in outputs; None = previous round + 1."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N problems."})
    problem_field: str = field(default="problem", metadata={"help": "Column holding the problem text."})
    answer_field: str = field(default="answer", metadata={"help": "Column holding the gold answer."})
    id_field: str = field(default="id", metadata={"help": "Column holding the row id."})
    grade_timeout: float = field(default=5.0, metadata={"help": "Seconds to grade one answer."})

    def __post_init__(self):
        require(bool(self.model), "explore needs --model (a folder, hub id, or served model name)")
        require(self.top_k >= 0, f"top_k = {self.top_k} must be >= 0 (0 = off)")
        require(bool(self.data), "explore needs --data problems, e.g. --data math_train")
        require(bool(self.output), "explore needs an output folder; add -o runs/explore (or -o - for stdout)")
        require(self.n >= 2, f"n = {self.n}: exploring needs >= 2 rollouts per problem")
        require(self.keep_per_problem is None or self.keep_per_problem >= 1, "keep_per_problem must be >= 1 or null")
        require(bool(self.merge_with) or (self.merge_scope == "all" and self.merge_dedup),
                "--merge-scope / --no-merge-dedup shape the --merge-with merge; add --merge-with FILE or drop them")


_SAMPLE_KEYS = ("model", "backend", "n", "temperature", "top_p", "top_k", "max_tokens", "seed", "prompt_template",
                "system_prompt", "prefill_think", "tools", "max_tool_calls")


def _check_resume(c: ExploreConfig, out: Path) -> None:
    from ..config import refuse_changed_settings

    refuse_changed_settings(c, out / "config.yaml", out / "samples.jsonl", _SAMPLE_KEYS, f"{out} holds rollouts",
                            f"resuming would mix them: use a new -o, or remove {out}/samples.jsonl")


def _previous(c: ExploreConfig) -> tuple[list[dict[str, Any]], int]:
    """(rows of --merge-with, this run's round)."""
    from ..data import read_rows

    prev = read_rows(c.merge_with) if c.merge_with else []
    if c.round is not None:
        return prev, c.round
    return prev, max((int(r.get("round", 0)) for r in prev), default=0) + 1


def _derive(c: ExploreConfig, records: list[dict[str, Any]], round_: int) -> dict[str, list[dict[str, Any]]]:
    """samples.jsonl records -> difficulty rows, SFT rows, preference pairs."""
    from ..difficulty import pass_rate_row
    from ..traces import pairs, prompt_messages, select, to_format

    prefilled = c.prefill_think and c.backend in ("hf", "vllm")
    diff, sft, prefs = [], [], []
    for rec in records:
        ss = rec["samples"]
        row = pass_rate_row(rec["id"], [s["correct"] for s in ss], [s["num_tokens"] for s in ss], rec["model"])
        diff.append({**row, "round": rec["round"], "problem": rec["problem"], "answer": rec["answer"],
                     **({"level": rec["level"]} if "level" in rec else {})})
        correct, seen = [], set()
        for s in ss:
            key = " ".join(s["response"].split())
            if s["correct"] and key not in seen:
                seen.add(key)
                correct.append(s)
        wrong = [s for s in ss if not s["correct"]]
        prompt = prompt_messages(rec["problem"], c.prompt_template, c.system_prompt)
        meta = {"model": rec["model"], "round": rec["round"], "pass_rate": row["pass_rate"]}
        for s in select(correct, c.keep_per_problem, c.keep_order):
            sft.append({"id": rec["id"], "problem": rec["problem"], "answer": rec["answer"],
                        "messages": prompt + [{"role": "assistant",
                                               "content": to_format(s["response"], c.response_format, prefilled)}],
                        "sample_idx": s["sample_idx"], "num_tokens": s["num_tokens"],
                        **({"tool_calls": len(s["tool_calls"])} if "tool_calls" in s else {}), **meta})
        for ch, rj in pairs(correct, wrong, c.max_pairs_per_problem):
            prefs.append({"id": rec["id"], "prompt": prompt,
                          "chosen": [{"role": "assistant", "content": to_format(ch["response"], c.response_format, prefilled)}],
                          "rejected": [{"role": "assistant", "content": to_format(rj["response"], c.response_format, prefilled)}],
                          "chosen_idx": ch["sample_idx"], "rejected_idx": rj["sample_idx"], **meta})
    return {"difficulty": diff, "sft": sft, "pairs": prefs}


def _sample(c: ExploreConfig, todo: list[dict[str, Any]], positions: dict[str, int], round_: int, sink: Any) -> None:
    from rich.console import Console
    from rich.progress import Progress

    from ..grading import extract_answer, match_batch
    from ..sampling import SamplingParams, build_prompt, sampler_from_config
    from ..tir import stage_rollouts

    sampler = sampler_from_config(c, c.model)
    prompts = [build_prompt(sampler, p["problem"], c.prompt_template, c.system_prompt, c.prefill_think) for p in todo]
    params = SamplingParams(n=c.n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                            max_tokens=c.max_tokens, seed=c.seed)
    seeds = [c.seed + positions[p["id"]] * c.n for p in todo]
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("explore", total=len(todo))
        for i, comps in stage_rollouts(c, sampler, prompts, params, seeds):
            p = todo[i]
            preds = [extract_answer(x.text, x.truncated) for x in comps]
            ok = match_batch([p["answer"]] * len(comps), preds, timeout=c.grade_timeout)
            rec = {"id": p["id"], "problem": p["problem"], "answer": p["answer"], "model": c.model, "round": round_,
                   "samples": [{"sample_idx": j, "response": x.text, "extracted": pred, "correct": v,
                                "num_tokens": x.num_tokens, "truncated": x.truncated,
                                **({"tool_calls": x.tool_calls} if x.tool_calls is not None else {})}
                               for j, (x, pred, v) in enumerate(zip(comps, preds, ok))]}
            if p.get("level") is not None:
                rec["level"] = p["level"]
            sink(rec)  # one line per problem: a kill leaves whole problems or a torn tail
            bar.advance(task)


def run(c: ExploreConfig) -> dict[str, Any]:
    from ..config import write_resolved
    from ..data import JsonlAppender, read_problems, rewrite_rows, write_rows
    from ..errors import DataError
    from ..traces import merge_dedup, normalize_text, row_key

    problems = read_problems(c.data, problem_field=c.problem_field, answer_field=c.answer_field,
                             id_field=c.id_field)[: c.limit]
    if not problems:
        raise DataError(f"{c.data} has no problems; nothing to explore")
    previous, round_ = _previous(c)
    positions = {p["id"]: k for k, p in enumerate(problems)}
    if c.output == "-":
        records: list[dict[str, Any]] = []
        _sample(c, problems, positions, round_, records.append)
        resumed = 0
    else:
        out = Path(c.output)
        _check_resume(c, out)
        write_resolved(c, out)
        with JsonlAppender(out / "samples.jsonl") as app:
            if app.repaired_bytes:
                log.warning("samples.jsonl ended in a partial row (%d bytes); cut it", app.repaired_bytes)
            have = {r["id"] for r in app.existing}
            todo = [p for p in problems if p["id"] not in have]
            resumed = len(problems) - len(todo)
            if resumed:
                log.info("resuming: %d of %d problems already explored", resumed, len(problems))
            _sample(c, todo, positions, round_, app.write)
        wanted = set(positions)
        records = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines() if x.strip()]
        records = [r for r in records if r["id"] in wanted]
    derived = _derive(c, records, round_)
    if c.merge_scope == "explored":  # the previous rows of this run's problems: by id, by problem text without one
        ids, texts = set(positions), {normalize_text(p["problem"]) for p in problems}
        previous = [r for r in previous if (r["id"] in ids if "id" in r else row_key(r)[0] in texts)]
    if not c.merge_with:
        merged, dups = derived["sft"], 0
    elif c.merge_dedup:
        merged, dups = merge_dedup(previous, derived["sft"])
    else:
        merged, dups = [*previous, *derived["sft"]], 0
    if c.output == "-":
        write_rows(merged, "-")
    else:
        for name in ("difficulty", "sft", "pairs"):
            rewrite_rows(out / f"{name}.jsonl", derived[name])
        if c.merge_with:
            rewrite_rows(out / "merged.jsonl", merged)
    rates = [d["pass_rate"] for d in derived["difficulty"]]
    summary = {"model": c.model, "round": round_, "problems": len(records), "resumed": resumed,
               "samples": sum(len(r["samples"]) for r in records),
               "mean_pass_rate": sum(rates) / len(rates) if rates else 0.0,
               "solved_never": sum(r == 0 for r in rates), "solved_always": sum(r == 1 for r in rates),
               "sft_rows": len(derived["sft"]), "pairs": len(derived["pairs"]),
               "merged_rows": len(merged) if c.merge_with else None,
               "merged_previous_rows": len(previous) if c.merge_with else None, "duplicates_dropped": dups}
    if c.output != "-":
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("explore round %d: %d problems (%d resumed), mean pass rate %.3f (never %d, always %d), %d sft rows, "
             "%d pairs%s", round_, summary["problems"], resumed, summary["mean_pass_rate"], summary["solved_never"],
             summary["solved_always"], summary["sft_rows"], summary["pairs"],
             f", merged {len(merged)} rows ({len(previous)} previous, {dups} duplicates dropped)" if c.merge_with else "")
    return summary


def main(c: ExploreConfig) -> None:
    run(c)
    if c.output != "-":
        print(c.output)
