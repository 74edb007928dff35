"""The Airflow DAGs built from specs, with real Airflow on a sqlite home migrated once per session.

The DAG file under test is the repo's `airflow_dags/synth_pipelines.py`; each test points it at a
folder of specs through SYNTH_PIPELINES_DIR. `dag.test()` runs a DAG's tasks in this process, so
they share the test session's Ray and see the small test stages registered here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import ray.cloudpickle
import stages_for_tests  # noqa: F401 - registers test_numbers
import yaml

from synth.registry import register
from synth.runner import run
from synth.run_spec import load_spec
from synth.spec import StageConfig
from synth.stage import FilterStage, GlobalStage, mark_dropped

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "airflow_dags"
SEED_TASKS = REPO / "pipelines" / "seeds" / "instruct_seed_tasks.jsonl"
AIRFLOW = Path(sys.executable).parent / "airflow"

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers need not import this module


# ---------------------------------------------------------------- stages for these tests


@register
class RecordedFilter(FilterStage):
    """Drops multiples of `of`; each computation of the stage adds a line to `log`, and with
    `crash_once` the first one crashes, as a killed worker would."""

    kind = "test_recorded_filter"

    class Config(StageConfig):
        kind: Literal["test_recorded_filter"] = "test_recorded_filter"
        of: int
        log: Path
        crash_once: bool = False

    def setup(self) -> None:  # once per unit (60 rows: one), on the worker
        with self.config.log.open("a") as log:
            log.write("computed\n")
        if self.config.crash_once and len(self.config.log.read_text().splitlines()) == 1:
            raise RuntimeError(f"stage {self.ctx.stage_name}: injected crash on its first computation")

    def score(self, batch):
        return {}, [f"multiple_of_{self.config.of}" if n % self.config.of == 0 else None
                    for n in batch.column("n").to_pylist()]


@register
class ModuloDedup(GlobalStage):
    """A dedup in miniature: rows with the same `n % modulo` are duplicates; the smallest n stays."""

    kind = "test_modulo_dedup"

    class Config(StageConfig):
        kind: Literal["test_modulo_dedup"] = "test_modulo_dedup"
        modulo: int

    def apply(self, ds):
        modulo = self.config.modulo

        def add_key(batch: pa.Table) -> pa.Table:
            return batch.append_column("_key", pa.array([n % modulo for n in batch.column("n").to_pylist()]))

        def mark(group: pa.Table) -> pa.Table:
            group = group.sort_by("n").drop_columns(["_key"])
            return mark_dropped(group, [None] + [f"same_modulo_{modulo}"] * (group.num_rows - 1))

        keyed = ds.map_batches(add_key, batch_format="pyarrow")
        return keyed.groupby("_key").map_groups(mark, batch_format="pyarrow")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    """A migrated sqlite AIRFLOW_HOME; set before this process first imports Airflow, which reads it once."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",  # an asset event queues only unpaused DAGs
        "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        subprocess.run([str(AIRFLOW), "db", "migrate"], check=True, capture_output=True, timeout=600)
        yield home


@pytest.fixture
def pipelines(tmp_path, monkeypatch, airflow_home) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    monkeypatch.setenv("SYNTH_PIPELINES_DIR", str(folder))
    return folder


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def dag_bag():
    """The DAGs folder parsed as Airflow's DAG processor parses it."""
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=DAGS, bundle_path=DAGS, bundle_name="dags-folder")


def read_data(output: Path) -> pa.Table:
    return pads.dataset(str(output / "data"), format="parquet").to_table()


def numbers_spec(folder: Path, output: Path) -> dict:
    """generate -> filter (two stages, the second crashing once) -> dedup -> write."""
    return {
        "name": "numbers", "seed": 11, "output": str(output),
        "stages": [
            {"kind": "test_numbers", "count": 60},
            {"kind": "test_recorded_filter", "name": "drop_3", "of": 3, "log": str(folder / "drop_3.log")},
            {"kind": "test_recorded_filter", "name": "drop_5", "of": 5, "log": str(folder / "drop_5.log"),
             "crash_once": True},
            {"kind": "test_modulo_dedup", "modulo": 7},
        ],
    }


# ---------------------------------------------------------------- tests


