"""`scripted` backend: the synthetic arithmetic task's teacher (still_cli/tasks.py) as a Sampler.

`--teacher arith` writes a correct long-form trace for every "What is 7 + 15 - 3?" prompt;
`--teacher arith:0.2` makes an arithmetic slip in 20% of samples (seeded), so rejection sampling has
something to reject. It lets `still distill` run end to end with no model and no network (tests, the
demo); with a real teacher the same command takes `--backend openai|vllm|hf`.
"""

from __future__ import annotations

import random
import re
from typing import Any

from ..errors import ConfigError
from . import Completion, SamplingParams

_PROBLEM = re.compile(r"What is [0-9+\- ]+\?")


class ScriptedSampler:
    tokenizer = None
    chat_prompts = False

    def __init__(self, model: str, **_: Any):
        name, _, rate = model.partition(":")
        if name != "arith":
            raise ConfigError(f"scripted teacher {model!r} is unknown; use arith or arith:ERROR_RATE (e.g. arith:0.2)")
        try:
            self.error_rate = float(rate) if rate else 0.0
        except ValueError:
            raise ConfigError(f"scripted teacher error rate {rate!r} is not a number; e.g. arith:0.2") from None

    def generate(self, prompts: list[Any], params: SamplingParams) -> list[list[Completion]]:
        from ..tasks import teacher_trace

        out = []
        for i, prompt in enumerate(prompts):
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            m = _PROBLEM.search(text)
            if m is None:
                raise ConfigError(f"the arith teacher only answers 'What is a + b - c?' problems, got {text[:80]!r}")
            rng = random.Random(f"{params.seed}-{text}")
            cs = []
            for _ in range(params.n):
                trace = teacher_trace(m.group(0))
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
