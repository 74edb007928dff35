"""The factory that turns synth specs into Airflow 3 DAGs; `synth_pipelines.py` calls it for every spec.

A pipeline spec (it has `stages:`) becomes a DAG whose tasks follow the pipeline's stage groups,
then `write`:

    generate -> filter -> dedup -> write

and, when the spec has a training stage (`kind: train` or a `train:` section), `-> train`.

Consecutive stages of one role form one task: the source starts `generate`, filter stages make
`filter`, global stages whose kind names dedup make `dedup`, and any other stage (an Evol-Instruct
rewrite, a scorer) joins the group before it. Every task calls the same runner as
`synth generate`: a group task runs the spec up to its last stage (`run(spec, until_stage=...)`),
and `write` runs it all and writes the dataset. The runner materialises each stage, so a retried
task starts after the last finished stage. `write` updates the Airflow asset of the output folder
(`file://OUTPUT`) through an asset alias, so the asset names the folder the run really wrote.

A training spec (no `stages:`, a `data.path` naming a pipeline's output) becomes a DAG with one
`train` task, scheduled on that output's asset: it runs when new data lands there.

Params of every DAG: `seed` and `output` (default: the spec's), `ray_address` (default: the
Airflow connection `synth_ray`, else the Variable `synth_ray_address`, else the spec's `ray.address`
or RAY_ADDRESS, else an embedded Ray). Pipeline DAGs also take `overwrite`. Relative paths in a
spec are taken from the folder above the specs folder: the repo root for `pipelines/`, as when
`synth generate pipelines/x.yaml` runs from there.

Errors of the input (a bad spec, another run's data in the output folder) fail a task at once;
anything else (a crash, a lost Ray node) is retried. A run whose output already holds the finished
dataset of the same spec and seed does nothing new (`overwrite` makes it again), so a re-trigger
or a retry of `write` after its manifest landed is harmless.

Parsing is light: Airflow re-parses the DAG file every few minutes under a time-out. A spec is
read once and validated only at its top level (`synth.run_spec.load_spec_outline`); stages are known by
kind and name, their roles from `BUILTIN_ROLES`, so neither Ray, torch nor any stage module is
imported. The tasks import the runner and validate the whole spec when they run: an error in a
stage's fields fails the first task at once, naming the file, line and key.

This module is listed in `.airflowignore`: Airflow imports it from the DAG file, not as one.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, Asset, AssetAlias, Connection, Param, Variable, chain, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from synth.errors import SpecError, SynthError
from synth.run_spec import RunSpec, load_spec, load_spec_outline
from synth.schedule import AirflowOptions
from synth.spec import StageConfig
from synth.yaml_source import read_yaml

if TYPE_CHECKING:
    from synth.manifest import Manifest

PIPELINES_ENV = "SYNTH_PIPELINES_DIR"
"""Folder of specs to build DAGs from; default: the repo's `pipelines/`."""
RAY_CONN_ID = "synth_ray"
"""Airflow connection whose host and port are the Ray cluster's address (head:6379); its password,
if set, becomes RAY_AUTH_TOKEN. A driver joins by that address from a machine that is a Ray node;
Ray Client (ray://) will not do: the runner's Ray Data writes fail over it (Ray 2.60)."""
RAY_VARIABLE = "synth_ray_address"
"""Airflow Variable with the Ray address, read when there is no `synth_ray` connection."""
ERRORS_DAG_ID = "synth_spec_errors"


def _retry_args(options: AirflowOptions) -> dict[str, Any]:
    # Retries are set on every task, not left to `[core] default_task_retries`: Airflow 3.3's
    # `dag.test()` loses task fields equal to that default.
    return {"retries": options.retries, "retry_delay": timedelta(seconds=options.retry_delay_s)}


def pipelines_dir() -> Path:
    return Path(os.environ.get(PIPELINES_ENV) or Path(__file__).resolve().parents[1] / "pipelines")


