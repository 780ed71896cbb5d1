"""Rows/s of `still distill` against a loopback teacher server at several concurrency levels, one run.

    python benchmarks/distill_throughput.py [--latency 0.05] [--problems 64] [--n 2]

The server (tests/loopback.py, its own process) answers every request after `--latency` seconds,
like a teacher whose generation time dominates; the client side is the real stage: httpx requests,
grading, row writing with fsync, the progress ledger. Prints samples/s and kept rows/s per
concurrency level and the speed-up over concurrency 1.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--levels", default="1,4,16,64")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    from still_cli.stages.distill import DistillConfig, run

    tmp = Path(tempfile.mkdtemp())
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "loopback.py"), "arith", str(tmp / "url"),
                               str(args.latency)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (tmp / "url").exists() or not (tmp / "url").read_text():
            time.sleep(0.05)
        url = (tmp / "url").read_text()
        print(f"teacher latency {args.latency * 1000:.0f} ms/request, {args.problems} problems x n={args.n}")
        base = None
        for level in [int(x) for x in args.levels.split(",")]:
            out = tmp / f"c{level}.jsonl"
            t = time.perf_counter()
            s = run(DistillConfig(teacher="t", data=str(ROOT / "data" / "tiny" / "arith_rl.jsonl"), output=str(out),
                                  base_urls=[url], n=args.n, limit=args.problems, concurrency=level, api_key_env=None))
            dt = time.perf_counter() - t
            base = base or dt
            print(f"concurrency {level:3d}: {s['samples'] / dt:7.1f} samples/s, {s['kept'] / dt:7.1f} rows/s "
                  f"({dt:5.2f} s; {base / dt:5.1f}x concurrency 1)")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
