import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import run_cli, wait_until
from still_cli.metrics import pass_at_k


def _samples(out):
    return [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def test_eval_tiny_model_writes_files_and_metrics(tmp_path, tiny_model):
    out = tmp_path / "run"
    r = run_cli("eval", "aime2024", "math500", "--model", str(tiny_model), "--n", "2", "--max-tokens", "16",
                "--limit", "3", "-o", str(out))
    assert r.returncode == 0, r.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"aime2024", "math500"}
    for res in results.values():
        assert res["problems"] == 3 and res["samples"] == 6 and res["n_per_problem"] == 2
        assert {"pass@1", "pass@2", "maj@2", "mean_length", "max_length", "truncated"} <= set(res)
        assert 0 < res["max_length"] <= 16
    assert "by_level" in results["math500"] and "by_subject" in results["math500"]
    rows = _samples(out)
    assert len(rows) == 12 and {"response", "extracted", "correct", "num_tokens"} <= set(rows[0])
    assert "pass@1" in r.stdout  # the table goes to stdout


def test_eval_resumes_after_kill_without_regenerating(tmp_path, tiny_model):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "still_cli.cli", "eval", "gsm8k", "--model", str(tiny_model), "--n", "2",
            "--max-tokens", "48", "--limit", "40", "--batch-size", "4", "-o", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = out / "samples.jsonl"
    wait_until(lambda: p.exists() and len(p.read_text().splitlines()) >= 10, 120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _samples(out)
    assert 10 <= len(before) < 80, "the kill must land midway"
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after = _samples(out)
    keys = [(s["id"], s["sample_idx"]) for s in after]
    assert len(after) == 80 and len(set(keys)) == 80  # every sample once
    assert after[: len(before)] == before  # finished samples kept verbatim, not regenerated
    assert json.loads((out / "results.json").read_text())["gsm8k"]["samples"] == 80


def test_resume_with_different_settings_is_refused(tmp_path, tiny_model):
    out = tmp_path / "run"
    base = ["eval", "amc2023", "--model", str(tiny_model), "--max-tokens", "8", "--limit", "1", "-o", str(out)]
    assert run_cli(*base).returncode == 0
    r = run_cli(*base, "--temperature", "1.0")
    assert r.returncode == 1 and "temperature" in r.stderr and "new --output" in r.stderr


def test_responses_mode_matches_hand_computed_metrics(tmp_path):
    rows = [
        {"id": "p1", "problem": "q1", "gold": "4", "outs": ["\\boxed{4}", "\\boxed{5}", "\\boxed{4}", "no"]},
        {"id": "p2", "problem": "q2", "gold": "\\frac12", "outs": ["\\boxed{0.5}", "\\boxed{3}", "\\boxed{3}", "\\boxed{1/2}"]},
        {"id": "p3", "problem": "q3", "gold": "7", "outs": ["\\boxed{1}", "\\boxed{2}", "\\boxed{2}", "\\boxed{7}"]},
    ]
    f = tmp_path / "theirs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rescore"
    r = run_cli("eval", "--responses", str(f), "--answer-field", "gold", "--responses-field", "outs",
                "--pass-k", "1,2", "--maj-k", "2", "--maj-k", "4", "-o", str(out))
    assert r.returncode == 0, r.stderr
    (res,) = json.loads((out / "results.json").read_text()).values()
    # by hand: c = 2, 2, 1 of n = 4
    assert res["pass@1"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert res["pass@2"] == pytest.approx(((1 - 1 / 6) * 2 + (1 - 3 / 6)) / 3)
    # maj@4: p1 "4" wins 2-1; p2 0.5 and 1/2 vote together and tie with 3, first seen wins; p3 "2" wins
    assert res["maj@4"] == pytest.approx(2 / 3)
    # maj@2: p1 4 vs 5 -> 4 (first); p2 0.5 vs 3 -> 0.5; p3 1 vs 2 -> 1 (wrong)
    assert res["maj@2"] == pytest.approx(2 / 3)
    assert res["no_answer"] == pytest.approx(1 / 12)


def test_responses_mode_bad_column(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"problem": "q", "answer": "1", "responses": 5}) + "\n")
    r = run_cli("eval", "--responses", str(f), "-o", str(tmp_path / "o"))
    assert r.returncode == 1 and "row 1" in r.stderr and "--responses-field" in r.stderr


def test_pass_at_k_formula():
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 4) == 1.0  # n - c < k


def test_vllm_backend_missing_is_a_clear_error():
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    from still_cli.errors import BackendError
    from still_cli.sampling import make_sampler

    with pytest.raises(BackendError, match=r"pip install 'still\[vllm\]'"):
        make_sampler("vllm", "any/model")