def build_dags(folder: Path) -> list[DAG]:
    """One DAG per spec file in `folder`; specs that fail become one error Airflow lists."""
    dags, errors = [], []
    for path in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
        try:
            dags.append(build_dag(path))
        except SynthError as exc:
            errors.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - one broken stage plugin must not hide the other DAGs
            errors.append(f"{path}: {type(exc).__name__}: {exc}")
    if errors:
        dags.append(SpecErrors(dag_id=ERRORS_DAG_ID, description="\n".join(errors), schedule=None))
    return dags


def build_dag(path: Path) -> DAG:
    """The DAG of one spec file: a pipeline DAG or a training DAG. The file is read once."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec file: {exc.strerror}") from None
    tree = read_yaml(path, text)
    if isinstance(tree, dict) and "stages" not in tree and "data" in tree:
        return train_dag(path, text)
    if isinstance(tree, dict) and "stages" not in tree:
        raise SpecError(f"{path}: expected a pipeline spec (with `stages:`) "
                        "or a training spec (with `data: {path: ...}`)")
    return pipeline_dag(path, load_spec_outline(path, tree), text)


class SpecErrors(DAG):
    """Stands in for the specs no DAG could be built from; `description` holds their errors.

    Airflow validates each DAG of a file before it takes it; a DAG that fails validation is listed
    as an import error of the file while the file's other DAGs load. So this one always fails.
    """

    def validate(self) -> None:
        raise SpecError(f"no DAG could be built from these spec files:\n{self.description}")


# ---------------------------------------------------------------- pipeline DAGs


@dataclass(frozen=True)
class StageGroup:
    task_id: str
    stages: tuple[str, ...]


BUILTIN_ROLES: dict[str, str | None] = {
    **dict.fromkeys(["self_instruct", "code_functions", "tabular_synth", "phantom_images", "image_folder",
                     "records"], "generate"),
    **dict.fromkeys(["instruct_checks", "text_heuristics", "perplexity", "llm_judge", "verdict_filter", "code_checks",
                     "code_load_check", "code_determinism", "image_checks", "image_memorisation"], "filter"),
    **dict.fromkeys(["exact_dedup", "minhash_dedup", "semantic_dedup", "image_phash_dedup"], "dedup"),
    **dict.fromkeys(["evol_instruct", "code_inputs", "code_coverage", "code_execute", "case2code", "tabular_report",
                     "judge_report", "diffusion", "image_eval"], None),
    "train": "train",
}
"""The role of each built-in stage kind, so that parsing imports no stage module; a test checks it
against the classes (`stage_role` of a plugin kind imports its class)."""


def stage_role(config: StageConfig) -> str | None:
    """generate, filter, dedup or train; None for a stage that joins the group before it."""
    if config.kind in BUILTIN_ROLES:
        return BUILTIN_ROLES[config.kind]
    return role_of_class(config.kind)


def role_of_class(kind: str) -> str | None:
    """A stage kind's role from its class (imports its module)."""
    from synth.registry import stage_class
    from synth.stage import FilterStage, TrainStage

    cls = stage_class(kind)
    if issubclass(cls, TrainStage):
        return "train"
    if cls.source:
        return "generate"
    if issubclass(cls, FilterStage):
        return "filter"
    if "dedup" in kind:
        return "dedup"
    return None


def stage_groups(spec: RunSpec) -> list[StageGroup]:
    """Consecutive stages of one role, in order; a role seen again gets `_2`, `_3`... The training
    stages are left to the `train` task, after `write`."""
    groups: list[tuple[str, list[str]]] = []
    for config, name in zip(spec.stages, spec.stage_names, strict=True):
        if stage_role(config) == "train":
            continue
        role = stage_role(config) if groups else "generate"  # the runner requires a source first
        if role is None or (groups and role == groups[-1][0]):
            groups[-1][1].append(name)
        else:
            groups.append((role, [name]))
    seen: dict[str, int] = {}
    out = []
    for role, names in groups:
        seen[role] = seen.get(role, 0) + 1
        out.append(StageGroup(role if seen[role] == 1 else f"{role}_{seen[role]}", tuple(names)))
    return out


