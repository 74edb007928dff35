"""`tabular_synth` and `tabular_report` end to end through the runner, on a small mixed CSV:
record columns and the user's types, generated columns, conditions, constraints (within and
across blocks), the report's files, the same rows from the same spec and seed, and a resumed run
that reuses the fitted model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pytest
import yaml

import generators.tabular.report  # noqa: F401 - registers tabular_report
from generators.tabular.source import RECORD_COLUMNS, cross_block_repeats, mark_rows, records
from synth.runner import run
from synth.run_spec import load_spec

ROWS = 160


def patients_csv(path: Path) -> pa.Table:
    rng = np.random.default_rng(0)
    low = rng.integers(60, 90, ROWS)
    table = pa.table({
        "patient": pa.array(np.arange(1000, 1000 + ROWS)),
        "name": pa.array([f"person {i}" for i in range(ROWS)]),
        "age": pa.array(rng.integers(20, 80, ROWS)),
        "weight": pa.array([None if i % 17 == 0 else float(w) for i, w in enumerate(rng.normal(70, 12, ROWS))]),
        "smoker": pa.array(rng.random(ROWS) < 0.3),
        "ward": pa.array(rng.choice(["north", "south", "east"], ROWS)),
        "bp_low": pa.array(low),
        "bp_high": pa.array(low + rng.integers(20, 50, ROWS)),
        "outcome": pa.array(rng.choice(["well", "ill"], ROWS)),
    })  # fmt: skip
    pacsv.write_csv(table, path)
    return pacsv.read_csv(path)


SYNTH = {
    "kind": "tabular_synth",
    "data": {"path": "patients.csv"},
    "metadata": {"primary_key": "patient", "never_copy": ["name"], "target": "outcome",
                 "columns": {"age": "numerical", "bp_low": "numerical", "bp_high": "numerical"}},
    "synthesizer": {"model": "tabddpm", "steps": 40, "num_timesteps": 20, "layers": [32], "dim_t": 16, "device": "cpu"},
    "num_rows": 60,
    "block_rows": 30,
    "conditions": {"ward": "north"},
    "constraints": [
        {"type": "range", "column": "age", "min": 20, "max": 79},
        {"type": "inequality", "low": "bp_low", "high": "bp_high"},
        {"type": "unique", "columns": ["age"]},
    ],
    "resources": {"num_cpus": 0.5},
}  # fmt: skip


def write_spec(folder: Path, output: str = "out", report: bool = True) -> Path:
    stages = [SYNTH, {"kind": "tabular_report", "max_rows": 100}] if report else [SYNTH]
    spec = {"name": "patients", "seed": 4, "output": str(folder / output), "stages": stages}
    path = folder / f"{output}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_data(output: Path) -> pa.Table:
    return pads.dataset(str(output / "data"), format="parquet").to_table()


@pytest.fixture(scope="module")
def first_run(ray_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tabular")
    real = patients_csv(folder / "patients.csv")
    result = run(load_spec(write_spec(folder)))
    return folder, real, result


def test_records_keep_the_users_columns_and_types(first_run):
    _, real, result = first_run
    data = read_data(result.output)
    assert data.column_names == [*RECORD_COLUMNS, *real.column_names]
    assert data.schema.remove_metadata() == pa.schema([*(data.schema.field(c) for c in RECORD_COLUMNS), *real.schema])
    assert set(data.column("kind").to_pylist()) == {"tabular"}
    assert set(data.column("generator").to_pylist()) == {"tabular_synth"}
    assert data.column("model")[0].as_py().startswith("tabddpm-")


def test_generated_columns_are_fresh_and_the_key_is_unique(first_run):
    _, real, result = first_run
    data = read_data(result.output)
    assert len(set(data.column("patient").to_pylist())) == data.num_rows
    assert not set(data.column("name").to_pylist()) & set(real.column("name").to_pylist())


def test_every_row_meets_the_conditions_and_constraints(first_run):
    _, _, result = first_run
    frame = read_data(result.output).to_pandas()
    assert (frame["ward"] == "north").all()
    assert frame["age"].between(20, 79).all()
    assert (frame["bp_low"] <= frame["bp_high"]).all()
    assert frame["age"].is_unique


def test_repeats_across_blocks_are_counted_as_drops(first_run):
    _, _, result = first_run
    synth = result.manifest.stages[0]
    repeats = synth.dropped.get("breaks_unique(age)", 0)
    assert synth.rows_out == 60 and synth.kept == 60 - repeats
    assert synth.counters["sampled"] >= 60


def test_report_is_written_with_its_plots(first_run):
    _, _, result = first_run
    folder = result.output / "_reports" / "tabular_report"
    report = (folder / "report.md").read_text()
    for text in ("overall quality", "TSTR", "median DCR", "median NNDR", "singling out", "ward=",
                 "Privacy guard:", "![column shapes](column_shapes.png)"):  # fmt: skip
        assert text in report, text
    summary = json.loads((folder / "report.json").read_text())
    assert 0 <= summary["quality"]["score"] <= 1 and summary["utility"]["metric"] == "macro_f1"
    assert {"singling_out", "linkability", "inference"} <= set(summary["attacks"])
    assert summary["attacks"]["linkability"]["attacks"] == 32  # every holdout row, the control
    assert {p.name for p in folder.glob("*.png")} >= {"column_shapes.png", "distributions.png", "dcr.png"}
    fit = json.loads((result.output / "_models" / "tabular_synth" / "fit.json").read_text())
    assert len(fit["holdout_rows"]) == 32 and fit["train_rows"] == 128


def test_every_link_in_the_dataset_card_opens(first_run):
    """The card includes the report: each of its image and file links resolves from the card's folder."""
    _, _, result = first_run
    card = (result.output / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", card)
    assert sum(link.endswith(".png") for link in links) >= 3
    for link in links:
        assert (result.output / link).is_file(), link


def test_same_spec_and_seed_give_the_same_rows(first_run, tmp_path):
    """A fresh fit elsewhere (the same table at another path, no report stage) makes the same rows."""
    folder, _, first = first_run
    shutil.copy(folder / "patients.csv", tmp_path / "patients.csv")
    again = run(load_spec(write_spec(tmp_path, report=False)))
    assert read_data(again.output).drop_columns(["run_id"]).equals(read_data(first.output).drop_columns(["run_id"]))


def test_a_resumed_run_reuses_the_fitted_model(first_run):
    folder, _, first = first_run
    out = folder / "resumed"
    shutil.copytree(first.output, out)
    (out / "_manifest.json").unlink()
    for done in (out / "_stages").glob("*/_SUCCESS.json"):
        done.unlink()  # killed before any stage finished, but after the fit
    model_file = out / "_models" / "tabular_synth" / "synthesizer" / "tabddpm.pt"
    fitted_at = model_file.stat().st_mtime_ns
    again = run(load_spec(write_spec(folder, output="resumed")))
    assert not any(s.resumed for s in again.stages)
    assert model_file.stat().st_mtime_ns == fitted_at
    assert read_data(again.output).equals(read_data(first.output))


def test_cross_block_repeats_mark_later_blocks_only():
    keys = [[np.array([1, 2, 3])], [np.array([3, 4])], [np.array([4, 1, 5])]]
    repeat = "breaks_unique(a)"
    assert cross_block_repeats(keys, ["unique(a)"]) == {1: {0: repeat}, 2: {0: repeat, 1: repeat}}
    table = records(pa.table({"a": [1, 2]}), {"generator": "g", "run_id": "r", "seed": 1, "model": "m"})
    assert mark_rows(table, {1: "why"}).column("_drop_reason").to_pylist() == [None, "why"]
