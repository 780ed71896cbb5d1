"""`scripted` backend: the synthetic arithmetic task's teacher (still_cli/tasks.py) as a Sampler.

`--teacher arith` writes a correct long-form trace for every "What is 7 + 15 - 3?" prompt;
`--teacher arith:0.2` makes an arithmetic slip in 20% of samples (seeded), so rejection sampling has
something to reject; `--teacher arith:0.1:0.3` also answers 30% of samples directly, with an empty
thought (`<think>\n</think>` then the boxed answer, as a reasoning model's no-thinking mode does), so a
distilled set mixes long thought with direct answers, as many real distillation sets do.
`--teacher arith-tools` writes tool-integrated traces: a ```python block that computes the expression,
and, once the executor's output is in its context, an answer read from that output (so it is right
exactly when the sandbox ran the code). It lets `still distill` run end to end with no model and no
network (tests, the demo); with a real teacher the same command takes `--backend openai|vllm|hf`.
"""

from __future__ import annotations

import random
import re
from typing import Any

from ..errors import ConfigError
from . import Completion, SamplingParams

_PROBLEM = re.compile(r"What is [0-9+\-* ]+\?")


class ScriptedSampler:
    tokenizer = None
    chat_prompts = False

    def __init__(self, model: str, **_: Any):
        name, _, rates = model.partition(":")
        if name not in ("arith", "arith-tools") or len(rates.split(":")) > 2:
            raise ConfigError(f"scripted teacher {model!r} is unknown; use arith, arith:SLIP_RATE (e.g. arith:0.2), "
                              f"arith:SLIP_RATE:DIRECT_RATE (e.g. arith:0.1:0.3) or arith-tools")
        self.tools = name == "arith-tools"
        rate, _, direct = rates.partition(":")
        try:
            self.error_rate = float(rate) if rate else 0.0
            self.direct_rate = float(direct) if direct else 0.0
        except ValueError:
            raise ConfigError(f"scripted teacher rates {rates!r} are not numbers; e.g. arith:0.2 or arith:0.1:0.3") from None
        if not (0 <= self.error_rate <= 1 and 0 <= self.direct_rate <= 1):
            raise ConfigError(f"scripted teacher rates {rates!r} must lie in [0, 1]; e.g. arith:0.1:0.3")

    def generate(self, prompts: list[Any], params: SamplingParams) -> list[list[Completion]]:
        from ..tasks import teacher_trace

        out = []
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            m = _PROBLEM.search(text)
            if m is None:
                raise ConfigError(f"the arith teacher only answers 'What is a + b - c?' problems, got {text[:80]!r}")
            if "*" in m.group(0) and not self.tools:
                raise ConfigError(f"the arith teacher writes long-form thought for + and - only, got {m.group(0)!r}; "
                                  f"products are for the arith-tools teacher")
            rng = random.Random(f"{params.seed}-{text}")
            cs = []
            for _ in range(params.n):
                if self.tools:
                    cs.append(self._tool_step(text, m.group(0)))
                    continue
                # no draw when direct_rate is 0: arith:RATE keeps the slip pattern it always had
                direct = self.direct_rate > 0 and rng.random() < self.direct_rate
                trace = teacher_trace(m.group(0), think=not direct)
                if rng.random() < self.error_rate:  # a slip: the final answer is off by one
                    head, _, ans = trace.rpartition("\\boxed{")
                    trace = head + "\\boxed{" + str(int(ans.rstrip("}.")) + rng.choice((-1, 1))) + "}."
                n_tok = len(trace.split())
                if n_tok > params.max_tokens:
                    cs.append(Completion(" ".join(trace.split()[: params.max_tokens]), params.max_tokens, "length"))
                else:
                    cs.append(Completion(trace, n_tok, "stop"))
            out.append(cs)
        return out

    def _tool_step(self, context: str, problem: str) -> Completion:
        """Before any output: open the thought and write the code, stopping at the closing fence (as
        generation with the fence as stop string does). After an output block: answer from it."""
        expr = problem[len("What is "):-1]
        after = context.split(problem, 1)[-1]  # the response so far (a hinted prefix, earlier turns)
        if "```output\n" not in after:
            if after.endswith("```python\n"):  # continue an opened block
                text = f"print({expr})\n```\n"
            elif "<think>" in after:
                text = f"```python\nprint({expr})\n```\n"
            else:
                text = "<think>\nThis is tedious by hand; let me use python.\n```python\nprint(" + expr + ")\n```\n"
            return Completion(text, len(text.split()), "stop")
        shown = context.rsplit("```output\n", 1)[1].split("\n```", 1)[0].strip()
        value = shown.splitlines()[-1].strip() if shown else "unknown"
        # "The output is N.", not "The code printed N.": with the old sentence the demo's seed-1 model put
        # the right operands into code but wrote some other number after "printed" (big 0.0% with tools);
        # with this one the same seed and steps give 100%. A likely reason: in the tiny BPE " printed"
        # shares the token "int" with the code's "print(", " output" shares "p" "ut" with the output header
        text = f"The output is {value}.\n</think>\n\nThe answer is \\boxed{{{value}}}."
        return Completion(text, len(text.split()), "stop")
