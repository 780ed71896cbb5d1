"""TIR rollouts: the fence protocol, the sandbox in the loop, call budgets, token masks, every backend."""

import json
from pathlib import Path

import pytest
from conftest import run_cli
from loopback import TeacherServer

from still_cli import tir
from still_cli.sampling import Completion, SamplingParams, make_sampler, render_prompt

ROOT = Path(__file__).resolve().parents[1]


class CodeEveryTurn:
    """Test stand-in for a model that opens a code block every turn (to exhaust the call budget)."""

    tokenizer = None

    def __init__(self):
        self.contexts = []

    def generate(self, prompts, params):
        self.contexts.extend(prompts)
        return [[Completion("```python\nx = globals().get('x', 0) + 1\nprint(x)\n```\n", 12, "stop")] for _ in prompts]


def test_scripted_tool_teacher_answers_from_the_sandbox_output():
    s = make_sampler("scripted", "arith-tools")
    p = render_prompt(None, "What is 123 + 456 - 78?", "r1")
    (cs,) = tir.generate(s, [p], SamplingParams(n=2, max_tokens=300), tir.TIRSettings())
    for c in cs:
        assert "```output\n501\n```" in c.text and c.text.endswith("\\boxed{501}.")
        assert c.tool_calls == [{"code": "print(123 + 456 - 78)\n", "output": "501\n", "error": None,
                                 "elapsed": c.tool_calls[0]["elapsed"]}]


def test_big_products_are_solved_with_the_tool_teacher_and_refused_by_the_plain_one():
    from still_cli import tasks
    from still_cli.errors import ConfigError

    probs = tasks.big_problems(20, seed=3, digits=2, op="*")
    a, b = map(int, probs[0]["problem"][len("What is "):-1].split(" * "))
    assert 10 <= a <= 99 and 10 <= b <= 99 and probs[0]["answer"] == str(a * b)
    s = make_sampler("scripted", "arith-tools")
    (cs,) = tir.generate(s, [render_prompt(None, probs[0]["problem"], "raw")], SamplingParams(n=1, max_tokens=300),
                         tir.TIRSettings())
    assert cs[0].text.endswith(f"\\boxed{{{a * b}}}.") and cs[0].tool_calls[0]["output"] == f"{a * b}\n"
    with pytest.raises(ConfigError, match="arith-tools"):
        make_sampler("scripted", "arith").generate([probs[0]["problem"]], SamplingParams(n=1, max_tokens=50))
    # the plain teacher restates the problem before its steps (the copying a tool call needs)
    assert tasks.teacher_trace("What is 7 + 15 - 3?").startswith("<think>\nWe need 7 + 15 - 3.\n7 + 15 = 22\n")


class SleepThenStamp:
    """Test stand-in for a model whose every rollout runs one cell that sleeps, stamping start and end."""

    tokenizer = None

    def generate(self, prompts, params):
        cell = "import time\nt0 = time.time()\ntime.sleep(0.5)\nprint(t0, time.time(), x)\n"
        return [[Completion("Done." if "```output" in p else f"```python\nx = {len(p)}\n{cell}```\n", 9, "stop")]
                for p in prompts]


def test_cells_of_one_round_run_at_once_each_in_its_own_session():
    prompts = ["Q1: ", "Q22: ", "Q333: "]
    outs = tir.generate(SleepThenStamp(), prompts, SamplingParams(n=1, max_tokens=200), tir.TIRSettings(parallel=3))
    spans = []
    for p, (c,) in zip(prompts, outs):
        t0, t1, x = c.tool_calls[0]["output"].split()
        assert int(x) == len(p) and c.text.endswith("Done.")  # each rollout's own session and output
        spans.append((float(t0), float(t1)))
    assert max(a for a, _ in spans) < min(b for _, b in spans)  # all three cells were running together


def test_state_persists_and_the_call_budget_is_enforced():
    model = CodeEveryTurn()
    (cs,) = tir.generate(model, ["Q: "], SamplingParams(n=1, max_tokens=120), tir.TIRSettings(max_calls=3))
    c = cs[0]
    assert [x["output"] for x in c.tool_calls] == ["1\n", "2\n", "3\n"]  # one session: x carried over
    assert tir.OUT_OF_CALLS in c.text and c.text.count("```output") > 3
    assert c.finish_reason == "length" and c.num_tokens >= 120