def test_runner_stops_after_until_stage_and_the_next_call_resumes(ray_session, tmp_path):
    spec = load_spec(write_yaml(tmp_path / "spec.yaml", {
        "name": "numbers", "output": str(tmp_path / "out"),
        "stages": [{"kind": "test_numbers", "count": 10}, {"kind": "test_drop_multiples", "of": 2}],
    }))
    first = run(spec, until_stage=0)
    assert first.manifest is None and [s.name for s in first.stages] == ["test_numbers"]
    assert not (tmp_path / "out" / "data").exists()
    second = run(spec)
    assert [s.resumed for s in second.stages] == [True, False]
    assert read_data(second.output).column("n").to_pylist() == [1, 3, 5, 7, 9]
    with pytest.raises(ValueError, match=r"until_stage must index spec.record_stages \(0..1\), got 2"):
        run(spec, until_stage=2)


def test_the_repo_dag_file_builds_a_dag_for_every_spec_in_pipelines(airflow_home, monkeypatch):
    monkeypatch.delenv("SYNTH_PIPELINES_DIR", raising=False)
    bag = dag_bag()
    assert bag.import_errors == {}
    specs = sorted(p.stem for p in (REPO / "pipelines").glob("*.yaml"))
    assert sorted(bag.dag_ids) == [f"synth_{stem}" for stem in specs]
    instruct = bag.dags["synth_instruct"]
    tasks = [t.task_id for t in instruct.topological_sort()]
    assert tasks[0] == "generate" and tasks[-1] == "write"
    assert instruct.params["output"] == str(REPO / "output" / "instruct")


def test_stage_groups_follow_roles(pipelines, tmp_path):
    write_yaml(pipelines / "numbers.yaml", {
        "name": "numbers", "output": str(tmp_path / "out"),
        "stages": [
            {"kind": "test_numbers"}, {"kind": "test_slow_doubler"},  # a map stage joins the group before it
            {"kind": "test_drop_multiples"}, {"kind": "test_modulo_dedup", "modulo": 3},
            {"kind": "test_keep_largest"}, {"kind": "test_drop_multiples", "name": "again"},
        ],
    })
    dag = dag_bag().dags["synth_numbers"]
    chain = [(t.task_id, t.op_args[1] if t.task_id != "write" else None) for t in dag.topological_sort()]
    assert chain == [
        ("generate", ["test_numbers", "test_slow_doubler"]), ("filter", ["test_drop_multiples"]),
        ("dedup", ["test_modulo_dedup", "test_keep_largest"]), ("filter_2", ["again"]), ("write", None),
    ]
    assert dag.max_active_runs == 1 and set(dag.params) == {"seed", "output", "ray_address", "overwrite"}


def test_schedule_and_retries_come_from_the_spec_and_a_train_section_adds_a_train_task(pipelines, tmp_path):
    from datetime import timedelta

    write_yaml(pipelines / "numbers.yaml", {
        "name": "numbers", "output": str(tmp_path / "out"), "stages": [{"kind": "test_numbers"}],
        "airflow": {"schedule": "@daily", "retries": 5, "retry_delay_s": 30},
        "train": {"model": {"base": "scratch"}, "data": {"format": "pretrain"}, "steps": 2, "warmup_steps": 0},
    })
    dag = dag_bag().dags["synth_numbers"]
    assert [t.task_id for t in dag.topological_sort()] == ["generate", "write", "train"]
    assert dag.schedule == "@daily"
    assert {(t.retries, t.retry_delay) for t in dag.tasks} == {(5, timedelta(seconds=30))}


def test_the_ray_address_comes_from_the_param_else_the_connection_else_the_variable(airflow_home, monkeypatch):
    monkeypatch.syspath_prepend(str(DAGS))
    from synth_dag_factory import ray_address

    monkeypatch.setenv("RAY_AUTH_TOKEN", "")
    monkeypatch.setenv("AIRFLOW_VAR_SYNTH_RAY_ADDRESS", "10.0.0.7:6379")
    assert ray_address({"ray_address": None}) == "10.0.0.7:6379"
    monkeypatch.setenv("AIRFLOW_CONN_SYNTH_RAY", "generic://:s3cret-token@head.ray.svc:6379")
    assert ray_address({"ray_address": None}) == "head.ray.svc:6379"
    assert os.environ["RAY_AUTH_TOKEN"] == "s3cret-token"
    assert ray_address({"ray_address": "127.0.0.2:6379"}) == "127.0.0.2:6379"


