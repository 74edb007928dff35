"""The models every spec is built from: stage configs, their resources, LLM backends, input paths.

Generators, filters, LLM clients and the sandbox build their config models on these. The spec of
a whole run (`synth.run_spec.RunSpec`) and the YAML loader (`synth.yaml_source`) build on them in
turn; this module imports neither, so every layer can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo


class StrictModel(BaseModel):
    """Unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def existing_path(exists: Callable[[Path], bool], error: str) -> AfterValidator:
    """A path relative to the spec file's folder that must pass `exists`; `error` names `{path}`."""

    def resolve(value: Path, info: ValidationInfo) -> Path:
        base = (info.context or {}).get("base_dir")
        path = value if value.is_absolute() or base is None else Path(base) / value
        if not exists(path):
            raise ValueError(error.format(path=path))
        return path.resolve()

    resolve.names_an_input = True  # synth.inputs hashes the content of fields marked so
    return AfterValidator(resolve)


InputFile = Annotated[Path, existing_path(Path.is_file, "file not found: {path}")]
"""A path to an existing file, relative to the spec file's folder."""

InputFolder = Annotated[Path, existing_path(Path.is_dir, "folder not found: {path}")]
"""A path to an existing folder, relative to the spec file's folder."""


class RayOptions(StrictModel):
    address: str | None = Field(None, description="Existing cluster; else RAY_ADDRESS; else embedded.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded Ray (default: all).")
    object_store_memory: int | None = Field(None, ge=75 * 1024**2, description="Bytes, embedded Ray.")


class LLMPrices(StrictModel):
    prompt_per_million: float = Field(0.0, ge=0)
    completion_per_million: float = Field(0.0, ge=0)


class LLMSpec(StrictModel):
    """One named LLM backend; stages refer to it by name (`llm: default`)."""

    backend: Literal["local", "openai"] = "local"
    model: str | None = Field(None, description="local: a model folder (default: embedded SmolLM2); openai: model name")
    base_url: str | None = Field(None, description="openai: server URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the key")
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0)
    batch_size: int = Field(32, ge=1, description="local: sequences generated together (slots)")
    engine: Literal["auto", "transformers", "llama.cpp"] = Field(
        "auto", description="local: auto = llama.cpp for a GGUF model on CPU (measured faster), else transformers"
    )
    device: str | None = Field(None, description="local: cpu, cuda, cuda:1 ... (default: cuda if present)")
    threads: int | None = Field(None, ge=1, description="local: torch CPU threads (default: all cores)")
    prices: LLMPrices = LLMPrices()
    cache: bool = Field(True, description="Cache responses by request hash so a resumed run pays nothing twice")


class StageResources(StrictModel):
    """What one worker of a stage asks Ray for."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources")
    concurrency: int = Field(1, ge=1, description="Actors in the pool of a stateful stage")
    batch_size: int | None = Field(None, ge=1, description="Rows per batch handed to the stage")


class StageConfig(StrictModel):
    """Fields every stage has; each kind subclasses this with its own."""

    kind: str
    name: str | None = Field(None, description="Unique stage name; default: the kind")
    resources: StageResources = StageResources()


class TrainStageConfig(StageConfig):
    """Base of the configs of stages that train on the finished dataset (`synth.stage.TrainStage`):
    they come last and decide a model, not records, so the records' fingerprint leaves them out."""


def format_loc(loc: tuple) -> str:
    """A key path as a spec writes it: `stages[1].rounds`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
