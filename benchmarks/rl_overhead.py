"""`still rl` vs calling TRL's GRPOTrainer directly with the same settings, side by side, one run.

    python benchmarks/rl_overhead.py [--steps 20] [--repeats 3]

Both sides do the same work end to end: load tokenizer + model, render the same prompts, train
`--steps` GRPO steps with the same reward function (still's accuracy reward, so grading cost is
equal), save the model. still adds its config checks, metrics.jsonl rows, curriculum state and
stage bookkeeping. Runs alternate (direct, still, direct, still, ...) so machine noise hits both;
the medians and still's overhead per training step are printed.
Target (issue 5): overhead under 10% of step time on the tiny model.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = dict(num_generations=4, per_device_train_batch_size=16, max_completion_length=48, temperature=1.0,
                learning_rate=1e-5, loss_type="grpo", beta=0.0, logging_steps=1, save_steps=10_000)


def direct(model_dir: str, data: Path, out: Path, steps: int) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from still_cli.data import read_problems
    from still_cli.sampling import render_prompt
    from still_cli.stages.rl import make_reward_funcs

    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    ds = Dataset.from_list([{"prompt": render_prompt(tok, p["problem"], "r1"), "answer": p["answer"]}
                            for p in read_problems(str(data))])
    args = GRPOConfig(output_dir=str(out / "checkpoints"), max_steps=steps, use_cpu=True, bf16=False,
                      gradient_checkpointing=False, report_to=["none"], seed=42, data_seed=42,
                      lr_scheduler_type="constant", **SETTINGS)
    trainer = GRPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                          reward_funcs=make_reward_funcs(["accuracy"], {tok.eos_token_id}, 5.0))
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    trainer.save_model(str(out))
    tok.save_pretrained(out)
    return time.perf_counter() - t


def still(model_dir: str, data: Path, out: Path, steps: int) -> float:
    from still_cli.stages.rl import RLConfig, run

    t = time.perf_counter()
    run(RLConfig(model=model_dir, data=str(data), output=str(out), max_steps=steps, rewards=["accuracy"], **SETTINGS))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import logging

    logging.disable(logging.WARNING)
    from still_cli.tiny_model import InitModelConfig, init_model

    root = Path(tempfile.mkdtemp())
    model_dir = str(init_model(InitModelConfig(output=str(root / "tiny"))))
    data = Path(__file__).resolve().parents[1] / "data" / "tiny" / "arith_rl.jsonl"
    times: dict[str, list[float]] = {"direct": [], "still": []}
    for i in range(args.repeats + 1):  # round 0 warms caches and is dropped
        for name in ("direct", "still"):
            out = root / f"{name}{i}"
            dt = (direct if name == "direct" else still)(model_dir, data, out, args.steps)
            shutil.rmtree(out)
            if i:
                times[name].append(dt)
    d, s = statistics.median(times["direct"]), statistics.median(times["still"])
    print(f"steps {args.steps}, repeats {args.repeats}")
    print(f"TRL directly : {d:7.2f} s  (median; {d / args.steps * 1000:.1f} ms per step incl. load and save)")
    print(f"still rl     : {s:7.2f} s  (median)")
    print(f"ratio still/direct: {s / d:.3f}; overhead per step: {(s - d) / args.steps * 1000:+.1f} ms "
          f"= {100 * (s - d) / d:+.1f}% of step time")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
