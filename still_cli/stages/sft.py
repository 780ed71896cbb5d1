"""`still sft`: imitate (STILL-2, arXiv 2412.09413) with TRL's SFTTrainer; `--method dpo` with DPOTrainer.

Rows (JSONL / Parquet / datasets folder / `-`), any of:
  * `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`: loss on assistant turns only
    (TRL's `assistant_only_loss`, through the training variant of the model's chat template);
  * `{"prompt": ..., "completion": ...}` (strings or message lists): loss on the completion only;
  * problem rows with a response column, e.g. STILL-2's `{question, combined_text}`:
    `--problem-field question --response-field combined_text` builds user/assistant messages.
  * `--method dpo`: `{"prompt", "chosen", "rejected"}` preference pairs (explore's pairs file).

Writes to `-o DIR`: the trained model + tokenizer (a folder every stage loads; LoRA adapters are
merged into the base weights with `merge_lora`, else saved as an adapter folder), `config.yaml`,
`metrics.jsonl` (TRL's log history, one row per logging step), `checkpoints/checkpoint-N`.
`--resume` continues from the last checkpoint with the same data order (the Trainer restores the
optimizer, scheduler, RNG states and skips the batches already seen).

Differences from the paper: STILL-2 trains Qwen2.5-32B with full fine-tuning on 3.9k examples; the
recipes ship those settings (recipes/still2/sft.yaml); defaults here are sized for small models.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import require
from ..tir import OUTPUT_BLOCK, OUTPUT_OPEN
from .sft_trainer import sft_trainer_class

log = logging.getLogger("still.sft")


@dataclass
class SFTStageConfig:
    """Supervised fine-tuning (full or LoRA) on chat rows, or DPO on preference pairs."""

    model: str = field(default="", metadata={"help": "Model folder or hub id to start from."})
    data: str = field(default="", metadata={"help": "Training rows: file, datasets folder, or - for stdin."})
    output: str = field(default="", metadata={"help": "Run folder: the trained model, config.yaml, metrics.jsonl, checkpoints/."})
    method: Literal["sft", "dpo"] = field(default="sft", metadata={"help": "sft (SFTTrainer) or dpo (DPOTrainer on pairs)."})
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata={
        "help": "Modules to adapt; all-linear = every linear layer but the output head."})
    merge_lora: bool = field(default=False, metadata={
        "help": "Merge LoRA weights into the base model when saving (a plain model folder)."})
    max_length: int | None = field(default=4096, metadata={"help": "Truncate tokenized rows to this length; None = no limit."})
    packing: bool = field(default=False, metadata={"help": "Pack several rows into each sequence (SFT only)."})
    group_by_length: bool = field(default=False, metadata={
        "help": "Batch rows of similar length together (transformers' LengthGroupedSampler): less padding, "
                "faster steps, but batches are far less mixed. On the demo's arithmetic traces (lr 3e-3): 15% "
                "less time per step and 6.0% held-out instead of 75.8%; compare before relying on it."})
    length_chunks: int = field(default=1, metadata={
        "help": "Split each micro-batch into N chunks of rows of similar length, each padded only to its own "
                "longest row, with one forward + backward per chunk: the same rows per optimizer step and the "
                "same loss (the batch's token mean), less padding. Demo SFT, 32 rows of 35-128 tokens, 100 steps "
                "on CPU: 21.7 s with 4 chunks instead of 27.5 s; 1 = off."})
    mask_tool_outputs: bool = field(default=True, metadata={
        "help": "No loss on sandbox output blocks (```output ... ```) in responses: the model learns to call "
                "code and read its result, not to predict it (as rl --tools masks them with env_mask)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the data (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Total optimizer steps; -1 = from epochs."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name (cosine, linear, constant_with_warmup, warmup_stable_decay, ...)."})
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "The scheduler's own arguments, e.g. {num_decay_steps: 80} for warmup_stable_decay (WSD)."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1 (momentum)."})
    adam_beta2: float = field(default=0.999, metadata={
        "help": "AdamW beta2 (the squared-gradient average). 0.95, as in GPT-3's and Llama's pre-training, let the "
                "demo's tiny model from scratch learn its arithmetic far sooner than the default 0.999."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Rows per device per micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory (on for large models)."})
    bf16: bool | None = field(default=None, metadata={"help": "bfloat16 training; None = on when a GPU supports it."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N steps (for --resume)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept; None = all."})
    logging_steps: int = field(default=10, metadata={"help": "Log (metrics.jsonl) every N steps."})
    seed: int = field(default=42, metadata={"help": "Seed for init, data order and dropout."})
    resume: bool = field(default=False, metadata={"help": "Continue from the last checkpoint in OUTPUT/checkpoints."})
    report_to: list[str] = field(default_factory=lambda: ["none"], metadata={"help": "none, tensorboard, wandb."})
    beta: float = field(default=0.1, metadata={"help": "dpo: KL strength of the implicit reward."})
    dpo_loss_type: str = field(default="sigmoid", metadata={"help": "dpo: TRL loss type (sigmoid, ipo, ...)."})
    messages_field: str = field(default="messages", metadata={"help": "Column with chat messages."})
    problem_field: str = field(default="problem", metadata={"help": "With response_field: column with the question."})
    response_field: str | None = field(default=None, metadata={
        "help": "Column with the target response (e.g. combined_text) for rows without messages."})

    def __post_init__(self):
        require(bool(self.model), "sft needs --model (a folder or hub id), e.g. --model runs/tiny")
        require(bool(self.data), "sft needs --data rows, e.g. --data distilled.jsonl (or - for stdin)")
        require(bool(self.output), "sft needs an output folder; add -o runs/sft")
        require(self.learning_rate > 0, f"learning_rate = {self.learning_rate} must be > 0")
        require(self.per_device_train_batch_size >= 1, "per_device_train_batch_size must be >= 1")
        check_scheduler(self.lr_scheduler_type, self.lr_scheduler_kwargs)
        check_betas(self.adam_beta1, self.adam_beta2)
        require(not (self.packing and self.method == "dpo"), "packing applies to sft only; drop --packing for dpo")
        require(not (self.packing and self.group_by_length),
                "packing and group_by_length both cut padding and do not combine; drop one of them")
        require(not (self.group_by_length and self.method == "dpo"),
                "group_by_length applies to sft only (dpo rows are pairs); drop --group-by-length for dpo")
        require(self.max_steps > 0 or self.num_train_epochs > 0, "give max_steps > 0 or num_train_epochs > 0")
        require(self.length_chunks >= 1, f"length_chunks = {self.length_chunks} must be >= 1 (1 = off)")
        require(self.length_chunks == 1 or (self.method == "sft" and not self.packing),
                "length_chunks cuts the padding of sft batches; packed (padding-free) rows and dpo pairs have "
                "none to cut: drop --length-chunks")


def _to_examples(rows: list[dict[str, Any]], c: SFTStageConfig, source: str) -> list[dict[str, Any]]:
    """Rows -> the shapes TRL takes: messages / prompt+completion (SFT), prompt+chosen+rejected (DPO)."""
    from ..errors import DataError

    out = []
    for i, r in enumerate(rows, 1):
        if c.method == "dpo":
            if not all(k in r for k in ("prompt", "chosen", "rejected")):
                raise DataError(f"{source} row {i}: dpo needs prompt, chosen and rejected (has {', '.join(r)}); "
                                f"use explore's pairs file")
            out.append({k: r[k] for k in ("prompt", "chosen", "rejected")})
        elif c.messages_field in r:
            msgs = r[c.messages_field]
            if not isinstance(msgs, list) or not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
                raise DataError(f"{source} row {i}: {c.messages_field!r} must be a list of messages with an "
                                f"assistant turn")
            out.append({"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]})
        elif "prompt" in r and "completion" in r:
            out.append({"prompt": r["prompt"], "completion": r["completion"]})
        elif c.response_field and c.problem_field in r and c.response_field in r:
            out.append({"messages": [{"role": "user", "content": r[c.problem_field]},
                                     {"role": "assistant", "content": r[c.response_field]}]})
        else:
            raise DataError(f"{source} row {i}: no {c.messages_field!r}, no prompt/completion, and no response column "
                            f"(has {', '.join(r)}); map one with --messages-field or --response-field")
    if not out:
        raise DataError(f"{source} has no training rows; nothing to train on")
    return out


def _texts(example: dict[str, Any]) -> str:
    """Every string of a training row (message contents, prompt, completion), joined."""
    parts = []
    for v in example.values():
        for x in v if isinstance(v, list) else [v]:
            parts.append(x.get("content", "") if isinstance(x, dict) else str(x))
    return "\n".join(parts)


def mask_tool_outputs(dataset: Any, tokenizer: Any) -> Any:
    """Take every token of a sandbox output block (the text the executor appended, not the model) out of
    the loss: -100 in TRL's `labels` column of the tokenized dataset (or 0 in `assistant_masks` /
    `completion_mask` where labels are built later).
    Written by hand: TRL masks whole turns or the prompt, not spans inside a completion. Token spans
    come from the fast tokenizer's offsets on the decoded row; a row whose re-encoding differs from
    its ids is left as it is (counted in the log)."""
    column = next((k for k in ("labels", "assistant_masks", "completion_mask") if k in dataset.column_names), None)
    if column is None:
        log.warning("mask_tool_outputs: the tokenized rows carry no loss mask; output blocks stay in the loss")
        return dataset
    skipped, blocks = [0], [0]

    def one(row: dict[str, Any]) -> dict[str, Any]:
        ids = row["input_ids"]
        text = tokenizer.decode(ids)
        spans = [m.span() for m in OUTPUT_BLOCK.finditer(text)]
        if not spans:
            return {}
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if enc["input_ids"] != list(ids):
            skipped[0] += 1
            return {}
        blocks[0] += len(spans)
        mask = list(row[column])
        for t, (a, b) in enumerate(enc["offset_mapping"]):
            if any(a < e and b > s_ for s_, e in spans):
                mask[t] = -100 if column == "labels" else 0
        return {column: mask}

    dataset = dataset.map(one, desc="Masking tool outputs")
    log.info("sft: %d tool output blocks taken out of the loss", blocks[0])
    if skipped[0]:
        log.warning("mask_tool_outputs: %d rows did not re-encode to the same tokens; their output blocks stay "
                    "in the loss", skipped[0])
    return dataset


def has_checkpoints(output: str | Path) -> bool:
    """Whether an sft output folder holds checkpoints of an earlier run (what `--resume` continues)."""
    ckpt_dir = Path(output) / "checkpoints"
    return ckpt_dir.is_dir() and any(p.name.startswith("checkpoint-") for p in ckpt_dir.iterdir())


def _checkpoint_state(ckpt_dir: Path, resume: bool) -> bool:
    from ..errors import ConfigError

    has = has_checkpoints(ckpt_dir.parent)
    if resume and not has:
        raise ConfigError(f"--resume given but {ckpt_dir} holds no checkpoint; run without --resume")
    if not resume and has:
        raise ConfigError(f"{ckpt_dir} holds checkpoints of an earlier run; add --resume to continue it, "
                          f"or choose a new -o")
    return has


def check_scheduler(name: str, kwargs: dict[str, Any]) -> None:
    """lr_scheduler_type / lr_scheduler_kwargs (sft and rl configs), checked when the config is built, before
    anything loads: transformers itself would fail on a wrong argument only when training starts."""
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION
    from transformers.trainer_utils import SchedulerType

    from ..errors import ConfigError

    names = [t.value for t in SchedulerType]
    if name not in names:
        raise ConfigError(f"lr_scheduler_type {name!r} is unknown; use one of {', '.join(names)}")
    if not isinstance(kwargs, dict):
        raise ConfigError(f"lr_scheduler_kwargs {kwargs!r} must be a mapping, e.g. {{num_decay_steps: 80}}")
    params = inspect.signature(TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]).parameters
    given = {"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch"}  # the Trainer passes these
    own = [k for k, v in params.items() if k not in given and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
    unknown = sorted(set(kwargs) - set(own))
    if unknown and not any(v.kind == v.VAR_KEYWORD for v in params.values()):
        raise ConfigError(f"lr_scheduler_kwargs {', '.join(unknown)} is not an argument of {name}; its own are: "
                          f"{', '.join(own) or 'none'}")
    missing = [k for k in own if params[k].default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ConfigError(f"lr_scheduler_type {name} needs lr_scheduler_kwargs {', '.join(missing)}; e.g. "
                          f"-o 'lr_scheduler_kwargs={{{missing[0]}: 80}}'")


def _trl_args(c: SFTStageConfig, ckpt_dir: Path, cuda: bool) -> dict[str, Any]:
    bf16 = c.bf16 if c.bf16 is not None else bool(cuda and __import__("torch").cuda.is_bf16_supported())
    return dict(
        output_dir=str(ckpt_dir), num_train_epochs=c.num_train_epochs, max_steps=c.max_steps,
        learning_rate=c.learning_rate, lr_scheduler_type=c.lr_scheduler_type,
        lr_scheduler_kwargs=c.lr_scheduler_kwargs, warmup_steps=c.warmup_steps,
        weight_decay=c.weight_decay, adam_beta1=c.adam_beta1, adam_beta2=c.adam_beta2,
        per_device_train_batch_size=c.per_device_train_batch_size,
        gradient_accumulation_steps=c.gradient_accumulation_steps, **checkpointing_arg(c.gradient_checkpointing),
        bf16=bf16, use_cpu=not cuda, save_strategy="steps", save_steps=c.save_steps,
        save_total_limit=c.save_total_limit, logging_steps=c.logging_steps, seed=c.seed, data_seed=c.seed,
        report_to=c.report_to, max_length=c.max_length, disable_tqdm=False,
        train_sampling_strategy="group_by_length" if c.group_by_length else "random",
    )


def check_betas(beta1: float, beta2: float) -> None:
    """AdamW's betas (sft and rl configs), checked when the config is built: torch would only refuse them
    when the optimizer is made, after the model and data have loaded."""
    for name, b, example in (("adam_beta1", beta1, 0.9), ("adam_beta2", beta2, 0.95)):
        require(0 <= b < 1, f"{name} = {b} is out of range; AdamW needs 0 <= beta < 1, e.g. "
                            f"--{name.replace('_', '-')} {example}")


def checkpointing_arg(on: bool) -> dict[str, bool]:
    """The TrainingArguments switch for activation (gradient) checkpointing, under the name the installed
    transformers has: `activation_checkpointing` in the newer 5.x (where `gradient_checkpointing` is a
    deprecated alias that warns on every run and goes in v6), `gradient_checkpointing` before it (the vLLM
    extra resolves to an older 5.x). Trainers still read `args.gradient_checkpointing`: transformers
    mirrors it."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": on}


