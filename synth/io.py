"""Parquet IO for stage outputs and datasets: deterministic file names and atomic folders.

A folder of Parquet parts is written to a temporary sibling and renamed into place, so a
reader (or a resumed run) sees a stage's output either whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray.data
from ray.data.datasource import FilenameProvider

from synth.stage import DROP_REASON


class PartNames(FilenameProvider):
    """`part-TTTTTT.parquet`: sorted names follow the dataset's order, so reads are stable."""

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{task_index:06d}.parquet"


def write_parts(ds: ray.data.Dataset, folder: Path, min_rows_per_file: int) -> None:
    """Write `ds` as ordered Parquet parts into `folder` (a temporary path the caller renames).

    Order is set on the dataset's own context, not only the process-wide one: the write's
    executor reads it from there, and records written in task-completion order would move
    between runs of the same spec and seed.
    """
    ds.context.execution_options.preserve_order = True
    # OVERWRITE lets part names leave out Ray's per-write UUID; `folder` is new, so nothing is replaced.
    ds.write_parquet(str(folder), filename_provider=PartNames(), min_rows_per_file=min_rows_per_file,
                     mode=ray.data.SaveMode.OVERWRITE)


def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def remove_temp_siblings(path: Path) -> None:
    """Remove what a killed run left half-written next to `path`."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def commit_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder into place (replacing an unfinished one)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def parquet_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def write_empty_part(folder: Path, schema: pa.Schema) -> None:
    """Ray writes no file for an empty dataset; one empty part keeps the schema readable."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(schema.empty_table(), folder / "part-000000.parquet")


def drop_counts(folder: Path) -> tuple[int, Counter]:
    """Rows in a stage output and its drop reasons, streaming one column."""
    total, reasons = 0, Counter()
    files = [str(f) for f in parquet_files(folder)]
    if not files:
        return 0, reasons
    dataset = pads.dataset(files, format="parquet")
    if DROP_REASON not in dataset.schema.names:
        return dataset.count_rows(), reasons
    for batch in dataset.to_batches(columns=[DROP_REASON]):
        total += batch.num_rows
        counts = batch.column(0).value_counts()
        for item in counts.to_pylist():
            if item["values"] is not None:
                reasons[item["values"]] += item["counts"]
    return total, reasons


def read_table(folder: Path, columns: list[str] | None = None) -> pa.Table:
    """A whole (small) Parquet folder in this process: for cards, tests and inspection."""
    files = [str(f) for f in parquet_files(folder)]
    if not files:
        raise FileNotFoundError(f"{folder}: no Parquet files")
    return pads.dataset(files, format="parquet").to_table(columns=columns)


def dataset_schema(folder: Path) -> pa.Schema:
    return pq.read_schema(parquet_files(folder)[0])
