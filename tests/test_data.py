import json

import pytest

from still_cli.data import BENCHMARKS, JsonlAppender, read_problems, read_rows, write_rows
from still_cli.errors import DataError

ROWS = [{"id": "a", "problem": "What is 1+1?", "answer": "2", "level": 1},
        {"id": "b", "problem": "Solve $x^2=4$, $x>0$.", "answer": "2", "level": None, "subject": "Algebra"}]


@pytest.mark.parametrize("name, count", [("aime2024", 30), ("aime2025", 30), ("math500", 500),
                                         ("amc2023", 40), ("gsm8k", 1319), ("math_train", 7500)])
def test_benchmark_row_counts(name, count):
    rows = read_problems(name)
    assert len(rows) == count == BENCHMARKS[name].rows
    assert all(r["problem"] and isinstance(r["answer"], str) for r in rows)


def test_math500_keeps_level_and_subject():
    rows = read_problems("math500")
    assert {r["level"] for r in rows} == {1, 2, 3, 4, 5} and all(r["subject"] for r in rows)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ""])
def test_round_trip_across_formats(tmp_path, suffix):
    dest = tmp_path / f"rows{suffix}"
    assert write_rows(ROWS, dest) == 2
    back = read_problems(dest)
    assert [r["id"] for r in back] == ["a", "b"]
    assert back[1]["problem"] == ROWS[1]["problem"] and back[1]["subject"] == "Algebra"
    assert back[0]["level"] == 1


def test_stdin_and_stdout(monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in ROWS)))
    rows = read_rows("-")
    write_rows(rows, "-")
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == ROWS


def test_column_mapping_and_generated_ids(tmp_path):
    p = tmp_path / "foreign.jsonl"
    p.write_text(json.dumps({"question": "Q1", "gt_answer": 5}) + "\n")
    (row,) = read_problems(p, problem_field="question", answer_field="gt_answer")
    assert row["problem"] == "Q1" and row["answer"] == "5" and row["id"].startswith("p-")
    assert read_problems(p, problem_field="question", answer_field="gt_answer")[0]["id"] == row["id"]  # stable


@pytest.mark.parametrize("content, message", [
    ('{"problem": "a", "answer": "1"}\nnot json\n', r":2: not valid JSON"),
    ('[1, 2]\n', r":1: expected a JSON object"),
    ('{"question": "a", "answer": "1"}\n', r"row 1: no 'problem' field .*--problem-field"),
    ('{"problem": "a"}\n', r"row 1: no 'answer'.*--answer-field"),
    ('{"problem": "", "answer": "1"}\n', r"row 1: 'problem' must be a non-empty string"),
    ('{"id": 1, "problem": "a", "answer": "1"}\n{"id": 1, "problem": "b", "answer": "2"}\n', r"row 2: duplicate id"),
    ('\n', r"is empty"),
])
def test_malformed_rows(tmp_path, content, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(DataError, match=message):
        read_problems(p)


def test_missing_dataset_lists_the_options():
    with pytest.raises(DataError, match=r"not found; give .* \(aime2024"):
        read_problems("no_such_dataset")


def test_appender_repairs_a_partial_last_line(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_text('{"k": 1}\n{"k": 2}\n{"k": 3, "tru')  # killed mid-write
    with JsonlAppender(p) as app:
        assert [r["k"] for r in app.existing] == [1, 2] and app.repaired_bytes > 0
        app.write({"k": 3})
    assert [json.loads(x)["k"] for x in p.read_text().splitlines()] == [1, 2, 3]
