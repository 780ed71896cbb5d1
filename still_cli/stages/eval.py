"""`still eval`: sample n responses per problem, grade them, report pass@1 / pass@k / maj@k.

Protocol (STILL-3, arXiv 2503.04548; difficulty-staged RL, arXiv 2504.00829): temperature 0.6,
top-p 0.95, long generation budget, pass@1 = mean correctness over n samples per problem. Our
defaults follow it, except `max_tokens`, which defaults to 32768 like the papers but should be
lowered for small models on CPU.

Reads: benchmarks by name or any problem file; or `--responses FILE` (someone else's outputs).
Writes to `--output`: `config.yaml` (resolved), `samples.jsonl` (every response with its extracted
answer and verdict; appended as it goes, so a killed run resumes without regenerating finished
samples), `results.json` (metrics per benchmark). The metrics table goes to stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import require
from ..sampling import BackendSettings, ToolSettings

log = logging.getLogger("still.eval")


@dataclass
class EvalConfig(BackendSettings, ToolSettings):
    """Evaluate a model (or re-score given responses) on math benchmarks."""

    benchmarks: list[str] = field(default_factory=list, metadata={
        "help": "Benchmark names (aime2024 aime2025 math500 amc2023 gsm8k) or problem files."})
    model: str | None = field(default=None, metadata={"help": "Model folder or hub id to sample from."})
    output: str = field(default="", metadata={"help": "Run folder for config.yaml, samples.jsonl, results.json."})
    backend: Literal["hf", "vllm", "openai", "scripted"] = field(default="hf", metadata={
        "help": "Sampler backend: hf (CPU/GPU), vllm (GPU), openai (a served model), scripted (the arith teacher)."})
    n: int = field(default=1, metadata={"help": "Samples per problem."})
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature; 0 = greedy."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    top_k: int = field(default=0, metadata={"help": "Sample from the k most likely tokens only; 0 = off."})
    max_tokens: int = field(default=32768, metadata={"help": "Max new tokens per response."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    pass_k: list[int] = field(default_factory=list, metadata={
        "help": "k values for unbiased pass@k (each <= n); empty = n when n > 1."})
    maj_k: list[int] = field(default_factory=list, metadata={
        "help": "k values for majority vote maj@k over the first k samples; empty = n when n > 1."})
    prompt_template: Literal["r1", "still2", "raw"] = field(default="r1", metadata={
        "help": "r1: '...put your final answer within \\boxed{}'; still2: begin/end-of-thought format; raw: problem only."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    prefill_think: bool = field(default=False, metadata={
        "help": "Append '<think>\\n' to the prompt (for templates that do not pre-fill it)."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N problems of each benchmark."})
    responses: str | None = field(default=None, metadata={
        "help": "Score this file of existing responses instead of sampling (no model needed)."})
    responses_field: str = field(default="responses", metadata={
        "help": "--responses: column with the response (a string or a list of strings)."})
    problem_field: str = field(default="problem", metadata={"help": "Column holding the problem text."})
    answer_field: str = field(default="answer", metadata={"help": "Column holding the gold answer."})
    id_field: str = field(default="id", metadata={"help": "Column holding the row id."})
    grade_timeout: float = field(default=5.0, metadata={"help": "Seconds allowed to grade one answer."})

    def __post_init__(self):
        require(bool(self.output), "eval needs an output folder; add -o runs/eval-NAME")
        require(self.top_k >= 0, f"top_k = {self.top_k} must be >= 0 (0 = off)")
        require(self.n >= 1, f"n = {self.n} must be >= 1")
        require(self.max_tokens >= 1, f"max_tokens = {self.max_tokens} must be >= 1")
        require(0 <= self.temperature, f"temperature = {self.temperature} must be >= 0")
        require(0 < self.top_p <= 1, f"top_p = {self.top_p} must be in (0, 1]")
        if self.responses is None:
            require(self.model is not None, "eval needs --model to sample from, or --responses FILE to re-score")
            require(bool(self.benchmarks), "eval needs at least one benchmark, e.g. `still eval aime2024 --model ...`")
            for k in self.pass_k + self.maj_k:
                require(1 <= k <= self.n, f"k = {k} in pass_k/maj_k must be between 1 and n = {self.n}; raise --n")
        else:
            require(not self.benchmarks, "give either benchmarks to sample or --responses to re-score, not both")

    def ks(self) -> tuple[list[int], list[int]]:
        default = [self.n] if self.n > 1 else []
        return (self.pass_k or default), (self.maj_k or default)


# Settings that change what a sample is; a resumed run must match them.
_SAMPLE_KEYS = ("model", "n", "temperature", "top_p", "top_k", "max_tokens", "seed", "prompt_template",
                "system_prompt", "prefill_think", "tools", "max_tool_calls")


def _check_resume(config: EvalConfig, out: Path) -> None:
    from ..config import refuse_changed_settings

    refuse_changed_settings(config, out / "config.yaml", out / "samples.jsonl", _SAMPLE_KEYS, f"{out} holds a run",
                            f"resuming would mix samples: use a new --output or remove {out}/samples.jsonl")


def _sample_row(bench: str, prob: dict[str, Any], idx: int, text: str, num_tokens: int, truncated: bool,
                extracted: str | None, correct: bool, calls: list[dict] | None = None) -> dict[str, Any]:
    row = {"benchmark": bench, "id": prob["id"], "sample_idx": idx, "gold": prob["answer"],
           "extracted": extracted, "correct": correct, "num_tokens": num_tokens, "truncated": truncated,
           "response": text}
    if calls is not None:
        row["tool_calls"] = len(calls)
        row["calls"] = calls
    for k in ("level", "subject"):
        if prob.get(k) is not None:
            row[k] = prob[k]
    return row


def _sample_benchmark(config: EvalConfig, sampler: Any, bench: str, appender: Any,
                      done: set[tuple[str, str, int]]) -> None:
    from rich.console import Console
    from rich.progress import Progress

    from ..data import read_problems
    from ..grading import extract_answer, match_batch
    from ..sampling import SamplingParams, build_prompt

    problems = read_problems(bench, problem_field=config.problem_field, answer_field=config.answer_field,
                             id_field=config.id_field)[: config.limit]
    todo = [p for p in problems if any((bench, p["id"], i) not in done for i in range(config.n))]
    if len(todo) < len(problems):
        log.info("%s: %d/%d problems already sampled, resuming", bench, len(problems) - len(todo), len(problems))
    params = SamplingParams(n=config.n, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                            max_tokens=config.max_tokens, seed=config.seed)
    per_call = max(1, config.batch_size // config.n)
    with Progress(console=Console(stderr=True), transient=True) as bar:  # stdout is for results
        task = bar.add_task(f"{bench}", total=len(todo))
        for start in range(0, len(todo), per_call):
            chunk = todo[start:start + per_call]
            prompts = [build_prompt(sampler, p["problem"], config.prompt_template, config.system_prompt,
                                    config.prefill_think) for p in chunk]
            # Seed from the chunk's first problem, so a rerun over the same remaining problems is
            # reproducible (a resumed run's chunks start elsewhere, so its draws differ from an
            # uninterrupted run's; finished samples are never redrawn).
            params.seed = config.seed + problems.index(chunk[0])
            if config.tools:
                from ..tir import TIRSettings, generate

                outs = generate(sampler, prompts, params, TIRSettings(
                    max_calls=config.max_tool_calls, timeout=config.tool_timeout,
                    max_output_chars=config.tool_output_chars))
            else:
                outs = sampler.generate(prompts, params)  # (len(chunk), n)
            flat = [(p, i, c) for p, cs in zip(chunk, outs) for i, c in enumerate(cs)
                    if (bench, p["id"], i) not in done]
            preds = [extract_answer(c.text, c.truncated) for _, _, c in flat]
            verdicts = match_batch([p["answer"] for p, _, _ in flat], preds, timeout=config.grade_timeout)
            # the chunk's samples in one write + fsync (an fsync per sample took ~0.6 ms here, ~0.7 s for
            # the demo's 1,200-sample held-out eval of 6-11 s)
            appender.write_many([_sample_row(bench, p, i, c.text, c.num_tokens, c.truncated, pred, ok,
                                             c.tool_calls if config.tools else None)
                                 for (p, i, c), pred, ok in zip(flat, preds, verdicts)])
            bar.advance(task, len(chunk))


def _score_responses(config: EvalConfig) -> list[dict[str, Any]]:
    from ..data import read_problems
    from ..errors import DataError
    from ..grading import extract_answer, match_batch

    rows = read_problems(config.responses, problem_field=config.problem_field, answer_field=config.answer_field,
                         id_field=config.id_field)
    samples, golds, preds = [], [], []
    for i, r in enumerate(rows, 1):
        resp = r.get(config.responses_field)
        if isinstance(resp, str):
            resp = [resp]
        if not isinstance(resp, list) or not resp or not all(isinstance(x, str) for x in resp):
            raise DataError(f"{config.responses} row {i}: {config.responses_field!r} must be a string or a "
                            f"non-empty list of strings; map the column with --responses-field")
        for j, text in enumerate(resp):
            pred = extract_answer(text)
            samples.append(_sample_row(Path(config.responses).stem, r, j, text, len(text.split()), False, pred, False))
            golds.append(r["answer"])
            preds.append(pred)
    for s, ok in zip(samples, match_batch(golds, preds, timeout=config.grade_timeout)):
        s["correct"] = ok
    return samples


def run(config: EvalConfig) -> dict[str, Any]:
    from ..config import write_resolved
    from ..data import JsonlAppender
    from ..metrics import summarize

    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    pass_k, maj_k = config.ks()
    if config.responses is not None:
        samples = _score_responses(config)
        write_resolved(config, out)
        with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        n_max = max(Counter(s["id"] for s in samples).values())
        default = [n_max] if n_max > 1 else []
        pass_k, maj_k = config.pass_k or default, config.maj_k or default
        results = {samples[0]["benchmark"]: summarize(samples, pass_k=pass_k, maj_k=maj_k)}
        results[samples[0]["benchmark"]]["length_unit"] = "words"
    else:
        _check_resume(config, out)
        from ..sampling import sampler_from_config

        write_resolved(config, out)
        sampler = sampler_from_config(config, config.model)
        with JsonlAppender(out / "samples.jsonl") as app:
            if app.repaired_bytes:
                log.warning("samples.jsonl ended in a partial row (%d bytes); cut it and resuming", app.repaired_bytes)
            done = {(s["benchmark"], s["id"], s["sample_idx"]) for s in app.existing}
            for bench in config.benchmarks:
                _sample_benchmark(config, sampler, bench, app, done)
        samples = [json.loads(line) for line in open(out / "samples.jsonl", encoding="utf-8")]
        results = {}
        for bench in config.benchmarks:
            ss = [s for s in samples if s["benchmark"] == bench]
            results[bench] = summarize(ss, pass_k=pass_k, maj_k=maj_k)
            results[bench]["length_unit"] = "tokens"
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def results_table(results: dict[str, Any]):
    from rich.table import Table

    metric_cols: list[str] = []
    for r in results.values():
        metric_cols += [k for k in r if (k.startswith("pass@") or k.startswith("maj@")) and k not in metric_cols]
    tools = any("tool_calls" in r for r in results.values())
    table = Table("benchmark", "problems", "n", *metric_cols, "mean len", "max len", "truncated", "no answer",
                  *(["tool calls", "tool errors"] if tools else []))
    for name, r in results.items():
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
        extra = [f"{r.get('tool_calls', 0):.2f}", pct(r.get("tool_errors"))] if tools else []
        table.add_row(name, str(r["problems"]), str(r["n_per_problem"]), *[pct(r.get(c)) for c in metric_cols],
                      f"{r['mean_length']:.0f}", str(r["max_length"]), pct(r["truncated"]), pct(r["no_answer"]), *extra)
    return table


def main(config: EvalConfig) -> None:
    from rich.console import Console

    results = run(config)
    console = Console(width=None if sys.stdout.isatty() else 160)  # stdout: the result
    console.print(results_table(results))
    for name, r in results.items():
        for g in ("by_level", "by_subject"):
            if g in r:
                cells = ", ".join(f"{k}: {100 * v['pass@1']:.1f}" for k, v in r[g].items())
                console.print(f"{name} pass@1 {g.replace('_', ' ')}: {cells}")
    Console(stderr=True).print(f"wrote {Path(config.output) / 'results.json'} and samples.jsonl")
