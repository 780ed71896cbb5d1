"""Tool-integrated reasoning rollouts over any Sampler: the model writes Python, the sandbox runs it.

Protocol (CoRT arXiv 2506.09820; STILL-3-TOOL arXiv 2503.04548): the model writes
```python
...
```
generation stops at the closing fence; the code runs in the rollout's sandbox `Session` (later cells
see earlier cells' variables); "```output\\n{output}\\n```\\n" is appended and generation resumes.
At most `max_calls` calls (CoRT: 15 at eval, 12 in RL) and `max_tokens` tokens in all (model +
executor output); once the call budget is spent, the next code block gets the output "You have run
out of code calls; continue reasoning without code." instead of running. Every call's code, output,
error and time are recorded in `Completion.tool_calls`.

Works with every backend: `hf` keeps the stop string in its text; OpenAI-compatible servers strip
it, so a completion that ends inside an open ```python block with finish "stop" is taken as stopped
at the fence and the fence is put back. With token ids (hf), `Completion.token_ids` is the whole
rollout and `tool_mask` marks executor-output tokens 0, for RL (TRL's `env_mask`).
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from .sampling import Completion, SamplingParams

FENCE_STOP = "```\n"
_OPEN = re.compile(r"```python[^\n]*\n")
OUT_OF_CALLS = "You have run out of code calls; continue reasoning without code."
OUTPUT_OPEN = "```output\n"
# one executor output block as output_block() writes it (sft takes these out of the loss)
OUTPUT_BLOCK = re.compile(r"```output\n.*?\n```\n?", re.DOTALL)


def output_block(shown: str) -> str:
    """The text appended after a code block: the executor's output, fenced as ```output."""
    return f"{OUTPUT_OPEN}{shown}\n```\n"


@dataclass
class TIRSettings:
    max_calls: int = 15            # CoRT: 15 at eval, 12 in RL
    timeout: float = 30.0          # CoRT: 30 s at eval, 5 s in RL
    max_output_chars: int = 800    # CoRT: 800 (STILL-3-TOOL: 400)
    memory_mb: int = 1024
    # code cells of one round run at once, each in its own rollout's session (0 = one per CPU core);
    # a session is a separate process, so threads here only wait on it
    parallel: int = 0


def _last(matches: Iterator[re.Match[str]]) -> re.Match[str] | None:
    """The last of an iterator of matches, or None."""
    tail = deque(matches, maxlen=1)
    return tail[0] if tail else None


def open_code(text: str) -> str | None:
    """The code of a ```python block that is open at the end of `text` (no closing fence yet)."""
    m = _last(_OPEN.finditer(text))
    if m is None:
        return None
    body = text[m.end():]
    return None if "```" in body else body


def closed_code(text: str) -> str | None:
    """The code of the last ```python block when `text` ends with its closing fence, else None."""
    stripped = text.rstrip()
    if not stripped.endswith("```"):
        return None
    m = _last(_OPEN.finditer(stripped))
    if m is None:
        return None
    body = stripped[m.end():-3]
    if "```" in body:  # the fence closed something else (an output block, a plain block)
        return None
    return body


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "\n...\n" + text[-half:]


def generate(sampler: Any, prompts: list[Any], params: SamplingParams, settings: TIRSettings,
             prefixes: list[str] | None = None) -> list[list[Completion]]:
    """`params.n` TIR rollouts per prompt, shape (len(prompts), n). Prompts are rendered strings
    (hf / vllm / completions endpoint) or chat messages (chat endpoint; the rollout so far is sent as
    a trailing assistant message to continue). `prefixes[i]` starts prompt i's response (a hinted
    trace, possibly ending inside an opened ```python block); the returned text includes it, the
    token counts and ids cover only what was generated and executed after it."""
    from .sandbox import Limits, Session

    tok = getattr(sampler, "tokenizer", None)
    states = []
    for i, p in enumerate(prompts):
        for _ in range(params.n):
            states.append({"prompt": p, "text": prefixes[i] if prefixes else "", "ids": [], "mask": [],
                           "tokens": 0, "calls": [],
                           "done": False, "finish": "stop",
                           "session": Session(Limits(timeout=settings.timeout, memory_mb=settings.memory_mb,
                                                     max_output=settings.max_output_chars))})
    try:
        for round_ in range(10_000):
            active = [s for s in states if not s["done"]]
            if not active:
                break
            budget = min(params.max_tokens - s["tokens"] for s in active)
            round_params = replace(params, n=1, stop=[*params.stop, FENCE_STOP], max_tokens=max(1, budget),
                                   seed=params.seed + 7919 * round_)
            # one generate call per round over every unfinished rollout, each continuing its own text
            ctx = [_continue(s["prompt"], s["text"]) for s in active]
            outs = sampler.generate(ctx, round_params)
            pending = [(s, code) for s, (c,) in zip(active, outs)
                       if (code := _advance(s, c, params, settings, tok)) is not None]
            for (s, code), res in zip(pending, _run_cells(pending, settings)):
                call = {"code": code, "output": res.output, "error": res.error, "elapsed": round(res.elapsed, 4)}
                _append_output(s, _cut(res.as_text(), settings.max_output_chars), call, params, tok)
    finally:
        for s in states:
            s["session"].close()
    out = [Completion(text=s["text"], num_tokens=s["tokens"], finish_reason=s["finish"],
                      token_ids=s["ids"] if tok is not None and s["ids"] else None, tool_calls=s["calls"],
                      tool_mask=s["mask"] if tok is not None and s["ids"] else None) for s in states]
    return [out[i * params.n:(i + 1) * params.n] for i in range(len(prompts))]


