"""The stage shapes the runner schedules: where setup() and teardown() run, block plans in order,
fit before sample, and the one function that turns `resources` into Ray options."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

import stages_for_tests  # noqa: F401 - registers the test stages
from synth.errors import SpecError
from synth.run_spec import load_spec
from synth.runner import ray_options, run
from synth.spec import StageConfig, StageResources
from synth.stage import Stage, StageContext


def run_stages(tmp_path: Path, stages: list[dict], name: str = "shapes"):
    spec = {"name": name, "seed": 3, "output": str(tmp_path / name), "stages": stages}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run(load_spec(path))
    return result, pads.dataset(str(result.output / "data"), format="parquet").to_table()


def test_setup_runs_on_the_worker_and_teardown_beside_it(ray_session, tmp_path):
    stages = [{"kind": "test_numbers", "count": 30}, {"kind": "test_where_it_runs", "resources": {"batch_size": 10}}]
    result, table = run_stages(tmp_path, stages)
    setup_pids = set(table.column("setup_pid").to_pylist())
    assert os.getpid() not in setup_pids, "setup() ran in the driver"
    assert table.column("setup_pid").to_pylist() == table.column("process_pid").to_pylist()
    torn_down = {tuple(map(int, p.name.split("-"))) for p in (result.output / "_teardown").iterdir()}
    # every worker that set the stage up tore it down, in its own process
    assert {setup for _, setup in torn_down} == setup_pids
    assert all(pid == setup for pid, setup in torn_down)


def test_a_block_plan_keeps_its_order_whichever_block_finishes_first(ray_session, tmp_path):
    stages = [{"kind": "test_seeded_blocks", "blocks": 6, "resources": {"num_cpus": 0.5, "concurrency": 2}}]
    _, first = run_stages(tmp_path, stages, "first")
    _, second = run_stages(tmp_path, stages, "second")
    assert first.column("block").to_pylist() == [b for b in range(6) for _ in range(3)]
    assert first.column("value").to_pylist() == second.column("value").to_pylist()


def test_fit_runs_once_in_a_task_before_the_blocks_sample(ray_session, tmp_path):
    stages = [{"kind": "test_numbers", "count": 11}, {"kind": "test_mean_plus_blocks", "blocks": 3}]
    _, table = run_stages(tmp_path, stages)
    assert table.column("value").to_pylist() == [5.0, 6.0, 7.0]
    assert os.getpid() not in set(table.column("fit_pid").to_pylist())


def test_resources_become_ray_options_in_one_place(tmp_path):
    ctx = StageContext(run_name="r", run_id="r-1", seed=0, stage_name="s", stage_index=0, output_dir=tmp_path)

    def options(**resources) -> dict:
        return ray_options(Stage(StageConfig(kind="s", resources=StageResources(**resources)), ctx))

    assert options() == {"num_cpus": 1.0}
    assert options(num_cpus=0.5, num_gpus=1, resources={"tpu": 2}) == {
        "num_cpus": 0.5, "num_gpus": 1.0, "resources": {"tpu": 2.0}}

    class Torch(Stage):
        def worker_env(self) -> dict[str, str]:
            return {"OMP_WAIT_POLICY": "PASSIVE"}

    stage = Torch(StageConfig(kind="s"), ctx)
    assert ray_options(stage)["runtime_env"] == {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}


def test_resources_a_shape_would_ignore_are_refused_before_ray(tmp_path):
    stages = [{"kind": "test_numbers", "count": 3, "resources": {"concurrency": 2}}]
    with pytest.raises(SpecError, match=r"stage 'test_numbers': resources.concurrency: .* leave it out"):
        run_stages(tmp_path, stages)
    stages = [{"kind": "test_numbers", "count": 3, "resources": {"batch_size": 2}}]
    with pytest.raises(SpecError, match=r"resources.batch_size: test_numbers does not work on batches"):
        run_stages(tmp_path, stages, "again")
    assert not (tmp_path / "shapes").exists() and not (tmp_path / "again").exists()
