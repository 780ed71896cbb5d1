"""The demo's tiny tokenizer trained on MATH text alone vs with the task's own text, side by side, one run.

    python benchmarks/task_tokenizer.py [--steps 60] [--repeats 2] [--seed 0]

Both sides build the demo's default model (hidden 128, MLP 384, the same init seed) with `init-model`;
the only difference is `--corpus`: the task side adds the demo's tokenizer corpus (`_tokenizer_corpus`:
the scripted teacher's traces of the training problems, tool traces of the big ones). Printed:
the mean tokens per row (prompt + response, chat template included) of the demo's two kinds of SFT row,
distilled traces and tool traces, under each tokenizer; then `still sft` on each kind, `--steps` steps
of 32 rows in the demo's settings (length chunks 4 for the distilled rows, unsplit for the tool rows),
runs alternating (math, task, math, task, ...) so machine noise hits both. The training loop's own
time (TRL's train_runtime) is compared: medians and their ratio per kind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from still_cli import tasks
    from still_cli.demo import BIG_DIGITS, BIG_OP, MAX_OPERAND, PLANS, _tokenizer_corpus
    from still_cli.stages.sft import SFTStageConfig, run as sft
    from transformers import AutoTokenizer

    from still_cli.tiny_model import InitModelConfig, init_model

    plan = PLANS[False]
    train = tasks.problems(plan.train, seed=args.seed, prefix="train", max_operand=MAX_OPERAND)
    big = tasks.big_problems(plan.big_train, seed=30_000 + args.seed, prefix="bigtrain", digits=BIG_DIGITS, op=BIG_OP)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        corpus = _tokenizer_corpus(tmp_path / "corpus.jsonl", train, big)
        rows = [json.loads(x) for x in Path(corpus).read_text().splitlines()]
        # the corpus rows are the SFT rows' text: the distilled traces, then the tool traces
        kinds = {"distilled": rows[: len(train)], "tool": rows[len(train):]}
        data = {}
        for kind, rs in kinds.items():
            data[kind] = tmp_path / f"{kind}.jsonl"
            data[kind].write_text("".join(json.dumps({"messages": [
                {"role": "user", "content": r["problem"]}, {"role": "assistant", "content": r["completion"]}]}) + "\n"
                for r in rs))
        models, toks = {}, {}
        for side, c in (("math", None), ("task", corpus)):
            models[side] = init_model(InitModelConfig(output=str(tmp_path / side), hidden_size=plan.hidden_size,
                                                      intermediate_size=plan.mlp_ratio * plan.hidden_size,
                                                      seed=args.seed, corpus=c))
            toks[side] = AutoTokenizer.from_pretrained(models[side])  # the one init-model trained and saved
        print(f"demo default model, seed {args.seed}, {len(train)} distilled rows, {len(big)} tool rows")
        print("rows | tokens per row, MATH-only tokenizer | with the task's text | ratio")
        for kind, rs in kinds.items():
            n = {side: statistics.mean(len(t.apply_chat_template(
                [{"role": "user", "content": r["problem"]}, {"role": "assistant", "content": r["completion"]}],
                tokenize=True, return_dict=True)["input_ids"]) for r in rs[::10]) for side, t in toks.items()}
            print(f"{kind} | {n['math']:.1f} | {n['task']:.1f} | {n['task'] / n['math']:.2f}")
        print(f"\nrows | SFT s per {args.steps} steps, MATH-only (median) | with the task's text | task / math")
        for kind in kinds:
            times: dict[str, list[float]] = {"math": [], "task": []}
            for r in range(args.repeats):
                for side in ("math", "task"):
                    out = tmp_path / f"sft-{kind}-{side}-{r}"
                    with contextlib.redirect_stdout(sys.stderr):
                        sft(SFTStageConfig(model=str(models[side]), data=str(data[kind]), output=str(out),
                                           max_steps=args.steps, learning_rate=3e-3, lr_scheduler_type="cosine",
                                           warmup_steps=20, per_device_train_batch_size=32,
                                           max_length=160 if kind == "distilled" else 256, save_steps=10_000,
                                           logging_steps=args.steps, seed=args.seed,
                                           length_chunks=plan.sft_chunks if kind == "distilled" else 1))
                    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
                    times[side].append(last["train_runtime"])
            m, t = statistics.median(times["math"]), statistics.median(times["task"])
            print(f"{kind} | {m:.1f} | {t:.1f} | {t / m:.2f}")


if __name__ == "__main__":
    main()
