"""`still distill` against loopback teacher servers: rejection sampling, decontamination, the API key
never written, kill -9 + resume with exact row sets, `-o -` into `still sft --data -`."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import run_cli, wait_until
from loopback import TeacherServer, arith_responder
from still_cli.grading import grade
from still_cli.traces import to_format

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "data" / "tiny" / "arith_rl.jsonl"
KEY = "sk-live-DO-NOT-LEAK-4242"


def _rows(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_rejection_sampling_keeps_exactly_the_verified_responses(tmp_path):
    out = tmp_path / "d.jsonl"
    with TeacherServer(arith_responder, faults=["429", "500", "drop"]) as srv:
        r = run_cli("distill", "--teacher", "t", "--base-urls", srv.url, "--data", str(POOL), "--limit", "24",
                    "--n", "3", "--max-retries", "5", "--request-timeout", "5", "-o", str(out))
        assert r.returncode == 0, r.stderr
        bodies = [q["body"] for q in srv.requests]
    rows = _rows(out)
    # recompute what the server answered to every successful request and grade it independently
    answered = {}
    for b in bodies:
        prompt = b["messages"][-1]["content"]
        answered.setdefault((prompt, b["seed"]), arith_responder(prompt, b))
    problems = _rows(POOL)[:24]
    gold = lambda prompt: next(p["answer"] for p in problems if p["problem"] + "\n" in prompt)  # noqa: E731
    verdicts = {k: grade(text, gold(k[0])) for k, text in answered.items()}
    n_correct = sum(verdicts.values())
    assert len(answered) == 72 and 0 < n_correct < 72
    assert all(grade(r["messages"][-1]["content"], r["answer"]) for r in rows)  # nothing wrong kept
    # every distinct correct text of a problem is kept once (identical texts are one trajectory)
    distinct = {(k[0], answered[k]) for k, ok in verdicts.items() if ok}
    assert len(rows) == len(distinct)
    assert {(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows} == distinct
    progress = _rows(tmp_path / "d.progress.jsonl")
    assert len(progress) == 24 and sum(p["num_correct"] for p in progress) == n_correct
    row = rows[0]
    assert row["messages"][0]["role"] == "user" and row["messages"][1]["content"].startswith("<think>\n")
    assert row["teacher"] == "t" and row["sampling"]["backend"] == "openai" and row["num_samples"] == 3
    assert row["pass_rate"] == row["num_correct"] / 3


def test_api_key_is_used_but_never_written(tmp_path):
    out = tmp_path / "run" / "d.jsonl"
    with TeacherServer(arith_responder) as srv:
        r = run_cli("distill", "--teacher", "t", "--base-urls", srv.url, "--data", str(POOL), "--limit", "4",
                    "--api-key-env", "STILL_TEST_KEY", "-o", str(out), env={"STILL_TEST_KEY": KEY, "STILL_DEBUG": "1"})
        assert r.returncode == 0, r.stderr
        assert all(q["headers"]["Authorization"] == f"Bearer {KEY}" for q in srv.requests)
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.name for p in written} == {"d.jsonl", "d.progress.jsonl", "d.config.yaml"}
    for p in written:
        assert KEY not in p.read_text(), p
    assert KEY not in r.stdout + r.stderr
    assert "api_key_env: STILL_TEST_KEY" in (tmp_path / "run" / "d.config.yaml").read_text()


def _start_server(tmp_path: Path, latency: float) -> tuple[subprocess.Popen, str]:
    port_file = tmp_path / "url"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "loopback.py"), "arith", str(port_file),
                             str(latency)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if port_file.exists() and port_file.read_text():
            return proc, port_file.read_text()
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def test_kill9_and_resume_gives_exactly_the_uninterrupted_rows(tmp_path):
    server, url = _start_server(tmp_path, latency=0.02)
    try:
        def cmd(out):
            return [sys.executable, "-m", "still_cli.cli", "distill", "--teacher", "t", "--base-urls", url,
                    "--data", str(POOL), "--limit", "80", "--n", "2", "--concurrency", "4", "-o", str(out)]
        full = tmp_path / "full.jsonl"
        assert subprocess.run(cmd(full), capture_output=True).returncode == 0
        out = tmp_path / "killed.jsonl"
        proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        progress = tmp_path / "killed.progress.jsonl"
        wait_until(lambda: progress.exists() and len(progress.read_text().splitlines()) >= 15, 60, poll=0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n_before = len(progress.read_text().splitlines())
        assert 15 <= n_before < 80, "the kill should land mid-run"
        with open(out, "a") as f:  # and a torn last line, as a kill mid-write leaves
            f.write('{"id": "arith-rl-1-79", "messa')
        r = subprocess.run(cmd(out), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        # the kill may land between a problem's rows and its ledger line: its whole rows then count as done
        resumed = re.search(r"resuming: (\d+) of 80 problems already finished", r.stderr)
        assert resumed and n_before <= int(resumed[1]) <= n_before + 1, r.stderr[-2000:]
    finally:
        server.kill()
    key = lambda r: (r["id"], r["sample_idx"], r["messages"][-1]["content"])  # noqa: E731
    got, want = [key(r) for r in _rows(out)], [key(r) for r in _rows(full)]
    assert len(got) == len(set(got)), "a row was written twice"
    assert set(got) == set(want)
    assert len(_rows(tmp_path / "killed.progress.jsonl")) == 80


def test_decontamination_drops_benchmark_problems_and_reports_them(tmp_path):
    aime = _rows(ROOT / "data" / "benchmarks" / "aime2024.jsonl")
    pool = tmp_path / "pool.jsonl"
    rows = [{"id": "copy", "problem": aime[0]["problem"], "answer": "1"},
            {"id": "reworded", "problem": "Consider this. " + aime[1]["problem"][:200], "answer": "1"},
            {"id": "clean-1", "problem": "What is 2 + 3?", "answer": "5"},
            {"id": "clean-2", "problem": "What is 7 - 4?", "answer": "3"}]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_cli("distill", "--teacher", "arith", "--backend", "scripted", "--data", str(pool),
                "--decontaminate", "aime2024,math500", "-o", str(tmp_path / "d.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "dropped 2 problem(s) {'aime2024': 2}" in r.stderr
    assert {x["id"] for x in _rows(tmp_path / "d.jsonl")} == {"clean-1", "clean-2"}


def test_stdout_output_pipes_into_sft(tiny_model, tmp_path):
    distill = subprocess.run([sys.executable, "-m", "still_cli.cli", "distill", "--teacher", "arith:0.5", "--backend",
                              "scripted", "--data", str(POOL), "--limit", "16", "--n", "2", "-o", "-"],
                             capture_output=True, text=True)
    assert distill.returncode == 0, distill.stderr
    rows = [json.loads(x) for x in distill.stdout.splitlines()]
    assert rows and all(grade(x["messages"][-1]["content"], x["answer"]) for x in rows)
    assert not list(tmp_path.iterdir())
    sft = run_cli("sft", "--model", str(tiny_model), "--data", "-", "--max-steps", "2", "--per-device-train-batch-size",
                  "4", "-o", str(tmp_path / "sft"), input=distill.stdout)
    assert sft.returncode == 0, sft.stderr
    assert sft.stdout.strip() == str(tmp_path / "sft") and (tmp_path / "sft" / "model.safetensors").exists()


def test_bad_rows_and_changed_settings_fail_with_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "problem": "What is 1 + 1?", "answer": "2"}\n{"id": "b", "problem": \n')
    r = run_cli("distill", "--teacher", "arith", "--backend", "scripted", "--data", str(bad), "-o", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1 and "bad.jsonl:2: not valid JSON" in r.stderr and r.stderr.count("\n") == 1
    ok = ["distill", "--teacher", "arith", "--backend", "scripted", "--data", str(POOL), "--limit", "3"]
    assert run_cli(*ok, "-o", str(tmp_path / "o.jsonl")).returncode == 0
    r = run_cli(*ok, "--n", "8", "-o", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1 and "n = 4, this run has 8" in r.stderr


def test_still2_format_keeps_thought_and_solution_verbatim():
    resp = "<think>\nstep one\n\nstep two\n</think>\n\nSo \\boxed{4}."
    s2 = to_format(resp, "still2")
    assert s2 == ("<|begin_of_thought|>\n\nstep one\n\nstep two\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n"
                  "So \\boxed{4}.\n\n<|end_of_solution|>")
    assert to_format(s2, "think") == "<think>\nstep one\n\nstep two\n</think>\n\nSo \\boxed{4}."
    assert to_format("step one\n</think>\n\nSo 4", "think", prompt_prefilled_think=True).startswith("<think>\nstep one")
    assert to_format("no tags at all", "still2") == "no tags at all"


def test_scripted_teacher_answers_the_given_share_directly_and_keeps_its_slip_pattern(tmp_path):
    def distill(teacher: str, name: str) -> list[dict]:
        r = run_cli("distill", "--teacher", teacher, "--backend", "scripted", "--data", str(POOL), "--n", "1",
                    "-o", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        return _rows(tmp_path / name)

    rows = distill("arith:0:0.3", "mixed.jsonl")
    responses = [x["messages"][-1]["content"] for x in rows]
    direct = [t for t in responses if t.startswith("<think>\n\n</think>")]  # as rows write an empty thought
    assert len(responses) == 256 and 0.2 < len(direct) / len(responses) < 0.4  # 256 draws at 0.3: sd 0.03
    # a direct answer is the empty thought and the right boxed answer, nothing else; the rest think
    assert all(t == f"<think>\n\n</think>\n\nThe answer is \\boxed{{{x['answer']}}}." for x, t in zip(rows, responses)
               if t in direct)
    assert all(t.startswith("<think>\nWe need ") for t in responses if t not in direct)
    assert all(grade(t, x["answer"]) for x, t in zip(rows, responses))
    # a zero direct rate draws nothing: arith:RATE writes exactly what it wrote before the option existed
    same = [[x["messages"] for x in distill(t, f"{i}.jsonl")] for i, t in enumerate(("arith:0.2:0", "arith:0.2"))]
    assert same[0] == same[1] and len(same[0]) < 256
    for bad in ("arith:0.1:2", "arith:0.1:x", "arith:0.1:0.3:1"):
        r = run_cli("distill", "--teacher", bad, "--backend", "scripted", "--data", str(POOL), "-o",
                    str(tmp_path / "bad.jsonl"))
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and bad.split(":", 1)[1] in r.stderr, r.stderr
