"""`still rl`'s curriculum bookkeeping: the run's state file, stage folders and checkpoints, metrics rows
replayed on resume, the difficulty table (read, or estimated and appended per problem), and which
problems each stage trains on."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .rl import RLConfig

log = logging.getLogger("still.rl")


def _state_path(out: Path) -> Path:
    return out / "curriculum.json"


def has_run(output: str | Path) -> bool:
    """Whether an rl output folder holds an earlier run (what `--resume` continues)."""
    out = Path(output)
    return _state_path(out).exists() or (out / "stages").is_dir()


def load_state(out: Path) -> dict[str, Any]:
    p = _state_path(out)
    return json.loads(p.read_text()) if p.exists() else {"finished": [], "global_step": 0}


def state_model(out: Path, state: dict[str, Any]) -> str | None:
    """The model the finished stages left. Kept relative to the run folder, so a moved or copied folder
    still resumes (state files of earlier versions hold absolute paths, which the join leaves as they are)."""
    return str(out / state["model"]) if state.get("model") else None


def save_state(out: Path, state: dict[str, Any]) -> None:
    tmp = _state_path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, _state_path(out))  # atomic: a kill leaves the old or the new state, never half


def stage_dir(out: Path, k: int, stage: dict[str, Any]) -> Path:
    return out / "stages" / f"{k + 1}-{stage['name']}"


def last_checkpoint_step(ckpt_dir: Path) -> int | None:
    steps = [int(p.name.split("-")[1]) for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return max(steps) if steps else None


def trim_metrics(path: Path, stage: str, after_step: int) -> None:
    """Resuming a stage from checkpoint N replays steps > N: drop their old rows so none is duplicated."""
    if not path.exists():
        return
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    keep = [r for r in rows if not (r.get("stage") == stage and "event" not in r and r.get("step", 0) > after_step)]
    if len(keep) != len(rows):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, path)


def difficulty_table(c: RLConfig, out: Path, problems: list[dict[str, Any]], tokenizer: Any) -> dict[str, Any]:
    from ..data import JsonlAppender
    from ..difficulty import estimate, read_table

    if c.difficulty:
        return read_table(c.difficulty)
    path = out / "difficulty.jsonl"
    with JsonlAppender(path) as app:  # appended per problem: an interrupted estimate resumes
        have = {r["id"] for r in app.existing}
        todo = [p for p in problems if p["id"] not in have]
        if todo:
            from ..sampling import make_sampler

            log.info("estimating difficulty of %d problems with %s (%d samples each)", len(todo), c.model,
                     c.difficulty_samples)
            sampler = make_sampler("hf", c.model, tokenizer=tokenizer)
            for row in estimate(sampler, todo, n=c.difficulty_samples,
                                max_tokens=c.difficulty_max_tokens or c.max_completion_length,
                                temperature=c.temperature, top_p=c.top_p, template=c.prompt_template,
                                system_prompt=c.system_prompt, prefill_think=c.prefill_think, seed=c.seed,
                                model_name=c.model, timeout=c.grade_timeout):
                app.write(row)
    return read_table(str(path))


def stage_problems(c: RLConfig, stage: dict[str, Any], problems: list[dict[str, Any]],
                    table: dict[str, Any] | None) -> list[dict[str, Any]]:
    from ..difficulty import informative, level_of
    from ..errors import DataError

    if table is None:
        return problems
    chosen, counts, missing = [], {name: 0 for name in c.levels}, 0
    for p in problems:
        row = table.get(p["id"])
        if row is None:
            missing += 1
            continue
        lv = level_of(row["pass_rate"], c.levels)
        if lv is not None:
            counts[lv] += 1
        if (not stage.get("levels") or lv in stage["levels"]) and informative(
                row["pass_rate"], c.drop_always_solved, c.drop_never_solved):
            chosen.append(p)
    if missing:
        log.warning("%d of %d problems are not in the difficulty table; stage %r leaves them out", missing,
                    len(problems), stage["name"])
    if not chosen:
        raise DataError(f"stage {stage['name']!r} (levels {stage.get('levels')}) has no problem with a learning "
                        f"signal; problems per level: {counts}. Widen the level bounds or use other data")
    return chosen
