"""vLLM backend (GPU machines; `pip install 'still[vllm]'`).

NOT VERIFIED HERE: the development and CI machines have no GPU and cannot install vLLM beside the
CPU torch, so this module is exercised only by tests marked `gpu`, which are skipped there. It maps
`SamplingParams` one-to-one onto vLLM's and keeps stop strings in the output like the hf backend.
"""

from __future__ import annotations

from typing import Any

from ..errors import BackendError
from . import Completion, SamplingParams, load_tokenizer


class VLLMSampler:
    def __init__(self, model: str, *, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 dtype: str = "auto", max_model_len: int | None = None, **_: Any):
        try:
            from vllm import LLM
        except ImportError:
            raise BackendError("backend 'vllm' needs vLLM, which is not installed; on a GPU machine run "
                               "`pip install 'still[vllm]'`, or use --backend hf") from None
        self.tokenizer = load_tokenizer(model)
        self.llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VSP

        sampling = params.temperature > 0
        sp = VSP(n=params.n, temperature=params.temperature, top_p=params.top_p if sampling else 1.0,
                 top_k=params.top_k if sampling and params.top_k > 0 else -1, max_tokens=params.max_tokens,
                 stop=params.stop or None, include_stop_str_in_output=True, seed=params.seed)
        outs = self.llm.generate(prompts, sp)
        return [[Completion(text=o.text, num_tokens=len(o.token_ids),
                            finish_reason="length" if o.finish_reason == "length" else "stop")
                 for o in req.outputs] for req in outs]
