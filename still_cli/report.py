"""`still report`: the demo's table, verdicts and plots, and a summary of any single stage's run folder.

A demo run folder (its report.json) gets its markdown table, plain statements of what each stage changed
(judged by the paired per-problem standard error), `accuracy.png` and `rl.png`; an eval folder its pass@1;
an sft or rl folder its first -> last loss / reward / accuracy / length, and `rl.png` for rl. Written by
hand: no library renders this pipeline's stage-by-stage comparison.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any


def table_markdown(report: dict[str, Any]) -> str:
    """The demo's table: one row per stage, held-out accuracy (overall, per level) and the behaviour columns."""
    levels = sorted({lv for st in report["stages"] for lv in st["heldout"]["by_level"]})
    head = ["stage", "held-out acc", *[f"L{lv}" for lv in levels], "mean len", "no thought %", "acc with thought",
            "tool calls", "big acc", "big acc, no tools"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for st in report["stages"]:
        h, b = st["heldout"], st["big"]
        nb = st.get("big_no_tools", b)
        lines.append("| " + " | ".join([st["stage"], pct(h["accuracy"]), *[pct(h["by_level"].get(lv)) for lv in levels],
                                        f"{h['mean_length']:.0f}", pct(h.get("no_thought")),
                                        pct(h.get("thought_accuracy")), f"{h['tool_calls']:.2f}",
                                        pct(b["accuracy"]), pct(nb["accuracy"])]) + " |")
    return "\n".join(lines)


def verdicts(report: dict[str, Any]) -> list[str]:
    """What the numbers show, stated plainly, including effects that did not show."""
    st = {s["stage"]: s for s in report["stages"]}
    names = [s["stage"] for s in report["stages"]]
    acc = lambda n: st[n]["heldout"]["accuracy"]  # noqa: E731
    n_test = report.get("heldout_size")
    out = []
    for prev, cur in zip(names, names[1:]):
        paired = _paired(st[prev]["heldout"], st[cur]["heldout"])
        if paired:  # a change counts when it is 2 standard errors of the paired difference or more
            word = _paired_words(*paired, "raised", "lowered", "no change beyond noise")
        else:  # reports written before per-problem results were kept
            delta = acc(cur) - acc(prev)
            word = ("raised" if delta > 0.02 else "lowered" if delta < -0.02 else "did not change (within ±2 points)") \
                + (f" ({n_test} problems)" if n_test else "")
        nt = [st[n]["heldout"].get("no_thought") for n in (prev, cur)]
        moved = None not in nt and abs(nt[1] - nt[0]) > 0.02
        ta = [st[n]["heldout"].get("thought_accuracy") for n in (prev, cur)]
        out.append(f"- {cur}: held-out accuracy {100 * acc(prev):.1f} -> {100 * acc(cur):.1f}, {word}"
                   + (f"; answers with no thought {100 * nt[0]:.1f}% -> {100 * nt[1]:.1f}%" if moved else "")
                   + (f"; accuracy of answers with a thought {100 * ta[0]:.1f} -> {100 * ta[1]:.1f}"
                      if moved and None not in ta else "") + ".")
    last = st[names[-1]]
    if "big_no_tools" in last:
        w, wo = last["big"]["accuracy"], last["big_no_tools"]["accuracy"]
        paired = _paired(last["big_no_tools"], last["big"])
        word = (_paired_words(*paired, "tools help", "tools hurt", "no gain shown") if paired
                else "tools help" if w > wo + 0.02 else "no gain shown")
        out.append(f"- tools on big problems: {100 * wo:.1f} without the sandbox -> {100 * w:.1f} with it, {word}.")
    return out


def _paired(prev: dict[str, Any], cur: dict[str, Any]) -> tuple[float, float, int] | None:
    """Two stages' accuracy difference on the same held-out problems and its standard error (per-problem
    differences, so problem difficulty cancels out; as in Miller 2024, "Adding Error Bars to Evals")."""
    a, b = prev.get("per_problem"), cur.get("per_problem")
    ids = [k for k in (a or {}) if k in (b or {})]
    if len(ids) < 2:
        return None
    diffs = [b[k] - a[k] for k in ids]
    return statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs)), len(diffs)


def _paired_words(d: float, se: float, n: int, up: str, down: str, neither: str) -> str:
    spread = f"{round(100 * d, 1) + 0.0:+.1f} ± {100 * se:.1f} points paired over {n} problems"  # no "-0.0"
    if d != 0 and abs(d) >= 2 * se:
        return f"{up if d > 0 else down} ({spread}" + (f", {abs(d) / se:.1f} standard errors)" if se else ")")
    return f"{neither} ({spread}, under 2 standard errors)"


