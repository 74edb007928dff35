"""The stage protocol: a stage holds logic and declares a shape; the runner alone schedules it on Ray.

Shapes, all registered by name (see `synth.registry`):

- `MapStage.process(batch) -> batch`: per-unit work on `pyarrow.Table` batches of the stage before.
  Stateful stages (models) set `stateful = True` and run in a Ray actor pool; the others in tasks.
- `FilterStage`: a `MapStage` that scores a batch and returns a drop reason per row (None keeps
  it). It never deletes: the runner counts drops per stage and reason and removes them.
- `TableStage.transform(table) -> table`: a whole-table job, run as ONE task: every kept row of the
  stage before (None for a source) in, this stage's rows out. For work that truly needs every row
  at once: a bootstrap loop, fitting a model, a report.
- `BlockStage`: a seeded block plan. `plan()` lists small blocks (each with its own seed) on the
  driver; `make(block) -> table` builds each block's rows in tasks, or in an actor pool when
  `stateful`. The rows of the stage before are not read (a sampler replaces them).
- `FitSampleStage`: a `BlockStage` whose blocks sample a model that `fit(table)` learns first,
  in one task (tabular synthesizers, diffusion).
- `GlobalStage.apply(ds) -> ray.data.Dataset`: the one declared escape to Ray itself, for the
  dedup shuffles.
- `TrainStage.train(data_dir) -> model folder`: learns from the finished dataset. It comes after
  every record stage; the runner runs it once `OUTPUT/data` is written (a rerun of a finished
  dataset runs only it). It writes a model, no records (the LLM training, `kind: train`).

A stage with `source = True` makes records from nothing and must come first. `setup()` runs on the
worker before the stage's first input and `teardown()` beside it after its last. Any stage may mark
rows for dropping by setting the `_drop_reason` column; the runner counts them. Execution (Ray
options from `resources`, materialisation, resume) lives in `synth.runner`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from synth.inputs import check_llm_names, config_paths
from synth.spec import LLMSpec, StageConfig

if TYPE_CHECKING:
    import ray.data

    from synth.llm import LLMClient

DROP_REASON = "_drop_reason"
"""Column a stage sets to a reason string to drop a row; null keeps it."""


@dataclass(frozen=True)
class StageContext:
    """What a stage knows of its run. Picklable: it travels to Ray workers."""

    run_name: str
    run_id: str
    seed: int
    stage_name: str
    stage_index: int
    output_dir: Path
    llm_specs: dict[str, LLMSpec] = field(default_factory=dict)
    stats_actor: Any = None
    attempt: str = ""
    """This attempt of the run (one `synth generate` or Airflow task); LLM cache entries record it."""

    @property
    def stage_seed(self) -> int:
        """A seed for this stage alone, derived from the run seed and the stage's name."""
        return derive_seed(self.seed, self.stage_name)

    @property
    def cache_dir(self) -> Path:
        return self.output_dir / "_cache"

    def llm(self, name: str = "default") -> LLMClient:
        """A client for the named backend, counted under this stage, with the run's cache."""
        from synth.llm import make_client
        from synth.llm.cache import Payer

        if name not in self.llm_specs:
            known = ", ".join(sorted(self.llm_specs)) or "none"
            raise KeyError(f"llm {name!r} is not defined in the spec's `llm:` section (defined: {known})")
        payer = Payer(run_id=self.run_id, stage=self.stage_name, attempt=self.attempt)
        return make_client(self.llm_specs[name], cache_dir=self.cache_dir / "llm", stats=self.stat_sink(), payer=payer)

    def stat_sink(self):
        """A callable `(counters: dict[str, float]) -> None` that adds to this stage's stats."""
        actor, stage = self.stats_actor, self.stage_name
        if actor is None:
            return lambda counters: None
        import ray  # only a run with a stats actor has Ray up

        # Wait for the add: a worker's call still in flight when its task returns would miss the
        # runner's read of the stage's counters.
        return lambda counters: ray.get(actor.add.remote(stage, counters))

    def count(self, **counters: float) -> None:
        self.stat_sink()(counters)


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed from a parent seed and any labels (stage name, block index...)."""
    text = "/".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


class Stage:
    """Base of all stages. Subclasses set `kind`, `Config` and `description`."""

    kind: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    description: ClassVar[str] = ""
    source: ClassVar[bool] = False
    """True for a stage that makes records from nothing (or from files): it must come first."""

    def __init__(self, config: StageConfig, ctx: StageContext):
        self.config = config
        self.ctx = ctx

    def setup(self) -> None:
        """Runs on the worker, once, before the stage's first unit, block or table."""

    def teardown(self) -> None:
        """Runs on the worker after the stage's last input there: close pools, free models."""

    def worker_env(self) -> dict[str, str]:
        """Environment variables the stage's Ray workers need (the runner puts them in runtime_env)."""
        return {}

    def check_inputs(self) -> None:
        """Check, on the driver before Ray starts, everything this stage will read or call.

        Raise a SynthError naming the field or file and what was expected. The default checks
        that the `llm` names the config uses are defined in the spec; a stage that reads a file
        (seed tasks, a table) extends it by parsing that file here, so a bad line fails in a
        second rather than after Ray has started."""
        check_llm_names(self.ctx.stage_name, self.config, self.ctx.llm_specs)

    def input_files(self) -> list[Path]:
        """Files and folders whose content decides this stage's records: their content hashes
        enter the stage's fingerprint, so editing one in place reruns the stage on resume.
        The default: every path in the config."""
        return config_paths(self.config)