def test_a_broken_spec_is_listed_with_its_file_and_key_and_the_other_dags_load(pipelines, tmp_path):
    write_yaml(pipelines / "good.yaml", {
        "name": "good", "output": str(tmp_path / "out"),
        "stages": [{"kind": "self_instruct", "seed_tasks": str(SEED_TASKS)}, {"kind": "instruct_checks"}],
    })
    (pipelines / "bad.yaml").write_text(f"name: bad\nstages:\n  - kind: self_instruct\n"
                                        f"    seed_tasks: {SEED_TASKS}\nwrite_droped: true\n")
    (pipelines / "train_nothing.yaml").write_text("name: orphan\ndata: {format: sft}\n")
    bag = dag_bag()
    assert sorted(bag.dag_ids) == ["synth_good"]
    error = bag.import_errors["synth_pipelines.py"]
    assert f"{pipelines / 'bad.yaml'}:5: write_droped: unknown key" in error
    assert f"{pipelines / 'train_nothing.yaml'}: data.path: required" in error

    # The same list, as the DAG processor stores it and Airflow's CLI shows it.
    subprocess.run([str(AIRFLOW), "dags", "reserialize"], check=True, capture_output=True, timeout=300)
    listed = subprocess.run([str(AIRFLOW), "dags", "list-import-errors", "--output", "json"],
                            check=False, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 1  # the command fails when there are import errors
    [entry] = json.loads(listed.stdout.splitlines()[-1])
    assert entry["filepath"] == "synth_pipelines.py" and "bad.yaml:5: write_droped" in entry["error"]


def test_a_bad_stage_field_fails_the_first_task_at_once_naming_file_line_and_key(airflow_home, monkeypatch, tmp_path):
    # Parsing validates a spec's top level only (no stage module is imported then); the tasks
    # validate every stage before anything runs, and an input error is not retried.
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.syspath_prepend(str(DAGS))
    from synth_dag_factory import _run_spec

    spec = tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\nstages:\n  - kind: self_instruct\n    seed_tasks: {SEED_TASKS}\n"
                    "    num_instructons: 5\n")
    with pytest.raises(AirflowFailException, match=rf"{spec}:5: stages\[0\].num_instructons: unknown key"):
        _run_spec(str(spec), {"seed": 0, "output": str(tmp_path / "out")})


PARSE = """
import json, sys, time
import airflow.sdk  # the DAG processor has Airflow loaded before it parses a DAG file
before, cpu = set(sys.modules), time.process_time()
import synth_pipelines
print(json.dumps({"cpu_s": time.process_time() - cpu, "modules": sorted(set(sys.modules) - before),
                  "dags": sorted(k for k in vars(synth_pipelines) if k.startswith("synth_"))}))
"""


def test_parsing_the_dag_file_imports_no_ray_torch_or_stage_module(airflow_home):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(DAGS), str(REPO)])}
    env.pop("SYNTH_PIPELINES_DIR", None)
    done = subprocess.run([sys.executable, "-c", PARSE], env=env, capture_output=True, text=True, timeout=300,
                          check=True)  # fmt: skip
    parsed = json.loads(done.stdout.splitlines()[-1])
    assert len(parsed["dags"]) == len(list((REPO / "pipelines").glob("*.yaml")))
    heavy = ("ray", "torch", "transformers", "generators", "filters", "pyarrow", "synth.runner", "synth.registry")
    assert [m for m in parsed["modules"] if m.split(".")[0] in heavy or m in heavy] == []
    assert parsed["cpu_s"] < 1.5, parsed["cpu_s"]  # ~0.2 s here; it was ~5.6 s with the stage modules


def test_the_role_table_agrees_with_the_stage_classes(airflow_home, monkeypatch):
    monkeypatch.syspath_prepend(str(DAGS))
    from synth_dag_factory import BUILTIN_ROLES, role_of_class

    from synth.registry import BUILTIN_STAGES

    assert set(BUILTIN_ROLES) == set(BUILTIN_STAGES)
    assert {kind: role_of_class(kind) for kind in BUILTIN_STAGES} == BUILTIN_ROLES


