"""ROUGE-L F-measure of one text against a whole pool at once, without an O(N^2) Python loop.

Self-Instruct drops a new instruction whose ROUGE-L F against any instruction already in the
pool exceeds 0.7, so every candidate is compared with every kept one. A per-pair dynamic
programme in Python costs m*n steps per pair; here the LCS lengths against all pool entries come
from the bit-parallel algorithm of Allison-Dix / Hyyrö run on one Python big int:

    V = all ones; for each token c of the query: U = V & M[c]; V = (V + U) | (V - U)
    LCS(query, segment) = number of zero bits of V inside that segment

All pool texts are laid end to end in one integer, each segment followed by a 0 guard bit. A
carry out of a segment stops in its guard bit, and the guards are cleared after every step, so
segments never leak into each other. Each step is a handful of big-int operations (C speed,
64 positions per machine word); the per-segment zero counts come from numpy at the end.

Tokenisation matches the `rouge-score` package without stemming: lowercase, every run of
characters outside [a-z0-9] becomes a space, split. F = 2 * LCS / (len(a) + len(b)), which is
rouge-score's 2PR / (P + R) written without the division by P and R.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Tokens as `rouge_score.tokenize` makes them with no stemmer."""
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


class RougeLPool:
    """A growing set of texts that scores a query against all of them in one pass."""

    def __init__(self, texts: Iterable[str] = ()):
        self._masks: dict[str, int] = {}  # token -> bits of the positions holding it
        self._data_bits = 0  # ones at every token position, zeros at the guards
        self._starts: list[int] = []  # first bit of each segment
        self._lengths: list[int] = []  # tokens per segment
        self._width = 0  # bits used so far, guards included
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, text: str) -> None:
        tokens = tokenize(text)
        offset, n = self._width, len(tokens)
        local: dict[str, int] = {}
        for i, token in enumerate(tokens):
            local[token] = local.get(token, 0) | (1 << i)
        for token, bits in local.items():
            self._masks[token] = self._masks.get(token, 0) | (bits << offset)
        self._data_bits |= ((1 << n) - 1) << offset
        self._starts.append(offset)
        self._lengths.append(n)
        self._width = offset + n + 1  # one guard bit after the segment

    def lcs_lengths(self, text: str) -> np.ndarray:
        """Length of the longest common token subsequence of `text` with each pool entry."""
        if not self._lengths:
            return np.zeros(0, dtype=np.int64)
        data = self._data_bits
        v = data
        for token in tokenize(text):
            u = v & self._masks.get(token, 0)
            v = ((v + u) | (v - u)) & data  # the mask drops carries that reached a guard
        ones = _ones_per_segment(v, self._width, self._starts)
        return np.asarray(self._lengths, dtype=np.int64) - ones

    def scores(self, text: str) -> np.ndarray:
        """ROUGE-L F of `text` against each pool entry, in insertion order."""
        lcs = self.lcs_lengths(text).astype(np.float64)
        total = len(tokenize(text)) + np.asarray(self._lengths, dtype=np.float64)
        return np.divide(2 * lcs, total, out=np.zeros_like(lcs), where=total > 0)

    def max_score(self, text: str) -> float:
        """The highest ROUGE-L F against the pool; 0.0 for an empty pool."""
        scores = self.scores(text)
        return float(scores.max()) if scores.size else 0.0


def _ones_per_segment(value: int, width: int, starts: list[int]) -> np.ndarray:
    """Count the one bits of `value` between consecutive segment starts."""
    raw = np.frombuffer(value.to_bytes((width + 7) // 8, "little"), dtype=np.uint8)
    bits = np.unpackbits(raw, bitorder="little")[:width]
    return np.add.reduceat(bits.astype(np.int64), np.asarray(starts, dtype=np.intp))


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F of two texts (symmetric)."""
    return RougeLPool([b]).max_score(a)
