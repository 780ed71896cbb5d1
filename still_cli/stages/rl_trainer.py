"""TRL GRPOTrainer extensions for `still rl`: DAPO dynamic sampling, metrics.jsonl, plateau stop.

Written here because TRL 1.16 has none of them: it reports the zero-std group share
(`frac_reward_zero_std`) but trains on those groups anyway, and has no stage end conditions.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from trl import GRPOTrainer

from ..errors import ConfigError

log = logging.getLogger("still.rl")

_LEFT_PADDED = ("prompt_ids", "prompt_mask")  # prompts are left-padded, completions right-padded


def _pad_cat(tensors: list[Any], left: bool, value: float) -> Any:
    """Concatenate (B_i, T_i) tensors along B, padding T to the longest (left or right)."""
    import torch
    import torch.nn.functional as F

    t_max = max(t.shape[1] for t in tensors)
    padded = [F.pad(t, (t_max - t.shape[1], 0) if left else (0, t_max - t.shape[1]), value=value) for t in tensors]
    return torch.cat(padded, dim=0)


def merge_rows(parts: list[tuple[dict[str, Any], list[int]]], pad_id: int) -> dict[str, Any]:
    """Take rows `idx` of each generation output and stack them into one output, re-padding the
    sequence dimension. Keys that are not per-row tensors (num_items_in_batch) are left to the caller."""
    import torch

    out: dict[str, Any] = {}
    first = parts[0][0]
    for key, v in first.items():
        if not isinstance(v, torch.Tensor) or v.dim() == 0:
            continue
        pieces = [o[key][torch.tensor(idx, dtype=torch.long, device=v.device)] for o, idx in parts if idx]
        if v.dim() == 1:
            out[key] = torch.cat(pieces, dim=0)
        else:
            value = pad_id if key.endswith("_ids") else 0
            out[key] = _pad_cat(pieces, left=key in _LEFT_PADDED, value=value)
    return out


class StillGRPOTrainer(GRPOTrainer):
    """GRPOTrainer + DAPO dynamic sampling (arXiv 2503.14476): groups whose rewards are all equal
    (zero advantage, no gradient) are replaced by groups of fresh prompts from the training set,
    for at most `dynamic_sampling_max_rounds` extra generation rounds per generation batch."""

    def __init__(self, *args: Any, dynamic_sampling: bool = False, dynamic_sampling_max_rounds: int = 3, **kw: Any):
        super().__init__(*args, **kw)
        self.dynamic_sampling = dynamic_sampling
        self.dynamic_sampling_max_rounds = dynamic_sampling_max_rounds
        self._fresh_rng = random.Random(self.args.seed + 7919 * (self.accelerator.process_index + 1))
        if not self.use_vllm:
            self._generate_with_growing_cache()

    def _generate_with_growing_cache(self) -> None:
        """TRL generates rollouts (without vLLM) by `model.generate(**inputs, generation_config=...)`, which
        builds transformers' DynamicCache: it copies the whole KV cache at every step. This hands that call
        the hf backend's growing cache instead (still_cli/sampling/hf.py: the same tokens, 1.6x faster at 512
        new tokens on CPU), unless TRL's config asks for another cache (`cache_implementation`). TRL has no
        hook for the cache, so the model's `generate` is wrapped on this one instance."""
        from ..sampling.hf import growing_cache, growing_cache_kwarg

        model = self.model
        kwarg = growing_cache_kwarg(model)
        if kwarg is None:
            return
        inner = model.generate

        def generate(*args: Any, **kw: Any) -> Any:
            gc = kw.get("generation_config")
            ids = kw.get("input_ids")
            if (kwarg not in kw and ids is not None and gc is not None and gc.use_cache is not False
                    and gc.max_new_tokens and gc.cache_implementation in (None, "dynamic")):
                kw[kwarg] = growing_cache(model, ids.shape[1] + gc.max_new_tokens)
            return inner(*args, **kw)

        model.generate = generate

    def _fresh_inputs(self, n_groups: int) -> list[dict[str, Any]]:
        g = self.num_generations
        rows = [self.train_dataset[self._fresh_rng.randrange(len(self.train_dataset))] for _ in range(n_groups)]
        return [dict(r) for r in rows for _ in range(g)]

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        out = super()._generate_and_score_completions(inputs)
        if not self.dynamic_sampling or self.model is None or not self.model.training:
            return out
        g = self.num_generations
        prompts = [x["prompt"] for x in inputs]
        if len(prompts) % g or any(len(set(prompts[i:i + g])) != 1 for i in range(0, len(prompts), g)):
            raise ConfigError(
                f"dynamic_sampling needs whole groups of num_generations = {g} on each process, got a local "
                f"batch of {len(prompts)}; make per_device_train_batch_size a multiple of num_generations")
        n_groups = len(prompts) // g

        def live_groups(o: dict[str, Any]) -> list[int]:
            adv = o["advantages"].view(-1, g)  # (groups, G)
            return [i for i in range(adv.shape[0]) if bool((adv[i].abs() > 1e-6).any())]

        keep = live_groups(out)
        parts = [(out, [i * g + j for i in keep for j in range(g)])]
        have, rounds = len(keep), 0
        while rounds < self.dynamic_sampling_max_rounds:
            missing = torch.tensor([n_groups - have], device=self.accelerator.device)
            if int(self.accelerator.gather(missing).max()) == 0:  # every process must take part in a round
                break
            rounds += 1
            fresh = super()._generate_and_score_completions(self._fresh_inputs(n_groups))
            take = live_groups(fresh)[: max(0, n_groups - have)]
            parts.append((fresh, [i * g + j for i in take for j in range(g)]))
            have += len(take)
        if have < n_groups:  # out of rounds: fill with zero-std groups (they add no gradient)
            dead = [i for i in range(n_groups) if i not in keep][: n_groups - have]
            parts.append((out, [i * g + j for i in dead for j in range(g)]))
        merged = merge_rows(parts, self.processing_class.pad_token_id)
        loss_mask = merged["completion_mask"] * merged["tool_mask"] if "tool_mask" in merged else merged["completion_mask"]
        merged["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        mode = "train"
        self._metrics[mode]["dynamic_sampling/rounds"].append(float(rounds))
        self._metrics[mode]["dynamic_sampling/filled_share"].append(min(have, n_groups) / n_groups)
        return merged


class MetricsCallback(TrainerCallback):
    """Append each log of the Trainer as one row of metrics.jsonl (stage, step, global step, values)."""

    def __init__(self, path: Path, stage: str, stage_index: int, step_offset: int):
        self.path, self.stage, self.stage_index, self.step_offset = path, stage, stage_index, step_offset

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or not state.is_world_process_zero or "train_runtime" in logs:
            return
        from ..data import JsonlAppender

        row = {"stage": self.stage, "stage_index": self.stage_index, "step": state.global_step,
               "global_step": self.step_offset + state.global_step, "world_size": args.world_size}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str))})
        with JsonlAppender(self.path) as app:
            app.write(row)


