"""`still rl`: GRPO with verifiable rewards (TRL's GRPOTrainer) and a difficulty-staged curriculum.

Papers: STILL-3 (arXiv 2503.04548) for the RL recipe and signed reward; difficulty-aware staged RL
(arXiv 2504.00829) for the curriculum: difficulty = a problem's pass rate, levels by pass-rate bounds,
stage 1 on the middle level until the reward plateaus, stage 2 on the hardest level with a longer
context. Problems solved always or never are dropped (every sample of their group gets the same
reward, so GRPO gets no gradient from them).

Reads: `--data` problem rows (id / problem / answer); the difficulty table from `--difficulty`
(explore's `difficulty.jsonl`), or, when stages use levels and none is given, estimates it with the
starting model (`difficulty_samples` samples per problem) and keeps it in the run folder.

Writes to `-o DIR`: the final model + tokenizer, `config.yaml`, `difficulty.jsonl` (when estimated),
`metrics.jsonl` (one row per logged step: stage, reward per function, accuracy, response length,
clipped ratio, zero-std share, KL, entropy; plus `event` rows at stage ends), `curriculum.json`
(finished stages and why they ended), `stages/<k>-<name>/checkpoints/` and `stages/<k>-<name>/final/`.
`--resume` continues a killed run in the stage it was in, from that stage's last checkpoint.

`--use-peft`: each stage trains fresh LoRA adapters (TRL's `peft_config`; the reference model for
`beta > 0` is the base with the adapters switched off) and merges them into the weights at its end,
so every `final/` folder and the output are plain model folders. Verified here on CPU in one process;
under ZeRO-3 / FSDP the merge would need gathered weights, so that combination is refused.

How this departs from the papers: each stage is its own GRPOTrainer run started from the previous
stage's final weights, so the optimizer state and LR schedule restart at a stage boundary (as when
the paper's stages are launched as separate jobs). Dynamic sampling (DAPO, arXiv 2503.14476) here
replaces zero-std groups with fresh prompts for up to `dynamic_sampling_max_rounds` extra generation
rounds, then trains on what it has (DAPO keeps sampling until the batch is full).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import require
from .rl_curriculum import (difficulty_table, has_run, last_checkpoint_step, load_state, save_state, stage_dir,
                            stage_problems, state_model, trim_metrics)

log = logging.getLogger("still.rl")

STAGE_KEYS = {"name", "levels", "max_steps", "plateau_window", "plateau_min_delta", "max_completion_length",
              "entropy_coef", "mask_truncated_completions", "temperature", "learning_rate"}


@dataclass
class RLConfig:
    """GRPO with verifiable rewards and an optional difficulty-staged curriculum."""

    model: str = field(default="", metadata={"help": "Model folder or hub id to start from."})
    data: str = field(default="", metadata={"help": "Problem rows (id, problem, answer): file, benchmark name, or -."})
    output: str = field(default="", metadata={"help": "Run folder: final model, metrics.jsonl, curriculum.json, stages/."})
    problem_field: str = field(default="problem", metadata={"help": "Column holding the problem text."})
    answer_field: str = field(default="answer", metadata={"help": "Column holding the gold answer."})
    id_field: str = field(default="id", metadata={"help": "Column holding the row id."})
    prompt_template: Literal["r1", "still2", "raw"] = field(default="r1", metadata={
        "help": "Prompt wording, as in eval (r1 asks for \\boxed{})."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    prefill_think: bool = field(default=False, metadata={"help": "Append '<think>\\n' to prompts."})
    # --- rewards -----------------------------------------------------------------------------------
    rewards: list[str] = field(default_factory=lambda: ["accuracy"], metadata={
        "help": "Reward functions (still_cli/rewards.py): accuracy, signed, strict_accuracy, format, length, code_use."})
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward; None = all 1."})
    grade_timeout: float = field(default=5.0, metadata={"help": "Seconds to grade one answer (worker processes)."})
    # --- GRPO, passed straight to TRL's GRPOConfig ------------------------------------------------
    loss_type: str = field(default="dapo", metadata={"help": "TRL loss: grpo, dr_grpo, dapo, bnpo, cispo, sapo, ..."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient against the reference model (0 = no ref model)."})
    num_generations: int = field(default=8, metadata={"help": "Completions per prompt (group size)."})
    temperature: float = field(default=1.0, metadata={"help": "Rollout sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Rollout nucleus mass."})
    max_completion_length: int = field(default=1024, metadata={"help": "Max new tokens per rollout (stages may override)."})
    mask_truncated_completions: bool = field(default=False, metadata={"help": "No loss on completions cut at the limit."})
    scale_rewards: Literal["group", "batch", "none"] = field(default="group", metadata={
        "help": "Advantage scaling: group std (GRPO), batch std, or none (Dr. GRPO)."})
    epsilon: float = field(default=0.2, metadata={"help": "PPO clip range (low)."})
    epsilon_high: float | None = field(default=None, metadata={"help": "Upper clip (DAPO clip-higher); None = epsilon."})
    num_iterations: int = field(default=1, metadata={"help": "Optimisation passes per generation batch."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Entropy bonus coefficient (stages may override)."})
    sync_ref_model: bool = field(default=False, metadata={"help": "Refresh the reference model periodically (STILL-3)."})
    ref_model_sync_steps: int = field(default=512, metadata={"help": "Steps between reference refreshes."})
    ref_model_mixup_alpha: float = field(default=0.6, metadata={"help": "ref = a * policy + (1 - a) * ref at refresh."})
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name (per stage)."})
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "The scheduler's own arguments, e.g. {num_decay_steps: 20} for warmup_stable_decay."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps (per stage)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    optim: str = field(default="adamw_torch", metadata={"help": "transformers optimizer name (adamw_torch, sgd, ...)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1 (momentum)."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2 (the squared-gradient average)."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Completions (not prompts) per device per micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    generation_batch_size: int | None = field(default=None, metadata={
        "help": "Completions generated per round (multiple of num_generations); None = one optimizer step's worth."})
    max_steps: int = field(default=100, metadata={"help": "Optimizer steps when no stages are given."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    bf16: bool | None = field(default=None, metadata={"help": "bfloat16; None = on when a GPU supports it."})
    use_vllm: bool = field(default=False, metadata={"help": "Generate rollouts with vLLM (GPU only)."})
    vllm_mode: Literal["colocate", "server"] = field(default="colocate", metadata={
        "help": "colocate: vLLM in the trainer processes; server: a `trl vllm-serve` process."})
    vllm_server_base_url: str | None = field(default=None, metadata={"help": "server mode: URL of trl vllm-serve."})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "colocate: GPU memory share for vLLM."})
    # --- LoRA (peft), as in `still sft` ---------------------------------------------------------------
    use_peft: bool = field(default=False, metadata={
        "help": "Train LoRA adapters (peft) instead of all weights; merged into the weights at each stage's end."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata={
        "help": "Modules to adapt; all-linear = every linear layer but the output head."})
    # --- tool-integrated reasoning (CoRT arXiv 2506.09820) ----------------------------------------
    tools: bool = field(default=False, metadata={
        "help": "TIR rollouts: run the model's ```python blocks in the sandbox; executor output is masked from the loss."})
    max_tool_calls: int = field(default=12, metadata={"help": "--tools: code calls per rollout (CoRT RL: 12)."})
    tool_timeout: float = field(default=5.0, metadata={"help": "--tools: seconds per code call (CoRT RL: 5)."})
    tool_output_chars: int = field(default=800, metadata={"help": "--tools: characters of output shown (CoRT: 800)."})
    # --- zero-std groups ---------------------------------------------------------------------------
    dynamic_sampling: bool = field(default=False, metadata={
        "help": "DAPO dynamic sampling: replace groups whose rewards are all equal with fresh prompts."})
    dynamic_sampling_max_rounds: int = field(default=3, metadata={"help": "Extra generation rounds per step at most."})
    # --- curriculum (arXiv 2504.00829) -------------------------------------------------------------
    difficulty: str | None = field(default=None, metadata={
        "help": "Difficulty table (explore's difficulty.jsonl); None = estimate with the model when levels are used."})
    difficulty_samples: int = field(default=8, metadata={"help": "Samples per problem when estimating difficulty."})
    difficulty_max_tokens: int | None = field(default=None, metadata={
        "help": "Max tokens when estimating difficulty; None = max_completion_length."})
    levels: dict[str, list[float]] = field(default_factory=dict, metadata={
        "help": "Level name -> [low, high] pass-rate bounds (inclusive), e.g. {medium: [0.3, 0.7]}."})
    stages: list[dict[str, Any]] = field(default_factory=list, metadata={
        "help": "Curriculum stages: {name, levels, max_steps, plateau_window, plateau_min_delta, "
                "max_completion_length, entropy_coef, mask_truncated_completions, temperature, learning_rate}."})
    drop_always_solved: bool = field(default=True, metadata={"help": "Drop problems with pass rate 1."})
    drop_never_solved: bool = field(default=True, metadata={"help": "Drop problems with pass rate 0."})
    # --- bookkeeping -------------------------------------------------------------------------------
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps (for --resume)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept per stage; None = all."})
    logging_steps: int = field(default=1, metadata={"help": "Metrics row every N steps."})
    log_completions: bool = field(default=False, metadata={"help": "Print sample completions at each log."})
    seed: int = field(default=42, metadata={"help": "Seed for init, data order and sampling."})
    resume: bool = field(default=False, metadata={"help": "Continue a killed run in its stage from the last checkpoint."})
    report_to: list[str] = field(default_factory=lambda: ["none"], metadata={"help": "none, tensorboard, wandb."})

    def __post_init__(self):
        from ..rewards import REWARDS
        from .sft import check_betas, check_scheduler

        require(bool(self.model), "rl needs --model (a folder or hub id), e.g. --model runs/sft")
        require(bool(self.data), "rl needs --data problems, e.g. --data math_train or --data problems.jsonl")
        require(bool(self.output), "rl needs an output folder; add -o runs/rl")
        for r in self.rewards:
            require(r in REWARDS, f"reward {r!r} is unknown; use some of {', '.join(REWARDS)}")
        require(bool(self.rewards), "rl needs at least one reward, e.g. rewards: [accuracy]")
        require(self.reward_weights is None or len(self.reward_weights) == len(self.rewards),
                f"reward_weights has {len(self.reward_weights or [])} values for {len(self.rewards)} rewards; "
                f"give one weight per reward")
        require(not (self.tools and self.use_vllm), "--tools rollouts run on the transformers backend; drop "
                "--use-vllm (TIR over vLLM generation is not supported yet)")
        require(not (self.use_peft and self.sync_ref_model), "sync_ref_model needs a separate reference model, which "
                "TRL does not keep with LoRA (the reference is the base with adapters off); drop one of the two")
        require(self.lora_r > 0, f"lora_r = {self.lora_r} must be > 0")
        check_scheduler(self.lr_scheduler_type, self.lr_scheduler_kwargs)
        check_betas(self.adam_beta1, self.adam_beta2)
        require(self.num_generations >= 2, f"num_generations = {self.num_generations}: GRPO needs >= 2 per group")
        gen = self.generation_batch_size or self.per_device_train_batch_size * self.gradient_accumulation_steps
        require(gen % self.num_generations == 0,
                f"generation batch {gen} (per_device_train_batch_size x gradient_accumulation_steps, or "
                f"generation_batch_size) must be a multiple of num_generations = {self.num_generations}")
        for name, b in self.levels.items():
            require(isinstance(b, list) and len(b) == 2 and 0 <= b[0] <= b[1] <= 1,
                    f"level {name!r} bounds {b!r} must be [low, high] with 0 <= low <= high <= 1")
        for i, s in enumerate(self.stages):
            require(isinstance(s, dict), f"stage {i + 1} must be a mapping, got {s!r}")
            unknown = set(s) - STAGE_KEYS
            require(not unknown, f"stage {i + 1} has unknown key(s) {', '.join(sorted(unknown))}; "
                                 f"valid: {', '.join(sorted(STAGE_KEYS))}")
            require(isinstance(s.get("max_steps"), int) and s["max_steps"] > 0,
                    f"stage {i + 1} needs max_steps > 0 (the cap; plateau_window may end it sooner)")
            for lv in s.get("levels") or []:
                require(lv in self.levels, f"stage {i + 1} uses level {lv!r}, not among levels "
                                           f"({', '.join(self.levels) or 'none defined'}); define it under levels:")

    def stage_list(self) -> list[dict[str, Any]]:
        """The stages to run; without a curriculum, one stage over all problems for max_steps."""
        stages = self.stages or [{"name": "all", "levels": [], "max_steps": self.max_steps}]
        return [{**s, "name": s.get("name") or f"stage{i + 1}"} for i, s in enumerate(stages)]


# ---------------------------------------------------------------------------------------------
# rewards, as TRL calls them


def make_reward_funcs(names: list[str], eos_ids: set[int], timeout: float) -> list[Any]:
    """TRL reward callables around the pure functions in rewards.py: adds `truncated` (no EOS in the
    completion) and logs accuracy as a metric when a correctness reward is used."""
    from ..rewards import REWARDS

    funcs = []
    for name in names:
        fn = REWARDS[name]

        def reward(prompts, completions, completion_ids, _fn=fn, _name=name, **kw):
            truncated = [not any(t in eos_ids for t in ids) for ids in completion_ids]
            kw.pop("trainer_state", None)
            log_metric = kw.pop("log_metric", None)
            kw.pop("log_extra", None)
            values = _fn(completions, prompts=prompts, completion_ids=completion_ids, truncated=truncated,
                         timeout=timeout, **kw)
            if log_metric is not None and _name in ("accuracy", "signed", "strict_accuracy"):
                log_metric("accuracy", sum(v == 1.0 for v in values) / len(values))  # +1 = correct in both
            return values

        reward.__name__ = name
        funcs.append(reward)
    return funcs


def make_tir_rollout(c: RLConfig, tokenizer: Any):
    """TRL `rollout_func`: TIR rollouts of the policy being trained (transformers generate + sandbox).
    Returns the ids of model and executor tokens, with `env_mask` 0 on executor output so it carries
    no loss, and each completion's `tool_calls` for the `code_use` reward."""
    import copy

    from ..sampling import SamplingParams
    from ..sampling.hf import HFSampler
    from ..tir import TIRSettings, generate

    settings = TIRSettings(max_calls=c.max_tool_calls, timeout=c.tool_timeout, max_output_chars=c.tool_output_chars)
    tok = copy.deepcopy(tokenizer)  # the sampler pads left; the trainer's tokenizer is left as it is

    def rollout(prompts: list[str], trainer: Any) -> dict[str, Any]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        sampler = HFSampler("", model_obj=model, tokenizer=tok, device=str(trainer.accelerator.device),
                            batch_size=max(1, len(prompts)))
        params = SamplingParams(n=1, temperature=trainer.temperature, top_p=trainer.top_p,
                                max_tokens=trainer.max_completion_length,
                                seed=trainer.args.seed + 100_003 * trainer.state.global_step)
        outs = generate(sampler, prompts, params, settings)  # (len(prompts), 1)
        if was_training:
            model.train()
        comps = [cs[0] for cs in outs]
        calls = [len(x.tool_calls or []) for x in comps]
        trainer._metrics["train"]["tools/calls_per_completion"].append(sum(calls) / max(1, len(calls)))
        return {"prompt_ids": [tok(p, add_special_tokens=False)["input_ids"] for p in prompts],
                "completion_ids": [x.token_ids for x in comps], "logprobs": None,
                "env_mask": [x.tool_mask for x in comps], "tool_calls": [x.tool_calls or [] for x in comps]}

    return rollout


