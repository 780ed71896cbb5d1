"""transformers `generate` backend: batched, left-padded, stop strings; runs on CPU."""

from __future__ import annotations

from typing import Any

from ..errors import ModelError
from . import Completion, SamplingParams, load_tokenizer

# generate() fills every setting a call leaves unset from the model's generation_config.json, then from
# transformers' defaults (top_k 50). Hub models often ship sampling settings there (Qwen2.5-Math-Instruct:
# top_k 20, repetition_penalty 1.05), so the same eval would sample differently here than on vLLM, which
# applies exactly the SamplingParams it is given. Every setting that reshapes the next-token distribution
# or bans tokens is therefore passed explicitly, switched off; only the call's own T / top-p / top-k act.
_NEUTRAL = dict(typical_p=1.0, min_p=None, top_h=None, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
                encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, bad_words_ids=None, suppress_tokens=None,
                begin_suppress_tokens=None, sequence_bias=None, min_length=0, min_new_tokens=None,
                exponential_decay_length_penalty=None, forced_bos_token_id=None, forced_eos_token_id=None,
                guidance_scale=None, num_beams=1, num_beam_groups=1, penalty_alpha=None, dola_layers=None,
                watermarking_config=None)


class HFSampler:
    def __init__(self, model: str, *, batch_size: int = 32, dtype: str = "auto", device: str | None = None,
                 model_obj: Any = None, tokenizer: Any = None):
        import torch
        from transformers import AutoModelForCausalLM

        self.tokenizer = tokenizer or load_tokenizer(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if model_obj is None:
            try:
                model_obj = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
            except (OSError, ValueError) as e:
                raise ModelError(f"cannot load model {model!r} ({str(e).splitlines()[0][:160]}); give a folder "
                                 f"written by save_pretrained or a reachable hub id") from None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model_obj.to(self.device).eval()
        self.batch_size = batch_size
        from transformers import GenerationConfig

        known = GenerationConfig().to_dict()  # settings this transformers version has (kwargs it would refuse)
        self._neutral = {k: v for k, v in _NEUTRAL.items() if k in known}
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos_ids.add(self.tokenizer.eos_token_id)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        import torch

        flat = [p for p in prompts for _ in range(params.n)]  # (P * n,)
        out: list[Completion] = []
        for start in range(0, len(flat), self.batch_size):
            batch = flat[start:start + self.batch_size]
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            torch.manual_seed(params.seed + start)
            kwargs: dict[str, Any] = dict(self._neutral, max_new_tokens=params.max_tokens,
                                          pad_token_id=self.tokenizer.pad_token_id)
            if params.temperature > 0:
                kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if params.stop:
                kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
            with torch.no_grad():
                seqs = self.model.generate(**enc, **kwargs)
            gen = seqs[:, enc["input_ids"].shape[1]:]  # (B, T_new)
            for row in gen.tolist():
                out.append(self._completion(row, params))
        return [out[i * params.n:(i + 1) * params.n] for i in range(len(prompts))]

    def _completion(self, ids: list[int], params: SamplingParams) -> Completion:
        # Cut at the first end-of-sequence token; padding after it is not part of the response.
        n, finish = len(ids), "length"
        for i, t in enumerate(ids):
            if t in self.eos_ids:
                n, finish = i + 1, "stop"
                break
        text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
        hits = [(j, s) for s in params.stop if (j := text.find(s)) >= 0]
        if hits:  # generate() stops *after* the stop string; keep it, as the TIR loop needs it
            j, s = min(hits)
            end = j + len(s)
            text, finish = text[:end], "stop"
            lo, hi = 1, n  # the fewest ids whose text reaches the end of the stop string
            while lo < hi:
                mid = (lo + hi) // 2
                if len(self.tokenizer.decode(ids[:mid], skip_special_tokens=True)) >= end:
                    hi = mid
                else:
                    lo = mid + 1
            n = lo
        return Completion(text=text, num_tokens=n, finish_reason=finish, token_ids=ids[:n])
