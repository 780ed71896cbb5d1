"""The `still` command line: parse, dispatch, and turn errors into one-line messages. No logic here.

Stage commands are generated from their config dataclasses, so every config field is a YAML key, a
`-o key=value` override and a `--flag` of the same name. Heavy libraries (torch, transformers, trl)
are imported inside the stages' `run()`, never at import time: `still --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys
import types
from typing import Any, Literal, Optional, Union, get_args, get_origin

import typer

from . import __version__
from .config import config_fields, field_types, help_of
from .errors import StillError

app = typer.Typer(
    name="still",
    help=(
        "Slow-thinking training from one CLI: distill -> sft -> explore -> rl -> tools -> eval.\n\n"
        "Quick start (no download, CPU):\n\n"
        "  still demo --quick            # the whole loop on a tiny model, with a report\n\n"
        "  still init-model runs/tiny\n\n"
        "  still data list\n\n"
        "  still eval aime2024 --model runs/tiny --n 2 --max-tokens 64 -o runs/eval\n\n"
        "Every stage takes --recipe FILE.yaml and -o key=value overrides; `-` means stdin/stdout."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Shipped benchmarks and dataset conversion.", no_args_is_help=True,
                       epilog="Examples:\n\n  still data list\n\n  still data show aime2024 --limit 3\n\n"
                              "  still data convert their.parquet mine.jsonl --problem-field question")
app.add_typer(data_app, name="data", help="List, show and convert datasets (benchmarks ship in data/).")

OVERRIDE_RE = re.compile(r"^[A-Za-z_][\w]*=")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"still {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# stage commands generated from config dataclasses


def _base_type(tp: Any) -> Any:
    """The type a CLI flag parses to, or None when the field is recipe-only (mappings, nested lists)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _base_type(inner[0]) if len(inner) == 1 else str
    if origin is Literal:
        return str
    if origin is list:
        (inner,) = get_args(tp) or (str,)
        return list if _base_type(inner) in (str, int, float) else None
    if tp in (str, int, float, bool):
        return tp
    return None


def _flag_values(cls, raw: dict[str, Any]) -> dict[str, Any]:
    """Typer values -> config values: list flags accept repeats and commas (`--k 1,4 --k 16`)."""
    import yaml

    hints = field_types(cls)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if _base_type(hints[name]) is list:
            value = [yaml.safe_load(x.strip()) for v in value for x in str(v).split(",") if x.strip()]
        out[name] = value
    return out


def stage_command(name: str, cls: type, run: str, *, summary: str, examples: list[str],
                  positional: str | None = None) -> None:
    """Register `still <name>`: options from `cls`'s fields; `run` is "module:function" (lazy import)."""
    fields = config_fields(cls)
    hints = field_types(cls)
    params: list[inspect.Parameter] = []
    flag_names: list[str] = []
    if positional:
        tp = _base_type(hints[positional])
        params.append(inspect.Parameter(
            positional, inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Optional[list[str]] if tp is list else Optional[str],
            default=typer.Argument(None, help=help_of(fields[positional]), show_default=False)))
    for fname, f in fields.items():
        if fname == positional or not f.init:
            continue
        tp = _base_type(hints[fname])
        if tp is None:
            continue  # recipe / -o only (mappings, lists of stages)
        flag = "--" + fname.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        helptext = help_of(f) + (f"  [default: {default}]" if default not in (None, "", [], ()) else "")
        if tp is bool:
            opt = typer.Option(None, f"{flag}/--no-{fname.replace('_', '-')}", help=helptext, show_default=False)
        else:
            opt = typer.Option(None, flag, help=helptext, show_default=False)
        ann = Optional[list[str]] if tp is list else Optional[tp]
        params.append(inspect.Parameter(fname, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=opt))
        flag_names.append(fname)
    params.append(inspect.Parameter("recipe", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                                    default=typer.Option(None, "--recipe", "-r", help="Recipe YAML (keys = the options here).")))
    params.append(inspect.Parameter(
        "o", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[list[str]],
        default=typer.Option(None, "-o", help="key=value override (repeatable), or the output path "
                                              "when the value is not key=value.", show_default=False)))

    def command(**kwargs: Any) -> None:
        from .config import resolve

        recipe = kwargs.pop("recipe")
        overrides: list[str] = []
        for v in kwargs.pop("o") or []:
            if OVERRIDE_RE.match(v):
                overrides.append(v)
            elif "output" in fields:
                if kwargs.get("output") not in (None, v):
                    raise StillError(f"two outputs given ({kwargs['output']!r} and {v!r}); give one -o PATH")
                kwargs["output"] = v
            else:
                raise StillError(f"-o {v!r} is not key=value and `still {name}` has no output; "
                                 f"write e.g. -o temperature=0.6")
        config = resolve(cls, recipe=recipe, overrides=overrides, flags=_flag_values(cls, kwargs))
        module, func = run.split(":")
        mod = __import__(f"still_cli.{module}", fromlist=[func])
        getattr(mod, func)(config)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__ = name.replace("-", "_")
    epilog = "Examples:\n\n" + "\n\n".join(f"  {e}" for e in examples)
    doc = (cls.__doc__ or summary).strip()
    app.command(name, help=doc, short_help=summary, epilog=epilog)(command)