@pytest.mark.gpu
def test_vllm_backend_generates_on_gpu(tiny_model):
    """GPU only (skipped on CPU machines): the vllm backend returns n completions per prompt."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from still_cli.sampling import SamplingParams, make_sampler

    s = make_sampler("vllm", str(tiny_model))
    outs = s.generate(["What is 1+1?"], SamplingParams(n=2, max_tokens=8))
    assert len(outs) == 1 and len(outs[0]) == 2 and all(c.num_tokens <= 8 for c in outs[0])


def test_stdout_holds_only_the_results_table(tmp_path, tiny_model):
    r = run_cli("eval", "amc2023", "--model", str(tiny_model), "--max-tokens", "8", "--limit", "2",
                "-o", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "amc2023" in r.stdout and "Loading" not in r.stdout and "wrote" in r.stderr


def test_hf_sampling_follows_the_call_not_the_models_generation_config(tmp_path, tiny_model):
    """A hub model's generation_config.json may carry its own sampling settings (Qwen2.5-Math: top_k 20,
    repetition_penalty 1.05), and transformers' generate() merges them, then its own top_k 50, into every
    call. The hf backend samples with the call's T / top-p / top-k only, as vLLM does."""
    import shutil
    from dataclasses import replace

    from still_cli.sampling import SamplingParams
    from still_cli.sampling.hf import HFSampler

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    cfg = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**cfg, "top_k": 1, "repetition_penalty": 5.0}))
    sampler = HFSampler(str(model), batch_size=256)
    params = SamplingParams(n=256, temperature=1.0, top_p=1.0, max_tokens=1, seed=0)
    first = [c.token_ids[0] for c in sampler.generate(["What is 2 + 2?"], params)[0]]
    # the untrained model is near-uniform over ~1,000 tokens: 256 draws give far more than 50 distinct
    # tokens (the config's top_k 1 would give 1, transformers' default top_k 50 at most 50)
    assert len(set(first)) > 100
    capped = [c.token_ids[0] for c in sampler.generate(["What is 2 + 2?"], replace(params, top_k=5))[0]]
    assert len(set(capped)) <= 5


def test_negative_top_k_is_a_one_line_error(tmp_path):
    r = run_cli("eval", "gsm8k", "--model", "no-such-model", "--top-k", "-1", "-o", str(tmp_path / "run"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "top_k = -1 must be >= 0 (0 = off)" in r.stderr


@pytest.mark.parametrize("which", ["tiny_model", "sft_model"])
def test_hf_growing_kv_cache_samples_the_same_tokens_without_copying_the_cache_each_step(which, request,
                                                                                        monkeypatch):
    """The hf backend hands generate() a cache that writes each step into a preallocated buffer instead
    of transformers' DynamicCache, which concatenates the whole cache at every step. The draws must be
    the very tokens the default cache gives (same seed, batched, left-padded prompts of different
    lengths, rows that stop early beside rows that run to max_tokens; an untrained and an SFT model), and
    the buffer must be reused across steps: a handful of allocations per layer, not one per step."""
    from transformers.cache_utils import DynamicCache

    from still_cli.sampling import SamplingParams, hf
    from still_cli.sampling.hf import HFSampler

    sampler = HFSampler(str(request.getfixturevalue(which)), batch_size=8)
    assert sampler._cache_kwarg == "cache"  # transformers 5.24 takes the cache as `cache`
    prompts = ["What is 2 + 2?", "Compute 17 * 23 and explain every step of the way, please."]
    params = SamplingParams(n=4, temperature=1.0, top_p=0.95, top_k=0, max_tokens=200, seed=3)

    buffers: dict[int, set[int]] = {}
    make = hf.growing_cache

    def recording_cache(model, limit):
        cache = make(model, limit)
        assert isinstance(cache, DynamicCache)
        for i, layer in enumerate(cache.layers):
            update = layer.update

            def spy(k, v, *a, _update=update, _layer=layer, _i=i, **kw):
                out = _update(k, v, *a, **kw)
                buffers.setdefault(_i, set()).add(_layer._kbuf.data_ptr())
                return out
            layer.update = spy
        return cache

    monkeypatch.setattr(hf, "growing_cache", recording_cache)
    grown = sampler.generate(prompts, params)
    sampler._cache_kwarg = None  # transformers' own DynamicCache
    default = sampler.generate(prompts, params)
    assert [c.token_ids for cs in grown for c in cs] == [c.token_ids for cs in default for c in cs]
    # rows that stopped early and rows that ran to max_tokens, in the same batches
    assert {c.finish_reason for cs in default for c in cs} == {"length", "stop"}
    # a 31-token prompt + 200 new ones, grown by max(25%, 64 positions) up to that limit: buffers of 95, 160,
    # 225 and 231 positions (fewer when every row stops early)
    assert buffers and all(len(ptrs) <= 4 for ptrs in buffers.values()), buffers


def test_growing_kv_cache_layer_after_the_batch_is_narrowed():
    """generate() may drop rows from the cache (batch_select_indices) or crop it; the layer must then go
    on returning exactly what concatenation would, starting a new buffer from what is left."""
    import torch

    from still_cli.sampling.hf import _growing_layer_class

    layer = _growing_layer_class()(limit=40)
    ref = None
    torch.manual_seed(0)
    for step in range(30):
        k = torch.randn(4 if step < 10 else 2, 1, 3 if step == 0 else 1, 8)
        v = k * 2
        if step == 10:  # keep rows 1 and 3
            idx = torch.tensor([1, 3])
            layer.batch_select_indices(idx)
            ref = ref[idx]
        if step == 20:
            layer.crop(-5)
            ref = ref[:, :, :-5]
        keys, values = layer.update(k, v)
        ref = k if ref is None else torch.cat([ref, k], dim=-2)
        assert torch.equal(keys, ref) and torch.equal(values, ref * 2)
    assert keys.shape[-2] == layer.get_seq_length() == 3 + 29 - 5
