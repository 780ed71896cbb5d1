"""Shared fixtures: one tiny model per test session, built locally (no download)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from still_cli.tiny_model import InitModelConfig, init_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    return init_model(InitModelConfig(output=str(out), hidden_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=128))


def run_cli(*args: str, input: str | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real console entry point in a subprocess: exit codes, stdout and stderr as a user sees them."""
    return subprocess.run([sys.executable, "-m", "still_cli.cli", *args], input=input, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def wait_until(cond, seconds: float, poll: float = 0.05):
    """Poll cond until it holds or the seconds run out; its last value (the kill-and-resume tests wait
    for a run to get part way before they kill it)."""
    deadline = time.time() + seconds
    while not (value := cond()) and time.time() < deadline:
        time.sleep(poll)
    return value


@pytest.fixture(scope="session")
def sft_model(tiny_model, tmp_path_factory) -> Path:
    """The session's tiny model after a short SFT on the arithmetic traces: it writes varied, partly
    well-formed outputs, so RL rewards differ within groups (a random-init model's never do)."""
    from still_cli.stages.sft import SFTStageConfig, run

    out = tmp_path_factory.mktemp("sft") / "model"
    data = Path(__file__).resolve().parents[1] / "data" / "tiny" / "arith_sft.jsonl"
    return run(SFTStageConfig(model=str(tiny_model), data=str(data), output=str(out), max_steps=60,
                              learning_rate=3e-3, warmup_steps=5, per_device_train_batch_size=32, max_length=256,
                              save_steps=1000, logging_steps=20))


@pytest.fixture(scope="session")
def tool_model(tiny_model, tmp_path_factory) -> Path:
    """The session's tiny model after SFT on the scripted teacher's tool-integrated traces: it opens
    ```python blocks (with garbled operands), so TIR rollouts really run code."""
    from still_cli.stages.distill import DistillConfig, run as distill
    from still_cli.stages.sft import SFTStageConfig, run as sft

    root = tmp_path_factory.mktemp("tools")
    data = Path(__file__).resolve().parents[1] / "data" / "tiny" / "arith_rl.jsonl"
    distill(DistillConfig(teacher="arith-tools", backend="scripted", tools=True, data=str(data), n=1,
                          max_tokens=300, output=str(root / "traces.jsonl")))
    return sft(SFTStageConfig(model=str(tiny_model), data=str(root / "traces.jsonl"), output=str(root / "model"),
                              max_steps=150, learning_rate=5e-3, warmup_steps=10, per_device_train_batch_size=32,
                              max_length=256, save_steps=1000, logging_steps=50))
