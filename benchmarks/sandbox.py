"""Sandbox throughput and latency vs a naive executor (a fresh `python -c` per call), side by side.

    python benchmarks/sandbox.py [--calls 200] [--threads 2]

Workloads, each driven by `--threads` callers at once:
  * one-shot `print(1)` and one-shot sympy + numpy: `run_python` (a fresh session process per call,
    forked from a warm, already-isolated worker; every protection this machine allows) vs `python -c`;
  * TIR session: 5 cells per rollout that build on each other, as a model's code calls do. still runs
    them in one `Session`; the naive executor re-runs all earlier cells in a fresh `python -c` per call
    (how a stateless executor keeps state).
  * TIR batch: `--batch` rollouts hold a session each at once (as `still eval --tools` and
    `hint-engineer` do: every rollout of a generate batch has its session until the batch ends), one
    cell each, `--rounds` batches; the pool sized as before (a fixed 64 idle workers) against the
    current pool (it keeps as many as were out at once, up to 256).
Prints calls/s and p50 / p99 latency per call. Target (issue 6): >= 10x the naive throughput.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SNIPPETS = {
    "print(1)": "print(1)",
    "sympy+numpy": "import sympy, numpy as np\nprint(sympy.factorint(2**32 + 1), int(np.arange(100).sum()))",
}


def naive(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout


CELLS = ["import sympy\nx = sympy.symbols('x')", "f = x**3 - 6*x**2 + 11*x - 6", "roots = sympy.solve(f, x)\nroots",
         "s = sum(roots)\ns", "print(s * 2)"]


def naive_session(_: str) -> None:
    for i in range(len(CELLS)):
        naive("\n".join(CELLS[: i + 1]))


def still_session(_: str) -> None:
    from still_cli.sandbox import Session

    with Session() as s:
        for cell in CELLS:
            s.run(cell)


def measure(fn, code: str, calls: int, threads: int) -> tuple[float, float, float]:
    lat: list[float] = []

    def one(_):
        t = time.perf_counter()
        fn(code)
        lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, range(calls)))
    wall = time.perf_counter() - t0
    lat.sort()
    return calls / wall, statistics.median(lat) * 1000, lat[int(0.99 * (len(lat) - 1))] * 1000


def tir_batches(batch: int, rounds: int, threads: int, max_keep: int | None) -> float:
    """Calls/s of `rounds` batches of `batch` sessions held at once, one `print(1)` cell each, run by
    `threads` callers (tir._run_cells), on a fresh pool (`max_keep`=64: the old fixed size)."""
    from still_cli import sandbox
    from still_cli.sandbox import pool

    pool._stop_pools()
    if max_keep is not None:
        lim = sandbox.Limits()
        pool._pools[pool._pool_key(lim)] = pool._Pool(lim, warm=threads, keep=max_keep, max_keep=max_keep)
    sessions = [sandbox.Session() for _ in range(batch)]
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(lambda s: s.run("print(1)"), sessions))  # warm-up batch (not timed)
        for s in sessions:
            s.close()
        t0 = time.perf_counter()
        for _ in range(rounds):
            sessions = [sandbox.Session() for _ in range(batch)]
            assert all(r.output == "1\n" for r in ex.map(lambda s: s.run("print(1)"), sessions))
            for s in sessions:
                s.close()
        return batch * rounds / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from still_cli.sandbox import protections, run_python

    print("protections:", ", ".join(protections()))
    sandboxed = lambda code: run_python(code).output  # noqa: E731
    for _ in range(10):  # warm the forkserver and the pool
        sandboxed("1")
    print(f"{'snippet':<12} {'executor':<10} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, code in SNIPPETS.items():
        assert "1" in naive(code) or name != "print(1)"
        n_calls = args.calls if name == "print(1)" else max(20, args.calls // 5)
        rn = measure(naive, code, n_calls // 2, args.threads)
        rs = measure(sandboxed, code, n_calls, args.threads)
        for label, r in (("naive", rn), ("still", rs)):
            print(f"{name:<12} {label:<10} {r[0]:8.1f} {r[1]:8.1f} {r[2]:8.1f}")
        print(f"{name:<12} throughput still / naive: {rs[0] / rn[0]:.1f}x")
    k = len(CELLS)  # sessions -> per-call numbers
    rn = measure(naive_session, "", 6, args.threads)
    rs = measure(still_session, "", 60, args.threads)
    for label, r in (("naive", rn), ("still", rs)):
        print(f"{'TIR session':<12} {label:<10} {r[0] * k:8.1f} {r[1] / k:8.1f} {r[2] / k:8.1f}   (per call, {k} calls/session)")
    print(f"{'TIR session':<12} throughput still / naive: {rs[0] / rn[0]:.1f}x")
    fixed = tir_batches(args.batch, args.rounds, args.threads, max_keep=64)
    grown = tir_batches(args.batch, args.rounds, args.threads, max_keep=None)
    print(f"{'TIR batch':<12} {'pool 64':<10} {fixed:8.1f}   ({args.batch} sessions at once, {args.rounds} batches)")
    print(f"{'TIR batch':<12} {'pool grown':<10} {grown:8.1f}")
    print(f"{'TIR batch':<12} throughput grown / fixed 64: {grown / fixed:.2f}x")


if __name__ == "__main__":
    main()
