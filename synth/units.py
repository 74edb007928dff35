"""Ordered work units: how a map stage reads its input and writes its output in a fixed order.

Ray Data does not keep blocks in order between operators on a busy machine, even with
`preserve_order`, so the order of a stage's output would change between runs of one spec and
seed. A map stage therefore runs on numbered units instead: unit `i` holds the next
`batch_size` kept rows of the upstream stage (its files read by name, then row group, then
row) and its worker writes `part-i.parquet` itself. Which worker finishes first no longer
matters; sorted file names are the input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synth.io import conform, parquet_files, unified_schema
from synth.stage import DROP_REASON

DEFAULT_UNIT_ROWS = 1024
"""Rows per unit when a stage sets no `batch_size` (Ray's default batch size too)."""


@dataclass(frozen=True)
class Segment:
    """Kept rows of one row group of one file."""

    path: str
    row_group: int
    rows: np.ndarray


Unit = list[Segment]


def plan_units(folder: Path, unit_rows: int | None) -> list[Unit]:
    """Cut the kept rows of a stage folder into units of `unit_rows`, in file, row-group, row order.

    Only the `_drop_reason` column is read here; workers read the rows they need.
    """
    size = unit_rows or DEFAULT_UNIT_ROWS
    units: list[Unit] = []
    current: Unit = []
    filled = 0
    for path in parquet_files(folder):
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            kept = _kept_positions(parquet, group)
            while len(kept):
                take = kept[: size - filled]
                kept = kept[len(take) :]
                current.append(Segment(str(path), group, take))
                filled += len(take)
                if filled == size:
                    units.append(current)
                    current, filled = [], 0
    if current:
        units.append(current)
    return units


def _kept_positions(parquet: pq.ParquetFile, group: int) -> np.ndarray:
    if DROP_REASON not in parquet.schema_arrow.names:
        return np.arange(parquet.metadata.row_group(group).num_rows)
    reasons = parquet.read_row_group(group, columns=[DROP_REASON]).column(0)
    return np.flatnonzero(pc.is_null(reasons).to_numpy(zero_copy_only=False))


def read_unit(unit: Unit) -> pa.Table:
    """The unit's kept rows, without `_drop_reason`."""
    tables = []
    for segment in unit:
        table = pq.ParquetFile(segment.path).read_row_group(segment.row_group)
        tables.append(table.take(pa.array(segment.rows)))
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    return table.drop_columns([DROP_REASON]) if DROP_REASON in table.column_names else table


def unit_file(folder: Path, index: int) -> Path:
    return folder / f"part-{index:06d}.parquet"


def unify_parts(folder: Path) -> None:
    """Give every part one schema: a unit whose column was all null wrote it as type null."""
    files = parquet_files(folder)
    schemas = [pq.read_schema(f) for f in files]
    target = unified_schema(schemas)
    for path, schema in zip(files, schemas):
        if schema.remove_metadata() != target:
            pq.write_table(conform(pq.read_table(path), target), path)
