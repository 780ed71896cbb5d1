import time

import pytest

from conftest import run_cli

COMMANDS = ["distill", "sft", "explore", "rl", "hint-engineer", "eval", "init-model", "data"]


def test_root_help_lists_every_command_quickly():
    t = time.perf_counter()
    r = run_cli("--help")
    elapsed = time.perf_counter() - t
    assert r.returncode == 0
    for cmd in COMMANDS:
        assert cmd in r.stdout
    assert elapsed < 1.0, f"`still --help` took {elapsed:.2f}s; heavy imports leaked into import time"


def test_help_does_not_import_heavy_libraries():
    import subprocess
    import sys

    code = "import sys, still_cli.cli; print(sorted(m for m in ('torch','transformers','trl','datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help_with_an_example(cmd):
    r = run_cli(cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "still " in r.stdout  # a copy-pasteable example


def test_version():
    from still_cli import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and __version__ in r.stdout


def test_usage_error_exits_2():
    r = run_cli("eval", "--no-such-flag")
    assert r.returncode == 2


def test_library_error_is_one_line_and_debug_shows_traceback(tmp_path):
    r = run_cli("eval", "aime2024", "--model", str(tmp_path / "missing"), "-o", str(tmp_path / "out"))
    assert r.returncode == 1
    assert r.stderr.startswith("Error: model folder") and "Traceback" not in r.stderr
    r = run_cli("eval", "aime2024", "--model", str(tmp_path / "missing"), "-o", str(tmp_path / "out"),
                env={"STILL_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_data_list_shows_benchmarks_with_counts():
    r = run_cli("data", "list")
    assert r.returncode == 0
    for name, rows in [("aime2024", 30), ("aime2025", 30), ("math500", 500), ("amc2023", 40), ("gsm8k", 1319)]:
        assert name in r.stdout and str(rows) in r.stdout


def test_data_show_prints_jsonl_rows():
    import json

    r = run_cli("data", "show", "amc2023", "--limit", "3")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 3 and rows[0]["id"] == "amc2023-0" and rows[0]["answer"]


def test_data_convert_maps_columns_from_stdin_to_stdout():
    import json

    src = json.dumps({"question": "1+1?", "gt_answer": 2}) + "\n" + json.dumps({"question": "2+2?", "gt_answer": "4"})
    r = run_cli("data", "convert", "-", "-", "--problem-field", "question", "--answer-field", "gt_answer", input=src)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(x["problem"], x["answer"]) for x in rows] == [("1+1?", "2"), ("2+2?", "4")]
    assert all(x["id"].startswith("p-") for x in rows)


def test_malformed_row_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n')
    r = run_cli("data", "show", str(p))
    assert r.returncode == 1
    assert f"{p}:2" in r.stderr and "not valid JSON" in r.stderr


def test_recipe_and_flags_through_the_cli(tmp_path, tiny_model):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("n: 2\ntemperature: 0.9\nmax_tokens: 8\nlimit: 1\n")
    out = tmp_path / "run"
    r = run_cli("eval", "amc2023", "--model", str(tiny_model), "--recipe", str(recipe), "-o", "temperature=0.7",
                "--n", "3", "-o", str(out))
    assert r.returncode == 0, r.stderr
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["n"], cfg["temperature"], cfg["max_tokens"], cfg["limit"]) == (3, 0.7, 8, 1)
