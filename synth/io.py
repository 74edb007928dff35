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
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray.data
from ray.data.datasource import FilenameProvider

from synth.stage import DROP_REASON


class PartNames(FilenameProvider):
    """`part-TTTTTT.parquet`: sorted names follow the dataset's order, so reads are stable."""

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{task_index:06d}.parquet"


def write_parts(ds: ray.data.Dataset, folder: Path, min_rows_per_file: int, row_group_size: int) -> None:
    """Write `ds` as Parquet parts named in its block order into `folder` (a new temporary path)."""
    ds.context.execution_options.preserve_order = True
    # OVERWRITE lets part names leave out Ray's per-write UUID; `folder` is new, so nothing is replaced.
    ds.write_parquet(str(folder), filename_provider=PartNames(), min_rows_per_file=min_rows_per_file,
                     row_group_size=row_group_size, mode=ray.data.SaveMode.OVERWRITE)  # fmt: skip


def copy_rows(source: Path, target: Path, *, dropped: bool, rows_per_file: int = 500_000) -> None:
    """Copy a stage folder's kept rows (without `_drop_reason`), or its dropped rows, into `target`.

    Streams row groups in file order in this process: the dataset keeps the stage's order, and
    no Ray scheduling can move it.
    """
    files = parquet_files(source)
    schema = unified_schema([pq.read_schema(f) for f in files])
    if not dropped and DROP_REASON in schema.names:
        schema = schema.remove(schema.get_field_index(DROP_REASON))
    target.mkdir(parents=True)
    writer, part, rows_in_part = None, 0, 0
    for path in files:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group)
            if DROP_REASON in table.column_names:
                reasons = table.column(DROP_REASON)
                table = table.filter(pc.is_valid(reasons) if dropped else pc.is_null(reasons))
            if table.num_rows == 0:
                continue
            if writer is None or rows_in_part >= rows_per_file:
                if writer is not None:
                    writer.close()
                writer = pq.ParquetWriter(target / f"part-{part:06d}.parquet", schema)
                part, rows_in_part = part + 1, 0
            writer.write_table(conform(table, schema))
            rows_in_part += table.num_rows
    if writer is None:
        pq.write_table(schema.empty_table(), target / "part-000000.parquet")
    else:
        writer.close()


def unified_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for parts whose types differ only where a part had a column all null."""
    return pa.unify_schemas(schemas, promote_options="permissive").remove_metadata()


def conform(table: pa.Table, target: pa.Schema) -> pa.Table:
    """`table` with `target`'s columns, in its order and types; a missing column is null."""
    columns = [
        table.column(field.name).cast(field.type) if field.name in table.column_names else pa.nulls(len(table), field.type)
        for field in target
    ]
    return pa.Table.from_arrays(columns, schema=target)


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
