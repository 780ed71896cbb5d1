"""Rows in, rows out: JSONL / JSON / Parquet / a local `datasets` folder / stdin, and the benchmark registry.

A *problem row* is `{"id": str, "problem": str, "answer": str, ...}` plus any optional fields
(`solution`, `level`, `subject`, ...), which pass through untouched. Foreign datasets map their
columns with `problem_field` / `answer_field` / `id_field` (e.g. `--problem-field question`).

Anywhere a dataset is expected you may give a benchmark name (`aime2024`), a file, a `datasets`
folder written by `save_to_disk`, or `-` for stdin; output `-` is stdout, so stages chain in pipes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .errors import DataError


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: str  # relative to the data folder
    rows: int
    description: str


# Shipped in data/ (provenance: data/PROVENANCE.md; checksums: data/SHA256SUMS).
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("aime2024", "benchmarks/aime2024.jsonl", 30, "AIME 2024 I+II, integer answers"),
    Benchmark("aime2025", "benchmarks/aime2025.jsonl", 30, "AIME 2025 I+II, integer answers"),
    Benchmark("math500", "benchmarks/math500.jsonl", 500, "MATH-500 (Lightman et al.), level + subject"),
    Benchmark("amc2023", "benchmarks/amc2023.jsonl", 40, "AMC 2023 (12A/12B), free-response form"),
    Benchmark("gsm8k", "benchmarks/gsm8k_test.jsonl", 1319, "GSM8K test split, numeric answers"),
    Benchmark("math_train", "train/math_train.jsonl", 7500, "training pool: MATH train split, level + subject"),
    Benchmark("deepscaler_aime", "train/deepscaler_aime_1983_2023.jsonl", 975,
              "training pool: AIME 1983-2023 with DeepScaleR difficulty ratings"),
]}


def data_dir() -> Path:
    """The shipped data: `STILL_DATA_DIR`, else inside the installed wheel, else the repo's `data/`."""
    env = os.environ.get("STILL_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    packaged = here / "data"
    return packaged if packaged.is_dir() else here.parent / "data"


def benchmark_path(name: str) -> Path:
    return data_dir() / BENCHMARKS[name].path


# ---------------------------------------------------------------------------------------------
# reading


def _parse_jsonl(stream: TextIO, label: str) -> Iterator[dict[str, Any]]:
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{label}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                            f"fix or remove that line") from None
        if not isinstance(row, dict):
            raise DataError(f"{label}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
        yield row


def iter_rows(source: str | Path) -> Iterator[dict[str, Any]]:
    """Yield raw rows from a benchmark name, a .jsonl/.json/.parquet file, a datasets folder, or `-`."""
    spec = str(source)
    if spec == "-":
        yield from _parse_jsonl(sys.stdin, "<stdin>")
        return
    if spec in BENCHMARKS:
        path = benchmark_path(spec)
    else:
        path = Path(spec)
    if not path.exists():
        names = ", ".join(BENCHMARKS)
        raise DataError(f"dataset {spec!r} not found; give a .jsonl/.json/.parquet file, a datasets folder, "
                        f"'-' for stdin, or a benchmark name ({names})")
    if path.is_dir():
        yield from _iter_datasets_folder(path)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix the file") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: a .json dataset must be a list of objects; use .jsonl for one per line")
        yield from data
    else:
        with open(path, encoding="utf-8") as f:
            yield from _parse_jsonl(f, str(path))


