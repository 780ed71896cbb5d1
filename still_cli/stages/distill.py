"""`still distill`: sample long chains of thought from a teacher, keep the verified ones (rejection sampling).

STILL-2 (arXiv 2412.09413) imitate data: a teacher writes long-form thought, only responses whose final
answer is verified correct are kept, and they become SFT rows. Teachers: an OpenAI-compatible server
or fleet (`--backend openai --base-urls ...`), vLLM or transformers locally, or the scripted arithmetic
teacher (`--backend scripted --teacher arith`) for CPU runs.

Reads problem rows (`--data`: file, benchmark/pool name, or `-`). Writes SFT-ready rows (`-o FILE.jsonl`,
or `-o -` for stdout): `messages` (the prompt the teacher saw + its response in `response_format`),
`id`, `problem`, `answer`, `teacher`, `sample_idx`, `num_tokens`, `pass_rate`, `num_correct`,
`num_samples`, `num_kept`, `sampling` (backend and sampling settings).

Never loses work: rows are appended per problem (one write + fsync); `FILE.progress.jsonl` records each
finished problem (also those with nothing kept), so a rerun of the same command after a kill samples
only unfinished problems; a problem whose rows were cut mid-write is removed and redone.
`FILE.config.yaml` holds the resolved config; a rerun with different sampling settings is refused.
With `-o -` there is no resume (nothing is written to disk).
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import require
from ..sampling import BackendSettings, ToolSettings

log = logging.getLogger("still.distill")


@dataclass
class DistillConfig(BackendSettings, ToolSettings):
    """Sample long chains of thought from a teacher; keep the verified ones as SFT rows."""

    teacher: str = field(default="", metadata={"help": "Teacher model: served model name (openai), folder or hub id (hf/vllm), or arith (scripted)."})
    data: str = field(default="", metadata={"help": "Problem rows: file, benchmark / pool name (still data list), or - for stdin."})
    output: str = field(default="", metadata={"help": "Output JSONL of SFT rows, or - for stdout."})
    backend: Literal["openai", "vllm", "hf", "scripted"] = field(default="openai", metadata={"help": "Sampler backend."})
    n: int = field(default=4, metadata={"help": "Samples per problem."})
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature; 0 = greedy."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    top_k: int = field(default=0, metadata={"help": "Sample from the k most likely tokens only; 0 = off."})
    max_tokens: int = field(default=32768, metadata={"help": "Max new tokens per response."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    prompt_template: Literal["r1", "still2", "raw"] = field(default="r1", metadata={"help": "Prompt wording (as in eval)."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    prefill_think: bool = field(default=False, metadata={"help": "hf/vllm: append '<think>\\n' to the prompt."})
    response_format: Literal["think", "still2"] = field(default="think", metadata={
        "help": "Thought tags in the kept rows: think (<think>...</think>) or still2 (begin/end_of_thought)."})
    keep_per_problem: int | None = field(default=None, metadata={"help": "Keep at most k correct responses per problem; None = all."})
    keep_order: Literal["shortest", "diverse", "first"] = field(default="shortest", metadata={
        "help": "Which correct responses to keep first when capped."})
    max_response_tokens: int | None = field(default=None, metadata={"help": "Drop correct responses longer than this."})
    decontaminate: list[str] = field(default_factory=list, metadata={
        "help": "Benchmarks to decontaminate against, e.g. aime2024,math500."})
    decontaminate_ngram: int = field(default=8, metadata={"help": "Word n-gram size for decontamination."})
    decontaminate_threshold: float = field(default=0.0, metadata={
        "help": "Drop a problem when more than this share of its n-grams occur in a benchmark (0 = any)."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N problems."})
    problem_field: str = field(default="problem", metadata={"help": "Column holding the problem text."})
    answer_field: str = field(default="answer", metadata={"help": "Column holding the gold answer."})
    id_field: str = field(default="id", metadata={"help": "Column holding the row id."})
    grade_timeout: float = field(default=5.0, metadata={"help": "Seconds to grade one answer."})

    def __post_init__(self):
        require(bool(self.teacher), "distill needs --teacher (a served model name, a model folder, or arith)")
        require(self.top_k >= 0, f"top_k = {self.top_k} must be >= 0 (0 = off)")
        require(bool(self.data), "distill needs --data problems, e.g. --data math_train")
        require(bool(self.output), "distill needs an output; add -o distilled.jsonl (or -o - for stdout)")
        require(self.n >= 1, f"n = {self.n} must be >= 1")
        require(self.keep_per_problem is None or self.keep_per_problem >= 1,
                f"keep_per_problem = {self.keep_per_problem} must be >= 1 (or null for all)")
        require(self.concurrency >= 1, f"concurrency = {self.concurrency} must be >= 1")
        require(0 <= self.decontaminate_threshold < 1, f"decontaminate_threshold = {self.decontaminate_threshold} must be in [0, 1)")


_SAMPLE_KEYS = ("teacher", "backend", "n", "temperature", "top_p", "top_k", "max_tokens", "seed", "prompt_template",
                "system_prompt", "prefill_think", "tools", "max_tool_calls", "response_format", "keep_per_problem", "keep_order",
                "max_response_tokens")


def _check_same_settings(c: DistillConfig) -> None:
    from ..config import refuse_changed_settings
    from ..data import sidecar

    refuse_changed_settings(c, sidecar(c.output, ".config.yaml"), c.output, _SAMPLE_KEYS, f"{c.output} was written",
                            f"resuming would mix rows: use a new -o, or delete {c.output} and its sidecars")


def _reconcile(out_path: Path, ledger: Any) -> set[str]:
    """Problems already finished. Rows of a problem whose ledger line is missing are kept when all
    `num_kept` of them made it to disk (the ledger line is then added), else removed to be redone."""
    from ..data import JsonlAppender, rewrite_rows

    done = {r["id"] for r in ledger.existing}
    if not out_path.exists():
        return done
    with JsonlAppender(out_path) as existing:  # cuts a torn last line
        rows = existing.existing
        if existing.repaired_bytes:
            log.warning("%s ended in a partial row (%d bytes); cut it", out_path, existing.repaired_bytes)
    by_id = Counter(r["id"] for r in rows)
    partial = set()
    for pid, count in by_id.items():
        if pid in done:
            continue
        kept = next(r.get("num_kept") for r in rows if r["id"] == pid)
        if count == kept:
            ledger.write({"id": pid, "num_kept": kept, "reconciled": True})
            done.add(pid)
        else:
            partial.add(pid)
    if partial:
        log.warning("removing %d rows of %d problem(s) cut off mid-write; they will be redone",
                    sum(by_id[p] for p in partial), len(partial))
        rewrite_rows(out_path, [r for r in rows if r["id"] not in partial])
    return done


def _rows_for(c: DistillConfig, p: dict[str, Any], completions: list[Any], verdicts: list[bool]) -> list[dict[str, Any]]:
    from ..traces import prompt_messages, select, to_format

    correct, seen = [], set()
    for j, (comp, ok) in enumerate(zip(completions, verdicts)):
        key = " ".join(comp.text.split())
        if ok and key not in seen:  # the same text twice is one trajectory, not two
            seen.add(key)
            correct.append({"sample_idx": j, "response": comp.text, "num_tokens": comp.num_tokens,
                            "tool_calls": comp.tool_calls})
    if c.max_response_tokens is not None:
        correct = [x for x in correct if x["num_tokens"] <= c.max_response_tokens]
    kept = select(correct, c.keep_per_problem, c.keep_order)
    n_ok = sum(verdicts)
    sampling = {"backend": c.backend, "temperature": c.temperature, "top_p": c.top_p, "top_k": c.top_k,
                "max_tokens": c.max_tokens, "seed": c.seed, "prompt_template": c.prompt_template}
    prefilled = c.prefill_think and c.backend in ("hf", "vllm")
    return [{"id": p["id"], "problem": p["problem"], "answer": p["answer"],
             "messages": prompt_messages(p["problem"], c.prompt_template, c.system_prompt)
             + [{"role": "assistant", "content": to_format(x["response"], c.response_format, prefilled)}],
             "teacher": c.teacher, "sample_idx": x["sample_idx"], "num_tokens": x["num_tokens"],
             "pass_rate": n_ok / len(verdicts), "num_correct": n_ok, "num_samples": len(verdicts),
             "num_kept": len(kept), "sampling": sampling,
             **({"tool_calls": len(x["tool_calls"])} if x["tool_calls"] is not None else {})} for x in kept]


def run(c: DistillConfig) -> dict[str, Any]:
    import contextlib

    from rich.console import Console
    from rich.progress import Progress

    from ..config import write_resolved
    from ..data import JsonlAppender, StdoutWriter, read_problems, sidecar
    from ..decontam import filter_problems
    from ..errors import DataError
    from ..grading import grade_batch
    from ..sampling import SamplingParams, build_prompt, sampler_from_config
    from ..tir import stage_rollouts

    problems = read_problems(c.data, problem_field=c.problem_field, answer_field=c.answer_field,
                             id_field=c.id_field)[: c.limit]
    if not problems:
        raise DataError(f"{c.data} has no problems; nothing to distill")
    problems, dropped = filter_problems(problems, c.decontaminate, c.decontaminate_ngram, c.decontaminate_threshold)
    if c.decontaminate:
        log.info("decontamination against %s: dropped %d problem(s) %s", ",".join(c.decontaminate),
                 sum(dropped.values()), dict(dropped))
    to_stdout = c.output == "-"
    with contextlib.ExitStack() as stack:
        if to_stdout:
            out, ledger, done = StdoutWriter(), None, set()
        else:
            _check_same_settings(c)
            write_resolved(c, Path(c.output).parent, sidecar(c.output, ".config.yaml").name)
            ledger = stack.enter_context(JsonlAppender(sidecar(c.output, ".progress.jsonl")))
            done = _reconcile(Path(c.output), ledger)
            out = stack.enter_context(JsonlAppender(c.output))
        todo = [p for p in problems if p["id"] not in done]
        if done:
            log.info("resuming: %d of %d problems already finished", len(problems) - len(todo), len(problems))
        sampler = sampler_from_config(c, c.teacher)
        prompts = [build_prompt(sampler, p["problem"], c.prompt_template, c.system_prompt, c.prefill_think)
                   for p in todo]
        params = SamplingParams(n=c.n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                                max_tokens=c.max_tokens, seed=c.seed)
        stats = Counter()
        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("distill", total=len(todo))
            position = {p["id"]: k for k, p in enumerate(problems)}
            seeds = [c.seed + position[p["id"]] * c.n for p in todo]  # tied to the problem, not the run
            for i, comps in stage_rollouts(c, sampler, prompts, params, seeds):
                p = todo[i]
                verdicts = grade_batch([x.text for x in comps], [p["answer"]] * len(comps),
                                       truncated=[x.truncated for x in comps], timeout=c.grade_timeout)
                rows = _rows_for(c, p, comps, verdicts)
                out.write_many(rows)  # rows first, then the ledger line: see _reconcile
                if ledger is not None:
                    ledger.write({"id": p["id"], "num_samples": len(comps), "num_correct": sum(verdicts),
                                  "num_kept": len(rows)})
                stats.update(problems=1, samples=len(comps), correct=sum(verdicts), kept=len(rows))
                bar.advance(task)
    summary = {"problems": len(problems), "resumed": len(done), "decontaminated": dict(dropped), **stats}
    log.info(
        f"distill: {stats['problems']} problems sampled ({len(done)} already done, {sum(dropped.values())} dropped by "
        f"decontamination), {stats['samples']} samples, {stats['correct']} correct, {stats['kept']} rows kept"
        + ("" if to_stdout else f" -> {c.output}"))
    return summary


def main(c: DistillConfig) -> None:
    run(c)
    if c.output != "-":
        print(c.output)
    sys.stdout.flush()