# ---------------------------------------------------------------------------------------------
# the run


def run(c: RLConfig) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from ..config import write_resolved
    from ..data import read_problems
    from ..errors import ConfigError, DataError
    from ..runtime import process_state
    from ..sampling import load_tokenizer
    from .sft import train_or_restore

    out = Path(c.output)
    dist = process_state()  # one process, or each rank under `accelerate launch`
    started = has_run(out)
    if started and not c.resume:
        raise ConfigError(f"{out} holds an earlier rl run; add --resume to continue it, or choose a new -o")
    if c.resume and not started:
        raise ConfigError(f"--resume given but {out} holds no rl run; run without --resume")
    problems = read_problems(c.data, problem_field=c.problem_field, answer_field=c.answer_field, id_field=c.id_field)
    tokenizer = load_tokenizer(c.model)
    stages = c.stage_list()
    table = None
    with dist.main_process_first():  # rank 0 writes config and estimates difficulty; the others then read them
        if dist.is_main_process:
            write_resolved(c, out)
        if any(s.get("levels") for s in stages) or c.difficulty:
            table = difficulty_table(c, out, problems, tokenizer)
    state = load_state(out)
    per_stage = [stage_problems(c, s, problems, table) for s in stages]  # fail before training, not between stages
    gen = c.generation_batch_size or c.per_device_train_batch_size * c.gradient_accumulation_steps
    need = gen // c.num_generations * dist.num_processes  # distinct prompts one generation round takes
    for s, chosen in zip(stages, per_stage):
        if len(chosen) < need:
            raise DataError(f"stage {s['name']!r} has {len(chosen)} problem(s), fewer than the {need} prompts one "
                            f"step samples; widen its levels, add data, or lower per_device_train_batch_size")
    cuda = torch.cuda.is_available()
    for k, stage in enumerate(stages):
        if k < len(state["finished"]):
            continue
        sdir = stage_dir(out, k, stage)
        chosen = per_stage[k]
        log.info("stage %d/%d %r: %d problems, up to %d steps", k + 1, len(stages), stage["name"], len(chosen),
                 stage["max_steps"])
        model = AutoModelForCausalLM.from_pretrained(state_model(out, state) or c.model, dtype="auto")
        trainer = _build_trainer(c, stage, k, model, tokenizer, chosen, sdir, out, state["global_step"], cuda)
        if c.use_peft and (trainer.is_fsdp_enabled or (trainer.is_deepspeed_enabled and getattr(
                trainer.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3)):
            raise ConfigError("--use-peft with ZeRO-3 / FSDP is not supported by still rl: the adapters are merged "
                              "at each stage's end, which needs whole weights; use the ddp or zero2 config")
        ckpt_step = last_checkpoint_step(sdir / "checkpoints")
        if dist.is_main_process:  # the steps after the checkpoint (all, without one) run again: drop their old rows
            trim_metrics(out / "metrics.jsonl", stage["name"], ckpt_step or 0)
        if ckpt_step is not None:
            log.info("resuming stage %r from checkpoint-%d", stage["name"], ckpt_step)
        dist.wait_for_everyone()
        if train_or_restore(trainer, ckpt_step is not None) and trainer.still_plateau:
            trainer.still_plateau.restored(trainer.state.global_step)  # why the restored stage ended
        final = sdir / "final"
        if c.use_peft:
            # every stage trains fresh adapters on the previous stage's weights; the stage's result is a
            # plain model folder (adapters merged), which the next stage, eval and sft load like any other
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            if dist.is_main_process:
                merged.save_pretrained(final)
        else:
            trainer.save_model(str(final))  # rank 0 writes (gathers ZeRO-3 / FSDP shards first)
        reason = trainer.still_plateau.reason if trainer.still_plateau else "max_steps"
        steps = trainer.state.global_step
        state["global_step"] += steps
        state["finished"].append({"stage": stage["name"], "steps": steps, "end": reason, "problems": len(chosen),
                                  "global_step": state["global_step"]})
        state["model"] = os.path.relpath(final, out)
        if dist.is_main_process:
            tokenizer.save_pretrained(final)
            _append_metrics(out, {"event": "stage_end", "stage": stage["name"], "stage_index": k + 1, "end": reason,
                                  "steps": steps, "global_step": state["global_step"]})
            save_state(out, state)
        log.info("stage %r ended after %d steps (%s)", stage["name"], steps, reason)
        del trainer, model
        dist.wait_for_everyone()
    if dist.is_main_process:
        AutoModelForCausalLM.from_pretrained(state_model(out, state), dtype="auto").save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def _append_metrics(out: Path, row: dict[str, Any]) -> None:
    from ..data import JsonlAppender

    with JsonlAppender(out / "metrics.jsonl") as app:
        app.write(row)


def _build_trainer(c: RLConfig, stage: dict[str, Any], k: int, model: Any, tokenizer: Any,
                   problems: list[dict[str, Any]], sdir: Path, out: Path, step_offset: int, cuda: bool):
    import torch
    from datasets import Dataset
    from trl import GRPOConfig

    from ..sampling import render_prompt
    from .rl_trainer import MetricsCallback, PlateauCallback, StillGRPOTrainer
    from .sft import checkpointing_arg, lora_config

    rows = [{"prompt": render_prompt(tokenizer, p["problem"], c.prompt_template, c.system_prompt, c.prefill_think),
             "answer": str(p["answer"]), "id": p["id"]} for p in problems]
    get = lambda key: stage[key] if stage.get(key) is not None else getattr(c, key)  # noqa: E731
    bf16 = c.bf16 if c.bf16 is not None else bool(cuda and torch.cuda.is_bf16_supported())
    args = GRPOConfig(
        output_dir=str(sdir / "checkpoints"), max_steps=stage["max_steps"], learning_rate=get("learning_rate"),
        lr_scheduler_type=c.lr_scheduler_type, lr_scheduler_kwargs=c.lr_scheduler_kwargs,
        warmup_steps=c.warmup_steps, weight_decay=c.weight_decay, optim=c.optim, adam_beta1=c.adam_beta1,
        adam_beta2=c.adam_beta2, adam_epsilon=c.adam_epsilon, max_grad_norm=c.max_grad_norm,
        per_device_train_batch_size=c.per_device_train_batch_size,
        gradient_accumulation_steps=c.gradient_accumulation_steps, generation_batch_size=c.generation_batch_size,
        **checkpointing_arg(c.gradient_checkpointing), bf16=bf16, use_cpu=not cuda, seed=c.seed, data_seed=c.seed,
        save_strategy="steps", save_steps=c.save_steps, save_total_limit=c.save_total_limit,
        logging_steps=c.logging_steps, report_to=c.report_to, disable_tqdm=False,
        num_generations=c.num_generations, temperature=get("temperature"), top_p=c.top_p,
        max_completion_length=get("max_completion_length"), loss_type=c.loss_type, beta=c.beta,
        mask_truncated_completions=get("mask_truncated_completions"), scale_rewards=c.scale_rewards,
        epsilon=c.epsilon, epsilon_high=c.epsilon_high, num_iterations=c.num_iterations,
        entropy_coef=get("entropy_coef"), sync_ref_model=c.sync_ref_model,
        ref_model_sync_steps=c.ref_model_sync_steps, ref_model_mixup_alpha=c.ref_model_mixup_alpha,
        reward_weights=c.reward_weights, log_completions=c.log_completions,
        use_vllm=c.use_vllm, vllm_mode=c.vllm_mode, vllm_server_base_url=c.vllm_server_base_url,
        vllm_gpu_memory_utilization=c.vllm_gpu_memory_utilization,
    )
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {tokenizer.eos_token_id}
    plateau = None
    if stage.get("plateau_window"):
        plateau = PlateauCallback(stage["name"], int(stage["plateau_window"]),
                                  float(stage.get("plateau_min_delta", 0.01)), out / "metrics.jsonl")
    callbacks = [MetricsCallback(out / "metrics.jsonl", stage["name"], k + 1, step_offset)]
    if plateau:
        callbacks.append(plateau)
    rollout = make_tir_rollout(c, tokenizer) if c.tools else None
    trainer = StillGRPOTrainer(
        model=model, reward_funcs=make_reward_funcs(c.rewards, eos_ids, c.grade_timeout), args=args, rollout_func=rollout,
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=callbacks,
        dynamic_sampling=c.dynamic_sampling, dynamic_sampling_max_rounds=c.dynamic_sampling_max_rounds,
        peft_config=lora_config(c))
    trainer.still_plateau = plateau
    return trainer


def main(c: RLConfig) -> None:
    from ..runtime import process_state

    out = run(c)
    if process_state().is_main_process:
        print(out)
