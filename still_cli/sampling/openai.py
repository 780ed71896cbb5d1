"""OpenAI-compatible backend: a teacher behind an HTTP API (vLLM, SGLang, hosted APIs), one or many servers.

One request per sample (n = 1) so every sample gets its exact token count and finish reason from the
server, and a fleet of servers shares the load evenly: request i goes to base URL i mod len(urls); a
retry moves on to the next URL, so a dead server's requests drain to the live ones.

Retries: 429, 5xx, timeouts and connection errors (refused, reset, dropped mid-response) are retried
with exponential backoff and full jitter (sleep ~ U(0, min(backoff_max, backoff_base * 2^attempt)),
or the server's Retry-After when it sends one), up to `max_retries`; then a BackendError names the
URL, the last failure and the fix. Other 4xx (bad request, unknown model, bad key) fail at once.

The API key is read from the environment variable named by `api_key_env` and only ever placed in
the Authorization header: it is not a config value, not logged, and not in any error message.
HTTP is httpx's (async client, connection pooling, timeouts); only the retry policy is ours.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from typing import Any, Iterator

from ..errors import BackendError, ConfigError
from . import Completion, SamplingParams

log = logging.getLogger("still.openai")

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAISampler:
    chat_prompts = True  # stages hand this backend chat messages (or plain text for the completions endpoint)

    def __init__(self, model: str, *, base_urls: list[str], api_key_env: str | None = "OPENAI_API_KEY",
                 endpoint: str = "chat", concurrency: int = 16, request_timeout: float = 600.0,
                 max_retries: int = 6, backoff_base: float = 1.0, backoff_max: float = 60.0,
                 tokenizer: Any = None, extra_body: dict[str, Any] | None = None):
        if not base_urls:
            raise ConfigError("the openai backend needs at least one base URL, e.g. "
                              "--base-urls http://localhost:8000/v1")
        if endpoint not in ("chat", "completions"):
            raise ConfigError(f"endpoint {endpoint!r} is unknown; use chat or completions")
        self.model, self.endpoint = model, endpoint
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.api_key_env = api_key_env
        self.concurrency, self.request_timeout = concurrency, request_timeout
        self.max_retries, self.backoff_base, self.backoff_max = max_retries, backoff_base, backoff_max
        self.tokenizer = tokenizer  # optional; only used by stages to render completions-endpoint prompts
        self.extra_body = extra_body or {}
        self.chat_prompts = endpoint == "chat"
        self._next_url = 0

    # -- public -------------------------------------------------------------------------------------

    def generate(self, prompts: list[Any], params: SamplingParams) -> list[list[Completion]]:
        out: list[list[Completion]] = [[] for _ in prompts]
        for i, cs in self.iter_generate(prompts, params):
            out[i] = cs
        return out

    def iter_generate(self, prompts: list[Any], params: SamplingParams,
                      seeds: list[int] | None = None) -> Iterator[tuple[int, list[Completion]]]:
        """Yield (prompt index, its n completions) as each prompt's samples finish (any order).
        Sample j of prompt i is requested with seed `seeds[i] + j` (default `params.seed + i * n + j`):
        give seeds tied to the problems, and a resumed run asks the server for the same samples."""
        loop = asyncio.new_event_loop()
        try:
            agen = self._run(prompts, params, seeds)
            while True:
                try:
                    item = loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    break
                yield item
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    # -- internals ----------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                h["Authorization"] = f"Bearer {key}"
        return h

    def _body(self, prompt: Any, params: SamplingParams, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_tokens, "n": 1,
                                "temperature": params.temperature, "top_p": params.top_p, "seed": seed}
        if params.stop:
            body["stop"] = params.stop
        if params.top_k > 0:  # not an OpenAI parameter; vLLM and SGLang servers take it
            body["top_k"] = params.top_k
        if self.endpoint == "chat":
            body["messages"] = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        body.update(self.extra_body)
        return body

    async def _run(self, prompts: list[Any], params: SamplingParams, seeds: list[int] | None):
        import httpx

        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.request_timeout), limits=limits,
                                     headers=self._headers()) as client:

            async def one_prompt(i: int, prompt: Any) -> tuple[int, list[Completion]]:
                async def one_sample(j: int) -> Completion:
                    async with sem:
                        base = seeds[i] if seeds is not None else params.seed + i * params.n
                        return await self._request(client, prompt, params, base + j)

                samples = await asyncio.gather(*(one_sample(j) for j in range(params.n)))
                return i, list(samples)

            tasks = [asyncio.ensure_future(one_prompt(i, p)) for i, p in enumerate(prompts)]
            try:
                for fut in asyncio.as_completed(tasks):
                    yield await fut
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _request(self, client: Any, prompt: Any, params: SamplingParams, seed: int) -> Completion:
        import httpx

        path = "/chat/completions" if self.endpoint == "chat" else "/completions"
        body = self._body(prompt, params, seed)
        last = ""
        start = self._next_url  # round-robin start; each retry then moves to the next URL of the fleet
        self._next_url += 1
        url = self.base_urls[start % len(self.base_urls)]
        for attempt in range(self.max_retries + 1):
            url = self.base_urls[(start + attempt) % len(self.base_urls)]
            retry_after: float | None = None
            try:
                r = await client.post(url + path, json=body)
                if r.status_code == 200:
                    return self._parse(r.json(), url)
                last = f"HTTP {r.status_code}: {r.text[:200]!r}"
                if r.status_code not in RETRY_STATUS:
                    hint = (f"check that ${self.api_key_env} holds a valid key" if r.status_code in (401, 403)
                            else "check the model name and settings")
                    raise BackendError(f"teacher at {url} refused the request ({last}); {hint}")
                ra = r.headers.get("retry-after")
                retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
            except httpx.TimeoutException:
                last = f"no answer within {self.request_timeout:g} s"
            except (httpx.TransportError, ValueError) as e:  # refused / reset / dropped / bad JSON
                last = f"{type(e).__name__}: {str(e)[:160]}"
            if attempt == self.max_retries:
                break
            delay = retry_after if retry_after is not None else random.uniform(
                0, min(self.backoff_max, self.backoff_base * 2 ** attempt))
            log.debug("retry %d/%d after %.2f s (%s at %s)", attempt + 1, self.max_retries, delay, last, url)
            await asyncio.sleep(delay)
        raise BackendError(f"teacher request failed {self.max_retries + 1} times, last at {url} ({last}); check the "
                           f"server(s), or raise --max-retries / --request-timeout")

    def _parse(self, data: dict[str, Any], url: str) -> Completion:
        try:
            choice = data["choices"][0]
            if self.endpoint == "chat":
                msg = choice["message"]
                text = msg.get("content") or ""
                reasoning = msg.get("reasoning_content") or msg.get("reasoning")
                if reasoning:  # servers with a reasoning parser split the thought off: put it back, verbatim
                    text = f"<think>\n{reasoning}\n</think>\n\n{text}"
            else:
                text = choice["text"]
            finish = "length" if choice.get("finish_reason") == "length" else "stop"
            usage = data.get("usage") or {}
            n_tok = usage.get("completion_tokens")
        except (KeyError, IndexError, TypeError) as e:
            raise BackendError(f"teacher at {url} sent a response without {e} (not OpenAI-compatible?); "
                               f"check --endpoint chat|completions") from None
        if n_tok is None:
            n_tok = len(self.tokenizer.encode(text)) if self.tokenizer is not None else len(text.split())
        return Completion(text=text, num_tokens=int(n_tok), finish_reason=finish)
