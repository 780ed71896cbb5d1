"""The code passes the project's ruff rules (pyproject.toml's [tool.ruff]): unused or undefined names,
syntax errors and bugbear's likely bugs fail the suite instead of waiting for a reader."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed; pip install -e '.[dev]'"
    r = subprocess.run([ruff, "check", "still_cli", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]
