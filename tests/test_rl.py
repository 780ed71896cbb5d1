"""`still rl`: GRPO changes weights, the curriculum moves on its condition and resumes after a kill
(full weights and LoRA), LoRA adapters are merged into plain model folders, dynamic sampling replaces
zero-std groups, and sft / rl run data-parallel under accelerate."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli, wait_until

ROOT = Path(__file__).resolve().parents[1]
RL_DATA = ROOT / "data" / "tiny" / "arith_rl.jsonl"
SMALL = dict(num_generations=4, per_device_train_batch_size=8, max_completion_length=48, temperature=1.0,
             learning_rate=1e-4, loss_type="grpo", save_steps=2, logging_steps=1)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _difficulty_table(path: Path) -> Path:
    """A table that sorts the tiny problems into levels by their operation count (a stand-in for
    measured pass rates), so the test does not depend on how well the tiny model samples."""
    rows = [json.loads(x) for x in RL_DATA.read_text().splitlines()]
    rate = {1: 0.9, 2: 0.6, 3: 0.3, 4: 0.0}
    path.write_text("".join(json.dumps({"id": r["id"], "pass_rate": rate[r["level"]]}) + "\n" for r in rows))
    return path


def test_rl_changes_weights_with_rewards_that_vary(sft_model, tmp_path):
    from still_cli.stages.rl import RLConfig, run

    out = run(RLConfig(model=str(sft_model), data=str(RL_DATA), output=str(tmp_path / "rl"), max_steps=4,
                       rewards=["signed", "length"], reward_weights=[1.0, 0.5], **SMALL))
    before, after = _weights(sft_model), _weights(out)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, f"only {len(changed)}/{len(before)} tensors changed"
    rows = [r for r in _metrics(out) if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert any(r["reward_std"] > 0 and r["frac_reward_zero_std"] < 1 for r in rows)  # some groups carry signal
    for key in ("rewards/signed/mean", "rewards/length/mean", "accuracy", "completions/mean_length",
                "completions/clipped_ratio", "frac_reward_zero_std"):
        assert key in rows[0], key
    state = json.loads((out / "curriculum.json").read_text())
    assert state["finished"][0]["end"] == "max_steps" and state["global_step"] == 4
    rep = run_cli("report", str(out))  # `still report` on an rl folder: first -> last values and curves
    assert rep.returncode == 0 and "- reward:" in rep.stdout and (out / "rl.png").exists()
    bad = run_cli("report", str(tmp_path))
    assert bad.returncode == 1 and "holds no report.json" in bad.stderr


def test_rollouts_with_the_growing_kv_cache_train_exactly_as_with_transformers_cache(sft_model, tmp_path,
                                                                                        monkeypatch):
    """TRL's own rollout generation gets the hf backend's growing KV cache. The run must be the very run
    transformers' DynamicCache gives: the same completions (their rewards and lengths per step) and the same
    weights after training, to the bit. The reference run switches the growing cache off."""
    from still_cli.sampling import hf
    from still_cli.stages.rl import RLConfig, run

    made = []
    real = hf.growing_cache
    monkeypatch.setattr(hf, "growing_cache", lambda model, limit: made.append(limit) or real(model, limit))
    cfg = dict(model=str(sft_model), data=str(RL_DATA), max_steps=3, rewards=["accuracy", "length"], **SMALL)
    grown = run(RLConfig(output=str(tmp_path / "grown"), **cfg))
    assert len(made) == 3  # one generate call per step
    monkeypatch.setattr(hf, "growing_cache_kwarg", lambda model: None)
    default = run(RLConfig(output=str(tmp_path / "default"), **cfg))
    assert len(made) == 3
    keys = ("reward", "reward_std", "completions/mean_length", "completions/min_length", "completions/max_length")
    rows = [[{k: r[k] for k in keys} for r in _metrics(out) if "reward" in r] for out in (grown, default)]
    assert rows[0] == rows[1] and len(rows[0]) == 3
    a, b = _weights(grown), _weights(default)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in _weights(sft_model).items())  # and training did move them


def test_optimizer_settings_reach_the_trainer(sft_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from still_cli.stages.rl import RLConfig, _build_trainer

    model, tok = AutoModelForCausalLM.from_pretrained(sft_model), AutoTokenizer.from_pretrained(sft_model)
    problems = [json.loads(x) for x in RL_DATA.read_text().splitlines()][:8]
    built = {}
    for optim, eps in (("sgd", 1e-8), ("adamw_torch", 1e-3)):
        c = RLConfig(model=str(sft_model), data=str(RL_DATA), output=str(tmp_path), optim=optim, adam_epsilon=eps,
                     adam_beta1=0.8, adam_beta2=0.95, **SMALL)
        trainer = _build_trainer(c, {"name": "all", "max_steps": 1}, 0, model, tok, problems, tmp_path / optim,
                                 tmp_path, 0, False)
        built[optim] = trainer.create_optimizer()
    assert isinstance(built["sgd"], torch.optim.SGD)
    assert isinstance(built["adamw_torch"], torch.optim.AdamW) and built["adamw_torch"].defaults["eps"] == 1e-3
    assert built["adamw_torch"].defaults["betas"] == (0.8, 0.95)
    # the scheduler's own arguments: warmup-stable-decay over a 10-step stage, the last 4 decaying
    c = RLConfig(model=str(sft_model), data=str(RL_DATA), output=str(tmp_path), lr_scheduler_type="warmup_stable_decay",
                 lr_scheduler_kwargs={"num_decay_steps": 4}, warmup_steps=2, **SMALL)
    trainer = _build_trainer(c, {"name": "all", "max_steps": 10}, 0, model, tok, problems, tmp_path / "wsd",
                             tmp_path, 0, False)
    sched = trainer.create_scheduler(10, trainer.create_optimizer())
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        trainer.optimizer.step()
        sched.step()
    assert lrs[2:6] == [pytest.approx(1e-4)] * 4 and lrs[0] < lrs[1] < 1e-4 and lrs[6] > lrs[7] > lrs[8] > lrs[9]
    bad = run_cli("rl", "--model", str(tmp_path / "absent"), "--data", str(RL_DATA), "--lr-scheduler-type",
                  "warmup_stable_decay", "-o", str(tmp_path / "bad"))
    assert bad.returncode == 1 and "needs lr_scheduler_kwargs num_decay_steps" in bad.stderr
    bad = run_cli("rl", "--model", str(tmp_path / "absent"), "--data", str(RL_DATA), "--adam-beta2", "1",
                  "-o", str(tmp_path / "bad"))
    assert bad.returncode == 1 and "adam_beta2 = 1.0 is out of range" in bad.stderr


@pytest.mark.parametrize("end", ["max_steps", "plateau"])
def test_resume_after_a_kill_at_the_stage_end_neither_adds_nor_repeats_steps(end, sft_model, tmp_path):
    """Killed after a stage's last step but before the stage end was recorded: --resume restores the
    checkpoint the stage ended on (at max_steps, or where the reward plateaued; no step past it), and
    without that checkpoint trains the stage again from its start with each step logged once."""
    import shutil

    from still_cli.stages.rl import RLConfig, run

    steps = [1, 2, 3] if end == "max_steps" else [1, 2]  # window 1, min_delta 100: a plateau at step 2
    stage = {"name": "all", "levels": [], "max_steps": 3} if end == "max_steps" else \
        {"name": "all", "levels": [], "max_steps": 4, "plateau_window": 1, "plateau_min_delta": 100}
    cfg = dict(model=str(sft_model), data=str(RL_DATA), output=str(tmp_path / "rl"), stages=[stage],
               rewards=["accuracy"], **{**SMALL, "save_steps": 100})
    out = run(RLConfig(**cfg))
    assert [r["step"] for r in _metrics(out) if "event" not in r] == steps
    finished, first = _weights(out), json.loads((out / "curriculum.json").read_text())["finished"]
    assert first[0]["end"].startswith(end) and first[0]["steps"] == len(steps)
    sdir = next((out / "stages").iterdir())
    for keep_checkpoint in (True, False):
        # what the kill leaves: the stage's logged rows and folder, no stage end, no final model
        for p in (out / "curriculum.json", out / "model.safetensors"):
            p.unlink()
        shutil.rmtree(sdir / "final")
        if not keep_checkpoint:
            shutil.rmtree(sdir / "checkpoints")
        rows = [r for r in _metrics(out) if r.get("event") != "stage_end"]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        run(RLConfig(**cfg, resume=True))
        assert [r["step"] for r in _metrics(out) if "event" not in r] == steps
        assert [r["event"] for r in _metrics(out) if "event" in r] == ["stage_end"]
        state = json.loads((out / "curriculum.json").read_text())
        assert state["global_step"] == len(steps) and state["finished"][0]["end"].startswith(end)
        if keep_checkpoint:
            assert not (sdir / "checkpoints" / f"checkpoint-{len(steps) + 1}").exists()
            assert state["finished"] == first  # the same end, reason and all
            assert all(torch.equal(finished[k], v) for k, v in _weights(out).items())


def _rl_cmd(model: Path, out: Path, table: Path) -> list[str]:
    stages = ('[{name: mid, levels: [medium], max_steps: 4, plateau_window: 1, plateau_min_delta: 100},'
              ' {name: hard, levels: [hard], max_steps: 6, max_completion_length: 64}]')
    return [sys.executable, "-m", "still_cli.cli", "rl", "--model", str(model), "--data", str(RL_DATA),
            "--difficulty", str(table), "-o", "levels={easy: [0.8, 1.0], medium: [0.5, 0.79], hard: [0.01, 0.49]}",
            "-o", f"stages={stages}", "--rewards", "signed,length", "--num-generations", "4",
            "--per-device-train-batch-size", "8", "--max-completion-length", "48", "--learning-rate", "1e-4",
            "--save-steps", "2", "--logging-steps", "1", "--loss-type", "grpo", "-o", str(out)]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_curriculum_moves_on_and_resumes_in_stage_two_after_kill9(lora, sft_model, tmp_path):
    out, table = tmp_path / "staged", _difficulty_table(tmp_path / "difficulty.jsonl")
    cmd = _rl_cmd(sft_model, out, table) + (["--use-peft", "--lora-r", "4"] if lora else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def past_stage_two_checkpoint():
        rows = _metrics(out) if (out / "metrics.jsonl").exists() else []
        if any(r.get("stage") == "hard" and r.get("step", 0) >= 3 for r in rows):
            return True
        assert proc.poll() is None, "rl exited before it could be killed"
        return False

    try:
        wait_until(past_stage_two_checkpoint, 240)  # kill -9 once stage 2 has a checkpoint and is past it
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    state = json.loads((out / "curriculum.json").read_text())
    assert [s["stage"] for s in state["finished"]] == ["mid"]
    assert state["finished"][0]["end"].startswith("plateau") and state["finished"][0]["steps"] == 2
    assert not (out / "model.safetensors").exists()
    # rerun: refuses without --resume, then continues in stage 2 from its checkpoint, also when the run
    # folder was moved (the finished stage's model is kept relative to it)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "--resume" in again.stderr
    moved = out.rename(tmp_path / "moved")
    cmd, out = [str(moved) if a == str(out) else a for a in cmd], moved
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming stage 'hard' from checkpoint-" in done.stderr
    state = json.loads((out / "curriculum.json").read_text())
    assert [(s["stage"], s["steps"]) for s in state["finished"]] == [("mid", 2), ("hard", 6)]
    rows = _metrics(out)
    steps = lambda st: [r["step"] for r in rows if r.get("stage") == st and "event" not in r]  # noqa: E731
    assert steps("mid") == [1, 2] and steps("hard") == [1, 2, 3, 4, 5, 6]  # none lost, none twice
    assert [r["stage"] for r in rows if r.get("event") == "stage_end"] == ["mid", "hard"]
    assert [r["global_step"] for r in rows if r.get("stage") == "hard" and "event" not in r] == [3, 4, 5, 6, 7, 8]
    assert (out / "model.safetensors").exists()
    # the report's curves mark where each stage begins, counted in global steps across the kill
    from still_cli.report import stage_starts

    assert stage_starts([r for r in rows if "reward" in r]) == [(1, "mid"), (3, "hard")]


def test_stage_without_learning_signal_fails_before_training(sft_model, tmp_path):
    table = tmp_path / "d.jsonl"
    rows = [json.loads(x) for x in RL_DATA.read_text().splitlines()]
    table.write_text("".join(json.dumps({"id": r["id"], "pass_rate": 0.0}) + "\n" for r in rows))
    r = run_cli("rl", "--model", str(sft_model), "--data", str(RL_DATA), "--difficulty", str(table),
                "-o", "levels={hard: [0.0, 0.3]}", "-o", "stages=[{name: hard, levels: [hard], max_steps: 2}]",
                "-o", str(tmp_path / "out"))
    assert r.returncode == 1
    assert "no problem with a learning signal" in r.stderr and "'hard': 256" in r.stderr
    assert not (tmp_path / "out" / "stages").exists()


def test_difficulty_estimated_once_and_reused(sft_model, tmp_path):
    from still_cli.data import read_problems
    from still_cli.sampling import load_tokenizer
    from still_cli.stages.rl import RLConfig
    from still_cli.stages.rl_curriculum import difficulty_table

    problems = read_problems(str(RL_DATA))[:6]
    c = RLConfig(model=str(sft_model), data=str(RL_DATA), output=str(tmp_path), difficulty_samples=2,
                 difficulty_max_tokens=16, levels={"all": [0.0, 1.0]})
    table = difficulty_table(c, tmp_path, problems, load_tokenizer(str(sft_model)))
    assert set(table) == {p["id"] for p in problems}
    assert all(r["num_samples"] == 2 and r["pass_rate"] in (0.0, 0.5, 1.0) for r in table.values())
    before = (tmp_path / "difficulty.jsonl").read_text()
    difficulty_table(c, tmp_path, problems[:3] + read_problems(str(RL_DATA))[6:7], load_tokenizer(str(sft_model)))
    lines = (tmp_path / "difficulty.jsonl").read_text().splitlines()
    assert "\n".join(lines[:6]) + "\n" == before and len(lines) == 7  # only the new problem was sampled


def test_merge_rows_repads_prompts_left_and_completions_right():
    from still_cli.stages.rl_trainer import merge_rows

    a = {"prompt_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]), "prompt_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
         "completion_ids": torch.tensor([[1, 2], [3, 0]]), "completion_mask": torch.tensor([[1, 1], [1, 0]]),
         "advantages": torch.tensor([0.5, -0.5]), "num_items_in_batch": torch.tensor(3)}
    b = {"prompt_ids": torch.tensor([[4, 4]]), "prompt_mask": torch.tensor([[1, 1]]),
         "completion_ids": torch.tensor([[5, 6, 7, 8]]), "completion_mask": torch.tensor([[1, 1, 1, 1]]),
         "advantages": torch.tensor([1.0]), "num_items_in_batch": torch.tensor(4)}
    m = merge_rows([(a, [1]), (b, [0])], pad_id=0)
    assert m["prompt_ids"].tolist() == [[7, 8, 9], [0, 4, 4]]
    assert m["prompt_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert m["completion_ids"].tolist() == [[3, 0, 0, 0], [5, 6, 7, 8]]
    assert m["completion_mask"].tolist() == [[1, 0, 0, 0], [1, 1, 1, 1]]
    assert m["advantages"].tolist() == [-0.5, 1.0] and "num_items_in_batch" not in m


def test_dynamic_sampling_replaces_zero_std_groups(sft_model, tmp_path):
    """The real trainer and generation; the reward is the test's: constant for even-numbered
    problems (zero-std groups), length-dependent for odd ones."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig

    from still_cli.sampling import load_tokenizer
    from still_cli.stages.rl_trainer import StillGRPOTrainer

    def parity_reward(prompts, completions, completion_ids, n, **kw):
        return [0.0 if k % 2 == 0 else float(len(ids)) for k, ids in zip(n, completion_ids)]

    tok = load_tokenizer(str(sft_model))
    ds = Dataset.from_list([{"prompt": f"What is {k} + 1?", "n": k} for k in range(40)])
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=8,
                      num_generations=4, max_completion_length=24, temperature=1.0, report_to=[], max_steps=1)
    trainer = StillGRPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(sft_model)), args=args,
                               reward_funcs=[parity_reward], train_dataset=ds, processing_class=tok,
                               dynamic_sampling=True, dynamic_sampling_max_rounds=8)
    trainer.model.train()
    inputs = [dict(ds[0]) for _ in range(4)] + [dict(ds[2]) for _ in range(4)]  # two dead groups
    out = trainer._generate_and_score_completions(inputs)
    adv = out["advantages"].view(-1, 4)
    assert adv.shape == (2, 4) and out["completion_ids"].shape[0] == 8 == out["prompt_ids"].shape[0]
    assert all(bool((g.abs() > 1e-6).any()) for g in adv), "a zero-std group was kept"
    assert int(out["num_items_in_batch"]) == int(out["completion_mask"].sum())
    m = trainer._metrics["train"]
    assert m["dynamic_sampling/filled_share"][-1] == 1.0 and m["dynamic_sampling/rounds"][-1] >= 1
    # without it, the same batch keeps its dead groups
    trainer.dynamic_sampling = False
    plain = trainer._generate_and_score_completions(inputs)
    assert float(plain["advantages"].abs().sum()) == 0.0


