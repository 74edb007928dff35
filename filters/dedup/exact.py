"""Exact dedup (`kind: exact_dedup`): records whose normalised text hashes alike, one kept per hash.

The text (`filters.dedup.text`: plain text case- and space-folded, code without comments or
spacing) is hashed with xxh3-128 in a map task per block. Then, on Ray, never in one process:

1. Counts (shuffle 1): hashes go to `hash % partitions`; a reduce task returns the hashes seen
   twice or more, and those of earlier outputs (`against:`).
2. Local groups (a task per block): a row whose hash is in the earlier outputs is dropped
   (`duplicate_of_existing`); of the rows sharing a hash inside the block, all but the best are
   dropped (`exact_duplicate`) and only the best goes on.
3. Keep (shuffle 2): per hash, the best of the blocks' best rows is kept; the rest are dropped.
   Best: highest `prefer_column`, then lowest `id`, then first in the data.
4. Mark (a task per block): `_drop_reason` set in place (`filters.dedup.blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import ray
import ray.data
import xxhash

from filters.dedup import blocks
from filters.dedup.blocks import EXACT, EXISTING, Drops
from filters.dedup.config import AgainstConfig
from filters.dedup.text import TextSpec, exact_text
from synth.registry import register
from synth.stage import GlobalStage

_KEY = np.dtype([("hi", "<u8"), ("lo", "<u8")])
"""A 128-bit hash as a sortable record; `hi` picks the partition."""


class ExactDedupConfig(AgainstConfig):
    kind: Literal["exact_dedup"] = "exact_dedup"


@dataclass
class Hashed:
    """One block's row hashes, preference and ids, kept for step 2."""

    keys: np.ndarray
    prefer: np.ndarray
    ids: np.ndarray


@dataclass
class Best:
    """Per shared hash, a block's best row, for one partition."""

    keys: np.ndarray
    rows: np.ndarray
    prefer: np.ndarray
    ids: np.ndarray


@register
class ExactDedup(GlobalStage):
    kind = "exact_dedup"
    Config = ExactDedupConfig
    description = "Records whose normalised text is identical (xxh3-128); keeps one per text"

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        cfg = self.config
        prepared = blocks.prepare(ds, cfg)
        if prepared is None:
            return ds
        new, spec = prepared
        kept, local = self._duplicates(new, blocks.existing_blocks(cfg.against, spec), spec)
        return ray.data.from_arrow_refs(blocks.mark(new, kept, cfg.resources.num_cpus, own=local))

    def _duplicates(self, new: list, old: list, spec: TextSpec) -> tuple[list, list]:
        """Steps 1-3: the drops of the keep step (per partition) and of each block's local groups."""
        cfg = self.config
        parts = blocks.default_partitions(cfg.partitions)
        task = {"num_cpus": cfg.resources.num_cpus}
        hash_ = _hash.options(num_returns=1 + parts, **task)
        hashed = [hash_.remote(b, spec, cfg.prefer_column, parts) for b in new + old]
        counted = [_count.options(**task).remote(len(new), *(h[1 + p] for h in hashed)) for p in range(parts)]
        group = _local_groups.options(num_returns=1 + parts, **task)
        grouped = [group.remote(h[0], block_no, parts, *counted) for block_no, h in enumerate(hashed[: len(new)])]
        kept = [_keep.options(**task).remote(*(g[1 + p] for g in grouped)) for p in range(parts)]
        return kept, [g[0] for g in grouped]


def text_keys(texts: pa.Array) -> np.ndarray:
    """xxh3-128 of each text, as `_KEY` records."""
    digests = b"".join(map(xxhash.xxh3_128_digest, texts.cast(pa.large_binary()).to_pylist()))
    return np.frombuffer(digests, dtype=[("hi", ">u8"), ("lo", ">u8")]).astype(_KEY)


@ray.remote
def _hash(block: pa.Table, spec: TextSpec, prefer_column: str | None, parts: int) -> tuple:
    """(the block's hashes with preference and ids, its hashes split by partition)."""
    keys = text_keys(exact_text(block, spec))
    prefer = blocks.preference(block, prefer_column if prefer_column in block.column_names else None)
    hashed = Hashed(keys, prefer, blocks.record_ids(block))
    return (hashed, *(columns[0] for columns in _split(keys, parts, keys)))


def _rank(keys: np.ndarray) -> np.ndarray:
    """Equal hashes, equal ints: a sort key `np.lexsort` takes."""
    return np.unique(keys, return_inverse=True)[1].reshape(-1)


def _split(keys: np.ndarray, parts: int, *arrays: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    return [columns[1:] for columns in blocks.split(keys["hi"], parts, *arrays)]


@ray.remote
def _count(new_blocks: int, *parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hashes of this partition seen twice or more, hashes seen in earlier outputs), sorted."""
    keys, counts = np.unique(np.concatenate(parts), return_counts=True)
    old = np.unique(np.concatenate([np.zeros(0, _KEY), *parts[new_blocks:]]))
    return keys[counts > 1], old


@ray.remote
def _local_groups(hashed: Hashed, block_no: int, parts: int, *counted: tuple[np.ndarray, np.ndarray]) -> tuple:
    """(this block's drops, its best row per shared hash split by partition)."""
    keys, rows = hashed.keys, blocks.row_ids(block_no, len(hashed.keys))
    shared = np.concatenate([np.zeros(0, _KEY), *(c[0] for c in counted)])
    old = np.concatenate([np.zeros(0, _KEY), *(c[1] for c in counted)])
    in_old = np.isin(keys, old)
    grouped = np.flatnonzero(np.isin(keys, shared) & ~in_old)
    order = grouped[blocks.keep_order(hashed.prefer[grouped], hashed.ids[grouped], rows[grouped], _rank(keys[grouped]))]
    best = order[np.r_[True, keys[order][1:] != keys[order][:-1]]] if len(order) else order
    beaten = np.setdiff1d(grouped, best)
    codes = np.r_[np.full(in_old.sum(), EXISTING), np.full(len(beaten), EXACT)]
    drops = Drops.of(np.r_[rows[in_old], rows[beaten]], codes)
    bests = _split(keys[best], parts, keys[best], rows[best], hashed.prefer[best], hashed.ids[best])
    return (drops, *(Best(*columns) for columns in bests))


@ray.remote
def _keep(*parts: Best) -> Drops:
    """Per hash of this partition, all but the best of the blocks' best rows."""
    keys = np.concatenate([np.zeros(0, _KEY), *(p.keys for p in parts)])
    rows = np.concatenate([p.rows for p in parts])
    prefer = np.concatenate([p.prefer for p in parts])
    ids = np.concatenate([p.ids for p in parts])
    order = blocks.keep_order(prefer, ids, rows, _rank(keys))
    beaten = order[np.r_[False, keys[order][1:] == keys[order][:-1]]] if len(order) else order
    return Drops.of(rows[beaten], EXACT)
