"""The `openai` backend: any OpenAI-compatible `/v1/chat/completions` server (vLLM, llama.cpp, hosted APIs).

Requests go out concurrently (at most `max_concurrency` at a time) over one `httpx.AsyncClient`.
A request that meets a 408/409/429/5xx answer, a connection error or a timeout is retried up to
`max_retries` times with exponential backoff and full jitter (honouring `Retry-After`). Each
completion is handed to `on_completion` the moment it arrives, so when a request finally fails
every completion that finished before is already in the cache. `generate` itself is synchronous:
it runs its own event loop, in a helper thread when the caller already has one running (async Ray
actors, notebooks).

A request that ends with the assistant's text goes out as it is: llama.cpp's server goes on from
it (an assistant prefill); a server that does not may answer it with a new turn instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
from collections.abc import Coroutine
from typing import Any

import httpx

from synth.errors import LLMError
from synth.llm.base import ChatRequest, Completion, SamplingParams
from synth.llm.cache import Backend, OnCompletion
from synth.spec import LLMSpec

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 409, 429})
"""Besides every 5xx: the statuses worth another try (as OpenAI's own client retries)."""
MAX_BACKOFF_S = 30.0


class RetryableError(Exception):
    """A failure worth another try; its message becomes part of the final LLMError."""


class OpenAIClient(Backend):
    backend = "openai"
    name = "openai"

    def __init__(self, spec: LLMSpec, backoff_s: float = 0.5):
        super().__init__()
        if not spec.model:
            raise LLMError("the openai backend needs `model:` (the model name the server serves)")
        self.spec = spec
        self.base_url = (spec.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.backoff_s = backoff_s
        key = os.environ.get(spec.api_key_env)
        # Local servers need no key; hosted ones answer 401, which names the problem.
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def model_id(self) -> str:
        return self.spec.model or ""

    def generate(
        self,
        requests: list[ChatRequest],
        sampling: SamplingParams,
        on_completion: OnCompletion | None = None,
        seeds: list[int] | None = None,
    ) -> list[Completion]:
        if seeds is None:
            params = [sampling] * len(requests)
        else:
            params = [sampling.model_copy(update={"seed": s}) for s in seeds]
        return run_sync(self._generate_all(requests, params, on_completion))

    async def _generate_all(
        self, requests: list[ChatRequest], params: list[SamplingParams], on_completion: OnCompletion | None
    ) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        failures: list[str] = []
        semaphore = asyncio.Semaphore(self.spec.max_concurrency)
        limits = httpx.Limits(max_connections=self.spec.max_concurrency)

        async def one(i: int, client: httpx.AsyncClient) -> None:
            async with semaphore:
                if failures:
                    return  # the run is failing: don't start more, let the started ones finish
                try:
                    results[i] = await self._request(client, requests[i], params[i])
                except LLMError as exc:
                    failures.append(str(exc))
                    return
            if on_completion is not None:
                on_completion(i, results[i])

        async with httpx.AsyncClient(headers=self.headers, limits=limits, timeout=None) as client:
            await asyncio.gather(*(one(i, client) for i in range(len(requests))))
        if failures:
            done = sum(r is not None for r in results)
            raise LLMError(f"{failures[0]} ({done} of {len(requests)} requests completed before it)")
        return results  # type: ignore[return-value]

    async def _request(self, client: httpx.AsyncClient, messages: ChatRequest, sampling: SamplingParams) -> Completion:
        body = self._body(messages, sampling)
        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                self.count("llm_retries")
            try:
                async with asyncio.timeout(self.spec.timeout_s):
                    response = await client.post(url, json=body)
                return self._parse(response)
            except (RetryableError, httpx.TransportError, TimeoutError) as exc:
                last = _describe(exc, self.spec.timeout_s)
                delay = _retry_after(exc) or random.uniform(0, min(MAX_BACKOFF_S, self.backoff_s * 2**attempt))
                if attempt < self.spec.max_retries:
                    await asyncio.sleep(delay)
        raise LLMError(
            f"{url}: model {self.model_id!r} failed after {self.spec.max_retries + 1} attempts; last error: {last}"
        )

    def _body(self, messages: ChatRequest, sampling: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.presence_penalty:
            body["presence_penalty"] = sampling.presence_penalty
        if sampling.repeat_penalty != 1:
            body["repeat_penalty"] = sampling.repeat_penalty  # llama-server's extension
        if sampling.grammar is not None:
            body["grammar"] = sampling.grammar  # llama-server's extension: constrained decoding
        return body

    def _parse(self, response: httpx.Response) -> Completion:
        if response.status_code in RETRY_STATUS or response.status_code >= 500:
            raise RetryableError(f"HTTP {response.status_code}: {_snippet(response)}", response)
        if response.status_code != 200:
            raise LLMError(
                f"{response.request.url}: model {self.model_id!r}: HTTP {response.status_code}: {_snippet(response)}"
            )
        try:
            data = response.json()
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return Completion(
                text=choice["message"].get("content") or "",
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                finish_reason=choice.get("finish_reason") or "stop",
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMError(
                f"{response.request.url}: model {self.model_id!r}: expected a chat completion, "
                f"got {_snippet(response)!r} ({type(exc).__name__}: {exc})"
            ) from None


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    text = " ".join(response.text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within timeout_s={timeout_s}"
    if isinstance(exc, RetryableError):
        return str(exc.args[0])
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retry_after(exc: BaseException) -> float | None:
    """The server's own `Retry-After` (seconds form), capped, when it sent one."""
    if not isinstance(exc, RetryableError) or len(exc.args) < 2:
        return None
    value = exc.args[1].headers.get("retry-after")
    try:
        return min(MAX_BACKOFF_S, max(0.0, float(value))) if value else None
    except ValueError:
        return None


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
