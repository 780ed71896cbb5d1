"""`still hint-engineer`: CoRT's Hint-Engineering (arXiv 2506.09820) as a data-synthesis stage.

Takes reasoning traces (rows with `messages`, e.g. distill's output) or bare problems, inserts code-use
hints (still_cli/hints.py: `prompt` after `<think>`, `python` where a long manual calculation starts,
`trust` where the model re-checks a python result, STILL-3-TOOL's `reflect` cut at a reflection word),
continues generation from each hinted prefix with a model and the sandbox (TIR rollouts), grades the
result and keeps the verified ones as SFT rows. Positions come from the heuristics, or from
`--positions FILE` (JSONL `{"id", "kind", "position"}` — character offsets into the assistant text, as
CoRT placed them by hand). Bare problems get the `prompt` hint only.

Writes `-o FILE.jsonl` (or `-` for stdout): one row per kept trajectory — `messages` (prompt + hinted,
continued, executed response), `id`, `problem`, `answer`, `hint` (kind), `hint_position`, `tool_calls`,
`num_tokens`, `model`, `sampling`; beside it `FILE.progress.jsonl` (one line per finished input row, so
a rerun after a kill resumes) and `FILE.config.yaml`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import require
from ..sampling import BackendSettings

log = logging.getLogger("still.hint_engineer")


@dataclass
class HintEngineerConfig(BackendSettings):
    """Insert code-use hints into traces, continue them with a model + sandbox, keep the verified ones."""

    model: str = field(default="", metadata={"help": "Model that continues the hinted traces (folder, hub id, served name, arith-tools)."})
    data: str = field(default="", metadata={"help": "Traces (rows with messages) or problems: file, pool name, or -."})
    output: str = field(default="", metadata={"help": "Output JSONL of SFT rows, or - for stdout."})
    backend: Literal["hf", "vllm", "openai", "scripted"] = field(default="hf", metadata={"help": "Sampler backend."})
    hints: list[str] = field(default_factory=lambda: ["prompt", "python", "trust", "reflect"], metadata={
        "help": "Hint kinds to try per trace: prompt, python, trust, reflect."})
    positions: str | None = field(default=None, metadata={
        "help": "JSONL of {id, kind, position} placing hints by hand instead of the heuristics."})
    long_digits: int = field(default=3, metadata={"help": "python hint: a number this long marks a long calculation."})
    long_lines: int = field(default=3, metadata={"help": "python hint: this many computing lines in a row do too."})
    n: int = field(default=4, metadata={"help": "Continuations per hinted prefix."})
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    top_k: int = field(default=0, metadata={"help": "Sample from the k most likely tokens only; 0 = off."})
    max_tokens: int = field(default=8192, metadata={"help": "Max new tokens per continuation (model + executor output)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    prompt_template: Literal["r1", "still2", "raw"] = field(default="r1", metadata={"help": "Prompt wording for bare problems."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    keep_per_hint: int | None = field(default=1, metadata={"help": "Verified continuations kept per hinted prefix."})
    max_tool_calls: int = field(default=15, metadata={"help": "Code calls per continuation (CoRT eval: 15)."})
    tool_timeout: float = field(default=30.0, metadata={"help": "Seconds per code call."})
    tool_output_chars: int = field(default=800, metadata={"help": "Characters of output shown to the model."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N rows."})
    problem_field: str = field(default="problem", metadata={"help": "Column holding the problem text."})
    answer_field: str = field(default="answer", metadata={"help": "Column holding the gold answer."})
    id_field: str = field(default="id", metadata={"help": "Column holding the row id."})
    grade_timeout: float = field(default=5.0, metadata={"help": "Seconds to grade one answer."})
    batch_size: int = field(default=64, metadata={
        "help": "Traces continued per generate call (their code cells run in parallel, one per core)."})

    def __post_init__(self):
        from ..hints import KINDS

        require(bool(self.model), "hint-engineer needs --model to continue the hinted traces")
        require(self.top_k >= 0, f"top_k = {self.top_k} must be >= 0 (0 = off)")
        require(bool(self.data), "hint-engineer needs --data traces or problems, e.g. --data distilled.jsonl")
        require(bool(self.output), "hint-engineer needs an output; add -o hinted.jsonl (or -o - for stdout)")
        require(self.batch_size >= 1, f"--batch-size {self.batch_size} must be >= 1")
        for k in self.hints:
            require(k in KINDS, f"hint {k!r} is unknown; use some of {', '.join(KINDS)}")


def _hints_for(c: HintEngineerConfig, row: dict[str, Any], manual: dict[str, list[dict]]) -> list[tuple[str, Any]]:
    """(kind, Hint) pairs for one input row."""
    from ..hints import FINDERS, PROMPT_HINT, PYTHON_HINT, REFLECT_HINT, TRUST_HINT, Hint, find_long_calc

    response = row.get("response") or ""
    if not response:  # a bare problem: the prompt hint opens the thought
        return [("prompt", Hint("prompt", 0, "<think>\n" + PROMPT_HINT))] if "prompt" in c.hints else []
    texts = {"prompt": PROMPT_HINT, "python": PYTHON_HINT, "trust": TRUST_HINT, "reflect": REFLECT_HINT}
    if row["id"] in manual:
        return [(m["kind"], Hint(m["kind"], int(m["position"]), m.get("text") or texts[m["kind"]]))
                for m in manual[row["id"]]]
    out = []
    for kind in c.hints:
        h = (find_long_calc(response, c.long_digits, c.long_lines) if kind == "python" else FINDERS[kind](response))
        if h is not None:
            out.append((kind, h))
    return out


def _inputs(c: HintEngineerConfig) -> list[dict[str, Any]]:
    """Rows -> {id, problem, answer, prompt_messages, response}: traces keep their conversation."""
    from ..data import read_rows
    from ..errors import DataError
    from ..traces import prompt_messages

    out = []
    for i, r in enumerate(read_rows(c.data)[: c.limit], 1):
        msgs = r.get("messages")
        problem = r.get(c.problem_field)
        answer = r.get(c.answer_field)
        if answer is None or (problem is None and not msgs):
            raise DataError(f"{c.data} row {i}: needs {c.answer_field!r} and either {c.problem_field!r} or messages "
                            f"(has {', '.join(r)}); map them with --problem-field / --answer-field")
        if msgs:
            prompt = [m for m in msgs if m.get("role") != "assistant"]
            response = next((m["content"] for m in reversed(msgs) if m.get("role") == "assistant"), "")
            problem = problem or prompt[-1]["content"]
        else:
            prompt, response = prompt_messages(problem, c.prompt_template, c.system_prompt), ""
        rid = str(r.get(c.id_field) or f"row-{i}")
        out.append({"id": f"{rid}#{r.get('sample_idx', 0)}" if msgs else rid, "problem": problem,
                    "answer": str(answer), "prompt": prompt, "response": response})
    if not out:
        raise DataError(f"{c.data} has no rows; nothing to hint")
    return out


def _render(sampler: Any, prompt_msgs: list[dict[str, str]]) -> Any:
    if getattr(sampler, "chat_prompts", False):
        return prompt_msgs
    tok = getattr(sampler, "tokenizer", None)
    if tok is not None and getattr(tok, "chat_template", None):
        return tok.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in prompt_msgs) + "\n"


def run(c: HintEngineerConfig) -> dict[str, Any]:
    import contextlib
    from dataclasses import replace

    from ..config import write_resolved
    from ..data import JsonlAppender, StdoutWriter, read_rows, sidecar
    from ..grading import grade_batch
    from ..hints import hinted_prefix
    from ..sampling import SamplingParams, sampler_from_config
    from ..tir import TIRSettings, generate
    from ..traces import select

    rows = _inputs(c)
    manual: dict[str, list[dict]] = {}
    if c.positions:
        for m in read_rows(c.positions):
            manual.setdefault(str(m["id"]), []).append(m)
    settings = TIRSettings(max_calls=c.max_tool_calls, timeout=c.tool_timeout, max_output_chars=c.tool_output_chars)
    stats: Counter = Counter()
    with contextlib.ExitStack() as stack:
        if c.output == "-":
            out, ledger, done = StdoutWriter(), None, set()
        else:
            write_resolved(c, Path(c.output).parent, sidecar(c.output, ".config.yaml").name)
            ledger = stack.enter_context(JsonlAppender(sidecar(c.output, ".progress.jsonl")))
            done = {r["id"] for r in ledger.existing}
            out = stack.enter_context(JsonlAppender(c.output))
            have = {r["source_id"] for r in out.existing}
            done |= have  # rows are written before the ledger line; a row set on disk is finished
        sampler = sampler_from_config(c, c.model)
        params = SamplingParams(n=c.n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                                max_tokens=c.max_tokens, seed=c.seed)
        todo = []
        for row in rows:
            if row["id"] in done:
                stats["resumed"] += 1
            else:
                todo.append(row)
        for start in range(0, len(todo), c.batch_size):
            batch = [(row, _hints_for(c, row, manual)) for row in todo[start:start + c.batch_size]]
            # every hinted prefix of the batch in one generate call
            prompts, prefixes = [], []
            for row, hints in batch:
                prompt = _render(sampler, row["prompt"]) if hints else None
                for _, h in hints:
                    prompts.append(prompt)
                    prefixes.append(hinted_prefix(row["response"], h) if row["response"] else h.text)
            outs = iter(generate(sampler, prompts, replace(params, seed=c.seed + start), settings, prefixes=prefixes)
                        if prompts else [])
            # the batch's rows in one write, then its ledger lines in another (two fsyncs a batch instead of
            # two a row: 3,200 fsyncs took 2 s of a 15 s run with the scripted teacher)
            batch_rows: list[dict[str, Any]] = []
            batch_ledger: list[dict[str, Any]] = []
            for row, hints in batch:
                kept_rows: list[dict[str, Any]] = []
                for kind, h in hints:
                    comps = next(outs)
                    ok = grade_batch([x.text for x in comps], [row["answer"]] * len(comps),
                                     truncated=[x.truncated for x in comps], timeout=c.grade_timeout)
                    stats.update(hinted=1, samples=len(comps), correct=sum(ok))
                    good = [{"sample_idx": j, "response": x.text, "num_tokens": x.num_tokens, "calls": x.tool_calls}
                            for j, (x, v) in enumerate(zip(comps, ok)) if v and x.tool_calls]
                    for g in select(good, c.keep_per_hint, "shortest"):
                        kept_rows.append({
                            "id": f"{row['id']}:{kind}", "source_id": row["id"], "problem": row["problem"],
                            "answer": row["answer"],
                            "messages": row["prompt"] + [{"role": "assistant", "content": g["response"]}],
                            "hint": kind, "hint_position": h.position, "tool_calls": len(g["calls"]),
                            "num_tokens": g["num_tokens"], "model": c.model,
                            "sampling": {"backend": c.backend, "temperature": c.temperature, "top_p": c.top_p,
                                         "top_k": c.top_k, "max_tokens": c.max_tokens, "seed": c.seed}})
                batch_rows += kept_rows
                batch_ledger.append({"id": row["id"], "hints": [k for k, _ in hints], "kept": len(kept_rows)})
                stats.update(rows=1, kept=len(kept_rows), no_hint=0 if hints else 1)
            out.write_many(batch_rows)
            if ledger is not None:
                ledger.write_many(batch_ledger)
    log.info("hint-engineer: %d rows (%d resumed), %d hinted prefixes, %d/%d continuations verified with code, "
             "%d rows kept, %d rows without a hint position", stats["rows"], stats["resumed"], stats["hinted"],
             stats["correct"], stats["samples"], stats["kept"], stats["no_hint"])
    return dict(stats)


def main(c: HintEngineerConfig) -> None:
    run(c)
    if c.output != "-":
        print(c.output)
