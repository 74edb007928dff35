"""A real GGUF model through llama-cpp-python, for tests that measure a named offline model (the
rule 1 judge, the rubric judge) before the `local` backend serves GGUF files itself."""

from __future__ import annotations

import pytest

from synth.llm import Completion, LLMClient


class GGUFClient(LLMClient):
    """Greedy, one request at a time, on llama.cpp's own chat template for the model."""

    def __init__(self, name: str) -> None:
        pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (scripts/setup.sh)")
        from llama_cpp import Llama

        from synth.errors import LLMError
        from synth.llm.models import named_model_gguf

        try:
            path = named_model_gguf(name)
        except LLMError as exc:
            pytest.skip(str(exc))
        self.llama = Llama(model_path=str(path), n_ctx=2048, n_threads=2, verbose=False)
        self.name = name

    @property
    def model_id(self) -> str:
        return self.name

    def generate(self, requests, sampling):
        out = []
        for messages in requests:
            reply = self.llama.create_chat_completion(messages, max_tokens=sampling.max_tokens, temperature=0.0)
            choice = reply["choices"][0]
            usage = reply.get("usage", {})
            out.append(Completion(choice["message"]["content"] or "", usage.get("prompt_tokens", 0),
                                  usage.get("completion_tokens", 0), choice.get("finish_reason") or "stop"))  # fmt: skip
        return out
