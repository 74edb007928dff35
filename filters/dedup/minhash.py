"""MinHash near-dedup (`kind: minhash_dedup`): word n-gram shingles, LSH, verified pairs, components.

1. Sign (a map task per block): each record's MinHash signature (`filters.dedup.signatures`) and
   its `bands` LSH keys of `rows` values each. Records of a block with identical signatures are
   linked at once; only the first of them goes on.
2. Shared keys (shuffle 1): band keys go to `key % partitions`; a reduce task keeps the keys held
   by at least two records. Most keys are held by one, so step 3 moves little.
3. Verify (shuffle 2): each block sends, for its rows holding a shared key, the key, the row and
   its signature; a reduce task groups rows by key and keeps the pairs whose estimated Jaccard
   (share of equal signature values) is at least `threshold`. LSH alone would also link every pair
   that merely shares a band, which on template-heavy synthetic data chains unrelated records.
4. Components (one task): connected components over the verified pairs; per component the record
   with the highest `prefer_column`, then the lowest id, then the first in the data is kept and
   the others get `near_duplicate`. This task holds only the pairs and their rows' (preference,
   id), never the records. With `against:`, earlier outputs take part in steps 1-4 and a component
   holding an old record drops all its new ones (`duplicate_of_existing`); old records stay.
5. Mark (a task per block): `_drop_reason` set in place (`filters.dedup.blocks`).

Defaults: 5-word shingles, 32 bands x 4 rows (128 permutations), threshold 0.5. A 5% word edit
leaves a 5-gram Jaccard near 0.63: these bands make it a candidate with probability
1 - (1 - 0.63^4)^32 = 0.996, and 128 permutations estimate it within +-0.04, well above 0.5. A
0.8 threshold would miss most such copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import ray
import ray.data
from pydantic import Field
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from filters.dedup import blocks
from filters.dedup.blocks import EXISTING, NEAR, ROW_BITS, Drops
from filters.dedup.config import AgainstConfig
from filters.dedup.signatures import MinHasher, band_keys, estimated_jaccard, positions, signature_keys
from filters.dedup.text import TextSpec, joined_text
from synth.registry import register
from synth.stage import GlobalStage

_SLICE_ROWS = 20_000
"""Rows signed at once inside a block task: bounds the shingle arrays of a big block."""
_ALL_PAIRS_UP_TO = 64
"""Buckets up to this size compare all their pairs; a bigger one compares each row only with its
centres (earlier rows unlike each other), so a bucket of 100,000 copies costs 100,000 comparisons."""


class MinhashDedupConfig(AgainstConfig):
    kind: Literal["minhash_dedup"] = "minhash_dedup"
    ngram: int = Field(5, ge=1, description="Words per shingle")
    bands: int = Field(32, ge=1, description="LSH bands")
    rows: int = Field(4, ge=1, description="Signature values per band; bands x rows permutations in all")
    threshold: float = Field(0.5, gt=0, le=1, description="Estimated Jaccard at which a candidate pair is a duplicate")


@dataclass
class Graph:
    """Pairs (row ids a, b) and the (preference, id) of their rows: what the components task needs."""

    a: np.ndarray
    b: np.ndarray
    rows: np.ndarray
    prefer: np.ndarray
    ids: np.ndarray
    candidates: int = 0

    @classmethod
    def concat(cls, parts: list[Graph]) -> Graph:
        fields = [np.concatenate([getattr(p, f) for p in parts]) for f in ("a", "b", "rows", "prefer", "ids")]
        return cls(*fields, candidates=sum(p.candidates for p in parts))


@dataclass
class Signed:
    """One block's distinct signatures: their rows, band keys, preference and ids."""

    rows: np.ndarray
    sigs: np.ndarray
    keys: np.ndarray
    prefer: np.ndarray
    ids: np.ndarray


@dataclass
class Candidates:
    """Rows of one block holding shared keys, for one partition: (key, member) pairs and the members."""

    keys: np.ndarray
    member: np.ndarray
    rows: np.ndarray
    sigs: np.ndarray
    prefer: np.ndarray
    ids: np.ndarray


