"""One `Sampler` interface for every stage; backends: `hf` (transformers, CPU or GPU), `vllm` (GPU),
`openai` (any OpenAI-compatible server or fleet of servers) and `scripted` (the tiny task's teacher).

A sampler turns prompts into `n` completions each. Stages never import a backend directly: they call
`make_sampler(backend, model, ...)` and `build_prompt(sampler, problem, ...)`, so eval, explore,
distill and RL rollouts run the same way on a laptop (hf), on a GPU node (vllm) or against an API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Protocol

BACKENDS = ("hf", "vllm", "openai", "scripted")


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0  # 0 = off (vLLM's -1, OpenAI's absent); the hf backend otherwise applies transformers' 50
    max_tokens: int = 1024
    stop: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (eos or a stop string) | "length" (hit max_tokens)
    token_ids: list[int] | None = None      # the generated ids, when the backend has them (hf)
    tool_calls: list[dict] | None = None    # TIR rollouts: every code call (code, output, error, elapsed)
    tool_mask: list[int] | None = None      # TIR + token_ids: 1 = model token, 0 = executor output token

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
    if backend == "openai":
        from .openai import OpenAISampler

        return OpenAISampler(model, **kwargs)
    if backend == "scripted":
        from .scripted import ScriptedSampler

        return ScriptedSampler(model, **kwargs)
    from ..errors import ConfigError

    raise ConfigError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")


@dataclass
class BackendSettings:
    """Sampler settings every sampling stage shares (one name everywhere: --base-urls, --batch-size, ...)."""

    base_urls: list[str] = field(default_factory=lambda: ["http://localhost:8000/v1"], metadata={
        "help": "openai: server base URLs; requests are spread over them."})
    api_key_env: str | None = field(default="OPENAI_API_KEY", metadata={
        "help": "openai: name of the environment variable holding the API key (the key itself is never stored)."})
    endpoint: Literal["chat", "completions"] = field(default="chat", metadata={"help": "openai: chat or completions endpoint."})
    concurrency: int = field(default=16, metadata={"help": "openai: requests in flight at once."})
    request_timeout: float = field(default=600.0, metadata={"help": "openai: seconds per request before a retry."})
    max_retries: int = field(default=6, metadata={
        "help": "openai: retries per request (429, 5xx, timeouts, dropped connections)."})
    batch_size: int = field(default=32, metadata={"help": "hf: sequences per generate() call."})
    dtype: str = field(default="auto", metadata={"help": "hf/vllm: model dtype (auto, float32, bfloat16, float16)."})


@dataclass
class ToolSettings:
    """Tool-integrated reasoning settings (CoRT's eval values as defaults)."""

    tools: bool = field(default=False, metadata={
        "help": "Tool-integrated reasoning: run the model's ```python blocks in the sandbox and feed the output back."})
    max_tool_calls: int = field(default=15, metadata={"help": "--tools: code calls per response (CoRT eval: 15)."})
    tool_timeout: float = field(default=30.0, metadata={"help": "--tools: seconds per code call (CoRT eval: 30)."})
    tool_output_chars: int = field(default=800, metadata={"help": "--tools: characters of output shown (CoRT: 800)."})


# Config fields each backend takes (stages share these names: --batch-size, --base-urls, ...).
_BACKEND_SETTINGS = {
    "hf": ("batch_size", "dtype"),
    "vllm": ("dtype",),
    "openai": ("base_urls", "api_key_env", "endpoint", "concurrency", "request_timeout", "max_retries"),
    "scripted": (),
}


def sampler_from_config(c: Any, model: str) -> Sampler:
    """Build the sampler a stage's config asks for (`c.backend` + that backend's settings)."""
    kwargs = {k: getattr(c, k) for k in _BACKEND_SETTINGS.get(c.backend, ()) if hasattr(c, k)}
    return make_sampler(c.backend, model, **kwargs)


def build_prompt(sampler: Any, problem: str, template: str, system_prompt: str | None = None,
                 prefill_think: bool = False) -> Any:
    """What `sampler.generate` takes for one problem: chat messages for chat APIs, else rendered text."""
    if getattr(sampler, "chat_prompts", False):
        user = PROMPT_TEMPLATES[template].format(problem=problem)
        return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
            [{"role": "user", "content": user}]
    return render_prompt(getattr(sampler, "tokenizer", None), problem, template, system_prompt, prefill_think)


def iter_generate(sampler: Any, prompts: list[Any], params: SamplingParams, chunk: int = 32,
                  seeds: list[int] | None = None) -> Iterator[tuple[int, list[Completion]]]:
    """(prompt index, n completions) as they finish: backends that overlap requests (openai) yield out
    of order as each prompt completes, seeding sample j of prompt i with `seeds[i] + j` (so a resumed
    run asks for the same samples); batch backends yield chunk by chunk, in order, seeded per chunk."""
    if hasattr(sampler, "iter_generate"):
        yield from sampler.iter_generate(prompts, params, seeds)
        return
    per_call = max(1, chunk // max(1, params.n))
    seed = params.seed
    for start in range(0, len(prompts), per_call):
        params.seed = seed + start  # reproducible per chunk
        outs = sampler.generate(prompts[start:start + per_call], params)
        for j, cs in enumerate(outs):
            yield start + j, cs
    params.seed = seed


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
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
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
