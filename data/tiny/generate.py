"""Regenerate data/tiny/arith_rl.jsonl (RL / explore problems, levels 1-4) from still_cli.tasks.

    python data/tiny/generate.py
"""

import json
from pathlib import Path

from still_cli.tasks import problems

here = Path(__file__).parent
with open(here / "arith_rl.jsonl", "w", encoding="utf-8") as f:
    for row in problems(256, seed=1, levels=(1, 2, 3, 4), prefix="arith-rl"):
        f.write(json.dumps(row) + "\n")
