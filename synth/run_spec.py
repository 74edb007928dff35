"""The spec of a run: `RunSpec` and `load_spec`, which reads a pipeline file and validates every stage.

A spec is one file that describes a run: its name, seed, output folder, Ray options, the LLM
backends stages may use, and the ordered list of stages. Each stage entry is `kind:` plus the
fields of that kind's own config model, which the registry supplies.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from synth.errors import SpecError
from synth.schedule import AirflowOptions
from synth.spec import LLMSpec, RayOptions, StageConfig, StrictModel
from synth.train.spec import TrainSpec
from synth.yaml_source import line_of, plain_data, read_yaml, spec_error


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


def load_spec(path: str | Path, overrides: dict | None = None) -> RunSpec:
    """Read, validate and return a spec; every stage entry is validated by its kind's model."""
    # Imported here for its cost, not a circle: the Airflow DAG file loads outlines (below) with
    # no stage module and no pyarrow.
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
