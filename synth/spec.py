"""Pipeline specs: pydantic models loaded from YAML, with errors that name the file, line and key.

A spec is one file that describes a run: its name, seed, output folder, Ray options, the LLM
backends stages may use, and the ordered list of stages. Each stage entry is `kind:` plus the
fields of that kind's own config model, which the registry supplies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo

from synth.errors import SpecError
from synth.schedule import AirflowOptions
from synth.train.spec import TrainSpec


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


class RunSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    output: Path = Path("output")
    ray: RayOptions = RayOptions()
    llm: dict[str, LLMSpec] = Field(default_factory=lambda: {"default": LLMSpec()})
    write_dropped: bool = Field(False, description="Also write dropped records to OUTPUT/_dropped/")
    stages: list[StageConfig] = Field(min_length=1)
    train: TrainSpec | None = Field(None, description="Train on OUTPUT/data once it is written (synth.train)")
    airflow: AirflowOptions = AirflowOptions()

    @property
    def stage_names(self) -> list[str]:
        return [s.name or s.kind for s in self.stages]

    def fingerprint(self, upto: int | None = None) -> str:
        """Hash of everything that decides the records of stages [0, upto]: spec minus output.

        `train:` is left out: it decides the model trained on the records, not the records
        (`synth.train` fingerprints its own run)."""
        stages = self.stages if upto is None else self.stages[: upto + 1]
        payload = {
            "seed": self.seed,
            "llm": {k: v.model_dump(mode="json") for k, v in sorted(self.llm.items())},
            "stages": [s.model_dump(mode="json", exclude={"resources"}) for s in stages],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- loading


class _LineLoader(yaml.SafeLoader):
    """Safe YAML loader that remembers the line of every mapping key and sequence item."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    lines = {}
    for key_node, value_node in node.value:
        lines[key_node.value] = value_node.start_mark.line + 1
    return _Located(mapping, lines, node.start_mark.line + 1)


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> list:
    items = loader.construct_sequence(node, deep=True)
    return _LocatedList(items, [n.start_mark.line + 1 for n in node.value], node.start_mark.line + 1)


class _Located(dict):
    def __init__(self, data: dict, lines: dict, line: int):
        super().__init__(data)
        self.lines, self.line = lines, line


class _LocatedList(list):
    def __init__(self, data: list, lines: list, line: int):
        super().__init__(data)
        self.lines, self.line = lines, line


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _line_of(tree: Any, loc: tuple) -> int | None:
    """The line of the deepest node of `loc` that the YAML tree knows."""
    line, node = getattr(tree, "line", None), tree
    for part in loc:
        if isinstance(node, _Located) and part in node:
            line, node = node.lines.get(part, line), node[part]
        elif isinstance(node, _LocatedList) and isinstance(part, int) and part < len(node):
            line, node = node.lines[part], node[part]
        else:
            break
    return line


def plain_data(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: plain_data(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain_data(v) for v in node]
    return node


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _explain(err: dict) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    got = err.get("input")
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        return f"{msg[0].lower()}{msg[1:]}, got {got!r}"
    return msg[0].lower() + msg[1:]


def spec_error(path: Path, tree: Any, err: ValidationError | list, prefix: tuple = ()) -> SpecError:
    errors = err.errors() if isinstance(err, ValidationError) else err
    first = errors[0]
    loc = prefix + tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    line = _line_of(tree, loc)
    where = f"{path}:{line}" if line else str(path)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return SpecError(f"{where}: {format_loc(loc)}: {_explain(first)}{more}")


def read_yaml(path: Path, text: str | None = None) -> Any:
    """The YAML tree of a spec file (or of its `text`, already read), lines remembered."""
    try:
        text = path.read_text() if text is None else text
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec file: {exc.strerror}") from None
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark else ""
        raise SpecError(f"{path}{line}: malformed YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: malformed YAML: {exc}") from None


def load_spec(path: str | Path, overrides: dict | None = None) -> RunSpec:
    """Read, validate and return a spec; every stage entry is validated by its kind's model."""
    from synth.registry import stage_class

    path = Path(path)
    tree = read_yaml(path)
    if not isinstance(tree, dict):
        raise SpecError(f"{path}: expected a mapping of spec keys at the top level")
    data = plain_data(tree)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    context = {"base_dir": path.parent.resolve()}

    stages = data.get("stages")
    if isinstance(stages, list):
        validated = []
        for i, entry in enumerate(stages):
            if not isinstance(entry, dict) or "kind" not in entry:
                line = _line_of(tree, ("stages", i))
                raise SpecError(f"{path}:{line}: stages[{i}]: expected a mapping with a `kind:` key")
            try:
                cls = stage_class(entry["kind"])
            except KeyError as exc:
                line = _line_of(tree, ("stages", i, "kind"))
                raise SpecError(f"{path}:{line}: stages[{i}].kind: {exc.args[0]}") from None
            try:
                validated.append(cls.Config.model_validate(entry, context=context))
            except ValidationError as exc:
                raise spec_error(path, tree, exc, ("stages", i)) from None
        data["stages"] = validated
    try:
        spec = RunSpec.model_validate(data, context=context)
    except ValidationError as exc:
        raise spec_error(path, tree, exc) from None
    _check_unique_names(path, spec)
    return spec


def load_spec_outline(path: Path, tree: Any) -> RunSpec:
    """A spec's top level validated, each stage only by its `kind` and `name`: no stage module is
    imported. For tools that schedule a run without running it (the Airflow DAG file); the runner
    validates every stage in full with `load_spec`."""
    if not isinstance(tree, dict):
        raise SpecError(f"{path}: expected a mapping of spec keys at the top level")
    data = plain_data(tree)
    stages = data.get("stages")
    if isinstance(stages, list):
        outline = []
        for i, entry in enumerate(stages):
            if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
                line = _line_of(tree, ("stages", i))
                raise SpecError(f"{path}:{line}: stages[{i}]: expected a mapping with a `kind:` key")
            outline.append(StageConfig.model_construct(kind=entry["kind"], name=entry.get("name")))
        data["stages"] = outline
    try:
        spec = RunSpec.model_validate(data, context={"base_dir": path.parent.resolve()})
    except ValidationError as exc:
        raise spec_error(path, tree, exc) from None
    _check_unique_names(path, spec)
    return spec


def _check_unique_names(path: Path, spec: RunSpec) -> None:
    names = spec.stage_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"{path}: stages: duplicate stage name {dupes[0]!r}; give each a unique `name:`")


def spec_to_dict(spec: RunSpec) -> dict:
    """The spec as plain JSON data, stage configs with their own fields."""
    out = spec.model_dump(mode="json", exclude={"stages"})
    out["stages"] = [s.model_dump(mode="json") for s in spec.stages]
    return out
