"""perplexity: the embedded SmolLM2 finds fluent English likelier than the same words shuffled."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest

from filters.quality.perplexity import Perplexity, PerplexityConfig
from synth.stage import DROP_REASON, StageContext

FLUENT = [
    ("The Danube is the second-longest river in Europe. It flows east through ten countries before it "
     "empties into the Black Sea."),
    ("Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make "
     "sugar and release oxygen."),
    "To make a cup of tea, boil water, pour it over the tea leaves and let it steep for three minutes.",
]


def shuffled(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def stage():
    ctx = StageContext(run_name="t", run_id="r", seed=0, stage_name="perplexity", stage_index=1,
                       output_dir=Path("."))  # fmt: skip
    stage = Perplexity(PerplexityConfig(threads=1, max_perplexity=500, min_perplexity=3), ctx)
    stage.setup()
    return stage


def test_fluent_text_ranks_below_shuffled_words(stage):
    salad = [shuffled(text, seed) for seed, text in enumerate(FLUENT)]
    out = stage.process(pa.table({"output": FLUENT + salad + ["", "I am a helpful assistant. " * 20]}))
    ppl = out["perplexity"].to_pylist()
    fluent, shuffled_ppl = ppl[:3], ppl[3:6]
    assert max(fluent) < min(shuffled_ppl)
    assert max(fluent) < 100 < min(shuffled_ppl)
    assert ppl[6] is None
    assert out[DROP_REASON].to_pylist() == [None] * 3 + ["perplexity_high"] * 3 + ["empty_text", "perplexity_low"]


def test_a_text_scores_the_same_alone_and_in_a_batch(stage):
    alone = stage.perplexities([FLUENT[0]])[0]
    batched = stage.perplexities([FLUENT[2], FLUENT[0], FLUENT[1]])[1]
    assert alone == pytest.approx(batched, rel=1e-3)