def pipeline_dag(path: Path, spec: RunSpec, text: str) -> DAG:
    output = _absolute(spec.output, path)
    alias = AssetAlias(name=f"synth-{_dag_id(path)}")
    groups = stage_groups(spec)

    @dag(
        dag_id=_dag_id(path),
        dag_display_name=spec.name,
        description=f"synth pipeline {spec.name} ({path.name}): {' -> '.join(spec.stage_names)}",
        doc_md=_doc(path, text, [f"`{g.task_id}`: {', '.join(g.stages)}" for g in groups] + ["`write`: the dataset"]),
        schedule=spec.airflow.schedule,
        params={**_common_params(spec.seed, str(output)), "overwrite": Param(
            False, type="boolean", description="Replace a finished dataset in the output folder")},
        default_args=_retry_args(spec.airflow),
        max_active_runs=1,
        tags=["synth", "pipeline"],
    )
    def pipeline() -> None:
        steps = [run_stages.override(task_id=g.task_id)(str(path), list(g.stages)) for g in groups]
        write = write_dataset.override(outlets=[alias])(str(path), alias.name)
        chain(*steps, write)
        if any(stage_role(config) == "train" for config in spec.stages):
            write >> train_on_output(str(path))

    return pipeline()


@task
def run_stages(spec_file: str, stages: list[str]) -> list[dict]:
    """Materialise a group of stages (and any unfinished stage before it); return their reports."""
    from synth.runner import run

    context = get_current_context()
    spec = _run_spec(spec_file, context["params"])
    missing = [name for name in stages if name not in spec.stage_names]
    if missing:
        raise AirflowFailException(f"{spec_file}: stages {missing} are no longer in the spec; "
                                   "the DAG changes when Airflow parses the file again")
    # `overwrite` acts once: on the first try of the first task; a retry resumes what it started.
    overwrite = context["params"]["overwrite"] and stages[0] == spec.stage_names[0] and context["ti"].try_number == 1
    if not overwrite and (manifest := _finished_manifest(spec)) is not None:
        return [s.to_json() for s in manifest.stages if s.name in stages]
    with _input_errors_fail_the_task():
        result = run(spec, ray_address=ray_address(context["params"]), overwrite=overwrite, spec_file=spec_file,
                     until_stage=spec.stage_names.index(stages[-1]))
    return [r.to_json() for r in result.stages if r.name in stages]


@task(task_id="write")
def write_dataset(spec_file: str, alias: str) -> dict:
    """Finish the run (any stage left, then the dataset and manifest) and update the output's asset."""
    from synth.runner import run

    context = get_current_context()
    spec = _run_spec(spec_file, context["params"])
    manifest = _finished_manifest(spec)  # a retry after the manifest was written has nothing left to do
    if manifest is None:
        with _input_errors_fail_the_task():
            manifest = run(spec, ray_address=ray_address(context["params"]), spec_file=spec_file).manifest
    output = Path(spec.output)
    summary = {"output": str(output), "records": manifest.records, "run_id": manifest.run_id,
               "drops": manifest.drops}
    context["outlet_events"][AssetAlias(name=alias)].add(Asset(uri=output.as_uri()), extra=summary)
    return summary


@task(task_id="train")
def train_on_output(spec_file: str) -> dict:
    """The spec's training stages on the dataset `write` made; a retry resumes from the last checkpoint."""
    from synth.runner import train_on_dataset

    params = get_current_context()["params"]
    spec = _run_spec(spec_file, params, with_train=True)
    with _input_errors_fail_the_task():
        models = train_on_dataset(spec, ray_address=ray_address(params))
    return {"models": [str(model) for model in models]}


def _run_spec(spec_file: str, params: dict[str, Any], with_train: bool = False) -> RunSpec:
    """The spec with the DAG run's params; its training stages left to the `train` task."""
    path = Path(spec_file)
    with _input_errors_fail_the_task():
        spec = load_spec(path, overrides={"seed": params["seed"], "output": _absolute(Path(params["output"]), path)})
    return spec if with_train else spec.model_copy(update={"stages": spec.record_stages})


