"""`still sft` vs calling TRL's SFTTrainer directly with the same settings, side by side, one run.

    python benchmarks/sft_overhead.py [--steps 60] [--repeats 3]

Both sides do the same work end to end: load tokenizer + model, build the dataset from the same
rows, train `--steps` steps, save the model. Runs alternate (direct, still, direct, still, ...) so
machine noise hits both; the medians and still's overhead per training step are printed.
Target (issue 5): overhead under 10% of step time on the tiny model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def direct(model_dir: str, rows: list[dict], out: Path, steps: int) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    ds = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    args = SFTConfig(output_dir=str(out / "checkpoints"), max_steps=steps, learning_rate=1e-3, per_device_train_batch_size=16,
                     lr_scheduler_type="cosine", gradient_checkpointing=False, bf16=False, use_cpu=True,
                     save_strategy="steps", save_steps=10_000, logging_steps=10, report_to=["none"], seed=42,
                     data_seed=42, max_length=256, assistant_only_loss=True, disable_tqdm=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    trainer.model.save_pretrained(out)
    tok.save_pretrained(out)
    return time.perf_counter() - t


def still(model_dir: str, data: Path, out: Path, steps: int) -> float:
    from still_cli.stages.sft import SFTStageConfig, run

    t = time.perf_counter()
    run(SFTStageConfig(model=model_dir, data=str(data), output=str(out), max_steps=steps, learning_rate=1e-3,
                       per_device_train_batch_size=16, save_steps=10_000, logging_steps=10, max_length=256))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import logging

    logging.disable(logging.WARNING)
    from still_cli.tiny_model import InitModelConfig, init_model

    root = Path(tempfile.mkdtemp())
    model_dir = str(init_model(InitModelConfig(output=str(root / "tiny"))))
    data = Path(__file__).resolve().parents[1] / "data" / "tiny" / "arith_sft.jsonl"
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    times: dict[str, list[float]] = {"direct": [], "still": []}
    for i in range(args.repeats + 1):  # round 0 warms caches and is dropped
        for name in ("direct", "still"):
            out = root / f"{name}{i}"
            dt = direct(model_dir, rows, out, args.steps) if name == "direct" else still(model_dir, data, out, args.steps)
            shutil.rmtree(out)
            if i:
                times[name].append(dt)
    d, s = statistics.median(times["direct"]), statistics.median(times["still"])
    step = d / args.steps
    print(f"steps {args.steps}, repeats {args.repeats}")
    print(f"TRL directly : {d:7.2f} s  (median; {step * 1000:.1f} ms per step incl. load and save)")
    print(f"still sft    : {s:7.2f} s  (median)")
    print(f"ratio still/direct: {s / d:.3f}; overhead per step: {(s - d) / args.steps * 1000:+.1f} ms "
          f"= {100 * (s - d) / d:+.1f}% of step time")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