@register
class MinhashDedup(GlobalStage):
    kind = "minhash_dedup"
    Config = MinhashDedupConfig
    description = "Near-duplicates by MinHash LSH with verified pairs; keeps one record per component"

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        cfg = self.config
        prepared = blocks.prepare(ds, cfg)
        if prepared is None:
            return ds
        new, spec = prepared
        drops, stats = self._duplicates(new, blocks.existing_blocks(cfg.against, spec), spec)
        self.ctx.count(**ray.get(stats))
        return ray.data.from_arrow_refs(blocks.mark(new, [drops], cfg.resources.num_cpus))

    def _duplicates(self, new: list, old: list, spec: TextSpec) -> tuple[ray.ObjectRef, ray.ObjectRef]:
        """Steps 1-4: the drops and the counters, as object refs."""
        cfg = self.config
        parts = blocks.default_partitions(cfg.partitions)
        hasher = MinHasher(cfg.ngram, cfg.bands * cfg.rows, self.ctx.stage_seed)
        task = {"num_cpus": cfg.resources.num_cpus}
        sign = _sign.options(num_returns=2 + parts, **task)
        signed = [
            sign.remote(block, block_no, hasher, spec, cfg.prefer_column, cfg.bands, cfg.rows, parts)
            for block_no, block in enumerate(new + old)
        ]
        shared = [_shared_keys.options(**task).remote(*(s[2 + p] for s in signed)) for p in range(parts)]
        candidates = [_candidates.options(num_returns=parts, **task).remote(s[0], parts, *shared) for s in signed]
        candidates = [[c] for c in candidates] if parts == 1 else candidates
        verified = [_verify.options(**task).remote(cfg.threshold, *(c[p] for c in candidates)) for p in range(parts)]
        return _components.options(num_returns=2, **task).remote(len(new), *verified, *(s[1] for s in signed))


@ray.remote
def _sign(
    block: pa.Table, block_no: int, hasher: MinHasher, spec: TextSpec, prefer_column: str | None,
    bands: int, rows_per_band: int, parts: int,
) -> tuple:
    """(distinct signatures with their band keys, in-block identical pairs, band keys per partition)."""
    sigs = [hasher.signatures(joined_text(block.slice(i, _SLICE_ROWS), spec))
            for i in range(0, block.num_rows, _SLICE_ROWS)]  # fmt: skip
    sigs = np.concatenate(sigs) if sigs else np.zeros((0, len(hasher.a)), np.uint32)
    rows = blocks.row_ids(block_no, block.num_rows)
    # Earlier outputs may lack the preference column: they win their components anyway.
    prefer = blocks.preference(block, prefer_column if prefer_column in block.column_names else None)
    ids = blocks.record_ids(block)
    _, first, inverse = np.unique(signature_keys(sigs), return_index=True, return_inverse=True)
    twin_of = first[inverse.reshape(-1)]
    distinct = np.flatnonzero(twin_of == np.arange(len(rows)))
    twins = np.flatnonzero(twin_of != np.arange(len(rows)))
    involved = np.union1d(twins, twin_of[twins])
    twin_graph = Graph(rows[twin_of[twins]], rows[twins], rows[involved], prefer[involved], ids[involved])
    keys = band_keys(sigs[distinct], bands, rows_per_band)
    signed = Signed(rows[distinct], sigs[distinct], keys, prefer[distinct], ids[distinct])
    return (signed, twin_graph, *(part[0] for part in blocks.split(keys.reshape(-1), parts)))


@ray.remote
def _shared_keys(*parts: np.ndarray) -> np.ndarray:
    """The band keys of one partition held by two records or more, sorted."""
    keys, counts = np.unique(np.concatenate(parts), return_counts=True)
    return keys[counts > 1]


@ray.remote
def _candidates(signed: Signed, parts: int, *shared: np.ndarray) -> list[Candidates] | Candidates:
    """For each partition, this block's rows holding its shared keys, with their signatures."""
    members = np.repeat(np.arange(len(signed.rows)), signed.keys.shape[1])
    out = []
    for (keys, member), shared_keys in zip(blocks.split(signed.keys.reshape(-1), parts, members), shared):
        at = np.minimum(np.searchsorted(shared_keys, keys), max(len(shared_keys) - 1, 0))
        hit = shared_keys[at] == keys if len(shared_keys) else np.zeros(len(keys), bool)
        used, local = np.unique(member[hit], return_inverse=True)
        rows, sigs, prefer, ids = signed.rows[used], signed.sigs[used], signed.prefer[used], signed.ids[used]
        out.append(Candidates(keys[hit], local, rows, sigs, prefer, ids))
    return out if parts > 1 else out[0]