def _samples_words(n: int) -> str:
    return "1 sample" if n == 1 else f"mean over {n} samples"


def write_report(out: Path, report: dict[str, Any]) -> None:
    # the sampling settings come from report.json itself (the demo records them), so this module needs nothing
    # from the demo's; a report.json written before they were recorded says so instead
    e = report.get("eval")
    how = (f"{_samples_words(e['samples'])} per problem, T {e['temperature']}, top-p {e['top_p']}, top-k {e['top_k']}"
           if e else "sampling settings not recorded in this report.json")
    md = ["# still demo report", "", f"seed {report['seed']}, {'quick' if report['quick'] else 'default'} settings; "
          f"pass@1 ({how}; 1 sample for the untrained model) on held-out "
          "problems (levels = number of operations) and on 'big' problems (products of two 2-digit numbers).",
          "", table_markdown(report), "", "What it shows:", "", *verdicts(report), ""]
    (out / "report.md").write_text("\n".join(md))
    _plots(out, report)


def _plots(out: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["stage"] for s in report["stages"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(names)), [100 * s["heldout"]["accuracy"] for s in report["stages"]], label="held-out")
    ax.plot(range(len(names)), [100 * s["big"]["accuracy"] for s in report["stages"]], "o-", color="C1",
            label="big problems")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy %")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)
    metrics = sorted(out.glob("*/rl/metrics.jsonl"))
    if metrics:
        rows = [json.loads(x) for x in metrics[0].read_text().splitlines() if x.strip()]
        _plots_rl(out, [r for r in rows if "reward" in r])


def report_main(run_dir: str) -> str:
    """`still report RUN_DIR`: the table and plots for a demo run folder, or a summary of any run folder."""
    out = Path(run_dir)
    if (out / "report.json").exists():
        report = json.loads((out / "report.json").read_text())
        write_report(out, report)
        return (out / "report.md").read_text()
    return summarize_run(out)


def summarize_run(out: Path) -> str:
    """A run folder of a single stage: eval results, sft/rl metrics (with an rl.png of the curves)."""
    from .errors import DataError

    lines = [f"# {out}", ""]
    if (out / "results.json").exists():
        for bench, r in json.loads((out / "results.json").read_text()).items():
            lines.append(f"- {bench}: pass@1 {100 * r['pass@1']:.1f} over {r['problems']} problems, "
                         f"mean length {r['mean_length']:.0f}" + (f", tool calls {r['tool_calls']:.2f}"
                                                                  if "tool_calls" in r else ""))
    if (out / "metrics.jsonl").exists():
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        steps = [r for r in rows if "loss" in r or "reward" in r]
        if steps:
            first, last = steps[0], steps[-1]
            for key in ("loss", "reward", "accuracy", "completions/mean_length"):
                if key in first and key in last:
                    lines.append(f"- {key}: {first[key]:.4g} (step {first.get('step')}) -> {last[key]:.4g} "
                                 f"(step {last.get('step')})")
        if any("reward" in r for r in rows):
            _plots_rl(out, [r for r in rows if "reward" in r])
            lines.append(f"- curves: {out / 'rl.png'}")
    if len(lines) == 2:
        raise DataError(f"{out} holds no report.json, results.json or metrics.jsonl; give a demo, eval, sft or rl "
                        f"run folder")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def stage_starts(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(step, stage name) where each curriculum stage begins in rl metrics rows (each row names its stage)."""
    return [(r.get("global_step", r.get("step")), r["stage"]) for k, r in enumerate(rows)
            if r.get("stage") and (k == 0 or rows[k - 1].get("stage") != r["stage"])]


def _plots_rl(out: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r.get("global_step", r.get("step")) for r in rows]
    starts = stage_starts(rows)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, title in zip(axes, ["reward", "accuracy", "completions/mean_length"],
                              ["reward", "accuracy", "response length"]):
        ax.plot(steps, [r.get(key) for r in rows])
        for x, name in starts if len(starts) > 1 else []:
            ax.axvline(x, ls=":", color="grey")
            ax.annotate(name, (x, 1), xycoords=("data", "axes fraction"), xytext=(2, -10),
                        textcoords="offset points", fontsize=8, color="grey")
        ax.set_title(title)
        ax.set_xlabel("RL step")
    fig.tight_layout()
    fig.savefig(out / "rl.png", dpi=100)
    plt.close(fig)
