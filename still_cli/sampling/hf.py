"""transformers `generate` backend: batched, left-padded, stop strings, a growing KV cache; runs on CPU."""

from __future__ import annotations

import functools
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


@functools.cache
def _growing_layer_class() -> type | None:
    """A transformers KV-cache layer that writes each step into a preallocated buffer and hands attention a
    view of it. Hand-written because none of the libraries has one: transformers' `DynamicLayer` concatenates
    the whole cache with the new step's keys and values at every step (so a generation of L tokens copies
    O(L^2) cache), and its `StaticCache` makes every step attend over the whole preallocated length. This
    layer returns exactly the tensors `DynamicLayer` would (the same values and shape; tests/test_eval.py
    checks the sampled tokens are identical), grown by a quarter at a time up to the call's prompt +
    max_new_tokens.
    Measured on CPU here (benchmarks/generate_cache.py, untrained tiny model, 64 rows run to full length):
    1.03x at 128 new tokens, 1.60x at 512, 2.10x at 1,024; the demo's held-out eval (1,200 samples of up to
    128 tokens, answers ~70) 10.8 / 10.7 s -> 10.1 / 10.4 s. Not measured on a GPU. None when this
    transformers has no `DynamicLayer` (generate() then builds its default cache)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class GrowingLayer(DynamicLayer):
        def __init__(self, limit: int):
            super().__init__()
            self.limit = limit  # the longest the cache can get in this generate call
            self._kbuf = self._vbuf = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = self.keys.shape[-2] if self.keys.numel() else 0
            new = n + key_states.shape[-2]
            # the buffer is reused only while `keys` is still the view this layer made (batch_select_indices,
            # reorder_cache or crop may have replaced or narrowed it; those start a new buffer from `keys`)
            fresh = (self._kbuf is None or not n or self.keys.data_ptr() != self._kbuf.data_ptr()
                     or self.keys.shape[:2] != self._kbuf.shape[:2] or new > self._kbuf.shape[-2])
            if fresh:
                # grown by a quarter (at least 64 positions): copies stay O(L) in all, and the peak while
                # growing (old + new buffer, 2.25x what is held) stays near DynamicLayer's (old + concat, 2x)
                cap = max(new, min(self.limit, max(new * 5 // 4, new + 64)))
                kbuf = key_states.new_empty(*key_states.shape[:2], cap, key_states.shape[-1])
                vbuf = value_states.new_empty(*value_states.shape[:2], cap, value_states.shape[-1])
                if n:
                    kbuf[:, :, :n] = self.keys
                    vbuf[:, :, :n] = self.values
                self._kbuf, self._vbuf = kbuf, vbuf
            self._kbuf[:, :, n:new] = key_states
            self._vbuf[:, :, n:new] = value_states
            self.keys, self.values = self._kbuf[:, :, :new], self._vbuf[:, :, :new]
            return self.keys, self.values

    return GrowingLayer


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model


def growing_cache_kwarg(model: Any) -> str | None:
    """The generate() keyword that takes a cache object ("cache" since transformers renamed it,
    "past_key_values" before), or None where the growing cache does not apply: the model or its
    generation_config asks for another cache (static, sliding, quantized...), or it is not a plain
    decoder-only model."""
    import inspect

    base = _base(model)
    supports = getattr(type(base), "_supports_default_dynamic_cache", None)
    wanted = getattr(getattr(base, "generation_config", None), "cache_implementation", None)
    if (_growing_layer_class() is None or base.config.is_encoder_decoder or supports is None or not supports()
            or wanted not in (None, "dynamic")):
        return None
    params = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None


def growing_cache(model: Any, limit: int) -> Any:
    """transformers' DynamicCache for `model` with every full-attention layer a growing one that holds up to
    `limit` positions (sliding-window and other special layers keep their own kind)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache(config=_base(model).config.get_text_config(decoder=True))
    layer = _growing_layer_class()
    cache.layers = [layer(limit) if type(x) is DynamicLayer else x for x in cache.layers]
    return cache


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
        self._cache_kwarg = growing_cache_kwarg(self.model)
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
            if self._cache_kwarg:
                kwargs[self._cache_kwarg] = growing_cache(self.model, enc["input_ids"].shape[1] + params.max_tokens)
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
