"""Which engine serves a `local` spec: transformers or llama.cpp.

`engine: llama.cpp` serves a GGUF model (the embedded one, a `.gguf` path, a named GGUF model) on
CPU through llama.cpp; `engine: transformers` serves Hugging Face folders, CUDA and trained
checkpoints (and the embedded GGUF, dequantised). `engine: auto` takes llama.cpp for a GGUF model
on CPU of at least `LLAMA_CPP_MIN_BYTES` (the named models) and transformers for everything else
(the embedded model included).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from synth.errors import LLMError
from synth.llm.cache import Backend
from synth.llm.models import EMBEDDED_NAME, embedded_gguf, resolve_local_model
from synth.spec import LLMSpec


LLAMA_CPP_MIN_BYTES = 256 << 20
"""`auto` serves a GGUF file at least this large on CPU with llama.cpp, a smaller one with
transformers. Measured on 2 idle cores (README, "LLM speed"): qwen2.5-coder-1.5b (1.1 GB) runs
at ~25 tokens/s a stream through llama.cpp and 1.5 through transformers (fp32, 9 GB); the embedded
SmolLM2-135M (98 MB) took 195 s per 64 functions of `pipelines/code.yaml`'s `code_inputs` through
our llama.cpp engine and 162 s through our transformers engine. A small model's step is short, so
per-token work outside the matrix products (a sampler over the vocabulary per row) outweighs
llama.cpp's quantised kernels."""


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
    gguf = gguf_file(spec.model)
    return "llama.cpp" if gguf is not None and gguf.stat().st_size >= LLAMA_CPP_MIN_BYTES else "transformers"


def local_backend(spec: LLMSpec) -> Backend:
    if engine_for(spec) == "llama.cpp":
        from synth.llm.llamacpp import LlamaCppClient

        gguf = gguf_file(spec.model)
        if gguf is None:
            raise LLMError(f"engine llama.cpp needs a GGUF model; {spec.model!r} is not a .gguf file")
        return LlamaCppClient(spec, gguf, model_id=spec.model or EMBEDDED_NAME)
    from synth.llm.local import LocalClient

    return LocalClient(spec)
