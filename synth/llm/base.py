"""The one LLM interface every stage uses: `generate(requests, sampling) -> completions`.

A request is a list of chat messages (`{"role": ..., "content": ...}`). A request whose last
message is the assistant's is continued: that text is the start of the answer (the model must go
on from it) and the completion is what follows it (`split_prefill`). Backends differ in
where tokens come from (local transformers, an OpenAI-compatible server); the cache and the
token / cost accounting wrap any backend the same way (see `synth.llm.cache`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

Message = dict[str, str]
ChatRequest = list[Message]

REPEAT_WINDOW = 64
"""Generated tokens `repeat_penalty` looks back over: llama.cpp's default, long enough to catch a
looping phrase, short enough to leave an answer's format ("Input:", "Output:") mostly alone."""


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    stop: tuple[str, ...] = ()
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="Penalty on tokens already in the text; "
                                    "backends without one (local transformers) ignore it")
    repeat_penalty: float = Field(1.0, ge=1, le=2, description="llama.cpp's repeat penalty on tokens among "
                                  "the last REPEAT_WINDOW generated; backends without one ignore it")
    seed: int = 0
    grammar: str | None = None
    """A GBNF grammar the completion must match; sent as `grammar` by the `openai` backend, which
    llama.cpp's llama-server honours. A stage sets it only for a backend that takes it."""


def split_prefill(messages: ChatRequest) -> tuple[ChatRequest, str]:
    """The messages the answer replies to, and the start of the answer the request gives ("" when
    its last message is not the assistant's)."""
    if messages and messages[-1].get("role") == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, ""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    cached: bool = False


class LLMClient(ABC):
    """Generates one completion per request, in request order."""

    name: str = "llm"

    @property
    @abstractmethod
    def model_id(self) -> str:
        """What made the text: recorded with every record (`model` column)."""

    @abstractmethod
    def generate(self, requests: list[ChatRequest], sampling: SamplingParams) -> list[Completion]:
        ...

    def generate_seeded(self, requests: list[ChatRequest], sampling: SamplingParams, seeds: list[int]) -> list[Completion]:
        """Request i sampled with `seeds[i]` in place of `sampling.seed`: the completion
        `generate([request], sampling with that seed)` gives. This default asks once per distinct
        seed; a client that mixes seeds in one call (`CachedClient`) lets an engine feed a prompt
        asked under several seeds once."""
        require_one_seed_each(requests, seeds)
        results: list[Completion | None] = [None] * len(requests)
        for seed in dict.fromkeys(seeds):
            picked = [i for i, s in enumerate(seeds) if s == seed]
            done = self.generate([requests[i] for i in picked], sampling.model_copy(update={"seed": seed}))
            for i, completion in zip(picked, done):
                results[i] = completion
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Release connections or memory; safe to call twice."""


def require_one_seed_each(requests: list[ChatRequest], seeds: list[int]) -> None:
    if len(seeds) != len(requests):
        raise ValueError(f"expected one seed per request, got {len(seeds)} for {len(requests)}")
