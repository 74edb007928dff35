"""The real table: loading with the user's types, one-line errors for what cannot be learned,
metadata detection and overrides, the holdout split, and spec errors that name the column."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from generators.tabular.data import (
    MetadataOverrides, TableSource, infer_metadata, load_table, restore_types, split_holdout, to_frame,
)  # fmt: skip
from generators.tabular.source import TabularSynthConfig  # noqa: F401 - registers tabular_synth
from synth.errors import SpecError
from synth.run_spec import load_spec


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- loading


def test_csv_keeps_column_order_and_types(tmp_path):
    path = write(tmp_path, "b,a,when,flag,name\n1,2.5,2024-01-01T10:00:00,true,x\n2,,2024-02-01T00:00:00,false,y\n")
    table = load_table(TableSource(path=path))
    assert table.column_names == ["b", "a", "when", "flag", "name"]
    assert [str(t) for t in table.schema.types] == ["int64", "double", "timestamp[s]", "bool", "string"]
    assert restore_types(to_frame(table), table.schema).equals(table)


def test_parquet_types_survive_a_trip_through_pandas(tmp_path):
    table = pa.table({
        "small": pa.array([1, 2, None], pa.int32()),
        "city": pa.array(["a", "b", "a"]).dictionary_encode(),
        "day": pa.array([date(2024, 1, 1), None, date(2024, 3, 1)], pa.date32()),
    })  # fmt: skip
    pq.write_table(table, tmp_path / "t.parquet")
    loaded = load_table(TableSource(path=tmp_path / "t.parquet"))
    assert str(loaded.schema.field("city").type) == "string"  # dictionary decoded to its values
    frame = to_frame(loaded)
    frame["small"] = [1.2, 2.7, np.nan]  # a model's floats for an integer column
    restored = restore_types(frame, loaded.schema)
    assert restored.schema == loaded.schema
    assert restored.column("small").to_pylist() == [1, 3, None]


def test_sklearn_sets_load_by_name():
    table = load_table(TableSource(sklearn="wine"))
    assert table.num_rows == 178 and table.column_names[-1] == "target"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n3,4,5\n6,7\n", r"data.csv:3: expected 2 fields as in the header, got 3"),
        ("a,b\n1,2\n3\n", r"data.csv:3: expected 2 fields as in the header, got 1"),
        ("a,b\n", r"data.csv: the table is empty \(no rows under the header a, b\)"),
        ("a,b\n1,\n2,\n", r"data.csv: column 'b' is null in every row"),
    ],
)
def test_what_cannot_be_learned_is_a_one_line_error(tmp_path, text, message):
    with pytest.raises(SpecError, match=message) as info:
        load_table(TableSource(path=write(tmp_path, text)))
    assert "\n" not in str(info.value)


def test_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of `path`"):
        TableSource()


# ---------------------------------------------------------------- metadata and split


def test_metadata_is_detected_then_overridden():
    frame = to_frame(load_table(TableSource(sklearn="iris")))
    meta = infer_metadata(frame, MetadataOverrides(target="target"), "iris")
    assert meta.columns["sepal length (cm)"] == "numerical"
    assert meta.columns["target"] == "categorical" and meta.task == "classification"

    meta = infer_metadata(frame, MetadataOverrides(columns={"target": "numerical"}, target="target",
                                                   never_copy=["petal width (cm)"]), "iris")  # fmt: skip
    assert meta.task == "regression"
    assert meta.generated == ["petal width (cm)"] and "petal width (cm)" not in meta.learned


def test_target_must_be_learned():
    frame = to_frame(load_table(TableSource(sklearn="iris")))
    with pytest.raises(SpecError, match="metadata.target 'target' is a generated column"):
        infer_metadata(frame, MetadataOverrides(target="target", never_copy=["target"]), "iris")


def test_holdout_split_is_drawn_from_the_seed():
    train, holdout = split_holdout(100, 0.2, seed=5)
    assert len(holdout) == 20 and not set(train) & set(holdout) and len(set(train) | set(holdout)) == 100
    again, _ = split_holdout(100, 0.2, seed=5)
    other, _ = split_holdout(100, 0.2, seed=6)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


# ---------------------------------------------------------------- spec errors that name the column


def spec_with(tmp_path: Path, **stage) -> Path:
    write(tmp_path, "a,b,label\n1,2.0,x\n2,3.5,y\n")
    entry = {"kind": "tabular_synth", "data": {"path": "data.csv"}, **stage}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "stages": [entry]}))
    return path


@pytest.mark.parametrize(
    ("stage", "where"),
    [
        ({"metadata": {"target": "nope"}}, "metadata.target"),
        ({"metadata": {"never_copy": ["a", "nope"]}}, r"metadata.never_copy\[1\]"),
        ({"conditions": {"nope": 1}}, "conditions.nope"),
        ({"constraints": [{"type": "inequality", "low": "a", "high": "nope"}]}, r"constraints\[0\].high"),
        ({"constraints": [{"type": "unique", "columns": ["nope"]}]}, r"constraints\[0\].columns\[0\]"),
    ],
)
def test_an_unknown_column_names_itself_and_the_known_ones(tmp_path, stage, where):
    with pytest.raises(SpecError, match=where + r": unknown column 'nope'; the table has: a, b, label") as info:
        load_spec(spec_with(tmp_path, **stage))
    assert "\n" not in str(info.value)


def test_a_column_named_like_a_record_column_must_be_renamed(tmp_path):
    write(tmp_path, "id,b\n1,2\n", "with_id.csv")
    path = tmp_path / "spec.yaml"
    stage = {"kind": "tabular_synth", "data": {"path": "with_id.csv"}}
    path.write_text(yaml.safe_dump({"name": "t", "stages": [stage]}))
    with pytest.raises(SpecError, match="column 'id' has the name of a record column .* rename it with data.rename"):
        load_spec(path)
    stage["data"]["rename"] = {"id": "patient_id"}
    path.write_text(yaml.safe_dump({"name": "t", "stages": [stage]}))
    assert load_spec(path).stages[0].data.column_names() == ["patient_id", "b"]
