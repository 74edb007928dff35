"""Semantic dedup: the SemDeDup rule on vectors, and the stage end to end with the offline MiniLM."""

from __future__ import annotations

import numpy as np

from filters.dedup.semantic import _close_to_earlier
from test_dedup_stages import run_stages


def test_a_vector_close_to_an_earlier_one_is_dropped_across_chunks():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2500, 32))
    vectors[1030] = vectors[1025] + 0.01  # same chunk of 1024
    vectors[2000] = vectors[10] + 0.01  # an earlier chunk
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.flatnonzero(_close_to_earlier(vectors.astype(np.float32), 0.9)).tolist() == [1030, 2000]


TEXTS = [
    ("The cat sat on the mat.", 0.2),
    ("Stock markets fell sharply on Monday.", 0.5),
    ("The cat sat on the mat!", 0.9),
    ("How do I bake sourdough bread at home?", 0.5),
    ("the cat sat on the mat", 0.1),
    ("Photosynthesis converts light into chemical energy.", 0.5),
    ("Stock markets fell sharply on Monday morning.", 0.5),
    ("A dog slept on the rug.", 0.5),
    ("", 0.5),
    ("The capital of France is Paris.", 0.5),
]


def test_semantic_dedup_keeps_the_preferred_of_each_close_group(ray_session, tmp_path):
    rows = [{"id": f"r{i}", "text": text, "score": score} for i, (text, score) in enumerate(TEXTS)]
    stage = {"kind": "semantic_dedup", "prefer_column": "score", "clusters": 2,
             "resources": {"num_cpus": 0.5, "batch_size": 4}}  # fmt: skip
    kept, manifest = run_stages(tmp_path, rows, stage)
    # The cats: the best score wins. The markets tie on score: the lower id wins.
    assert kept.column("id").to_pylist() == ["r1", "r2", "r3", "r5", "r7", "r8", "r9"]
    assert manifest["drops"] == {"semantic_dedup": {"semantic_duplicate": 3}}
    assert manifest["stages"][1]["counters"]["clusters"] == 2