def test_a_failed_task_is_retried_and_resumes_after_its_finished_stages(ray_session, pipelines, tmp_path):
    from airflow.models.asset import AssetDagRunQueue, AssetEvent
    from airflow.settings import Session

    output = tmp_path / "numbers"
    write_yaml(pipelines / "numbers.yaml", numbers_spec(pipelines, output))
    write_yaml(pipelines / "train_numbers.yaml", {"name": "train-numbers", "data": {"path": str(output)}})
    bag = dag_bag()
    [asset] = bag.dags["synth_train_numbers"].timetable.asset_condition.objects
    assert asset.uri == output.as_uri()

    dag_run = bag.dags["synth_numbers"].test()
    tries = {ti.task_id: (ti.state, ti.try_number) for ti in dag_run.get_task_instances()}
    assert tries == {"generate": ("success", 1), "filter": ("success", 2), "dedup": ("success", 1),
                     "write": ("success", 1)}
    # The retry reused drop_3, which finished before drop_5 crashed: computed once, counted once.
    assert (pipelines / "drop_3.log").read_text().count("computed") == 1
    assert (pipelines / "drop_5.log").read_text().count("computed") == 2
    manifest = json.loads((output / "_manifest.json").read_text())
    survivors = [n for n in range(60) if n % 3 and n % 5]
    kept = sorted(min(n for n in survivors if n % 7 == r) for r in range(7))
    assert sorted(read_data(output).column("n").to_pylist()) == kept
    assert manifest["drops"] == {"drop_3": {"multiple_of_3": 20}, "drop_5": {"multiple_of_5": 8},
                                 "test_modulo_dedup": {"same_modulo_7": len(survivors) - 7}}

    # `write` updated the output folder's asset, which queues the training DAG scheduled on it.
    with Session() as session:
        [event] = [e for e in session.query(AssetEvent).all() if e.asset.uri == output.as_uri()]
        assert event.extra["records"] == 7 and event.extra["run_id"] == manifest["run_id"]
        queued = [q.target_dag_id for q in session.query(AssetDagRunQueue).all() if q.asset_id == event.asset_id]
        assert queued == ["synth_train_numbers"]


def test_params_choose_seed_and_output_a_second_run_does_nothing_and_overwrite_remakes(
        ray_session, pipelines, tmp_path):
    from airflow.models.asset import AssetEvent
    from airflow.settings import Session

    write_yaml(pipelines / "numbers.yaml", {
        "name": "numbers", "output": str(tmp_path / "default"),
        "stages": [{"kind": "test_numbers", "count": 10},
                   {"kind": "test_recorded_filter", "of": 2, "log": str(tmp_path / "drop_2.log")}],
    })
    chosen = tmp_path / "chosen"
    for _ in range(2):
        dag_run = dag_bag().dags["synth_numbers"].test(run_conf={"seed": 12, "output": str(chosen)})
        assert {ti.state for ti in dag_run.get_task_instances()} == {"success"}
    assert json.loads((chosen / "_manifest.json").read_text())["seed"] == 12
    assert not (tmp_path / "default").exists()
    assert (tmp_path / "drop_2.log").read_text().count("computed") == 1
    with Session() as session:
        events = [e for e in session.query(AssetEvent).all() if e.asset.uri == chosen.as_uri()]
    assert len(events) == 2 and events[1].extra == events[0].extra

    dag_run = dag_bag().dags["synth_numbers"].test(run_conf={"seed": 12, "output": str(chosen), "overwrite": True})
    assert {ti.state for ti in dag_run.get_task_instances()} == {"success"}
    assert (tmp_path / "drop_2.log").read_text().count("computed") == 2


@pytest.mark.slow
def test_dag_run_of_the_instruct_pipeline_equals_the_cli_run(ray_session, pipelines, tmp_path):
    spec = write_yaml(pipelines / "instruct_tiny.yaml", {
        "name": "instruct-tiny", "seed": 3, "output": str(tmp_path / "dag"),
        "llm": {"default": {"backend": "local", "batch_size": 4, "threads": 1}},
        "stages": [
            {"kind": "self_instruct", "seed_tasks": str(SEED_TASKS), "num_instructions": 3, "prompts_per_round": 2,
             # room for a whole list: a list cut off by max_tokens is dropped whole, as in the paper
             "max_rounds": 4, "new_tasks_per_prompt": 2, "task_sampling": {"max_tokens": 240, "temperature": 0.9},
             "instance_sampling": {"max_tokens": 96}},
            {"kind": "evol_instruct", "rounds": 1, "evolve_sampling": {"max_tokens": 40},
             "response_sampling": {"max_tokens": 48}, "resources": {"num_cpus": 0.5, "batch_size": 8}},
            {"kind": "instruct_checks"},
        ],
    })
    cli = subprocess.run([sys.executable, "-m", "synth", "generate", str(spec), "--output", str(tmp_path / "cli")],
                         check=False, capture_output=True, text=True, timeout=1200)
    assert cli.returncode == 0, cli.stderr[-3000:]

    dag_run = dag_bag().dags["synth_instruct_tiny"].test()
    assert {ti.task_id: ti.state for ti in dag_run.get_task_instances()} == {
        "generate": "success", "filter": "success", "write": "success"}
    dag_data, cli_data = read_data(tmp_path / "dag"), read_data(tmp_path / "cli")
    assert dag_data.num_rows > 0 and dag_data.equals(cli_data)
