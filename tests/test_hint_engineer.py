"""Hint placement heuristics and `still hint-engineer` end to end with the scripted tool teacher."""

import json
from pathlib import Path

from conftest import run_cli
from still_cli.grading import grade
from still_cli.hints import (PROMPT_HINT, PYTHON_HINT, TRUST_HINT, find_long_calc, find_prompt, find_recheck,
                             find_reflection, hinted_prefix)

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "data" / "tiny" / "arith_rl.jsonl"


def _rows(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_hint_positions():
    t = "<think>\nLet me think.\n12 + 30 = 42\n42 - 5 = 37\n37 + 7 = 44\nWait, check.\n</think>\n\\boxed{44}"
    assert hinted_prefix(t, find_prompt(t)) == "<think>\n" + PROMPT_HINT
    assert hinted_prefix(t, find_long_calc(t)) == "<think>\nLet me think.\n" + PYTHON_HINT  # a run of 3 calc lines
    assert find_long_calc("<think>\n2 + 3 = 5\nso five\n</think>") is None
    assert find_long_calc("<think>\nSo 1234 * 5678 = 7006652\n</think>").position == len("<think>\n")  # big number
    assert hinted_prefix(t, find_reflection(t)).endswith("37 + 7 = 44\nWait, let me use python to check this.\n```python\n")
    assert find_recheck(t) is None  # no python output to doubt
    r = "<think>\n```python\nprint(2**10)\n```\n```output\n1024\n```\nSo 1024. Let me verify: 2^10 = 1024.\n</think>"
    assert hinted_prefix(r, find_recheck(r)).endswith("So 1024. " + TRUST_HINT)
    assert find_prompt("no thought here") is None


def test_hint_engineer_keeps_verified_tool_traces_and_resumes(tmp_path):
    traces = tmp_path / "distilled.jsonl"
    assert run_cli("distill", "--teacher", "arith", "--backend", "scripted", "--data", str(POOL), "--limit", "8",
                   "--n", "1", "-o", str(traces)).returncode == 0
    out = tmp_path / "hinted.jsonl"
    cmd = ["hint-engineer", "--model", "arith-tools", "--backend", "scripted", "--data", str(traces), "--n", "2",
           "-o", str(out)]
    # a first run over 5 of the 8 traces, 3 per generate call (two batches), as if stopped part-way
    part = run_cli(*cmd, "--limit", "5", "--batch-size", "3")
    assert part.returncode == 0, part.stderr
    assert len(_rows(tmp_path / "hinted.progress.jsonl")) == 5
    r = run_cli(*cmd)  # resumes: only the last 3 traces are continued
    assert r.returncode == 0, r.stderr
    assert "(5 resumed)" in r.stderr
    rows = _rows(out)
    assert len({x["id"] for x in rows}) == len(rows)
    assert rows and all(grade(x["messages"][-1]["content"], x["answer"]) and x["tool_calls"] >= 1 for x in rows)
    by_kind = {x["hint"] for x in rows}
    assert {"prompt", "reflect", "python"} <= by_kind
    for x in rows:
        text = x["messages"][-1]["content"]
        assert "```python\n" in text and "```output\n" in text
        if x["hint"] == "python":  # only where the trace had a run of >= 3 calculation lines (steps + check)
            assert x["problem"].count("+") + x["problem"].count("-") >= 2
    assert len(_rows(tmp_path / "hinted.progress.jsonl")) == 8
    again = run_cli(*cmd)
    assert again.returncode == 0 and _rows(out) == rows  # nothing redone, nothing duplicated


def test_manual_positions_and_bare_problems(tmp_path):
    traces = tmp_path / "t.jsonl"
    assert run_cli("distill", "--teacher", "arith", "--backend", "scripted", "--data", str(POOL), "--limit", "2",
                   "--n", "1", "-o", str(traces)).returncode == 0
    first = _rows(traces)[0]
    pos = tmp_path / "pos.jsonl"
    pos.write_text(json.dumps({"id": f"{first['id']}#0", "kind": "python", "position": len("<think>\n")}) + "\n")
    r = run_cli("hint-engineer", "--model", "arith-tools", "--backend", "scripted", "--data", str(traces),
                "--positions", str(pos), "-o", str(tmp_path / "h.jsonl"))
    assert r.returncode == 0, r.stderr
    rows = [x for x in _rows(tmp_path / "h.jsonl") if x["source_id"] == f"{first['id']}#0"]
    assert [x["hint"] for x in rows] == ["python"] and rows[0]["hint_position"] == len("<think>\n")
    r = run_cli("hint-engineer", "--model", "arith-tools", "--backend", "scripted", "--data", str(POOL),
                "--limit", "3", "-o", str(tmp_path / "b.jsonl"))
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp_path / "b.jsonl")
    assert len(rows) == 3 and all(x["hint"] == "prompt" for x in rows)
    assert all(x["messages"][-1]["content"].startswith("<think>\n" + PROMPT_HINT) for x in rows)