def _launch(args, out):
    cfg = ROOT / "recipes" / "accelerate" / "ddp_cpu.yaml"
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg),
                        "-m", "still_cli.cli", *args, "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("stage", ["sft", "sft-length-chunks", "rl"])
def test_runs_data_parallel_under_accelerate_launch(stage, sft_model, tmp_path):
    out = tmp_path / stage
    if stage.startswith("sft"):
        args = ["sft", "--model", str(sft_model), "--data", str(ROOT / "data" / "tiny" / "arith_sft.jsonl"),
                "--max-steps", "3", "--per-device-train-batch-size", "4", "--logging-steps", "1",
                "--learning-rate", "1e-3"]
        if stage == "sft-length-chunks":  # gradients all-reduced once per step, after the last chunk
            _launch(args, tmp_path / "unsplit")
            args += ["--length-chunks", "2"]
    else:
        args = ["rl", "--model", str(sft_model), "--data", str(RL_DATA), "--max-steps", "3",
                "--rewards", "signed,length", "--num-generations", "4", "--per-device-train-batch-size", "8",
                "--max-completion-length", "32", "--learning-rate", "1e-4"]
    r = _launch(args, out)
    assert r.stdout.strip().splitlines() == [str(out)]  # one rank prints the result
    rows = [x for x in _metrics(out) if "loss" in x]
    assert rows and all(x["world_size"] == 2 for x in rows)
    # two ranks each take a per-device batch: the epoch advances twice as fast as with one process
    per_step = (4 / 256) if stage.startswith("sft") else (2 / 256)
    assert rows[-1]["epoch"] == pytest.approx(rows[-1]["step"] * 2 * per_step)
    before, after = _weights(sft_model), _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if stage == "sft-length-chunks":  # the same update as the unsplit batches, on both ranks' data
        unsplit = _weights(tmp_path / "unsplit")
        assert all(torch.allclose(unsplit[k], after[k], rtol=1e-3, atol=1e-5) for k in before)