def test_errors_and_timeouts_are_fed_back_not_raised():
    class Bad(CodeEveryTurn):
        def generate(self, prompts, params):
            done = ["```output" in p for p in prompts]
            return [[Completion("ok" if d else "```python\nwhile True: pass\n```\n", 5, "stop")] for d in done]

    (cs,) = tir.generate(Bad(), ["Q: "], SamplingParams(n=1, max_tokens=200), tir.TIRSettings(timeout=1))
    assert "timed out after 1 s" in cs[0].text and cs[0].tool_calls[0]["error"].startswith("TimeoutError")
    assert cs[0].text.endswith("ok")


def test_token_ids_and_executor_mask_for_rl(tiny_model):
    """With a tokenizer (hf backend), the rollout's ids are the model's ids plus the executor output's,
    and the mask is 0 exactly on the output block (TRL's env_mask)."""
    from still_cli.sampling import load_tokenizer

    tok = load_tokenizer(str(tiny_model))

    class Tokenized(CodeEveryTurn):
        tokenizer = tok

        def generate(self, prompts, params):
            text = "So \\boxed{7}." if "```output" in prompts[0] else "```python\nprint(3 + 4)\n```\n"
            ids = tok.encode(text, add_special_tokens=False)
            return [[Completion(text, len(ids), "stop", token_ids=ids)] for _ in prompts]

    (cs,) = tir.generate(Tokenized(), ["Q: "], SamplingParams(n=1, max_tokens=200), tir.TIRSettings())
    c = cs[0]
    assert len(c.token_ids) == len(c.tool_mask) == c.num_tokens
    tool = tok.decode([t for t, m in zip(c.token_ids, c.tool_mask) if m == 0])
    model = tok.decode([t for t, m in zip(c.token_ids, c.tool_mask) if m == 1])
    assert tool == "```output\n7\n```\n"
    assert model == "```python\nprint(3 + 4)\n```\nSo \\boxed{7}."
    assert tok.decode(c.token_ids) == c.text


def test_hf_backend_runs_the_loop(sft_model):
    sampler = make_sampler("hf", str(sft_model))
    p = render_prompt(sampler.tokenizer, "What is 3 + 4?", "r1")
    (cs,) = tir.generate(sampler, [p], SamplingParams(n=2, max_tokens=40, temperature=1.0), tir.TIRSettings())
    assert all(len(c.token_ids) == len(c.tool_mask) and c.num_tokens <= 40 + 20 for c in cs)


def test_openai_server_that_strips_the_fence():
    def responder(prompt, body):
        ctx = "".join(m["content"] for m in body["messages"])
        if "```output" in ctx:
            return "So the answer is \\boxed{" + ctx.rsplit("```output\n", 1)[1].split("\n", 1)[0] + "}."
        return "```python\nprint(6 * 7)\n"  # the server removed the stop string "```\n"

    with TeacherServer(responder) as srv:
        s = make_sampler("openai", "m", base_urls=[srv.url], api_key_env=None)
        (cs,) = tir.generate(s, [[{"role": "user", "content": "6*7?"}]], SamplingParams(n=1, max_tokens=100),
                             tir.TIRSettings())
    assert cs[0].tool_calls[0]["output"] == "42\n" and cs[0].text.endswith("\\boxed{42}.")
    assert srv.requests[1]["body"]["messages"][-1]["role"] == "assistant"  # continued the assistant turn


def test_eval_with_tools_reports_calls(tmp_path):
    r = run_cli("eval", str(ROOT / "data" / "tiny" / "arith_rl.jsonl"), "--model", "arith-tools", "--backend", "scripted",
                "--tools", "--limit", "6", "--max-tokens", "300", "-o", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    (bench,) = res.values()
    assert bench["pass@1"] == 1.0 and bench["tool_calls"] == 1.0 and bench["tool_errors"] == 0.0
    assert "tool calls" in r.stdout


def test_explore_with_tools_records_calls(tmp_path):
    r = run_cli("explore", "--model", "arith-tools", "--backend", "scripted", "--tools", "--data",
                str(ROOT / "data" / "tiny" / "arith_rl.jsonl"), "--limit", "4", "--n", "2", "--max-tokens", "300",
                "-o", str(tmp_path / "ex"))
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in (tmp_path / "ex" / "samples.jsonl").read_text().splitlines()]
    assert all(s["tool_calls"] and s["tool_calls"][0]["error"] is None for rec in recs for s in rec["samples"])
    sft = [json.loads(x) for x in (tmp_path / "ex" / "sft.jsonl").read_text().splitlines()]
    assert sft and all(x["tool_calls"] == 1 for x in sft)
