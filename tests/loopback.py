"""Real HTTP teacher servers on 127.0.0.1 for the openai backend's tests and benchmark.

`TeacherServer(responder, faults=[...])` speaks the OpenAI chat and completions API over a real socket.
Faults are consumed one per request, in order: "429" (with Retry-After: 0), "500", "401", "hang" (no answer
for `hang_seconds`), "drop" (close the connection without a response), "ok". Every request's headers
and body are recorded in `.requests`. Responders turn (prompt text, request body) into response text:
`arith_responder` (the scripted arithmetic teacher, wrong on a seeded third of samples, correct ones in
three wordings) and
`HFResponder` (a real model through the hf backend).
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

_PROBLEM = re.compile(r"What is [0-9+\- ]+\?")


def arith_responder(prompt: str, body: dict[str, Any]) -> str:
    from still_cli.tasks import solve, teacher_trace

    m = _PROBLEM.search(prompt)
    if m is None:
        return "I cannot help with that."
    rng = random.Random(f"{body.get('seed')}-{m.group(0)}")
    if rng.random() < 1 / 3:
        return "<think>\nI guess.\n</think>\n\nThe answer is \\boxed{" + str(solve(m.group(0)) + 1) + "}."
    trace = teacher_trace(m.group(0))  # correct, in one of three wordings (so kept samples can differ)
    extra = rng.choice(["", "Let me go over it once more.\n", "Hmm, adding step by step is safest.\n"])
    return trace.replace("<think>\n", "<think>\n" + extra, 1)


class HFResponder:
    """Serve a local model folder through still's hf sampler (one request at a time)."""

    def __init__(self, model_dir: str):
        from still_cli.sampling import make_sampler

        self.sampler = make_sampler("hf", model_dir)
        self.lock = threading.Lock()

    def __call__(self, prompt: Any, body: dict[str, Any]) -> str:
        from still_cli.sampling import SamplingParams

        if isinstance(prompt, list):  # chat: apply the model's own template
            prompt = self.sampler.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        params = SamplingParams(n=1, temperature=body.get("temperature", 1.0), top_p=body.get("top_p", 1.0),
                                max_tokens=body.get("max_tokens", 64), seed=body.get("seed") or 0)
        with self.lock:
            return self.sampler.generate([prompt], params)[0][0].text


class TeacherServer:
    def __init__(self, responder: Callable[[Any, dict], str], faults: list[str] | None = None,
                 latency: float = 0.0, hang_seconds: float = 5.0):
        self.responder, self.faults, self.latency, self.hang_seconds = responder, list(faults or []), latency, hang_seconds
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def setup(self):  # headers and body go out in two writes: without NODELAY, Nagle adds ~40 ms
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer.lock:
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    fault = outer.faults.pop(0) if outer.faults else "ok"
                if fault == "429":
                    return self._send(429, {"error": "rate limited"}, {"Retry-After": "0"})
                if fault == "500":
                    return self._send(500, {"error": "boom"})
                if fault == "401":
                    return self._send(401, {"error": "invalid api key"})
                if fault == "hang":
                    time.sleep(outer.hang_seconds)
                    self.close_connection = True
                    return
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if outer.latency:
                    time.sleep(outer.latency)
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"] if chat else body["prompt"]
                prompt_text = prompt[-1]["content"] if chat else prompt
                text = outer.responder(prompt if isinstance(outer.responder, HFResponder) else prompt_text, body)
                choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                          if chat else {"index": 0, "text": text, "finish_reason": "stop"})
                self._send(200, {"id": "x", "object": "chat.completion" if chat else "text_completion",
                                 "model": body.get("model"), "choices": [choice],
                                 "usage": {"completion_tokens": len(text.split())}})

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> TeacherServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_forever(kind: str, port_file: str, latency: float = 0.0) -> None:
    """Run a server in its own process (for kill -9 tests of the client): writes its URL to port_file."""
    server = TeacherServer(arith_responder if kind == "arith" else HFResponder(kind), latency=latency)
    with server:
        with open(port_file, "w") as f:
            f.write(server.url)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    import sys

    serve_forever(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
