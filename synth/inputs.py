"""What a stage reads from outside the spec: checked before Ray starts, hashed into its fingerprint.

A stage's config names files and folders (`InputFile`, `InputFolder` fields: seed tasks, tables,
image folders, model folders) and LLM backends (`llm:` fields). `Stage.check_inputs` and
`Stage.input_files` (synth/stage.py) default to the helpers here, so every stage gets them
without code of its own; a stage that can check more (parse its seed file, read its table)
adds to them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

from pydantic import BaseModel

from synth.errors import SpecError, SynthError
from synth.spec import LLMSpec

CHUNK = 1 << 20


def config_paths(config: BaseModel) -> list[Path]:
    """Every input file or folder of a config (`InputFile` and `InputFolder` fields, in nested
    models too), in field order. Other paths (logs, outputs) are not inputs."""
    return list(dict.fromkeys(_input_paths(config)))


def _input_paths(model: BaseModel) -> Iterator[Path]:
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if _names_an_input(info.metadata) or _names_an_input(get_args(info.annotation)):
            yield from _paths(value)
        else:
            yield from _models(value)


def _names_an_input(parts: object) -> bool:
    """An `existing_path` validator among annotation metadata, in nested Annotated / Optional too."""
    for part in parts if isinstance(parts, (list, tuple)) else ():
        if getattr(getattr(part, "func", None), "names_an_input", False):
            return True
        if _names_an_input(getattr(part, "__metadata__", ())) or _names_an_input(get_args(part)):
            return True
    return False


def _paths(value: object) -> Iterator[Path]:
    if isinstance(value, Path):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _paths(item)


def _models(value: object) -> Iterator[Path]:
    if isinstance(value, BaseModel):
        yield from _input_paths(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _models(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _models(item)


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, sorted by name)."""
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
            digest.update(_file_hash(file).encode())
    elif path.is_file():
        digest.update(_file_hash(path).encode())
    else:
        raise SpecError(f"{path}: file or folder not found (it is named in the spec)")
    return digest.hexdigest()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def llm_fields(config: BaseModel) -> dict[str, str]:
    """The config's fields that name a backend of the spec's `llm:` section (`llm`, `judge_llm`...)."""
    out = {}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if (name == "llm" or name.endswith("_llm")) and isinstance(value, str):
            out[name] = value
    return out


def check_llm_names(stage: str, config: BaseModel, llm_specs: dict[str, LLMSpec]) -> list[str]:
    """The backend names the stage uses; an undefined one is a SpecError naming the stage and field."""
    names = llm_fields(config)
    for field, name in names.items():
        if name not in llm_specs:
            known = ", ".join(sorted(llm_specs)) or "none"
            raise SpecError(f"stage {stage!r}: {field}: {name!r} is not defined in the spec's `llm:` section "
                            f"(defined: {known})")
    return list(names.values())


def check_llm_backend(name: str, spec: LLMSpec, timeout_s: float = 5.0) -> None:
    """What a backend needs before any request: a model folder, a model name, a server that answers."""
    if spec.backend == "local":
        from synth.llm.models import embedded_gguf, resolve_local_model

        try:  # a named GGUF model (joined and checked here once), a .gguf path or a model folder
            embedded_gguf() if spec.model is None else resolve_local_model(spec.model)
        except SynthError as exc:
            raise SpecError(f"llm {name!r}: {exc}") from None
        return
    if not spec.model:
        raise SpecError(f"llm {name!r}: model: required for the openai backend (the model name the server serves)")
    _check_reachable(name, spec, timeout_s)


def _check_reachable(name: str, spec: LLMSpec, timeout_s: float) -> None:
    import httpx

    from synth.llm.openai import DEFAULT_BASE_URL

    url = (spec.base_url or DEFAULT_BASE_URL).rstrip("/") + "/models"
    try:
        # Any HTTP answer (401 and 404 too) shows a server is there; only no answer is an error.
        httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise SynthError(f"llm {name!r}: no server answers at {url}: {reason} "
                         "(start it, or fix base_url in the spec's `llm:` section)") from None
