"""The spec of a run: `RunSpec` and `load_spec`, which reads a pipeline file and validates every stage.

A spec is one file that describes a run: its name, seed, output folder, Ray options, the LLM
backends stages may use, and the ordered list of stages. Each stage entry is `kind:` plus the
fields of that kind's own config model, which the registry supplies. Stages that train on the
finished dataset (`kind: train`) come last; a `train:` section is such a stage written apart,
appended to `stages:` by the loader.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from synth.errors import SpecError
from synth.schedule import AirflowOptions
from synth.spec import LLMSpec, RayOptions, StageConfig, StrictModel, TrainStageConfig
from synth.yaml_source import line_of, read_yaml, spec_data, spec_error

TRAIN_KIND = "train"
"""The stage a `train:` section becomes (`synth.train.stage`)."""


class RunSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    output: Path = Path("output")
    ray: RayOptions = RayOptions()
    llm: dict[str, LLMSpec] = Field(default_factory=lambda: {"default": LLMSpec()})
    write_dropped: bool = Field(False, description="Also write dropped records to OUTPUT/_dropped/")
    stages: list[StageConfig] = Field(min_length=1)
    airflow: AirflowOptions = AirflowOptions()

    @property
    def stage_names(self) -> list[str]:
        return [s.name or s.kind for s in self.stages]

    @property
    def record_stages(self) -> list[StageConfig]:
        """The stages that make the records: all but the training stages at the end."""
        return [s for s in self.stages if not isinstance(s, TrainStageConfig)]

    @property
    def train_stages(self) -> list[StageConfig]:
        """The stages that train on the finished dataset, in order (after every record stage)."""
        return [s for s in self.stages if isinstance(s, TrainStageConfig)]

    def fingerprint(self, upto: int | None = None) -> str:
        """Hash of everything that decides the records of stages [0, upto]: spec minus output.

        Training stages are left out: they decide the model trained on the records, not the
        records (`synth.train` fingerprints its own run)."""
        stages = self.record_stages if upto is None else self.record_stages[: upto + 1]
        payload = {
            "seed": self.seed,
            "llm": {k: v.model_dump(mode="json") for k, v in sorted(self.llm.items())},
            "stages": [s.model_dump(mode="json", exclude={"resources"}) for s in stages],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_spec(path: str | Path, overrides: dict | None = None) -> RunSpec:
    """Read, validate and return a spec; every stage entry is validated by its kind's model."""
    # Imported here for its cost, not a circle: the Airflow DAG file loads outlines (below) with
    # no stage module and no pyarrow.
    from synth.registry import stage_class

    path = Path(path)
    tree = read_yaml(path)
    data = spec_data(path, tree, "spec", overrides)
    section = _train_section_as_stage(path, tree, data)
    context = {"base_dir": path.parent.resolve()}

    stages = data.get("stages")
    if isinstance(stages, list):
        validated = []
        for i, entry in enumerate(stages):
            where = ("train",) if i == section else ("stages", i)
            if not isinstance(entry, dict) or "kind" not in entry:
                line = line_of(tree, ("stages", i))
                raise SpecError(f"{path}:{line}: stages[{i}]: expected a mapping with a `kind:` key")
            try:
                cls = stage_class(entry["kind"])
            except KeyError as exc:
                line = line_of(tree, ("stages", i, "kind"))
                raise SpecError(f"{path}:{line}: stages[{i}].kind: {exc.args[0]}") from None
            try:
                validated.append(cls.Config.model_validate(entry, context=context))
            except ValidationError as exc:
                raise spec_error(path, tree, exc, where) from None
        data["stages"] = validated
    try:
        spec = RunSpec.model_validate(data, context=context)
    except ValidationError as exc:
        raise spec_error(path, tree, exc) from None
    _check_unique_names(path, spec)
    _check_training_last(path, tree, spec)
    return spec


def load_spec_outline(path: Path, tree: Any) -> RunSpec:
    """A spec's top level validated, each stage only by its `kind` and `name`: no stage module is
    imported. For tools that schedule a run without running it (the Airflow DAG file); the runner
    validates every stage in full with `load_spec`."""
    data = spec_data(path, tree, "spec")
    _train_section_as_stage(path, tree, data)
    stages = data.get("stages")
    if isinstance(stages, list):
        outline = []
        for i, entry in enumerate(stages):
            if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
                line = line_of(tree, ("stages", i))
                raise SpecError(f"{path}:{line}: stages[{i}]: expected a mapping with a `kind:` key")
            outline.append(StageConfig.model_construct(kind=entry["kind"], name=entry.get("name")))
        data["stages"] = outline
    try:
        spec = RunSpec.model_validate(data, context={"base_dir": path.parent.resolve()})
    except ValidationError as exc:
        raise spec_error(path, tree, exc) from None
    _check_unique_names(path, spec)
    return spec


def _train_section_as_stage(path: Path, tree: Any, data: dict) -> int | None:
    """Append a `train:` section to `stages:` as the `kind: train` stage it stands for; returns
    its index there (None without one)."""
    section = data.pop("train", None)
    stages = data.get("stages")
    if section is None or not isinstance(stages, list):
        return None
    if not isinstance(section, dict):
        raise SpecError(f"{path}:{line_of(tree, ('train',))}: train: expected a mapping of training fields")
    if "kind" in section:
        raise SpecError(f"{path}:{line_of(tree, ('train', 'kind'))}: train.kind: unknown key")
    if any(isinstance(entry, dict) and entry.get("kind") == TRAIN_KIND for entry in stages):
        raise SpecError(f"{path}:{line_of(tree, ('train',))}: train: the spec has a `kind: {TRAIN_KIND}` stage "
                        "already; describe the training once")
    data["stages"] = [*stages, {"kind": TRAIN_KIND, **section}]
    return len(stages)


def _check_training_last(path: Path, tree: Any, spec: RunSpec) -> None:
    """Training stages learn from the finished dataset: after every stage that makes records."""
    kinds = [isinstance(s, TrainStageConfig) for s in spec.stages]
    if kinds[0]:
        raise SpecError(f"{path}:{line_of(tree, ('stages', 0))}: stages[0]: a {spec.stages[0].kind} stage trains on "
                        "the dataset the stages before it make; put a source stage first")
    if True in kinds and False in kinds[kinds.index(True):]:
        i = kinds.index(True)
        raise SpecError(f"{path}:{line_of(tree, ('stages', i))}: stages[{i}]: a {spec.stages[i].kind} stage trains "
                        "on the finished dataset: it must come after every stage that makes records")


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