def _iter_datasets_folder(path: Path) -> Iterator[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(f"{path} is a folder but not a saved `datasets` dataset; "
                        f"give a folder written by Dataset.save_to_disk, or a file") from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise DataError(f"{path} holds splits {list(ds)}; save the one split you want as its own folder")
        ds = next(iter(ds.values()))
    yield from ds


def read_rows(source: str | Path) -> list[dict[str, Any]]:
    return list(iter_rows(source))


def problem_id(problem: str) -> str:
    """A stable id for a row that has none: a hash of its text, so resumes survive reordering."""
    return "p-" + hashlib.sha1(problem.encode("utf-8")).hexdigest()[:12]


def read_problems(source: str | Path, *, problem_field: str = "problem", answer_field: str = "answer",
                  id_field: str = "id", require_answer: bool = True) -> list[dict[str, Any]]:
    """Read and validate problem rows, mapping foreign column names onto `id` / `problem` / `answer`."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, raw in enumerate(iter_rows(source), 1):
        where = f"{source} row {i}"
        row = dict(raw)
        if problem_field not in row:
            raise DataError(f"{where}: no {problem_field!r} field (fields: {', '.join(map(str, raw))}); "
                            f"map the column with --problem-field")
        problem = row.pop(problem_field)
        if not isinstance(problem, str) or not problem.strip():
            raise DataError(f"{where}: {problem_field!r} must be a non-empty string, got {problem!r}")
        answer = row.pop(answer_field, None)
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            if require_answer:
                raise DataError(f"{where}: no {answer_field!r} (fields: {', '.join(map(str, raw))}); "
                                f"map the gold-answer column with --answer-field")
            answer = None
        elif not isinstance(answer, str):
            raise DataError(f"{where}: {answer_field!r} must be a string or number, got {answer!r}")
        rid = row.pop(id_field, None)
        rid = problem_id(problem) if rid is None or rid == "" else str(rid)
        if rid in seen:
            raise DataError(f"{where}: duplicate id {rid!r}; ids must be unique within a dataset")
        seen.add(rid)
        rows.append({"id": rid, "problem": problem, "answer": answer, **row})
    if not rows:
        raise DataError(f"dataset {str(source)!r} is empty; give a file with at least one row")
    return rows


# ---------------------------------------------------------------------------------------------
# writing


def _jsonl_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=str) + "\n"


def write_rows(rows: Iterable[dict[str, Any]], dest: str | Path) -> int:
    """Write rows to `-` (stdout, JSONL), .jsonl, .json, .parquet, or a folder (datasets save_to_disk)."""
    spec = str(dest)
    if spec == "-":
        n = 0
        for row in rows:
            sys.stdout.write(_jsonl_line(row))
            n += 1
        sys.stdout.flush()
        return n
    path = Path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    if path.suffix in (".parquet", ""):  # columnar: every row gets every column (None where absent)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        rows = [{k: r.get(k) for k in keys} for r in rows]
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    elif path.suffix == "":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    elif path.suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(_jsonl_line(r) for r in rows)
    else:
        raise DataError(f"cannot write {spec!r}: unknown extension {path.suffix!r}; "
                        f"use .jsonl, .json, .parquet, a folder name without extension, or '-'")
    return len(rows)


class JsonlAppender:
    """Append-only JSONL output that survives SIGKILL: every row is one `write` + flush + fsync.

    On open, a partly written last line (the process died mid-write) is cut off, so the file is
    always whole rows; `existing` holds the rows already there, for resuming.
    """

    def __init__(self, path: str | Path, *, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.existing: list[dict[str, Any]] = []
        self.repaired_bytes = 0
        if self.path.exists():
            self._repair_and_load()
        self._f = open(self.path, "a", encoding="utf-8")

    def _repair_and_load(self) -> None:
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1  # keep everything up to the last complete line
        if end < len(raw):
            self.repaired_bytes = len(raw) - end
            with open(self.path, "r+b") as f:
                f.truncate(end)
        text = raw[:end].decode("utf-8")
        self.existing = list(_parse_jsonl(io.StringIO(text), str(self.path)))

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(_jsonl_line(row))
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        """Several rows in one write + fsync: a kill leaves all of them, or a torn tail that the next
        open cuts back to whole rows."""
        if rows:
            self._f.write("".join(_jsonl_line(r) for r in rows))
            self._f.flush()
            if self.fsync:
                os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StdoutWriter:
    """`-o -`: rows as JSONL on stdout, flushed per write so the next stage of a pipe sees them at once."""

    existing: list[dict[str, Any]] = []
    repaired_bytes = 0

    def write(self, row: dict[str, Any]) -> None:
        self.write_many([row])

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        sys.stdout.write("".join(_jsonl_line(r) for r in rows))
        sys.stdout.flush()

    def close(self) -> None:
        pass

    def __enter__(self) -> StdoutWriter:
        return self

    def __exit__(self, *exc) -> None:
        pass


def sidecar(output: str | Path, suffix: str) -> Path:
    """A file kept beside an output file: distilled.jsonl -> distilled{suffix} (e.g. .progress.jsonl)."""
    p = Path(output)
    return p.with_name((p.name[: -len(p.suffix)] if p.suffix else p.name) + suffix)


def rewrite_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace a JSONL file atomically (write a temp file, fsync, rename): readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(_jsonl_line(r) for r in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
