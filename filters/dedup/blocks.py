"""How the dedup stages run on Ray: numbered blocks, a hash shuffle of small keys, marking in place.

A dedup stage reads its input twice (find the duplicates, then mark them), so it materialises the
dataset once and works on its blocks by reference with plain Ray tasks, which run the same on the
embedded Ray and on a cluster:

- Row ids: row i of block b is `b << 32 | i`. Unique, ordered like the dataset, and they tell
  where a row lives without storing anything. Existing data (`against:`) is numbered after the new.
- Shuffle: map tasks split small key arrays by `key % partitions` (`num_returns`), reduce tasks
  take one part from every map task. Only hashes, row ids and, for candidate rows, signatures
  travel; the records stay in their blocks. Ray Data's own hash shuffle (`repartition(keys=)`,
  `groupby`) took 10-23 s for 3.2M 16-byte rows on 2 cores, several times our whole budget.
- Marking: each block's task takes the sorted drop lists (row ids, reason codes; small, shared per
  node by the object store) and sets `_drop_reason` on its own rows, so the order is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import ray.data

from filters.dedup.text import TextSpec, resolve_text
from synth.manifest import MANIFEST
from synth.stage import mark_dropped

ROW_BITS = 32

REASONS = ("exact_duplicate", "near_duplicate", "semantic_duplicate", "duplicate_of_existing")
"""Drop reasons, stored as their index (uint8) while drops travel between tasks."""
EXACT, NEAR, SEMANTIC, EXISTING = range(len(REASONS))


@dataclass
class Drops:
    """Rows to drop (row ids, ascending) and the reason code of each."""

    rows: np.ndarray
    codes: np.ndarray

    @classmethod
    def empty(cls) -> Drops:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.uint8))

    @classmethod
    def of(cls, rows: np.ndarray, code: int | np.ndarray) -> Drops:
        order = np.argsort(rows, kind="stable")
        codes = np.broadcast_to(np.asarray(code, np.uint8), rows.shape)
        return cls(np.asarray(rows, np.int64)[order], np.array(codes)[order])


def materialise(ds: ray.data.Dataset) -> tuple[list[ray.ObjectRef], pa.Schema | None]:
    """The dataset's blocks as Arrow tables in the object store, in order, and their schema."""
    ds = ds.materialize()
    schema = ds.schema()
    if schema is None:
        return [], None
    return ds.to_arrow_refs(), getattr(schema, "base_schema", schema)


def prepare(ds: ray.data.Dataset, cfg) -> tuple[list[ray.ObjectRef], TextSpec] | None:
    """What every dedup stage starts from: the blocks in the object store and the text to compare,
    with the config's columns checked against the data; None for an empty dataset."""
    new, schema = materialise(ds)
    if schema is None:
        return None
    spec = resolve_text(schema, cfg.text_columns, cfg.code)
    check_prefer_column(schema, cfg.prefer_column)
    return new, spec


def existing_blocks(paths: list[Path], spec: TextSpec) -> list[ray.ObjectRef]:
    """Blocks of earlier outputs (`against:`): a synth output folder means its `data/`; else Parquet."""
    if not paths:
        return []
    sources = [str(p / "data" if (p / MANIFEST).exists() else p) for p in paths]
    old, schema = materialise(ray.data.read_parquet(sources, file_extensions=["parquet"]))
    missing = [c for c in spec.columns if schema is not None and c not in schema.names]
    if missing:
        raise ValueError(f"against: the earlier data has no column {missing[0]!r}; its columns are {schema.names}")
    return old


def row_ids(block_no: int, n: int) -> np.ndarray:
    return (np.int64(block_no) << ROW_BITS) + np.arange(n, dtype=np.int64)


def default_partitions(configured: int | None) -> int:
    """Reduce tasks of a shuffle: the configured number, else one per CPU of the cluster (>= 2)."""
    return configured or max(2, int(ray.cluster_resources().get("CPU", 2)))


def split(keys: np.ndarray, parts: int, *arrays: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Split keys (well-mixed hashes) and aligned arrays into `parts` by `key % parts`."""
    part = (keys % np.uint64(parts)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(parts + 1))
    columns = [keys[order], *(a[order] for a in arrays)]
    return [tuple(c[bounds[p] : bounds[p + 1]] for c in columns) for p in range(parts)]


def preference(table: pa.Table, column: str | None) -> np.ndarray:
    """float64 per row, higher kept first; a missing value ranks below every number."""
    if column is None:
        return np.zeros(table.num_rows)
    values = table.column(column).cast(pa.float64()).fill_null(-np.inf)
    return values.to_numpy()


def check_prefer_column(schema: pa.Schema, column: str | None) -> None:
    if column is None:
        return
    if column not in schema.names:
        raise ValueError(f"prefer_column: column {column!r} is not in the data; its columns are {schema.names}")
    type_ = schema.field(column).type
    if not (pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_boolean(type_)):
        raise ValueError(f"prefer_column: column {column!r} is {type_}, expected a numeric column")


def record_ids(table: pa.Table) -> np.ndarray:
    """The `id` column as strings (the tie-break after preference); "" when there is none."""
    if "id" not in table.column_names:
        return np.full(table.num_rows, "", dtype=object)
    return np.array(table.column("id").cast(pa.string()).fill_null("").to_pylist(), dtype=object)


def keep_order(prefer: np.ndarray, ids: np.ndarray, rows: np.ndarray, *groups: np.ndarray) -> np.ndarray:
    """Indices sorted by groups, then highest preference, lowest id, lowest row id: the keep order."""
    id_rank = np.unique(ids, return_inverse=True)[1] if len(ids) else np.zeros(0, np.int64)
    return np.lexsort((rows, id_rank, -prefer, *reversed(groups)))


def mark(
    blocks: list[ray.ObjectRef], drops: list[ray.ObjectRef], num_cpus: float, own: list[ray.ObjectRef] | None = None
) -> list[ray.ObjectRef]:
    """New blocks with `_drop_reason` set on every dropped row, one task per block.

    `drops`: drop lists every block reads its range of; `own`: one more list per block, its rows only.
    """
    task = _mark.options(num_cpus=num_cpus)
    own = own or [None] * len(blocks)
    return [
        task.remote(block, block_no, *drops, *([mine] if mine is not None else []))
        for block_no, (block, mine) in enumerate(zip(blocks, own))
    ]


@ray.remote
def _mark(block: pa.Table, block_no: int, *drops: Drops) -> pa.Table:
    lo, hi = block_no << ROW_BITS, (block_no + 1) << ROW_BITS
    reasons: list[str | None] = [None] * block.num_rows
    for part in drops:
        first, last = np.searchsorted(part.rows, [lo, hi])
        for row, code in zip(part.rows[first:last] - lo, part.codes[first:last]):
            reasons[row] = REASONS[code]
    return mark_dropped(block, reasons)