def test_rl_with_tools_runs_code_and_masks_executor_output(tool_model, tmp_path):
    from still_cli.stages.rl import RLConfig, run

    out = run(RLConfig(model=str(tool_model), data=str(RL_DATA), output=str(tmp_path / "rl"), max_steps=2, tools=True,
                       rewards=["signed", "code_use"], **{**SMALL, "max_completion_length": 64}))
    rows = [r for r in _metrics(out) if "reward" in r]
    assert all(r["tools/calls_per_completion"] > 0.5 for r in rows)  # the policy's code ran in the sandbox
    assert "rewards/code_use/mean" in rows[0]
    # TRL counts only model tokens (env_mask = 1) in the completion length when a mask is given: the
    # executor's output blocks are not part of it, so it is shorter than the ids the rollout returned
    assert all(r["completions/mean_length"] < 64 for r in rows)
    before, after = _weights(tool_model), _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_rl_with_lora_trains_adapters_only_and_saves_a_plain_merged_model(sft_model, tmp_path):
    """--use-peft: the output is a plain model folder whose adapted linear layers changed while the
    embeddings and norms (not adapted) are bit-identical; each stage merges its own adapters."""
    from transformers import AutoModelForCausalLM

    from still_cli.stages.rl import RLConfig, run

    table = _difficulty_table(tmp_path / "difficulty.jsonl")
    out = run(RLConfig(model=str(sft_model), data=str(RL_DATA), output=str(tmp_path / "rl"), difficulty=str(table),
                       levels={"medium": [0.5, 0.95]},
                       stages=[{"name": "one", "levels": ["medium"], "max_steps": 2},
                               {"name": "two", "levels": ["medium"], "max_steps": 2}],
                       use_peft=True, lora_r=4, lora_dropout=0.0, dynamic_sampling=True,  # a signal in each stage
                       rewards=["signed", "length"], **{**SMALL, "learning_rate": 1e-2}))
    assert not (out / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(out)  # loads as a plain model
    before, after = _weights(sft_model), _weights(out)
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("q_proj" in k for k in changed) and any("mlp" in k for k in changed), changed
    assert not [k for k in changed if "embed" in k or "norm" in k], changed  # LoRA leaves them alone
    stage1 = _weights(out / "stages" / "1-one" / "final")  # also a plain merged model
    assert any(not torch.equal(stage1[k], before[k]) for k in stage1)
    assert any(not torch.equal(stage1[k], after[k]) for k in stage1)  # stage 2 trained fresh adapters
    assert [s["stage"] for s in json.loads((out / "curriculum.json").read_text())["finished"]] == ["one", "two"]


def test_rl_lora_with_synced_reference_is_refused(tmp_path):
    r = run_cli("rl", "--model", "m", "--data", str(RL_DATA), "-o", str(tmp_path / "x"), "--use-peft",
                "--sync-ref-model", "--beta", "0.01")
    assert r.returncode != 0 and "sync_ref_model needs a separate reference model" in r.stderr
