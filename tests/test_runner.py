"""The runner end to end on small real stages: counts, drops, resume, overwrite protection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

import stages_for_tests  # noqa: F401 - registers the test stages
from synth.errors import OutputExistsError
from synth.runner import run
from synth.run_spec import RunSpec, load_spec


def write_spec(tmp_path: Path, stages: list[dict], **top) -> Path:
    spec = {"name": "numbers", "seed": 7, "output": str(tmp_path / "out"), "stages": stages, **top}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def read_data(output: Path):
    return pads.dataset(str(output / "data"), format="parquet").to_table()


PIPELINE = [
    {"kind": "test_numbers", "count": 50},
    {"kind": "test_drop_multiples", "of": 3},
    {"kind": "test_slow_doubler", "resources": {"num_cpus": 0.5, "batch_size": 10}},
]


MANIFEST_KEYS = ["name", "run_id", "seed", "records", "schema", "files", "stages", "drops", "llm", "spec", "spec_file",
                 "spec_fingerprint", "inputs", "versions", "git_revision", "ray", "started_at", "finished_at"]
"""The keys of `_manifest.json` since its first version: the manifest model writes the same ones."""


def test_run_counts_drops_and_writes_manifest(ray_session, tmp_path):
    result = run(load_spec(write_spec(tmp_path, PIPELINE, write_dropped=True)))
    table = read_data(result.output)
    assert table.column("n").to_pylist() == [n for n in range(50) if n % 3]
    assert table.column("double").to_pylist() == [2 * n for n in range(50) if n % 3]
    assert "_drop_reason" not in table.column_names

    manifest = json.loads((result.output / "_manifest.json").read_text())
    assert list(manifest) == MANIFEST_KEYS
    assert result.manifest.to_json() == manifest
    assert manifest["records"] == 33
    assert manifest["drops"] == {"test_drop_multiples": {"multiple_of_3": 17}}
    assert [s["kept"] for s in manifest["stages"]] == [50, 33, 33]
    assert manifest["stages"][2]["counters"]["batches"] >= 4
    assert manifest["schema"]["double"] == "int64"
    assert manifest["seed"] == 7 and manifest["spec"]["stages"][1]["of"] == 3

    dropped = pads.dataset(str(result.output / "_dropped" / "test_drop_multiples"), format="parquet").to_table()
    assert set(dropped.column("_drop_reason").to_pylist()) == {"multiple_of_3"}
    assert dropped.num_rows == 17
    assert "33 records" in (result.output / "README.md").read_text()


def test_the_spec_is_fingerprinted_once_per_stage_and_once_whole(ray_session, tmp_path, monkeypatch):
    calls = []
    fingerprint = RunSpec.fingerprint
    monkeypatch.setattr(RunSpec, "fingerprint", lambda self, upto=None: calls.append(upto) or fingerprint(self, upto))
    result = run(load_spec(write_spec(tmp_path, PIPELINE[:2])))
    assert sorted(calls, key=str) == [0, 1, None]
    assert result.manifest.run_id == f"numbers-{result.manifest.spec_fingerprint[:12]}"


def test_global_stage(ray_session, tmp_path):
    stages = [{"kind": "test_numbers", "count": 20}, {"kind": "test_keep_largest", "top": 4}]
    result = run(load_spec(write_spec(tmp_path, stages)))
    assert sorted(read_data(result.output).column("n").to_pylist()) == [16, 17, 18, 19]
    card = (result.output / "README.md").read_text()
    assert "Kept the top 4." in card
    assert "![plot](_reports/test_keep_largest/plot.png)" in card


def test_finished_dataset_is_never_overwritten_silently(ray_session, tmp_path):
    spec = load_spec(write_spec(tmp_path, PIPELINE[:2]))
    run(spec)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run(spec)
    assert run(spec, overwrite=True).manifest.records == 33


def test_other_spec_cannot_resume_into_unfinished_output(ray_session, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_run.json").write_text(json.dumps({"name": "x", "fingerprint": "something-else"}))
    with pytest.raises(OutputExistsError, match="different spec"):
        run(load_spec(write_spec(tmp_path, PIPELINE[:2])))


def test_refuses_a_foreign_non_empty_folder(ray_session, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(OutputExistsError, match="not a synth output"):
        run(load_spec(write_spec(tmp_path, PIPELINE[:2])))


def test_resume_skips_finished_stages(ray_session, tmp_path):
    spec = load_spec(write_spec(tmp_path, PIPELINE))
    first = run(spec)
    # Simulate a run killed before the last stage finished and before the sink.
    (first.output / "_manifest.json").unlink()
    last = sorted((first.output / "_stages").iterdir())[-1]
    (last / "_SUCCESS.json").unlink()
    second = run(spec)
    assert [s.resumed for s in second.stages] == [True, True, False]
    assert read_data(second.output).equals(read_data(first.output))


def test_same_spec_and_seed_give_the_same_dataset(ray_session, tmp_path):
    # Batches that finish in a random order must still be written in input order.
    jittery = [*PIPELINE[:2], {**PIPELINE[2], "resources": {"num_cpus": 0.5, "batch_size": 5}, "jitter_s": 0.2}]
    results = []
    for copy in ("a", "b"):
        (tmp_path / copy).mkdir()
        results.append(run(load_spec(write_spec(tmp_path / copy, jittery))))
    a, b = results
    assert read_data(a.output).column("n").to_pylist() == [n for n in range(50) if n % 3]
    assert read_data(a.output).equals(read_data(b.output))
    assert a.manifest.run_id == b.manifest.run_id
    assert a.manifest.files == b.manifest.files


def test_a_train_stage_trains_on_the_written_dataset_and_resumes_alone(ray_session, tmp_path):
    from test_train_data import TINY_MODEL

    train = {"name": "tiny-pretrain", "seed": 1, "model": TINY_MODEL, "data": {"format": "pretrain", "eval_fraction": 0.2},
             "seq_len": 32, "batch_size": 2, "micro_batch_size": 2, "steps": 4, "lr": 3e-3, "warmup_steps": 1,
             "eval_every": 2, "checkpoint_every": 2, "resources": {"threads": 1}}  # fmt: skip
    spec = load_spec(write_spec(tmp_path, [{"kind": "test_sentences"}, {"kind": "train", **train}]))
    result = run(spec)
    model = result.output / "train" / "model"
    assert (model / "config.json").exists() and (result.output / "train" / "metrics.jsonl").exists()
    assert result.manifest.spec_fingerprint == spec.fingerprint()

    # A run killed while training: the dataset is finished, so a rerun trains instead of refusing.
    shutil.rmtree(model)
    again = run(spec)
    assert again.stages == [] and (model / "config.json").exists()


def test_a_ray_client_address_is_refused_with_what_to_use_instead(tmp_path):
    from synth.errors import SynthError
    from synth.ray_session import init_ray

    with pytest.raises(SynthError, match=r"ray://head:10001.*not supported.*head-host:6379"):
        init_ray("ray://head:10001")


def test_a_stage_folder_is_read_in_file_name_order_not_directory_order(ray_session, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth.runner import _ordered_dataset

    for i in reversed(range(12)):  # directory order is a hash order on most file systems
        pq.write_table(pa.table({"n": [i]}), tmp_path / f"part-{i:06d}.parquet")
    assert [row["n"] for row in _ordered_dataset(tmp_path).iter_rows()] == list(range(12))


def test_units_hold_the_kept_rows_in_file_row_group_and_row_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth.units import plan_units, read_unit

    reasons = [None if n % 3 else "multiple_of_3" for n in range(40)]
    table = pa.table({"n": list(range(40)), "_drop_reason": pa.array(reasons, pa.string())})
    pq.write_table(table.slice(0, 25), tmp_path / "part-000000.parquet", row_group_size=10)
    pq.write_table(table.slice(25), tmp_path / "part-000001.parquet", row_group_size=10)
    plan = plan_units(tmp_path, 7)
    tables = [read_unit(u) for u in plan]
    assert [t.num_rows for t in tables] == [7, 7, 7, 5]
    assert "_drop_reason" not in tables[0].column_names
    assert sum((t.column("n").to_pylist() for t in tables), []) == [n for n in range(40) if n % 3]


def test_parts_whose_column_was_all_null_get_the_type_of_the_others(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth.io import copy_rows
    from synth.units import unify_parts

    stage = tmp_path / "stage"
    stage.mkdir()
    reasons = pa.array([None, None], pa.string())
    pq.write_table(pa.table({"n": [1, 2], "note": pa.nulls(2), "_drop_reason": reasons}), stage / "part-000000.parquet")
    pq.write_table(pa.table({"n": [3, 4], "note": ["a", None], "_drop_reason": pa.array([None, "bad"])}),
                   stage / "part-000001.parquet")  # fmt: skip
    unify_parts(stage)
    assert pq.read_schema(stage / "part-000000.parquet").field("note").type == pa.string()
    copy_rows(stage, tmp_path / "data", dropped=False)
    data = pq.read_table(tmp_path / "data")
    assert data.column_names == ["n", "note"] and data.column("n").to_pylist() == [1, 2, 3]


def test_manifest_records_the_revision_the_run_started_from(ray_session, tmp_path, monkeypatch):
    """A checkout that moves while a run is going (a pull, a merge) must not relabel the run's code."""
    import synth.runner
    from synth.runner import Progress

    revision = {"now": "rev-at-start"}
    monkeypatch.setattr(synth.runner, "git_revision", lambda: revision["now"])

    class MovesTheCheckout(Progress):
        def stage_finished(self, report) -> None:
            revision["now"] = "rev-after-a-pull"

    result = run(load_spec(write_spec(tmp_path, PIPELINE[:1])), progress=MovesTheCheckout())
    assert json.loads((result.output / "_manifest.json").read_text())["git_revision"] == "rev-at-start"
