"""Small real stages for testing the runner without models: numbers, sentences, a parity filter,
a doubler, a global keep-largest, and one stage of each shape that says where it ran.

They are shipped to Ray workers by value, so the workers need not import this test module.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray.cloudpickle
import ray.data

from synth.registry import register
from synth.spec import StageConfig
from synth.stage import BlockStage, FilterStage, FitSampleStage, GlobalStage, MapStage, TableStage, derive_seed

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@register
class Numbers(TableStage):
    """Rows 0..count-1 with their square."""

    kind = "test_numbers"
    source = True

    class Config(StageConfig):
        kind: Literal["test_numbers"] = "test_numbers"
        count: int = 100

    def transform(self, table: None) -> pa.Table:
        n = self.config.count
        return pa.table({"n": pa.array(range(n), pa.int64()), "square": pa.array([i * i for i in range(n)], pa.int64())})


@register
class Sentences(TableStage):
    """`count` short English sentences in a `text` column: data a model can pretrain on.

    With `duplicates`, each sentence is followed by an exact copy and a near copy (one word added),
    for dedup stages to find.
    """

    kind = "test_sentences"
    source = True

    class Config(StageConfig):
        kind: Literal["test_sentences"] = "test_sentences"
        count: int = 40
        duplicates: bool = False

    def transform(self, table: None) -> pa.Table:
        animals = ["cat", "dog", "bird", "fish", "horse"]
        texts = [f"The {animals[i % 5]} number {i} sleeps in the sun all day long." for i in range(self.config.count)]
        if self.config.duplicates:
            texts = [t for text in texts for t in (text, text, text.replace(" long.", " long today."))]
        return pa.table({"id": [f"s{i:03d}" for i in range(len(texts))], "text": texts})


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


@register
class WhereItRuns(MapStage):
    """Adds the pid of setup() and of process(); teardown() leaves its pid in OUTPUT/_teardown/."""

    kind = "test_where_it_runs"

    class Config(StageConfig):
        kind: Literal["test_where_it_runs"] = "test_where_it_runs"

    def setup(self) -> None:
        self.setup_pid = os.getpid()

    def process(self, batch):
        n = batch.num_rows
        return (batch.append_column("setup_pid", pa.array([self.setup_pid] * n, pa.int64()))
                .append_column("process_pid", pa.array([os.getpid()] * n, pa.int64())))

    def teardown(self) -> None:
        folder = self.ctx.output_dir / "_teardown"
        folder.mkdir(exist_ok=True)
        (folder / f"{os.getpid()}-{self.setup_pid}").touch()


@register
class SeededBlocks(BlockStage):
    """`blocks` blocks of `rows` random numbers, each from its own seed; made out of order on purpose."""

    kind = "test_seeded_blocks"
    source = True
    stateful = True

    class Config(StageConfig):
        kind: Literal["test_seeded_blocks"] = "test_seeded_blocks"
        blocks: int = 6
        rows: int = 3

    def plan(self) -> list[dict]:
        return [{"block": b, "seed": derive_seed(self.ctx.stage_seed, b)} for b in range(self.config.blocks)]

    def make(self, block: dict) -> pa.Table:
        import random
        import time

        rng = random.Random(block["seed"])
        time.sleep(0.2 * ((self.config.blocks - block["block"]) % 3))  # later blocks tend to finish first
        return pa.table({"block": [block["block"]] * self.config.rows,
                         "value": [rng.random() for _ in range(self.config.rows)]})


@register
class MeanPlusBlocks(FitSampleStage):
    """Fits the mean of `n` (saved beside the run), then makes `blocks` rows of mean + block."""

    kind = "test_mean_plus_blocks"

    class Config(StageConfig):
        kind: Literal["test_mean_plus_blocks"] = "test_mean_plus_blocks"
        blocks: int = 4

    def fit(self, table: pa.Table) -> None:
        path = self.ctx.output_dir / "_models" / self.ctx.stage_name / "fit.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"mean": pc.mean(table.column("n")).as_py(), "pid": os.getpid()}))

    def plan(self) -> list[dict]:
        fit = json.loads((self.ctx.output_dir / "_models" / self.ctx.stage_name / "fit.json").read_text())
        return [{"value": fit["mean"] + b, "fit_pid": fit["pid"]} for b in range(self.config.blocks)]

    def make(self, block: dict) -> pa.Table:
        return pa.table({"value": [block["value"]], "fit_pid": [block["fit_pid"]]})