def _register_stages() -> None:
    from .demo import DemoConfig
    from .stages.distill import DistillConfig
    from .stages.eval import EvalConfig
    from .stages.explore import ExploreConfig
    from .stages.hint_engineer import HintEngineerConfig
    from .stages.rl import RLConfig
    from .stages.sft import SFTStageConfig
    from .tiny_model import InitModelConfig

    stage_command(
        "distill", DistillConfig, "stages.distill:main",
        summary="Sample long chains of thought from a teacher; keep the verified ones as SFT rows.",
        examples=[
            "still distill --teacher Qwen/QwQ-32B --backend openai --base-urls http://gpu1:8000/v1,http://gpu2:8000/v1 "
            "--data math_train --n 4 --decontaminate aime2024,math500 -o distilled.jsonl",
            "still distill --teacher arith --backend scripted --data data/tiny/arith_rl.jsonl --n 2 -o distilled.jsonl",
            "still distill --teacher runs/big --backend hf --data - --max-tokens 512 -o - | still sft --model runs/tiny --data - -o runs/sft",
        ])
    stage_command(
        "explore", ExploreConfig, "stages.explore:main",
        summary="Many rollouts per problem: difficulty table, verified traces, preference pairs, self-improve merge.",
        examples=[
            "still explore --model runs/sft-tiny --data data/tiny/arith_rl.jsonl --n 8 --max-tokens 96 -o runs/explore",
            "still explore --model runs/sft --data math_train --n 16 --merge-with distilled.jsonl -o runs/explore-r1",
            "still sft --model runs/sft --data runs/explore-r1/merged.jsonl -o runs/sft-r1   # next round",
            "still sft --model runs/sft --data runs/explore-r1/pairs.jsonl --method dpo -o runs/dpo",
        ])
    stage_command(
        "hint-engineer", HintEngineerConfig, "stages.hint_engineer:main",
        summary="Insert code-use hints into traces (CoRT), continue them with a model + sandbox, keep verified ones.",
        examples=[
            "still hint-engineer --model Qwen/QwQ-32B --backend openai --data distilled.jsonl --n 4 -o hinted.jsonl",
            "still hint-engineer --model arith-tools --backend scripted --data distilled.jsonl -o hinted.jsonl",
            "still hint-engineer --model M --data distilled.jsonl --positions my_positions.jsonl -o hinted.jsonl",
        ])
    stage_command(
        "eval", EvalConfig, "stages.eval:main", positional="benchmarks",
        summary="Evaluate a model (or re-score given responses) on AIME, MATH-500, AMC, GSM8K or any file.",
        examples=[
            "still eval aime2024 math500 --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --n 16 "
            "--temperature 0.6 --top-p 0.95 --max-tokens 32768 -o runs/eval-r1",
            "still eval aime2024 --model runs/tiny --n 2 --max-tokens 64 --limit 4 -o runs/eval-tiny",
            "still eval --responses their_outputs.jsonl --answer-field gold --responses-field responses -o runs/rescore",
        ])
    stage_command(
        "sft", SFTStageConfig, "stages.sft:main",
        summary="Supervised fine-tuning (full or LoRA) on chat rows; DPO on preference pairs.",
        examples=[
            "still sft --model runs/tiny --data data/tiny/arith_sft.jsonl --max-steps 50 --learning-rate 1e-3 -o runs/sft",
            "still sft --model Qwen/Qwen2.5-32B-Instruct --data distilled.jsonl --recipe recipes/still2/sft.yaml -o runs/still2",
            "still sft --model runs/sft --data explored/pairs.jsonl --method dpo --use-peft --merge-lora -o runs/dpo",
            "still sft --model runs/tiny --data rows.jsonl -o runs/sft --resume   # after a crash",
        ])
    stage_command(
        "rl", RLConfig, "stages.rl:main",
        summary="GRPO with verifiable rewards and a difficulty-staged curriculum.",
        examples=[
            "still rl --model runs/sft-tiny --recipe recipes/tiny/staged_difficulty.yaml -o runs/rl-tiny",
            "still rl --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --data math_train "
            "--recipe recipes/staged_difficulty.yaml --difficulty runs/explore/difficulty.jsonl -o runs/rl",
            "accelerate launch --config_file recipes/accelerate/zero2.yaml -m still_cli.cli rl "
            "--model M --recipe recipes/still3/rl.yaml -o runs/rl",
            "still rl --model runs/sft --recipe recipes/tiny/rl.yaml -o runs/rl --resume   # after a crash",
        ])
    stage_command(
        "demo", DemoConfig, "demo:main",
        summary="The whole loop on a tiny model on CPU (distill, sft, explore, self-improve, rl, tools) with a report.",
        examples=["still demo", "still demo --quick -o runs/demo-quick", "still demo --seed 1 -o runs/demo-seed1"])
    stage_command(
        "init-model", InitModelConfig, "tiny_model:main", positional="output",
        summary="Build a tiny Qwen2-architecture model + tokenizer locally (tests, CI, demo; no download).",
        examples=["still init-model runs/tiny", "still init-model runs/wide --hidden-size 256 --num-hidden-layers 6"])


