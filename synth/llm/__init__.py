"""LLM clients: one interface (`LLMClient.generate`), several backends, one request cache.

`make_client(spec)` is how stages get a client: it builds the backend the spec names
(`local`: `synth.llm.engines` picks llama.cpp or transformers; `openai`: `synth.llm.openai`) and wraps it in `synth.llm.cache.CachedClient`, which
answers repeated requests from disk and reports token counts and cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from synth.llm.base import ChatRequest, Completion, LLMClient, Message, SamplingParams

if TYPE_CHECKING:
    from synth.llm.cache import Backend, Payer, StatsSink
    from synth.spec import LLMSpec

__all__ = ["ChatRequest", "Completion", "LLMClient", "Message", "SamplingParams", "make_backend", "make_client"]


def make_backend(spec: LLMSpec) -> Backend:
    """The bare backend a spec names, without cache or accounting."""
    if spec.backend == "local":
        from synth.llm.engines import local_backend

        return local_backend(spec)
    if spec.backend == "openai":
        from synth.llm.openai import OpenAIClient

        return OpenAIClient(spec)
    raise ValueError(f"unknown LLM backend {spec.backend!r}; expected 'local' or 'openai'")


def make_client(
    spec: LLMSpec, cache_dir: Path | None = None, stats: StatsSink | None = None, payer: Payer | None = None
) -> LLMClient:
    """Build the backend a `synth.spec.LLMSpec` names, wrapped in the cache and accounting.

    The cache is used when `spec.cache` is on and a `cache_dir` is given; `stats` receives the
    counters of each `generate` call; `payer` is recorded with each entry paid for (see `CachedClient`).
    """
    from synth.llm.cache import CachedClient, ResponseCache

    cache = ResponseCache(Path(cache_dir)) if spec.cache and cache_dir is not None else None
    return CachedClient(make_backend(spec), cache=cache, stats=stats, prices=spec.prices, payer=payer)
