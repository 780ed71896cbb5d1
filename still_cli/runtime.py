"""Which process am I? One answer for every stage, alone or under `accelerate launch` / torchrun."""

from __future__ import annotations

from typing import Any


def process_state() -> Any:
    """accelerate's shared PartialState. On a machine without CUDA it must be created with `cpu=True`,
    or the first caller pins the whole run to a single process (accelerate only detects a CPU
    process group (gloo) when asked for CPU); the Trainer then finds the same state."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
