"""`still explore`: difficulty table, kept trajectories, preference pairs, merge + dedup across rounds,
kill -9 + resume, and DPO on the pairs it writes."""

import json
import signal
import subprocess
import sys
from pathlib import Path

from conftest import run_cli, wait_until
from loopback import TeacherServer, arith_responder
from still_cli.grading import grade

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "data" / "tiny" / "arith_rl.jsonl"


def _rows(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def _explore_api(url: str, out: Path, *extra: str):
    return run_cli("explore", "--model", "teacher", "--backend", "openai", "--base-urls", url, "--data", str(POOL),
                   "--limit", "12", "--n", "8", "--keep-per-problem", "2", "--max-pairs-per-problem", "2",
                   "-o", str(out), *extra)


def test_difficulty_table_kept_trajectories_and_pairs(tmp_path):
    out = tmp_path / "ex"
    with TeacherServer(arith_responder) as srv:
        r = _explore_api(srv.url, out)
    assert r.returncode == 0, r.stderr
    samples = {rec["id"]: rec for rec in _rows(out / "samples.jsonl")}
    diff = _rows(out / "difficulty.jsonl")
    assert len(samples) == len(diff) == 12
    for d in diff:  # the table is exactly what the rollouts say
        ss = samples[d["id"]]["samples"]
        assert d["num_samples"] == 8 and d["num_correct"] == sum(s["correct"] for s in ss)
        assert d["pass_rate"] == d["num_correct"] / 8 and d["mean_length"] == sum(s["num_tokens"] for s in ss) / 8
        assert all(s["correct"] == grade(s["response"], samples[d["id"]]["answer"]) for s in ss)
        assert d["model"] == "teacher" and d["round"] == 1 and "level" in d
    assert any(0 < d["pass_rate"] < 1 for d in diff)
    sft = _rows(out / "sft.jsonl")
    per_problem = {}
    for row in sft:
        assert grade(row["messages"][-1]["content"], row["answer"]) and row["round"] == 1 and row["model"] == "teacher"
        per_problem.setdefault(row["id"], []).append(row["messages"][-1]["content"])
    assert max(len(v) for v in per_problem.values()) == 2  # capped at keep_per_problem
    assert all(len(set(v)) == len(v) for v in per_problem.values())  # distinct trajectories
    pairs = _rows(out / "pairs.jsonl")
    assert pairs and all(grade(p["chosen"][0]["content"], samples[p["id"]]["answer"]) for p in pairs)
    assert not any(grade(p["rejected"][0]["content"], samples[p["id"]]["answer"]) for p in pairs)
    assert all(p["prompt"][0]["role"] == "user" and sum(q["id"] == p["id"] for q in pairs) <= 2 for p in pairs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sft_rows"] == len(sft) and summary["pairs"] == len(pairs)


def test_merge_with_previous_round_dedups_and_counts_rounds(tmp_path):
    with TeacherServer(arith_responder) as srv:
        assert _explore_api(srv.url, tmp_path / "r1").returncode == 0
        first = _rows(tmp_path / "r1" / "sft.jsonl")
        prev = tmp_path / "prev.jsonl"  # round 1's rows, one of them again with different spacing, plus an old row
        dup = json.loads(json.dumps(first[0]))
        dup["messages"][-1]["content"] = dup["messages"][-1]["content"].replace("\n", "  \n ")
        old = {"messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}]}
        prev.write_text("".join(json.dumps(r) + "\n" for r in [*first, dup, old]))
        r = _explore_api(srv.url, tmp_path / "r2", "--merge-with", str(prev))
    assert r.returncode == 0, r.stderr
    merged = _rows(tmp_path / "r2" / "merged.jsonl")
    new = _rows(tmp_path / "r2" / "sft.jsonl")
    assert all(x["round"] == 2 for x in new)  # previous round + 1
    assert merged[: len(first)] == first and old in merged  # earlier rows kept, in order
    # same sampling settings -> round 2 drew the same rollouts as round 1: all duplicates
    assert len(merged) == len(first) + 1
    s = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert s["duplicates_dropped"] == len(new) + 1 and s["merged_rows"] == len(merged)


def test_merge_scope_explored_and_no_dedup(tmp_path):
    pool = _rows(POOL)
    with TeacherServer(arith_responder) as srv:
        assert _explore_api(srv.url, tmp_path / "r1").returncode == 0
        first = _rows(tmp_path / "r1" / "sft.jsonl")
        # the previous set: round 1's rows (problems of this run), a row of a pool problem past --limit 12,
        # an old row without a problem field whose user message is no explored problem
        unexplored = {"problem": pool[20]["problem"], "messages": [
            {"role": "user", "content": pool[20]["problem"]}, {"role": "assistant", "content": "x"}]}
        old = {"messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}]}
        # and a row with an id of no explored problem (rows with an id are matched by it, not by their text)
        other_id = {**first[0], "id": "elsewhere-1"}
        prev = tmp_path / "prev.jsonl"
        prev.write_text("".join(json.dumps(r) + "\n" for r in [*first, unexplored, old, other_id]))
        r = _explore_api(srv.url, tmp_path / "r2", "--merge-with", str(prev), "--merge-scope", "explored",
                         "--no-merge-dedup")
        assert r.returncode == 0, r.stderr
        # without --merge-with the merge flags would be ignored: refused instead
        bad = _explore_api(srv.url, tmp_path / "r3", "--no-merge-dedup")
    merged = _rows(tmp_path / "r2" / "merged.jsonl")
    new = _rows(tmp_path / "r2" / "sft.jsonl")
    # the explored problems' previous rows, then every new row, the reproduced ones included
    assert merged == [*first, *new] and len(new) == len(first)
    s = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert s["merged_previous_rows"] == len(first) and s["duplicates_dropped"] == 0
    assert bad.returncode != 0 and "--merge-with" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r3").exists()


def test_kill9_resume_samples_each_problem_once(sft_model, tmp_path):
    out = tmp_path / "ex"
    cmd = [sys.executable, "-m", "still_cli.cli", "explore", "--model", str(sft_model), "--data", str(POOL),
           "--limit", "48", "--n", "4", "--max-tokens", "48", "--batch-size", "8", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = out / "samples.jsonl"
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= 6, 120, poll=0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = path.read_text().splitlines()
    assert 6 <= len(before) < 48
    with open(path, "a") as f:
        f.write('{"id": "arith-rl-1-47", "sam')  # a torn last line
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after = path.read_text().splitlines()
    assert after[: len(before)] == before  # finished problems untouched, not resampled
    ids = [json.loads(x)["id"] for x in after]
    assert len(ids) == len(set(ids)) == 48
    assert len(_rows(out / "difficulty.jsonl")) == 48
    assert f"resuming: {len(before)} of 48 problems already explored" in r.stderr


def test_pairs_train_with_dpo(tiny_model, tmp_path):
    with TeacherServer(arith_responder) as srv:
        assert _explore_api(srv.url, tmp_path / "ex").returncode == 0
    r = run_cli("sft", "--model", str(tiny_model), "--data", str(tmp_path / "ex" / "pairs.jsonl"), "--method", "dpo",
                "--max-steps", "2", "--per-device-train-batch-size", "2", "-o", str(tmp_path / "dpo"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "dpo" / "model.safetensors").exists()


def test_stdout_output_and_stdin_input(tmp_path):
    problems = "".join(x + "\n" for x in POOL.read_text().splitlines()[:4])
    with TeacherServer(arith_responder) as srv:
        r = run_cli("explore", "--model", "t", "--backend", "openai", "--base-urls", srv.url, "--data", "-",
                    "--n", "4", "-o", "-", input=problems)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert rows and all(grade(x["messages"][-1]["content"], x["answer"]) for x in rows)
    assert not list(tmp_path.iterdir())
