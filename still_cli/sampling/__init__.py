"""One `Sampler` interface for every stage; backends: `hf` (transformers, CPU or GPU) and `vllm` (GPU).

A sampler turns rendered prompts into `n` completions each. Stages never import a backend directly:
they call `make_sampler(backend, model, ...)`, so eval, explore, distill and RL rollouts run the same
way on a laptop (hf) and on a GPU node (vllm).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

BACKENDS = ("hf", "vllm")


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 1024
    stop: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (eos or a stop string) | "length" (hit max_tokens)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class Sampler(Protocol):
    tokenizer: Any

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions for each rendered prompt, in order: shape (len(prompts), n)."""
        ...


def make_sampler(backend: str, model: str, **kwargs: Any) -> Sampler:
    if backend == "hf":
        from .hf import HFSampler

        return HFSampler(model, **kwargs)
    if backend == "vllm":
        from .vllm import VLLMSampler

        return VLLMSampler(model, **kwargs)
    from ..errors import ConfigError

    raise ConfigError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    import os

    from ..errors import ModelError

    if (model.startswith((".", "/", "~")) or model.count("/") > 1) and not os.path.isdir(os.path.expanduser(model)):
        raise ModelError(f"model folder {model!r} does not exist; check the path, or build a tiny one with "
                         f"`still init-model {model}`")
    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer from {model!r} ({str(e).splitlines()[0][:160]}); give a "
                         f"folder written by save_pretrained (e.g. `still init-model runs/tiny`) or a hub id "
                         f"reachable from this machine") from None


def render_prompt(tokenizer: Any, problem: str, template: str, system_prompt: str | None = None,
                  prefill_think: bool = False) -> str:
    """Problem -> the exact text the model continues: template instruction, chat template, optional
    `<think>\\n` pre-fill (for models whose template does not add it themselves)."""
    user = PROMPT_TEMPLATES[template].format(problem=problem)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # a base model without a chat template: plain text
        text = (system_prompt + "\n\n" if system_prompt else "") + user + "\n"
    if prefill_think and not text.rstrip().endswith("<think>"):
        text += "<think>\n"
    return text


# The papers' prompts. r1: DeepSeek-R1 / STILL-3 / CoRT eval. still2: STILL-2 (arXiv 2412.09413)
# system-style instruction asking for its thought/solution tags. raw: the problem text only.
PROMPT_TEMPLATES = {
    "r1": "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    "still2": (
        "Your role as an assistant involves thoroughly exploring questions through a systematic long "
        "thinking process before providing the final precise and accurate solutions. Please structure your "
        "response into two main sections: Thought and Solution. In the Thought section, detail your "
        "reasoning process using the specified format: <|begin_of_thought|> {{thought with steps separated "
        "with '\\n\\n'}} <|end_of_thought|> In the Solution section, present the final solution that you "
        "deem correct, in the format: <|begin_of_solution|> {{final formatted, precise, and clear solution}} "
        "<|end_of_solution|>, with the final answer within \\boxed{{}}.\n\n{problem}"
    ),
    "raw": "{problem}",
}