class MapStage(Stage):
    stateful: ClassVar[bool] = False
    """True when setup() loads something costly (a model): the stage then runs in an actor pool."""

    def process(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError


class FilterStage(MapStage):
    """Adds score columns and a drop reason per row; never removes rows itself."""

    def score(self, batch: pa.Table) -> tuple[dict[str, pa.Array | list], list[str | None]]:
        """Return (score columns to add, one drop reason or None per row)."""
        raise NotImplementedError

    def process(self, batch: pa.Table) -> pa.Table:
        columns, reasons = self.score(batch)
        for name, values in columns.items():
            batch = set_column(batch, name, values)
        return mark_dropped(batch, reasons)


class TableStage(Stage):
    """A whole-table job: one task, the whole kept table of the stage before in, a table out."""

    on_driver: ClassVar[bool] = False
    """True for a source that reads files where the driver runs (a cluster's workers may not see
    them): the runner runs the job in the driver's process instead of a Ray task."""

    def transform(self, table: pa.Table | None) -> pa.Table:
        """This stage's rows from every kept row of the stage before (None when it is a source)."""
        raise NotImplementedError


class BlockStage(Stage):
    """A seeded block plan: blocks planned on the driver, each made by a worker into its own part."""

    stateful: ClassVar[bool] = False
    """True when setup() loads something costly (a model): blocks are then made in an actor pool."""

    def plan(self) -> list[dict[str, Any]]:
        """The blocks to make, in output order: small picklable dicts, each with what decides its rows."""
        raise NotImplementedError

    def make(self, block: dict[str, Any]) -> pa.Table:
        """The rows of one block."""
        raise NotImplementedError

    def finish(self, parts: list[Path]) -> None:
        """On the driver once every block's part is written (`parts[i]` from block i): a step that
        needs all blocks, reading little (keys, counts). The default does nothing."""


class FitSampleStage(BlockStage):
    """Fit once, then sample in blocks: `fit` runs as one task before `plan`, `make` samples."""

    def fit(self, table: pa.Table | None) -> None:
        """Learn from every kept row of the stage before (None for a source, which reads its own
        data) and save the model where `plan` and `make` find it (under the output folder)."""
        raise NotImplementedError


class TrainStage(Stage):
    """Trains on the finished dataset; its config is a `synth.spec.TrainStageConfig`."""

    def train(self, data_dir: Path, *, overwrite: bool = False, ray_address: str | None = None) -> Path:
        """Train on `data_dir` (OUTPUT/data, read as a stream); returns the model folder. A rerun
        resumes from the last checkpoint; `overwrite` replaces a run of another config."""
        raise NotImplementedError


class GlobalStage(Stage):
    """Whole-dataset steps on Ray itself: the one escape from the shapes above, for dedup shuffles."""

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        raise NotImplementedError


def set_column(table: pa.Table, name: str, values: pa.Array | list) -> pa.Table:
    """Add or replace a column."""
    index = table.schema.get_field_index(name)
    array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    if index >= 0:
        return table.set_column(index, name, array)
    return table.append_column(name, array)


def mark_dropped(table: pa.Table, reasons: list[str | None]) -> pa.Table:
    """Set drop reasons, keeping a reason an earlier step of the same batch already set."""
    if len(reasons) != table.num_rows:
        raise ValueError(f"got {len(reasons)} drop reasons for {table.num_rows} rows")
    if DROP_REASON in table.column_names:
        previous = table.column(DROP_REASON).to_pylist()
        reasons = [p if p is not None else r for p, r in zip(previous, reasons)]
    return set_column(table, DROP_REASON, pa.array(reasons, type=pa.string()))
