"""`still demo --quick` end to end: the report exists, the final model is far above the untrained one,
tools beat no tools on the big-number problems, and a rerun (of the moved run folder) resumes instead
of redoing, also after a kill that left steps without their done.json."""

import json
import time

from conftest import run_cli


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--quick", "-o", str(out), timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("report.md", "report.json", "accuracy.png", "rl.png"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert report["direct_answers"] == 0.3 and all("no_thought" in s["heldout"] for s in stages)
    first, last = stages[0], stages[-1]
    assert first["stage"] == "untrained" and first["heldout"]["accuracy"] <= 0.02
    # measured at --quick alone on 2 cores, default teacher, seeds 0-4 (1 eval sample per problem): held-out
    # 0 -> 67.5 / 29.5 / 20.5 / 76.0 / 81.0%, big 0 -> 86.7 / 100 / 100 / 100 / 100% with tools (3 samples, same
    # training: 71.0 / 26.7 / 18.5 / 74.2 / 76.3, big 88.3-100; a cosine tool stage of 450 steps: seed 0 big 6%)
    assert last["heldout"]["accuracy"] >= first["heldout"]["accuracy"] + 0.05
    assert last["big"]["tool_calls"] > 0.5  # the sandbox is called where the numbers are too big
    assert last["big"]["accuracy"] >= last["big_no_tools"]["accuracy"] + 0.5
    assert "| untrained |" in r.stdout and "tools on big problems" in r.stdout
    # report.md names the eval settings report.json recorded (--quick: 1 sample per problem)
    assert report["eval"] == {"samples": 1, "temperature": 0.6, "top_p": 0.95, "top_k": 50}
    assert "pass@1 (1 sample per problem, T 0.6, top-p 0.95, top-k 50;" in (out / "report.md").read_text()
    # every stage's outputs and configs are kept
    assert (out / "2-distill-sft" / "distilled.config.yaml").exists()
    assert (out / "4-rl-staged" / "done.json").exists()
    # a run killed in a step's evals (its training checkpointed, no done.json yet) continues that step from
    # the checkpoint instead of refusing the folder (sft and rl refuse earlier runs without --resume)
    for step in ("4-rl-staged", "5-hint-engineer-sft-tools"):
        (out / step / "done.json").unlink()
    killed = run_cli("demo", "--quick", "-o", str(out), timeout=600)
    assert killed.returncode == 0, killed.stderr[-2000:]
    assert killed.stderr.count("already done, skipping") == 3
    resumed = json.loads((out / "report.json").read_text())["stages"]
    assert [(s["heldout"], s["big"]) for s in resumed] == [(s["heldout"], s["big"]) for s in stages]
    # a rerun skips the finished stages, also when the run folder was moved (paths are kept relative)
    moved = out.rename(tmp_path / "moved")
    t = time.perf_counter()
    again = run_cli("demo", "--quick", "-o", str(moved), timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert time.perf_counter() - t < 60
    assert again.stderr.count("already done, skipping") == 5
    rerun = json.loads((moved / "report.json").read_text())["stages"]
    assert [(s["heldout"], s["big"]) for s in rerun] == [(s["heldout"], s["big"]) for s in stages]
    assert all(s["model"].startswith(str(moved)) for s in rerun)
    # other settings never resume (or overwrite) this run's steps
    other = run_cli("demo", "--quick", "--seed", "1", "-o", str(moved), timeout=120)
    assert other.returncode == 1 and "with seed = 0, this run has 1" in other.stderr
    assert other.stderr.count("\n") == 1 and (moved / "4-rl-staged" / "done.json").exists()
    rep = run_cli("report", str(moved))
    assert rep.returncode == 0 and "| hint-engineer + sft, eval --tools |" in rep.stdout


def test_no_thought_share_counts_only_empty_thoughts(tmp_path):
    from still_cli.data import read_rows
    from still_cli.demo import _no_thought, _thought_accuracy
    from still_cli.report import table_markdown, verdicts

    samples = tmp_path / "samples.jsonl"
    responses = ["<think>\n</think>\n\nThe answer is \\boxed{3}.", "<think>\n\n</think>\n\nThe answer is \\boxed{4}.",
                 "<think>\nWe need 1 + 2.\n1 + 2 = 3\n</think>\n\nThe answer is \\boxed{3}.", "\\boxed{3}"]
    correct = [True, False, True, False]
    samples.write_text("".join(json.dumps({"response": t, "correct": c}) + "\n" for t, c in zip(responses, correct)))
    assert _no_thought(read_rows(samples)) == 0.5
    # only the response with a thought counts (right); the one with no thought section (wrong) does not
    assert _thought_accuracy(read_rows(samples)) == 1.0
    assert _thought_accuracy(read_rows(samples)[:2]) is None  # all direct answers: no accuracy to give
    row = lambda acc, nt, ta=None: {"accuracy": acc, "by_level": {"1": acc}, "mean_length": 50, "tool_calls": 0.0,
                                    **({} if nt is None else {"no_thought": nt}),
                                    **({} if ta is None else {"thought_accuracy": ta})}
    report = {"stages": [{"stage": "sft", "heldout": row(0.4, None), "big": row(0.0, None)},
                         {"stage": "self-improve", "heldout": row(0.43, 0.20, 0.5), "big": row(0.0, 0.0)},
                         {"stage": "rl", "heldout": row(0.49, 0.0, 0.49), "big": row(0.0, 0.0)}]}
    table = table_markdown(report)
    assert "| no thought % | acc with thought |" in table and "| sft | 40.0 | 40.0 | 50 | - | - |" in table
    assert "| rl | 49.0 | 49.0 | 50 | 0.0 | 49.0 |" in table
    said = verdicts(report)
    assert said[-1] == ("- rl: held-out accuracy 43.0 -> 49.0, raised; answers with no thought 20.0% -> 0.0%; "
                        "accuracy of answers with a thought 50.0 -> 49.0.")
    assert "no thought" not in said[0]


def test_verdicts_use_the_paired_standard_error_over_problems():
    """A change counts when the per-problem differences put it 2 standard errors from zero (hand-computed:
    10 of 100 problems gained -> +10.0 +- 3.0 points, 3.3 SE; 2 gained and 1 lost -> +1.0 +- 1.7)."""
    from still_cli.report import verdicts

    base = {f"p{i}": float(i % 2) for i in range(100)}
    zeros = [k for k, v in base.items() if v == 0]
    gained = {**base, **{k: 1.0 for k in zeros[:10]}}
    mixed = {**gained, **{k: 1.0 for k in zeros[10:12]}, "p1": 0.0}

    def row(pp):
        return {"accuracy": sum(pp.values()) / len(pp), "by_level": {}, "mean_length": 50, "tool_calls": 0.0,
                "per_problem": pp}

    big = {f"b{i}": 0.0 for i in range(20)}
    report = {"stages": [{"stage": "sft", "heldout": row(base), "big": row(big)},
                         {"stage": "self-improve", "heldout": row(gained), "big": row(big)},
                         {"stage": "rl", "heldout": row(mixed), "big": row({**big, "b0": 1.0}),
                          "big_no_tools": row(big)}]}
    said = verdicts(report)
    assert said[0] == ("- self-improve: held-out accuracy 50.0 -> 60.0, raised (+10.0 ± 3.0 points paired over 100 "
                       "problems, 3.3 standard errors).")
    assert said[1] == ("- rl: held-out accuracy 60.0 -> 61.0, no change beyond noise (+1.0 ± 1.7 points paired over "
                       "100 problems, under 2 standard errors).")
    # 1 of 20 big problems gained: +5.0 +- 5.0, 1.0 SE
    assert said[2] == ("- tools on big problems: 0.0 without the sandbox -> 5.0 with it, no gain shown (+5.0 ± 5.0 "
                       "points paired over 20 problems, under 2 standard errors).")


def test_task_tokenizer_corpus_shortens_the_task_text(tmp_path):
    """The default plan trains the tiny BPE on the task's own text too (init-model --corpus): the teacher's
    traces and the tool traces take fewer tokens, and the corpus holds the training problems it was given, no
    others (the demo gives it the training pool, which shares no problem text with the held-out sets)."""
    from transformers import AutoTokenizer

    from still_cli import tasks
    from still_cli.demo import PLANS, _tokenizer_corpus
    from still_cli.tiny_model import build_tokenizer

    assert PLANS[False].task_tokenizer and not PLANS[True].task_tokenizer
    train = tasks.problems(1000, seed=0, prefix="train", max_operand=9)
    big = tasks.big_problems(800, seed=30_000, prefix="bigtrain", digits=2, op="*")
    corpus = _tokenizer_corpus(tmp_path / "corpus.jsonl", train, big)
    rows = [json.loads(x) for x in open(corpus)]
    assert len(rows) == 1800 and {r["problem"] for r in rows} == {p["problem"] for p in train + big}
    tool = rows[-1]["completion"]
    assert "```python\nprint(" in tool and "```output\n" in tool and tool.endswith("\\boxed{" + big[-1]["answer"] + "}.")
    held_out = [tasks.teacher_trace(p["problem"]) for p in tasks.problems(200, seed=10_000, prefix="t", max_operand=9)]
    plain, task = build_tokenizer(1024), build_tokenizer(1024, corpus)
    for text in held_out + [tool]:
        assert task.decode(task(text)["input_ids"]) == text
    n_plain = sum(len(plain(t)["input_ids"]) for t in held_out)
    n_task = sum(len(task(t)["input_ids"]) for t in held_out)
    assert n_task < 0.93 * n_plain, (n_task, n_plain)
    assert len(task(tool)["input_ids"]) < 0.8 * len(plain(tool)["input_ids"])
    assert type(task).__name__ == "Qwen2Tokenizer"  # Qwen2's own split rule: AutoTokenizer reloads it as trained
    task.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again(tool)["input_ids"] == task(tool)["input_ids"]
