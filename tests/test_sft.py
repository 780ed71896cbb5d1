import itertools
import json
import shutil

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from still_cli.errors import ConfigError, DataError
from still_cli.stages.sft import SFTStageConfig, run


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _losses(folder):
    return [r["loss"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _changed(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sft_rows(tmp_path_factory):
    p = tmp_path_factory.mktemp("rows") / "sft.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                          {"role": "assistant", "content": f"<think>\n{a} + {b} = {a + b}\n</think>\n\nThe answer is \\boxed{{{a + b}}}."}]}
            for a in range(8) for b in range(8)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture(scope="module")
def dpo_rows(tmp_path_factory):
    p = tmp_path_factory.mktemp("rows") / "pairs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
             "chosen": [{"role": "assistant", "content": f"The answer is \\boxed{{{a + b}}}."}],
             "rejected": [{"role": "assistant", "content": f"I am not sure, maybe {a * b + 7}"}]}
            for a in range(6) for b in range(6)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _cfg(model, data, out, **kw):
    base = dict(model=str(model), data=str(data), output=str(out), max_steps=16, learning_rate=1e-3,
                logging_steps=4, save_steps=8, per_device_train_batch_size=8)
    return SFTStageConfig(**{**base, **kw})


def test_full_sft_changes_weights_and_lowers_loss(tiny_model, sft_rows, tmp_path):
    out = run(_cfg(tiny_model, sft_rows, tmp_path / "full"))
    assert _changed(_weights(tiny_model), _weights(out))
    losses = _losses(out)
    assert losses[-1] < losses[0] * 0.9
    assert (out / "config.yaml").exists() and (out / "tokenizer.json").exists()


def test_lora_sft_merged_changes_weights_and_lowers_loss(tiny_model, sft_rows, tmp_path):
    out = run(_cfg(tiny_model, sft_rows, tmp_path / "lora", use_peft=True, merge_lora=True, lora_r=8))
    before, after = _weights(tiny_model), _weights(out)
    assert set(before) == set(after)  # merged: a plain model folder, no adapter keys
    assert _changed(before, after)
    losses = _losses(out)
    assert losses[-1] < losses[0]


def test_dpo_changes_weights_and_lowers_loss(tiny_model, dpo_rows, tmp_path):
    out = run(_cfg(tiny_model, dpo_rows, tmp_path / "dpo", method="dpo", max_steps=20, logging_steps=5))
    assert _changed(_weights(tiny_model), _weights(out))
    losses = _losses(out)
    assert losses[-1] < losses[0]


def test_resume_continues_from_checkpoint_with_same_data_order(tiny_model, sft_rows, tmp_path):
    full = run(_cfg(tiny_model, sft_rows, tmp_path / "a", seed=3))
    # "crash" after step 8: only the step-8 checkpoint survived
    crashed = tmp_path / "b"
    (crashed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "checkpoint-8", crashed / "checkpoints" / "checkpoint-8")
    resumed = run(_cfg(tiny_model, sft_rows, crashed, seed=3, resume=True))
    steps = [r["step"] for r in map(json.loads, (resumed / "metrics.jsonl").read_text().splitlines())]
    assert steps[-1] == 16
    a, b = _weights(full), _weights(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), "resumed run diverged from the uninterrupted one"


def test_resume_from_the_final_checkpoint_restores_it_without_another_step(tiny_model, sft_rows, tmp_path):
    """A kill after the last checkpoint (step = max_steps) but before the model was saved: --resume gives
    the finished run's weights and metrics; transformers' Trainer, resumed there, would train step 17."""
    full = run(_cfg(tiny_model, sft_rows, tmp_path / "a", seed=3))
    crashed = tmp_path / "b"
    shutil.copytree(full / "checkpoints", crashed / "checkpoints")
    resumed = run(_cfg(tiny_model, sft_rows, crashed, seed=3, resume=True))
    assert sorted(p.name for p in (resumed / "checkpoints").glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-8"]
    assert _losses(resumed) == _losses(full) and len(_losses(full)) == 4
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_guards(tiny_model, sft_rows, tmp_path):
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        run(_cfg(tiny_model, sft_rows, tmp_path / "x", resume=True))
    (tmp_path / "y" / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(ConfigError, match="add --resume"):
        run(_cfg(tiny_model, sft_rows, tmp_path / "y"))


def test_scheduler_kwargs_reach_the_schedule(tiny_model, sft_rows, tmp_path):
    """warmup_stable_decay with its own argument: warm-up, a flat peak, then the decay over the last steps."""
    out = run(_cfg(tiny_model, sft_rows, tmp_path / "wsd", max_steps=12, logging_steps=1, warmup_steps=2,
                   lr_scheduler_type="warmup_stable_decay", lr_scheduler_kwargs={"num_decay_steps": 4}))
    lrs = [r["learning_rate"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if "learning_rate" in r]
    assert len(lrs) == 12 and lrs[0] < 1e-3
    assert lrs[2:8] == [pytest.approx(1e-3)] * 6  # stable: steps 3-8 at the peak
    assert all(a > b for a, b in itertools.pairwise(lrs[8:])) and lrs[-1] < 2e-4  # decay over the last 4


def test_weight_decay_shrinks_matrices_but_not_norms(tiny_model, sft_rows, tmp_path):
    """--weight-decay reaches AdamW (the demo's distill and tool SFT use 0.1): matrices shrink by (1 - lr * wd)
    per step on top of Adam's update, while RMSNorm weights stay out of the decay, as transformers groups them."""
    kw = dict(max_steps=4, learning_rate=1e-3, lr_scheduler_type="constant", save_steps=100)
    plain = _weights(run(_cfg(tiny_model, sft_rows, tmp_path / "wd0", **kw)))
    decayed = _weights(run(_cfg(tiny_model, sft_rows, tmp_path / "wd100", weight_decay=100.0, **kw)))
    q = "model.layers.0.self_attn.q_proj.weight"
    # 4 steps of (1 - 1e-3 * 100): 0.66 of the norm, give or take Adam's drift
    assert decayed[q].norm() < 0.8 * plain[q].norm()
    norm = "model.layers.0.input_layernorm.weight"
    assert decayed[norm].mean() > 0.98 and abs(decayed[norm].mean() - plain[norm].mean()) < 0.01


def test_adam_betas_reach_the_optimizer_and_change_the_steps(tiny_model, sft_rows, tmp_path):
    """--adam-beta1/--adam-beta2 reach AdamW (the demo's distill SFT uses beta2 0.95): the checkpointed optimizer
    carries them, and a shorter squared-gradient memory takes different steps from the same start."""
    kw = dict(max_steps=4, save_steps=4, learning_rate=1e-3, lr_scheduler_type="constant")
    default = run(_cfg(tiny_model, sft_rows, tmp_path / "default", **kw))
    short = run(_cfg(tiny_model, sft_rows, tmp_path / "b95", adam_beta1=0.8, adam_beta2=0.95, **kw))
    def betas(folder):
        groups = torch.load(folder / "checkpoints" / "checkpoint-4" / "optimizer.pt")["param_groups"]
        return {tuple(g["betas"]) for g in groups}

    assert betas(short) == {(0.8, 0.95)} and betas(default) == {(0.9, 0.999)}
    assert _changed(_weights(default), _weights(short))


@pytest.mark.parametrize("args, message", [
    (["--adam-beta2", "1.0"], "adam_beta2 = 1.0 is out of range; AdamW needs 0 <= beta < 1"),
    (["--lr-scheduler-type", "wsd"], "lr_scheduler_type 'wsd' is unknown; use one of"),
    (["--lr-scheduler-type", "warmup_stable_decay"], "needs lr_scheduler_kwargs num_decay_steps"),
    (["-o", "lr_scheduler_kwargs={num_decay_steps: 4}"], "num_decay_steps is not an argument of cosine"),
])
def test_bad_scheduler_settings_fail_before_loading(sft_rows, tmp_path, args, message):
    r = run_cli("sft", "--model", str(tmp_path / "absent"), "--data", str(sft_rows), "--max-steps", "4",
                "-o", str(tmp_path / "out"), *args)
    assert r.returncode == 1 and message in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_rows_without_targets_fail_with_line(tiny_model, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="row 1: 'messages' must be a list of messages with an assistant turn"):
        run(_cfg(tiny_model, p, tmp_path / "o"))


def test_sft_cli_from_stdin_with_response_field(tiny_model, tmp_path):
    rows = "".join(json.dumps({"question": f"{i}+1?", "combined_text": f"<|begin_of_thought|>{i}+1<|end_of_thought|>"
                               f"<|begin_of_solution|>\\boxed{{{i + 1}}}<|end_of_solution|>"}) + "\n" for i in range(16))
    out = tmp_path / "cli"
    r = run_cli("sft", "--model", str(tiny_model), "--data", "-", "--problem-field", "question",
                "--response-field", "combined_text", "--max-steps", "4", "--learning-rate", "1e-3", "-o", str(out),
                input=rows)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(out)  # only the result on stdout
    assert _changed(_weights(tiny_model), _weights(out))


def test_tool_output_blocks_are_out_of_the_loss(tiny_model, tmp_path):
    """The executor's ```output``` blocks get label -100 (the model is not taught to predict what the
    sandbox printed); the code, the text around it and the answer keep their labels."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from still_cli.sampling import load_tokenizer
    from still_cli.stages.sft import mask_tool_outputs

    reply = ("<think>\n```python\nprint(47 * 86)\n```\n```output\n4042\n```\nThe output is 4042.\n"
             "```python\nprint(1 + 1)\n```\n```output\n2\n```\n</think>\n\nThe answer is \\boxed{4042}.")
    ds = Dataset.from_list([{"messages": [{"role": "user", "content": "What is 47 * 86?"},
                                          {"role": "assistant", "content": reply}]}])
    tok = load_tokenizer(str(tiny_model))
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(str(tiny_model)), train_dataset=ds, processing_class=tok,
                         args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, assistant_only_loss=True,
                                        report_to=[]))
    before, after = trainer.train_dataset[0], mask_tool_outputs(trainer.train_dataset, tok)[0]
    ids = before["input_ids"]
    trained = lambda labels: tok.decode([i for i, lab in zip(ids, labels) if lab != -100])
    assert "```output\n4042" in trained(before["labels"])
    assert trained(after["labels"]).startswith(reply.replace("```output\n4042\n```\n", "").replace("```output\n2\n```\n", ""))
    removed = tok.decode([i for i, a, b in zip(ids, before["labels"], after["labels"]) if a != -100 and b == -100])
    assert removed == "```output\n4042\n```\n```output\n2\n```\n"


def test_sft_on_tool_traces_masks_their_outputs(tiny_model, tmp_path, caplog):
    rows = [{"messages": [{"role": "user", "content": f"What is {a} * 7?"},
                          {"role": "assistant", "content": f"```python\nprint({a} * 7)\n```\n```output\n{a * 7}\n```\n"
                                                          f"The answer is \\boxed{{{a * 7}}}."}]} for a in range(12)]
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("INFO", logger="still.sft"):
        run(SFTStageConfig(model=str(tiny_model), data=str(data), output=str(tmp_path / "out"), max_steps=1,
                           per_device_train_batch_size=4, save_steps=100))
    assert "12 tool output blocks taken out of the loss" in caplog.text


def _mixed_rows(path):
    """Half the rows short, half ~10x longer: random batches mix them."""
    short = [{"messages": [{"role": "user", "content": f"What is {a} + 1?"},
                           {"role": "assistant", "content": f"\\boxed{{{a + 1}}}"}]} for a in range(32)]
    long = [{"messages": [{"role": "user", "content": f"What is {a} + 2?"},
                          {"role": "assistant", "content": "Let me add step by step. " * 12 + f"\\boxed{{{a + 2}}}"}]}
            for a in range(32)]
    path.write_text("".join(json.dumps(r) + "\n" for pair in zip(short, long) for r in pair))
    return path


def _record_steps(monkeypatch):
    """(padded size, real tokens) of every forward + backward: a length chunk, or the whole batch."""
    import trl

    seen = []
    original = trl.SFTTrainer.training_step

    def recording(self, model, inputs, *a, **kw):
        seen.append((inputs["input_ids"].numel(), int(inputs["attention_mask"].sum())))
        return original(self, model, inputs, *a, **kw)

    monkeypatch.setattr(trl.SFTTrainer, "training_step", recording)
    return seen


def test_gradient_checkpointing_recomputes_layers_and_trains_the_same(tiny_model, sft_rows, tmp_path, monkeypatch):
    """--gradient-checkpointing reaches the trainer under the installed transformers' name (no deprecation
    warning): each decoder layer runs its forward again in the backward pass, and the losses equal an
    unchecked run's (the same computation, recomputed)."""
    import warnings

    from transformers.models.qwen2 import modeling_qwen2

    # counted inside the layers (their MLPs): transformers checkpoints the decoder layer's own forward
    calls = []
    forward = modeling_qwen2.Qwen2MLP.forward

    def counted(self, *a, **k):
        calls.append(1)
        return forward(self, *a, **k)

    monkeypatch.setattr(modeling_qwen2.Qwen2MLP, "forward", counted)
    runs = {}
    for on in (False, True):
        calls.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = run(_cfg(tiny_model, sft_rows, tmp_path / f"gc{on}", gradient_checkpointing=on, max_steps=4,
                           logging_steps=1))
        assert not [w for w in caught if "`gradient_checkpointing` is deprecated" in str(w.message)]
        runs[on] = (len(calls), _losses(out))
    assert runs[False][0] > 0 and runs[True][0] == 2 * runs[False][0], runs  # forward again in backward
    assert runs[True][1] == pytest.approx(runs[False][1], rel=1e-4)


def test_group_by_length_cuts_padding_and_still_trains(tiny_model, tmp_path, monkeypatch):
    rows = _mixed_rows(tmp_path / "mixed.jsonl")
    seen = _record_steps(monkeypatch)
    padded = {}
    for grouped in (False, True):
        seen.clear()
        out = run(_cfg(tiny_model, rows, tmp_path / f"g{grouped}", group_by_length=grouped, max_steps=8))
        padded[grouped] = sum(n - real for n, real in seen)
        assert sum(real for _, real in seen) > 0
    assert padded[True] < 0.5 * padded[False], padded  # grouped batches carry far less padding
    assert _changed(_weights(tiny_model), _weights(out))
    with pytest.raises(ConfigError, match="group_by_length"):
        _cfg(tiny_model, rows, tmp_path / "x", group_by_length=True, packing=True)


def test_length_chunks_cut_padding_and_train_as_the_whole_batch(tiny_model, tmp_path, monkeypatch):
    rows = _mixed_rows(tmp_path / "mixed.jsonl")
    seen = _record_steps(monkeypatch)
    padded, real, outs = {}, {}, {}
    for k in (1, 4):
        seen.clear()
        outs[k] = run(_cfg(tiny_model, rows, tmp_path / f"k{k}", length_chunks=k, max_steps=6, logging_steps=2))
        assert len(seen) == 6 * k
        padded[k], real[k] = sum(n - r for n, r in seen), sum(r for _, r in seen)
    assert real[4] == real[1]  # the same rows in every step
    assert padded[4] < 0.5 * padded[1], padded
    # the same loss and updates as the unsplit batch (up to float summation order)
    for a, b in zip(_losses(outs[1]), _losses(outs[4])):
        assert a == pytest.approx(b, rel=1e-4)
    w1, w4 = _weights(outs[1]), _weights(outs[4])
    assert _changed(_weights(tiny_model), w4)
    assert all(torch.allclose(w1[k], w4[k], rtol=1e-3, atol=1e-5) for k in w1)
    metrics = [json.loads(x) for x in (outs[4] / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (outs[1] / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(ref, metrics):  # one token-weighted accuracy per step, as without chunks
        if "mean_token_accuracy" in a:
            assert a["mean_token_accuracy"] == pytest.approx(b["mean_token_accuracy"], abs=1e-3)
    for bad, match in (({"length_chunks": 0}, "length_chunks = 0"), ({"length_chunks": 2, "packing": True}, "packed"),
                       ({"length_chunks": 2, "method": "dpo"}, "dpo pairs")):
        with pytest.raises(ConfigError, match=match):
            _cfg(tiny_model, rows, tmp_path / "x", **bad)


@pytest.mark.parametrize("packing", [False, True])
def test_cpu_loss_path_matches_trl_fused_head(tiny_model, sft_rows, tmp_path, packing):
    """On CPU the loss comes from the model's own forward (faster than TRL's fused-head fallback): the
    same loss, gradients and logged metrics as TRL's own compute_loss on the same batch."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from still_cli.sampling import load_tokenizer
    from still_cli.stages.sft_trainer import sft_trainer_class

    rows = [json.loads(x) for x in sft_rows.read_text().splitlines()]
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True, report_to=["none"],
                     assistant_only_loss=True, packing=packing, max_length=128)
    trainer = sft_trainer_class()(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=args,
                                   train_dataset=Dataset.from_list(rows), processing_class=load_tokenizer(str(tiny_model)))
    assert type(trainer).compute_loss is not SFTTrainer.compute_loss
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    n_items = int((batch["labels"][:, 1:] != -100).sum())
    results = []
    trainer.model.train()
    for compute in (type(trainer).compute_loss, SFTTrainer.compute_loss):
        trainer.model.zero_grad()
        trainer._metrics["train"].clear()
        loss = compute(trainer, trainer.model, dict(batch), num_items_in_batch=n_items)
        loss.backward()
        grads = [p.grad.clone() for p in trainer.model.parameters()]
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
        results.append((float(loss), grads, metrics))
    (loss_a, grads_a, m_a), (loss_b, grads_b, m_b) = results
    assert loss_a > 1.0 and loss_a == pytest.approx(loss_b, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads_a, grads_b))
    assert set(m_a) == set(m_b) == {"entropy", "mean_token_accuracy"}
    assert all(m_a[k] == pytest.approx(m_b[k], rel=1e-4, abs=1e-6) for k in m_a)