@ray.remote
def _verify(threshold: float, *parts: Candidates) -> Graph:
    """Group one partition's rows by band key; keep the pairs estimated at least `threshold` alike."""
    offsets = np.cumsum([0] + [len(p.rows) for p in parts])
    keys = np.concatenate([p.keys for p in parts])
    member = np.concatenate([p.member + o for p, o in zip(parts, offsets)])
    rows = np.concatenate([p.rows for p in parts])
    sigs = np.concatenate([p.sigs for p in parts])
    order = np.lexsort((rows[member], keys))
    keys, member = keys[order], member[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, len(keys)])
    small = (lengths > 1) & (lengths <= _ALL_PAIRS_UP_TO)
    a, b = _bucket_pairs(starts[small], lengths[small])
    packed = np.unique(member[a] * len(rows) + member[b])  # a pair found by several bands, once
    pairs = np.stack([packed // len(rows), packed % len(rows)], axis=1)
    alike = pairs[_similar(sigs, pairs, threshold)]
    big = [_greedy(member[starts[i] : starts[i] + lengths[i]], sigs, threshold)
           for i in np.flatnonzero(lengths > _ALL_PAIRS_UP_TO)]  # fmt: skip
    edges = np.concatenate([alike, *(e for e, _ in big)]) if big else alike
    involved = np.unique(edges)
    prefer = np.concatenate([p.prefer for p in parts])
    ids = np.concatenate([p.ids for p in parts])
    compared = len(pairs) + sum(n for _, n in big)
    return Graph(rows[edges[:, 0]], rows[edges[:, 1]], rows[involved], prefer[involved], ids[involved], compared)


def _bucket_pairs(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (i, j), i < j, of every pair inside each bucket [start, start + length)."""
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for gap in range(1, int(lengths.max(initial=1))):
        wide = lengths > gap
        count = lengths[wide] - gap
        first = np.repeat(starts[wide], count) + positions(count)
        firsts.append(first)
        seconds.append(first + gap)
    return np.concatenate(firsts), np.concatenate(seconds)


def _similar(sigs: np.ndarray, pairs: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of the pairs whose estimated Jaccard reaches the threshold, in chunks to bound memory."""
    out = np.zeros(len(pairs), bool)
    for lo in range(0, len(pairs), 65536):
        chunk = pairs[lo : lo + 65536]
        out[lo : lo + 65536] = estimated_jaccard(sigs[chunk[:, 0]], sigs[chunk[:, 1]]) >= threshold
    return out


def _greedy(members: np.ndarray, sigs: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """A big bucket, in order: a row is linked to every centre it resembles, else becomes a centre.

    Returns the links and the number of comparisons made.
    """
    centres, edges, compared = [members[0]], [], 0
    for m in members[1:]:
        close = estimated_jaccard(sigs[centres], sigs[m]) >= threshold
        compared += len(centres)
        if close.any():
            edges.extend((c, m) for c in np.asarray(centres)[close])
        else:
            centres.append(m)
    return np.array(edges, np.int64).reshape(-1, 2), compared


@ray.remote
def _components(new_blocks: int, *graphs: Graph) -> tuple[Drops, dict[str, int]]:
    """Connected components over all verified pairs; one record kept per component.

    The only step in one task: it holds the pairs and (preference, id) of their rows, never records.
    """
    g = Graph.concat(list(graphs))
    if not len(g.rows):
        return Drops.empty(), {"candidate_pairs": g.candidates, "similar_pairs": 0, "duplicate_groups": 0}
    rows, first = np.unique(g.rows, return_index=True)
    a, b = np.searchsorted(rows, g.a), np.searchsorted(rows, g.b)
    count, labels = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(rows),) * 2), directed=False)
    old = rows >= (new_blocks << ROW_BITS)
    order = blocks.keep_order(g.prefer[first], g.ids[first], rows, labels, ~old)
    keep = np.zeros(len(rows), bool)
    keep[order[np.r_[True, labels[order][1:] != labels[order][:-1]]]] = True
    has_old = np.zeros(count, bool)
    has_old[labels[old]] = True
    drop = ~keep & ~old
    drops = Drops.of(rows[drop], np.where(has_old[labels[drop]], EXISTING, NEAR))
    stats = {"candidate_pairs": g.candidates, "similar_pairs": len(a), "duplicate_groups": count}
    return drops, stats