def _finished_manifest(spec: RunSpec) -> Manifest | None:
    """The manifest of this very spec's finished dataset in its output folder, if there is one."""
    from synth.manifest import MANIFEST, Manifest

    if not (Path(spec.output) / MANIFEST).exists():
        return None
    manifest = Manifest.read(Path(spec.output))
    return manifest if manifest.spec_fingerprint == spec.fingerprint() else None


# ---------------------------------------------------------------- training DAGs


def train_dag(path: Path, text: str) -> DAG:
    from synth.train.spec import load_train_spec

    spec = load_train_spec(path)
    if spec.data.path is None:
        raise SpecError(f"{path}: data.path: required for a DAG (the pipeline output to train on)")
    data = _absolute(spec.data.path, path)
    dataset = data.parent if data.name == "data" else data  # the output folder a pipeline writes
    output = None if spec.output is None else str(_absolute(spec.output, path))

    @dag(
        dag_id=_dag_id(path),
        dag_display_name=spec.name,
        description=f"synth training {spec.name} ({path.name}) on {dataset}",
        doc_md=_doc(path, text, [f"`train`: on {data}; runs when a pipeline DAG writes {dataset}"]),
        schedule=spec.airflow.schedule or [Asset(uri=dataset.as_uri())],
        params=_common_params(spec.seed, output),
        default_args=_retry_args(spec.airflow),
        max_active_runs=1,
        tags=["synth", "train"],
    )
    def training() -> None:
        train_model(str(path), str(data))

    return training()


@task(task_id="train")
def train_model(spec_file: str, data: str) -> dict:
    """Train as the spec says on the pipeline's output; a retry resumes from the last checkpoint."""
    from synth.train import load_train_spec, run_training

    params = get_current_context()["params"]
    path = Path(spec_file)
    with _input_errors_fail_the_task():
        spec = load_train_spec(path, overrides={"seed": params["seed"], "output": params["output"]})
        spec = spec.model_copy(update={
            "data": spec.data.model_copy(update={"path": Path(data)}),
            "output": None if spec.output is None else _absolute(spec.output, path),
        })
        model = run_training(spec, ray_address=ray_address(params))
    return {"model": str(model)}


# ---------------------------------------------------------------- shared


def _dag_id(path: Path) -> str:
    return "synth_" + re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)


def _absolute(value: Path, spec_file: Path) -> Path:
    """A spec's path, relative ones taken from the folder above the specs folder."""
    return value if value.is_absolute() else (spec_file.resolve().parents[1] / value).resolve()


def _common_params(seed: int, output: str | None) -> dict[str, Param]:
    return {
        "seed": Param(seed, type="integer", description="Run seed (default: the spec's)"),
        "output": Param(output, type=["null", "string"] if output is None else "string",
                        description="Output folder (default: the spec's)"),
        "ray_address": Param(None, type=["null", "string"], description=(
            f"Ray cluster address, e.g. head:6379 (default: connection {RAY_CONN_ID}, "
            f"Variable {RAY_VARIABLE}, the spec's ray.address, RAY_ADDRESS, else embedded Ray)")),
    }


def _doc(path: Path, text: str, tasks: list[str]) -> str:
    """The spec's leading comment, then what each task does."""
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    return "\n".join([*comment, "", f"Spec: `{path}`", "", *(f"- {t}" for t in tasks)])


def ray_address(params: dict[str, Any]) -> str | None:
    """The `ray_address` param, else the `synth_ray` connection, else the Variable; else None."""
    if params.get("ray_address"):
        return params["ray_address"]
    try:
        conn = Connection.get(RAY_CONN_ID)
    except AirflowNotFoundException:
        return Variable.get(RAY_VARIABLE, default=None) or None
    if not conn.host:
        raise AirflowFailException(f"connection {RAY_CONN_ID!r} has no host; expected the Ray head, e.g. head:6379")
    if conn.password:
        os.environ["RAY_AUTH_TOKEN"] = conn.password
    return f"{conn.host}:{conn.port}" if conn.port else conn.host


@contextmanager
def _input_errors_fail_the_task() -> Iterator[None]:
    """A bad spec or an output in the way fails the same way every try: no retries for those."""
    try:
        yield
    except SynthError as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
