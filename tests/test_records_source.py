"""The `records` source: existing data, filtered and deduplicated by the same stages as generated data.

The records are the instruct pipeline's 38 hand-written seed tasks (pipelines/seeds, in the
Self-Instruct paper's seed file format), flattened to one instruction record per instance, with some repeated, and
written as JSONL, as a folder of Parquet files and as a Hugging Face `save_to_disk` folder.
Real runs on the shared Ray session.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from synth.errors import SpecError
from synth.runner import run
from synth.run_spec import load_spec

SEEDS = Path(__file__).resolve().parents[1] / "pipelines" / "seeds" / "instruct_seed_tasks.jsonl"
REPEATED = 9


def seed_records() -> list[dict]:
    rows = []
    for line in SEEDS.read_text().splitlines():
        task = json.loads(line)
        for instance in task["instances"]:
            rows.append({"instruction": task["instruction"], "input": instance["input"], "output": instance["output"]})
    return rows + rows[:REPEATED]  # exact repeats for the dedup to find


def write_spec(tmp_path: Path, source: dict, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": "existing", "seed": 1, "output": str(tmp_path / name), "stages": [
        {"kind": "records", **source}, {"kind": "instruct_checks", "min_output_words": 3}, {"kind": "exact_dedup"}]}))
    return path


def data(output: Path) -> pa.Table:
    return pads.dataset(str(output / "data"), format="parquet").to_table()


def test_existing_records_in_three_formats_are_filtered_and_deduplicated_alike(ray_session, tmp_path):
    from datasets import Dataset, DatasetDict

    rows = seed_records()
    jsonl = tmp_path / "seeds.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "parquet"
    folder.mkdir()
    table = pa.Table.from_pylist(rows)
    pq.write_table(table.slice(0, 100), folder / "part-0.parquet")
    pq.write_table(table.slice(100), folder / "part-1.parquet")
    saved = tmp_path / "hf"
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:3])}).save_to_disk(str(saved))

    results = [run(load_spec(write_spec(tmp_path, {"path": str(jsonl)}, "from_jsonl"))),
               run(load_spec(write_spec(tmp_path, {"path": str(folder)}, "from_parquet"))),
               run(load_spec(write_spec(tmp_path, {"path": str(saved), "split": "train"}, "from_hf")))]

    first = results[0].manifest
    assert [s.rows_in for s in first.stages][1:] == [len(rows), first.stages[1].kept]
    assert first.stages[0].kept == len(rows)
    assert first.drops["exact_dedup"]["exact_duplicate"] > 0  # the repeats the filter kept
    assert first.drops["instruct_checks"]["output_too_short"] > 0  # one-word class labels
    out = data(results[0].output)
    assert set(out.column("kind").to_pylist()) == {"instruct"}
    assert set(out.column("generator").to_pylist()) == {"records"}
    assert len(set(out.column("id").to_pylist())) == out.num_rows
    triples = set(zip(*(out.column(c).to_pylist() for c in ("instruction", "input", "output"))))
    assert len(triples) == out.num_rows == first.records
    for result in results[1:]:
        other = data(result.output)
        assert other.select(["id", "instruction", "input", "output"]).equals(out.select(["id", "instruction", "input",
                                                                                         "output"]))
        assert result.manifest.drops == first.drops


def test_the_kind_comes_from_the_columns_and_a_table_it_cannot_place_is_one_line_before_ray(tmp_path):
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"question": "why?", "tags": ["a", "b"]}) + "\n")
    with pytest.raises(SpecError, match=r"cannot tell what the records in .*odd.jsonl are from their columns "
                                        r"\(question, tags\); set record_kind"):
        run(load_spec(write_spec(tmp_path, {"path": str(odd)}, "odd")))
    with pytest.raises(SpecError, match=r"instruct records need the columns instruction, output; missing "
                                        r"instruction, output"):
        run(load_spec(write_spec(tmp_path, {"path": str(odd), "record_kind": "instruct"}, "odd")))
    assert not (tmp_path / "odd").exists()