class PlateauCallback(TrainerCallback):
    """End a stage when the mean reward over the last `window` logged steps is not at least
    `min_delta` above the mean over the window before it (arXiv 2504.00829 trains stage 1 "until
    the reward plateaus"). History is rebuilt from metrics.jsonl, so a resumed stage keeps it."""

    def __init__(self, stage: str, window: int, min_delta: float, metrics_path: Path):
        self.stage, self.window, self.min_delta = stage, window, min_delta
        self.metrics_path = metrics_path
        self.history: list[float] | None = None
        self.reason: str = "max_steps"

    def _load(self, upto_step: int) -> list[float]:
        if not self.metrics_path.exists():
            return []
        rows = [json.loads(x) for x in self.metrics_path.read_text().splitlines() if x.strip()]
        return [r["reward"] for r in rows if r.get("stage") == self.stage and "reward" in r
                and r.get("step", 0) <= upto_step]

    def on_train_begin(self, args, state, control, **kw):
        self.history = self._load(state.global_step)

    def restored(self, step: int) -> None:
        """The stage was restored from its final checkpoint (sft.train_or_restore) instead of trained: the
        reason it ended, from the rewards logged up to that step."""
        self.history = self._load(step)
        self._check()

    def _check(self) -> bool:
        w = self.window
        if len(self.history) >= 2 * w:
            recent = sum(self.history[-w:]) / w
            before = sum(self.history[-2 * w:-w]) / w
            if recent - before < self.min_delta:
                self.reason = f"plateau (reward {before:.3f} -> {recent:.3f} over {w} steps)"
                return True
        return False

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "reward" not in logs:
            return
        self.history.append(float(logs["reward"]))
        if self._check():
            control.should_training_stop = True
            control.should_save = True
