"""The openai backend against real HTTP servers on loopback: retries on 429 / 500 / hangs / dropped
connections, a clear error once retries run out, load spread over a fleet, a real model served."""

import time

import pytest

from loopback import HFResponder, TeacherServer, arith_responder
from still_cli.errors import BackendError
from still_cli.sampling import SamplingParams, make_sampler

PROMPT = [{"role": "user", "content": "What is 3 + 4?\nPlease reason step by step."}]


def _sampler(urls, **kw):
    kw = {"api_key_env": "STILL_TEST_KEY", "request_timeout": 1.0, "max_retries": 4, "backoff_base": 0.01,
          "backoff_max": 0.05, **kw}
    return make_sampler("openai", "teacher-x", base_urls=urls, **kw)


def test_retries_each_fault_then_succeeds(monkeypatch):
    monkeypatch.setenv("STILL_TEST_KEY", "sk-test-123")
    with TeacherServer(arith_responder, faults=["429", "500", "drop", "hang"], hang_seconds=3) as srv:
        t = time.perf_counter()
        (out,) = _sampler([srv.url]).generate([PROMPT], SamplingParams(n=1, max_tokens=50, seed=1))
        elapsed = time.perf_counter() - t
    assert "\\boxed{" in out[0].text and out[0].finish_reason == "stop" and out[0].num_tokens > 0
    assert len(srv.requests) == 5  # four faults, each retried, then the answer
    assert 1.0 <= elapsed < 3.0  # the hang cost one request timeout, not the server's 3 s
    assert all(r["headers"].get("Authorization") == "Bearer sk-test-123" for r in srv.requests)
    assert srv.requests[0]["body"]["model"] == "teacher-x" and srv.requests[0]["body"]["messages"] == PROMPT


def test_exhausted_retries_name_the_server_and_the_fix():
    with TeacherServer(arith_responder, faults=["500"] * 10) as srv:
        with pytest.raises(BackendError) as e:
            _sampler([srv.url], max_retries=2).generate([PROMPT], SamplingParams(n=1))
    msg = str(e.value)
    assert "failed 3 times" in msg and srv.url in msg and "HTTP 500" in msg and "--max-retries" in msg
    assert len(srv.requests) == 3


def test_client_errors_fail_at_once_without_leaking_the_key(monkeypatch):
    monkeypatch.setenv("STILL_TEST_KEY", "sk-secret-999")
    with TeacherServer(arith_responder, faults=["401"]) as srv:
        with pytest.raises(BackendError) as e:
            _sampler([srv.url]).generate([PROMPT], SamplingParams(n=1))
    assert "401" in str(e.value) and "$STILL_TEST_KEY" in str(e.value) and "sk-secret-999" not in str(e.value)
    assert len(srv.requests) == 1


def test_connection_refused_is_retried_on_the_next_server_of_the_fleet():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # bound, not listening: connections are refused
    with TeacherServer(arith_responder) as a, TeacherServer(arith_responder) as b:
        prompts = [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(12)]
        outs = _sampler([a.url, dead, b.url], concurrency=4).generate(prompts, SamplingParams(n=2, seed=3))
    s.close()
    assert [len(o) for o in outs] == [2] * 12
    assert len(a.requests) + len(b.requests) == 24 and len(a.requests) >= 6 and len(b.requests) >= 6


def test_concurrency_overlaps_requests():
    with TeacherServer(arith_responder, latency=0.2) as srv:
        prompts = [[{"role": "user", "content": f"What is {i} + 2?"}] for i in range(16)]
        t = time.perf_counter()
        _sampler([srv.url], concurrency=16, request_timeout=5).generate(prompts, SamplingParams(n=1))
        elapsed = time.perf_counter() - t
    assert elapsed < 1.5  # 16 x 0.2 s one at a time would take 3.2 s


def test_completions_endpoint_and_a_real_model_behind_http(tiny_model):
    with TeacherServer(HFResponder(str(tiny_model))) as srv:
        sampler = _sampler([srv.url], endpoint="completions", request_timeout=30)
        (outs,) = sampler.generate(["What is 1 + 1?"], SamplingParams(n=2, max_tokens=8, temperature=1.0, seed=5))
    assert len(outs) == 2 and all(isinstance(o.text, str) for o in outs)
    assert [r["path"] for r in srv.requests] == ["/v1/completions"] * 2
    assert {r["body"]["seed"] for r in srv.requests} == {5, 6}  # each sample its own seed


def test_top_k_is_sent_only_when_set():
    """`top_k` is not an OpenAI parameter (OpenAI's API refuses it); vLLM / SGLang servers take it."""
    with TeacherServer(arith_responder) as srv:
        _sampler([srv.url]).generate([PROMPT], SamplingParams(n=1, max_tokens=50, seed=1))
        _sampler([srv.url]).generate([PROMPT], SamplingParams(n=1, max_tokens=50, seed=1, top_k=20))
    assert "top_k" not in srv.requests[0]["body"] and srv.requests[1]["body"]["top_k"] == 20
