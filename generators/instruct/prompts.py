"""Prompt plumbing shared by the instruct generators: templates, chat requests, sampling knobs.

Templates are text files under `templates/`, filled with `string.Template` ($name): a user can
read and edit the wording without reading code, and `substitute` fails loudly when a template
names a value the caller did not give.
"""

from __future__ import annotations

import functools
from pathlib import Path
from string import Template

from pydantic import Field

from synth.llm import ChatRequest, SamplingParams
from synth.spec import StrictModel

TEMPLATE_DIR = Path(__file__).parent / "templates"


@functools.cache
def _template(name: str) -> Template:
    return Template((TEMPLATE_DIR / f"{name}.txt").read_text())


def render(name: str, **values: str) -> str:
    """The template `templates/<name>.txt` with its $placeholders filled in."""
    return _template(name).substitute(values).strip()


def user_request(text: str) -> ChatRequest:
    """A one-message chat request."""
    return [{"role": "user", "content": text}]


def few_shot_request(template: str, shots: list[tuple[dict[str, str], str]], values: dict[str, str]) -> ChatRequest:
    """Worked examples as earlier chat turns, then the real question.

    Chat models, small ones above all, follow an answer format shown as their own past replies
    far more reliably than one described inside a single long message.
    """
    messages: ChatRequest = []
    for shot_values, answer in shots:
        messages += user_request(render(template, **shot_values))
        messages.append({"role": "assistant", "content": answer})
    return messages + user_request(render(template, **values))


class Sampling(StrictModel):
    """How one LLM step samples; the seed is derived per step, never set in a spec."""

    max_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="Where the backend has one (llama.cpp, OpenAI)")
    repeat_penalty: float = Field(1.0, ge=1, le=2, description="Where the backend has one (llama.cpp, llama-server)")

    def params(self, seed: int, stop: tuple[str, ...] = ()) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              presence_penalty=self.presence_penalty, repeat_penalty=self.repeat_penalty,
                              stop=stop, seed=seed)  # fmt: skip


JUDGE = Sampling(max_tokens=4, temperature=0.0)
"""Short greedy answers: Yes/No, Equal/Not Equal."""