def train_or_restore(trainer: Any, resume: bool) -> bool:
    """`trainer.train()`, from the last checkpoint in `args.output_dir` when `resume`. A checkpoint the
    training ended on (at max_steps, or where a callback stopped it, e.g. rl's reward plateau), killed after
    it, is restored instead: resumed from there, transformers' Trainer (5.24) trains on, one step past
    max_steps (tests/test_sft.py checks it does not) or past the plateau (tests/test_rl.py). Returns True
    when it restored."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = get_last_checkpoint(trainer.args.output_dir) if resume else None
    if ckpt is not None:
        state = TrainerState.load_from_json(str(Path(ckpt) / "trainer_state.json"))
        control = (state.stateful_callbacks or {}).get("TrainerControl", {}).get("args", {})
        if control.get("should_training_stop") or 0 < trainer.args.max_steps <= state.global_step:
            trainer._load_from_checkpoint(ckpt)  # the Trainer's own loader (full weights or adapters)
            trainer.state = state
            return True
    # the Trainer prints its log dicts on stdout; stdout is for results (pipelines), so send them to stderr
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train(resume_from_checkpoint=ckpt)
    return False


def lora_config(c: Any) -> Any:
    """peft's LoraConfig from a stage config's `use_peft` / `lora_*` fields (sft and rl); None without
    `use_peft`."""
    if not c.use_peft:
        return None
    from peft import LoraConfig

    targets = c.lora_target_modules[0] if c.lora_target_modules == ["all-linear"] else c.lora_target_modules
    return LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout, target_modules=targets,
                      task_type="CAUSAL_LM")


def run(c: SFTStageConfig) -> Path:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from ..config import write_resolved
    from ..data import read_rows
    from ..sampling import load_tokenizer

    out = Path(c.output)
    ckpt_dir = out / "checkpoints"
    resuming = _checkpoint_state(ckpt_dir, c.resume)
    # --- data ---------------------------------------------------------------------------------
    examples = _to_examples(read_rows(c.data), c, c.data)
    dataset = Dataset.from_list(examples)
    log.info("%s on %d rows from %s", c.method, len(dataset), c.data)
    # --- model ------------------------------------------------------------------------------------
    tokenizer = load_tokenizer(c.model)
    model = AutoModelForCausalLM.from_pretrained(c.model, dtype="auto")
    peft_config = lora_config(c)
    cuda = torch.cuda.is_available()
    from ..runtime import process_state

    if process_state().is_main_process:
        write_resolved(c, out)
    # --- trainer ----------------------------------------------------------------------------------
    if c.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**_trl_args(c, ckpt_dir, cuda), beta=c.beta, loss_type=[c.dpo_loss_type])
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config)
    else:
        from trl import SFTConfig

        args = SFTConfig(**_trl_args(c, ckpt_dir, cuda), packing=c.packing,
                         assistant_only_loss="messages" in dataset.column_names)
        trainer = sft_trainer_class(c.length_chunks)(model=model, args=args, train_dataset=dataset,
                                                      processing_class=tokenizer, peft_config=peft_config)
        if c.length_chunks > 1 and trainer.accelerator.distributed_type == "DEEPSPEED":
            from ..errors import ConfigError

            # DeepSpeed's engine steps the optimizer inside every backward: it would step once per chunk
            # (a guard only: DeepSpeed does not run on these CPU machines)
            raise ConfigError(f"length_chunks = {c.length_chunks} does not work under DeepSpeed (its engine steps "
                              f"on every backward); drop --length-chunks or use --gradient-accumulation-steps")
        if c.mask_tool_outputs and any(OUTPUT_OPEN in _texts(e) for e in examples):
            trainer.train_dataset = mask_tool_outputs(trainer.train_dataset, tokenizer)
    train_or_restore(trainer, resuming)
    # --- save (rank 0 only under `accelerate launch`) -------------------------------------------
    final = trainer.model
    if c.use_peft and c.merge_lora:
        final = final.merge_and_unload()
    if trainer.accelerator.is_main_process:
        trainer.accelerator.unwrap_model(final).save_pretrained(out)
        tokenizer.save_pretrained(out)
        with open(out / "metrics.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({**r, "world_size": args.world_size}) + "\n" for r in trainer.state.log_history)
    trainer.accelerator.wait_for_everyone()
    return out


def main(c: SFTStageConfig) -> None:
    from ..runtime import process_state

    out = run(c)
    if process_state().is_main_process:
        print(out)
