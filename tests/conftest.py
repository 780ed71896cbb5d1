"""Shared fixtures: one tiny model per test session, built locally (no download)."""

import os
import subprocess
import sys
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
