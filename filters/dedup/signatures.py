"""MinHash signatures of word n-gram shingles, vectorised over a whole batch with numpy.

The steps, for a batch of normalised texts (`filters.dedup.text`):

1. Words are hashed with xxhash once per distinct token of the batch (`text.word_hashes`).
2. Each n-gram shingle's 64-bit hash is folded from its word hashes (multiply-add, then the
   murmur3 finaliser), in numpy over every shingle of the batch at once. A text shorter than n
   words is one shingle of all its words, so short and empty texts still get a signature (all
   empty texts share one and are duplicates of each other).
3. `num_perm` hash functions `h(x) = (a*x + b) mod 2^64 >> 32` (multiply-add-shift, a universal
   family on 32-bit keys) are applied to each shingle's top 32 bits; the signature is the minimum
   per function over a text's shingles (`np.minimum.reduceat`).

This replaces datasketch's `MinHash.bulk`, which hashes every shingle in Python: `bench/dedup.py`
measures both. Two signatures agree at each position with probability equal to the Jaccard
similarity of the shingle sets, so `estimated_jaccard` is the share of equal positions.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xxhash

from filters.dedup.text import word_hashes

_FOLD = np.uint64(0x9E3779B97F4A7C15)
_CHUNK_SHINGLES = 65536
"""Shingles hashed together per permutation: 512 KB of uint64, within cache."""


def fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser: spreads every input bit over the output (wrapping uint64)."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


class MinHasher:
    """MinHash signatures for one (n-gram, num_perm, seed) setting."""

    def __init__(self, ngram: int, num_perm: int, seed: int):
        rng = np.random.default_rng(seed)
        self.ngram = ngram
        self.a = rng.integers(1, 2**64, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64)

    def signatures(self, texts: pa.Array) -> np.ndarray:
        """uint32 [rows, num_perm]: the MinHash signature of each text."""
        shingles, starts = self.shingle_hashes(texts)
        keys = shingles >> np.uint64(32)
        out = np.empty((len(texts), len(self.a)), np.uint32)
        for first, last in _chunks(starts, _CHUNK_SHINGLES):
            lo, hi = starts[first], starts[last]
            chunk, h, offsets = keys[lo:hi], np.empty(hi - lo, np.uint64), starts[first:last] - lo
            # One permutation at a time, in place: several times faster than a [shingles, perm] matrix.
            for p, (a, b) in enumerate(zip(self.a, self.b)):
                np.multiply(chunk, a, out=h)
                np.add(h, b, out=h)
                np.right_shift(h, np.uint64(32), out=h)
                out[first:last, p] = np.minimum.reduceat(h, offsets)
        return out

    def shingle_hashes(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """64-bit hash of every shingle, texts one after another, and where each text's begin."""
        hashes, counts = word_hashes(texts)
        per_text = np.maximum(counts - self.ngram + 1, 1)
        starts = np.zeros(len(texts) + 1, np.int64)
        np.cumsum(per_text, out=starts[1:])
        first_word = np.repeat(np.cumsum(counts) - counts, per_text) + positions(per_text)
        width = np.repeat(np.minimum(counts, self.ngram), per_text)
        hashes = np.append(hashes, np.uint64(0))  # read past a short text's end, then masked
        folded = np.full(len(first_word), _FOLD, np.uint64)
        for k in range(self.ngram):
            term = hashes[np.minimum(first_word + k, len(hashes) - 1)]
            term[k >= width] = 0
            folded = folded * _FOLD + term
        return fmix64(folded ^ width.astype(np.uint64)), starts


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 [rows, bands]: one hash per band of `rows` signature values, the band number mixed in."""
    keys = np.empty((len(signatures), bands), np.uint64)
    for band in range(bands):
        key = np.full(len(signatures), band + 1, np.uint64) * _FOLD
        for column in signatures[:, band * rows : (band + 1) * rows].T:
            key = fmix64(key ^ column.astype(np.uint64))
        keys[:, band] = key
    return keys


def signature_keys(signatures: np.ndarray) -> np.ndarray:
    """uint64 per signature: equal signatures, equal keys (identical shingle sets meet here)."""
    as_bytes = np.ascontiguousarray(signatures).view(np.uint8).reshape(len(signatures), signatures.shape[1] * 4)
    return np.fromiter((xxhash.xxh3_64_intdigest(row.tobytes()) for row in as_bytes), np.uint64, len(signatures))


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal positions of paired signatures (rows of a and b)."""
    return (a == b).mean(axis=-1)


def positions(lengths: np.ndarray) -> np.ndarray:
    """0..n-1 for each n in lengths, concatenated."""
    total = int(lengths.sum())
    return np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _chunks(starts: np.ndarray, size: int):
    """(first, last) text ranges whose shingles number about `size` (at least one text each)."""
    first, n = 0, len(starts) - 1
    while first < n:
        last = int(np.searchsorted(starts, starts[first] + size, side="right")) - 1
        last = min(max(last, first + 1), n)
        yield first, last
        first = last
