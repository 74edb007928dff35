"""Which engine serves a `local` spec: transformers or llama.cpp.

`engine: llama.cpp` serves a GGUF model (the embedded one, a `.gguf` path, a named GGUF model) on
CPU through llama.cpp; `engine: transformers` serves Hugging Face folders, CUDA and trained
checkpoints (and the embedded GGUF, dequantised). `engine: auto` takes `GGUF_CPU_ENGINE` for a
GGUF model on CPU and transformers for everything else.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from synth.errors import LLMError
from synth.llm.cache import Backend
from synth.llm.models import EMBEDDED_NAME, embedded_gguf, resolve_local_model
from synth.spec import LLMSpec


GGUF_CPU_ENGINE = "transformers"
"""What `auto` takes for a GGUF model on CPU: the faster engine in `bench/llm_throughput.py` on 2
idle cores. Not yet measured there (README, "LLM speed": under a load of 10-25 the two were within
10% of each other per CPU-second; with llama.cpp's prefix cache, a quick check under a load of 8-10
gave llama.cpp 1.4x), so the engine whose texts do not depend on batching stays."""


def gguf_file(model: str | None) -> Path | None:
    """The GGUF file a local spec's `model:` names (the embedded model when None), else None."""
    if model is None:
        return embedded_gguf()
    if Path(model).expanduser().is_dir():
        return None
    path = resolve_local_model(model)  # a named GGUF model or a .gguf path; raises for a missing folder
    return path if path.suffix == ".gguf" else None


def engine_for(spec: LLMSpec) -> str:
    """`llama.cpp` or `transformers`, as `spec.engine` says or `auto` decides."""
    if spec.engine != "auto":
        return spec.engine
    device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" or importlib.util.find_spec("llama_cpp") is None:
        return "transformers"
    if spec.model is not None and Path(spec.model).expanduser().is_dir():
        return "transformers"
    return GGUF_CPU_ENGINE if gguf_file(spec.model) is not None else "transformers"


def local_backend(spec: LLMSpec) -> Backend:
    if engine_for(spec) == "llama.cpp":
        from synth.llm.llamacpp import LlamaCppClient

        gguf = gguf_file(spec.model)
        if gguf is None:
            raise LLMError(f"engine llama.cpp needs a GGUF model; {spec.model!r} is not a .gguf file")
        return LlamaCppClient(spec, gguf, model_id=spec.model or EMBEDDED_NAME)
    from synth.llm.local import LocalClient

    return LocalClient(spec)
