"""Small real stages for testing the runner without models: numbers, sentences, a parity filter,
a doubler, a global keep-largest.

They are shipped to Ray workers by value, so the workers need not import this test module.
"""

from __future__ import annotations

import sys
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray.cloudpickle
import ray.data

from synth.registry import register
from synth.spec import StageConfig
from synth.stage import FilterStage, GlobalStage, MapStage, SourceStage

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@register
class Numbers(SourceStage):
    """Rows 0..count-1 with their square."""

    kind = "test_numbers"

    class Config(StageConfig):
        kind: Literal["test_numbers"] = "test_numbers"
        count: int = 100

    def read(self) -> ray.data.Dataset:
        n = self.config.count
        return ray.data.from_arrow(pa.table({"n": pa.array(range(n), pa.int64()),
                                             "square": pa.array([i * i for i in range(n)], pa.int64())}))


@register
class Sentences(SourceStage):
    """`count` short English sentences in a `text` column: data a model can pretrain on.

    With `duplicates`, each sentence is followed by an exact copy and a near copy (one word added),
    for dedup stages to find.
    """

    kind = "test_sentences"

    class Config(StageConfig):
        kind: Literal["test_sentences"] = "test_sentences"
        count: int = 40
        duplicates: bool = False

    def read(self) -> ray.data.Dataset:
        animals = ["cat", "dog", "bird", "fish", "horse"]
        texts = [f"The {animals[i % 5]} number {i} sleeps in the sun all day long." for i in range(self.config.count)]
        if self.config.duplicates:
            texts = [t for text in texts for t in (text, text, text.replace(" long.", " long today."))]
        return ray.data.from_arrow(pa.table({"id": [f"s{i:03d}" for i in range(len(texts))], "text": texts}))


@register
class DropMultiples(FilterStage):
    """Drops multiples of `of`, with the reason `multiple_of_<of>`."""

    kind = "test_drop_multiples"

    class Config(StageConfig):
        kind: Literal["test_drop_multiples"] = "test_drop_multiples"
        of: int = 2

    def score(self, batch):
        mods = batch.column("n").to_pylist()
        reasons = [f"multiple_of_{self.config.of}" if m % self.config.of == 0 else None for m in mods]
        return {"n_mod": [m % self.config.of for m in mods]}, reasons


@register
class SlowDoubler(MapStage):
    """Adds `double`; sleeps per batch so a test can kill a run mid-stage. Stateful: an actor pool."""

    kind = "test_slow_doubler"
    stateful = True

    class Config(StageConfig):
        kind: Literal["test_slow_doubler"] = "test_slow_doubler"
        sleep_s: float = 0.0
        jitter_s: float = 0.0  # extra random sleep, so batches finish out of order

    def setup(self) -> None:
        self.calls = 0

    def process(self, batch):
        import random
        import time

        time.sleep(self.config.sleep_s + random.uniform(0, self.config.jitter_s))
        self.calls += 1
        self.ctx.count(batches=1)
        return batch.append_column("double", pc.multiply(batch.column("n"), 2))


@register
class KeepLargest(GlobalStage):
    """Keeps the `top` largest n: a whole-dataset step."""

    kind = "test_keep_largest"

    class Config(StageConfig):
        kind: Literal["test_keep_largest"] = "test_keep_largest"
        top: int = 5

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        report = self.ctx.output_dir / "_reports" / self.ctx.stage_name
        report.mkdir(parents=True, exist_ok=True)
        (report / "report.md").write_text(f"Kept the top {self.config.top}.\n\n![plot](plot.png)\n")
        return ds.sort("n", descending=True).limit(self.config.top)