_register_stages()


@app.command("report")
def report(run_dir: str = typer.Argument(..., help="A demo, eval, sft or rl run folder.")) -> None:
    """Render the report of a run folder: a demo's table and plots, or an eval / sft / rl summary.

    Example:  still report runs/demo
    """
    from .report import report_main

    typer.echo(report_main(run_dir))


# ---------------------------------------------------------------------------------------------
# data helpers


@data_app.command("list")
def data_list() -> None:
    """List the shipped benchmarks and training pools with row counts (names usable as --data)."""
    from rich.console import Console
    from rich.table import Table

    from .data import BENCHMARKS, benchmark_path

    table = Table("name", "rows", "file", "what")
    for b in BENCHMARKS.values():
        table.add_row(b.name, str(b.rows), str(benchmark_path(b.name)), b.description)
    Console().print(table)


@data_app.command("show")
def data_show(
    name: str = typer.Argument(..., help="Benchmark name, file, datasets folder, or - for stdin."),
    limit: int = typer.Option(3, "--limit", "-n", help="Rows to print."),
    problem_field: str = typer.Option("problem", help="Column holding the problem text."),
    answer_field: str = typer.Option("answer", help="Column holding the gold answer."),
    id_field: str = typer.Option("id", help="Column holding the row id (hash of the problem when absent)."),
) -> None:
    """Print the first rows of a dataset as JSONL on stdout, validated and with columns mapped.

    Example:  still data show aime2024 --limit 3
    """
    from .data import read_problems, write_rows

    rows = read_problems(name, problem_field=problem_field, answer_field=answer_field, id_field=id_field)
    write_rows(rows[:limit], "-")


@data_app.command("convert")
def data_convert(
    source: str = typer.Argument(..., help="Input: benchmark name, .jsonl/.json/.parquet, datasets folder, or -."),
    dest: str = typer.Argument(..., help="Output: .jsonl/.json/.parquet, a folder (datasets), or - for stdout."),
    problem_field: str = typer.Option("problem", help="Column holding the problem text."),
    answer_field: str = typer.Option("answer", help="Column holding the gold answer."),
    id_field: str = typer.Option("id", help="Column holding the row id (hash of the problem when absent)."),
) -> None:
    """Validate problem rows, map foreign columns onto id/problem/answer, and write another format.

    Example:  still data convert their.parquet - --problem-field question --answer-field gt_answer
    """
    from rich.console import Console

    from .data import read_problems, write_rows

    n = write_rows(read_problems(source, problem_field=problem_field, answer_field=answer_field,
                                 id_field=id_field), dest)
    Console(stderr=True).print(f"wrote {n} rows to {dest}")


# ---------------------------------------------------------------------------------------------


def main() -> None:
    """Console entry point: typed errors become `Error: ...` on stderr and exit 1 (STILL_DEBUG=1: traceback)."""
    import logging

    handler = logging.StreamHandler(sys.stderr)  # stage progress notes; stdout is for results
    handler.setFormatter(logging.Formatter("[still] %(message)s"))
    logging.getLogger("still").addHandler(handler)
    logging.getLogger("still").setLevel(logging.DEBUG if os.environ.get("STILL_DEBUG") else logging.INFO)
    try:
        app(standalone_mode=False, prog_name="still")
    except StillError as e:
        if os.environ.get("STILL_DEBUG"):
            raise
        typer.echo(f"Error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("Interrupted. Rerun the same command to resume: finished rows are kept.", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    except Exception as e:
        # click's usage errors (typer vendors click, so match by shape): message + exit 2
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        raise
    finally:
        _destroy_process_group()


def _destroy_process_group() -> None:
    """Under `accelerate launch`, tear the process group down while the interpreter is whole: left to exit,
    Gloo's worker threads can abort a rank after its work is saved ("terminate called without an active
    exception", SIGABRT; pytorch/pytorch#190489), and the launcher then reports the run failed. Written here
    because neither transformers' Trainer nor accelerate destroys the group at the end of a run."""
    dist = sys.modules.get("torch.distributed")  # only if a stage imported torch
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
