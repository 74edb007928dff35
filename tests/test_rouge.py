"""ROUGE-L over a pool matches the rouge-score package, pair by pair, and stays fast."""

import random
import time

import pytest

from generators.instruct.rouge import RougeLPool, rouge_l, tokenize

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

WORDS = "the a cat dog sat on mat is blue Red, 42 x-y über naïve don't write explain list".split()


def random_text(rng: random.Random, max_words: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, max_words)))


def test_tokenize_like_rouge_score():
    from rouge_score.tokenize import tokenize as reference

    for text in ["Hello, World!", "don't stop-me now", "über naïve café 42x", "  ", "A\tB\nC"]:
        assert tokenize(text) == reference(text, None)


def test_pool_scores_match_rouge_score_on_random_pairs():
    rng = random.Random(0)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pool_texts = [random_text(rng) for _ in range(200)]
    pool = RougeLPool(pool_texts)
    for _ in range(100):
        query = random_text(rng)
        expected = [scorer.score(text, query)["rougeL"].fmeasure for text in pool_texts]
        assert pool.scores(query) == pytest.approx(expected, abs=1e-12)


def test_long_texts_cross_machine_words():
    """Segments longer than 64 tokens exercise carries across machine words inside the big int."""
    rng = random.Random(1)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    texts = [random_text(rng, max_words=150) for _ in range(30)]
    pool = RougeLPool(texts)
    for query in texts[:10]:
        expected = [scorer.score(text, query)["rougeL"].fmeasure for text in texts]
        assert pool.scores(query) == pytest.approx(expected, abs=1e-12)


def test_pool_grows_and_pairs_are_symmetric():
    pool = RougeLPool()
    assert pool.max_score("anything at all") == 0.0
    pool.add("Write a poem about the sea")
    pool.add("")
    assert len(pool) == 2
    assert pool.scores("write a poem about the sea").tolist() == [1.0, 0.0]
    assert rouge_l("a b c d", "a c e") == rouge_l("a c e", "a b c d") == pytest.approx(2 * 2 / 7)


def test_a_query_against_a_large_pool_is_fast():
    rng = random.Random(2)
    pool = RougeLPool(random_text(rng, 20) for _ in range(10_000))
    start = time.perf_counter()
    for _ in range(20):
        pool.max_score(random_text(rng, 20))
    assert (time.perf_counter() - start) / 20 < 0.1  # a pure-Python DP takes seconds here