def iter_generate(sampler: Any, prompts: list[Any], params: SamplingParams, settings: TIRSettings,
                  chunk: int = 32):
    """(prompt index, n TIR rollouts) chunk by chunk, for stages that append as they go."""
    per_call = max(1, chunk // max(1, params.n))
    seed = params.seed
    for start in range(0, len(prompts), per_call):
        outs = generate(sampler, prompts[start:start + per_call], replace(params, seed=seed + start), settings)
        for j, cs in enumerate(outs):
            yield start + j, cs


def stage_rollouts(c: Any, sampler: Any, prompts: list[Any], params: SamplingParams, seeds: list[int]):
    """What distill and explore iterate over: plain samples as each prompt finishes, or with
    `c.tools` TIR rollouts chunk by chunk (settings from the stage's max_tool_calls / tool_timeout /
    tool_output_chars)."""
    from .sampling import iter_generate as plain

    if not c.tools:
        return plain(sampler, prompts, params, chunk=c.batch_size, seeds=seeds)
    settings = TIRSettings(max_calls=c.max_tool_calls, timeout=c.tool_timeout, max_output_chars=c.tool_output_chars)
    return iter_generate(sampler, prompts, params, settings, chunk=c.batch_size)


def _continue(prompt: Any, text: str) -> Any:
    if isinstance(prompt, list):  # chat endpoint: continue the assistant turn
        return prompt + ([{"role": "assistant", "content": text}] if text else [])
    return prompt + text


def _advance(s: dict[str, Any], c: Completion, params: SamplingParams, settings: TIRSettings, tok: Any) -> str | None:
    """Append one generated piece to rollout `s`; return the code to run when it ended a ```python block."""
    text = c.text
    if c.finish_reason == "stop" and open_code(s["text"] + text) is not None and not text.rstrip().endswith("```"):
        text += "\n```\n" if not text.endswith("\n") else "```\n"  # a server stripped the stop string
    s["text"] += text
    s["tokens"] += c.num_tokens
    if c.token_ids is not None:
        s["ids"] += c.token_ids
        s["mask"] += [1] * len(c.token_ids)
    if c.finish_reason == "length" or s["tokens"] >= params.max_tokens:
        s["done"], s["finish"] = True, "length"
        return None
    code = closed_code(s["text"])
    if code is None:
        # stopped at the fence of some other block (```text ... ```): keep generating; else it ended
        s["done"] = not s["text"].endswith(FENCE_STOP)
        return None
    if len(s["calls"]) >= settings.max_calls:
        _append_output(s, OUT_OF_CALLS, None, params, tok)
        return None
    return code


def _run_cells(pending: list[tuple[dict[str, Any], str]], settings: TIRSettings) -> list[Any]:
    """Each rollout's cell in its own session, several at once. Written here: the sessions are separate
    processes, so this only overlaps the waiting (a thread pool, results in input order)."""
    workers = min(len(pending), settings.parallel or os.cpu_count() or 1)
    if workers <= 1:
        return [s["session"].run(code) for s, code in pending]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(lambda sc: sc[0]["session"].run(sc[1]), pending))


def _append_output(s: dict[str, Any], shown: str, call: dict[str, Any] | None, params: SamplingParams,
                   tok: Any) -> None:
    """Append the ```output block (executor text, out of the loss) to rollout `s`."""
    block = output_block(shown)
    s["text"] += block
    if call is not None:
        s["calls"].append(call)
    if tok is not None:
        ids = tok.encode(block, add_special_tokens=False)
        s["ids"] += ids
        s["mask"] += [0] * len(ids)  # executor output: not the model's tokens
        s["tokens"] += len(ids)
    else:
        s["tokens"] += max(1, len(block) // 4)
    if s["tokens"] >= params.max_tokens:
        s["done"], s["finish"] = True, "length"
