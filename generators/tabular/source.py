"""`tabular_synth`: fit a synthesizer on a real table in one task, then sample in parallel blocks.

A fit-then-sample stage (`synth.stage.FitSampleStage`), in order:

1. **Real table.** It reads the whole table (a tabular fit needs every row, so this stage
   gathers it on purpose), infers the metadata, checks every column the spec names, draws the
   holdout split from the stage seed *before* fitting, and checks the constraints against the
   training split. The fit only ever sees the training split.
2. **Fit, in ONE task** (`fit`) with the stage's `resources` (num_cpus / num_gpus). The model is
   written atomically to `OUTPUT/_models/<stage>/` with `fit.json` (metadata, holdout rows, fit
   fingerprint). A resumed run whose fit fingerprint matches loads it instead of refitting; the
   fingerprint covers the table's content, metadata, synthesizer, split and constraints, not
   `num_rows` or `conditions`.
3. **Sample, in parallel blocks** (`plan`, `make`): one task per `block_rows` rows, seeded with
   `derive_seed(stage_seed, "block", b)`, so the same spec and seed give the same rows however
   many workers run them. A block fixes the `conditions`, rejects rows that break a constraint
   (`generators.tabular.constraints`) and near copies of training rows (`generators.tabular.guard`,
   `privacy_guard`), fills generated columns with fresh values and restores the
   user's types.
4. **Uniqueness across blocks** (`finish`): each block leaves the 64-bit keys of its `unique`
   columns beside the model; the driver reads only those and marks a later block's repeat with
   `_drop_reason = "breaks_unique(...)"` in its part, so the runner counts it.
5. `OUTPUT/_models/<stage>/sampling.json` and the stage's counters record rows sampled and rows
   rejected per constraint and by the privacy guard, with the two rates apart: the constraints'
   share of the rows they checked (what the guard passed) and the guard's share of all sampled.

Record columns (kind "tabular"), then the user's columns in their order and Arrow types:

| column      | type   | meaning                                                             |
|-------------|--------|---------------------------------------------------------------------|
| `id`        | string | 64-bit hash (hex) of the row's values: same row, same id            |
| `kind`      | string | always "tabular"                                                    |
| `generator` | string | "tabular_synth"                                                     |
| `run_id`    | string | the run that made it                                                |
| `seed`      | int64  | the run's seed                                                      |
| `model`     | string | synthesizer and fit fingerprint, e.g. "tabddpm-1a2b3c4d5e6f"        |

A user column named like a record column is an error; `data.rename` resolves it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from generators.tabular.constraints import Checker, Constraint, check_constraints, named_columns, row_keys, sample_valid
from generators.tabular.data import (
    MetadataOverrides, TableMeta, TableSource, check_columns, check_learnable, check_mixed_columns, infer_metadata,
    load_table, restore_types, split_holdout, to_frame,
)  # fmt: skip
from generators.tabular.guard import LABEL as GUARD_LABEL
from generators.tabular.guard import NearCopyGuard
from generators.tabular.synthesizers import SynthesizerParams, load_synthesizer, make_synthesizer, save_synthesizer
from generators.tabular.tabddpm import TabDDPMParams
from synth import io
from synth.errors import SpecError
from synth.records import RECORD_COLUMNS
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import DROP_REASON, FitSampleStage, StageContext, derive_seed

log = logging.getLogger(__name__)

Scalar = bool | int | float | str


class TabularSynthConfig(StageConfig):
    kind: Literal["tabular_synth"] = "tabular_synth"
    data: TableSource
    metadata: MetadataOverrides = MetadataOverrides()
    synthesizer: SynthesizerParams = Field(
        default_factory=TabDDPMParams, description="model: tabddpm, ctgan, tvae or gaussian_copula, and its settings"
    )
    holdout_fraction: float = Field(0.2, ge=0, lt=1, description="Real rows kept from the fit, for the report")
    num_rows: int = Field(1000, ge=1, description="Synthetic rows to make")
    block_rows: int = Field(5000, ge=1, description="Rows per parallel sampling task")
    conditions: dict[str, Scalar] = Field(default_factory=dict, description="Column -> value fixed in every row")
    extrapolate_conditions: bool = Field(
        False, description="Allow a numerical condition outside the training rows' range (the model extrapolates)"
    )
    constraints: list[Constraint] = Field(default_factory=list)
    max_sampling_rounds: int = Field(20, ge=1, description="Rejection rounds per block before giving up")
    privacy_guard: float | None = Field(
        0.05, ge=0, lt=1,
        description="Reject sampled rows that copy a training row or sit nearer one than this quantile of the "
        "training rows' distances to each other (generators/tabular/guard.py); 0: exact copies only; null: no guard",
    )

    @model_validator(mode="after")
    def _columns_exist(self) -> TabularSynthConfig:
        """Every column the spec names is in the table (read cheaply: header or schema only)."""
        try:
            known = self.data.column_names()
            check_columns(self.named_columns(), known, self.data.describe())
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        clash = [c for c in known if c in RECORD_COLUMNS]
        if clash:
            raise ValueError(f"{self.data.describe()}: column {clash[0]!r} has the name of a record column "
                             f"({', '.join(RECORD_COLUMNS)}); rename it with data.rename")  # fmt: skip
        return self

    def named_columns(self) -> dict[str, str]:
        conditions = {f"conditions.{c}": c for c in self.conditions}
        return self.overrides().named_columns() | conditions | named_columns(self.constraints)

    def overrides(self) -> MetadataOverrides:
        """The spec's metadata; a scikit-learn set's target is `target` unless the spec says otherwise."""
        if self.data.sklearn and self.metadata.target is None:
            return self.metadata.model_copy(update={"target": "target"})
        return self.metadata

    def fit_fingerprint(self, seed: int) -> str:
        """What decides the fitted model: the table's content (not its path), the fit settings, the seed."""
        fields = {"data": {"sklearn", "format", "rename"}, "metadata": True, "synthesizer": True,
                  "holdout_fraction": True, "constraints": True}  # fmt: skip
        config = self.model_dump(mode="json", include=fields)
        payload = {"config": config, "table": self.data.fingerprint(), "seed": seed}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- the real table


@dataclass
class Prepared:
    """The real table split and described: what the fit and the report both start from."""

    table: pa.Table
    meta: TableMeta
    train: pd.DataFrame
    holdout: pd.DataFrame
    holdout_rows: np.ndarray
    conditions: dict[str, Any]


def prepare(config: TabularSynthConfig, seed: int) -> Prepared:
    """Read, describe and split the real table; refuse what cannot be learned or asked of it (each a
    one-line SpecError naming the table, the column and what was expected)."""
    where = config.data.describe()
    table = load_table(config.data)
    check_mixed_columns(table, config.metadata.columns, where)
    frame = to_frame(table)
    meta = infer_metadata(frame, config.overrides(), where)
    _check_generated_types(meta, table.schema, where)
    train_rows, holdout_rows = split_holdout(len(frame), config.holdout_fraction, derive_seed(seed, "holdout"), where)
    train = frame.iloc[train_rows].reset_index(drop=True)
    check_learnable(train, meta, config.holdout_fraction, where)
    check_constraints(config.constraints, meta, train, where)
    conditions = typed_conditions(config.conditions, meta, train, where, config.extrapolate_conditions)
    return Prepared(table, meta, train, frame.iloc[holdout_rows].reset_index(drop=True), holdout_rows, conditions)


def check_before_run(config: TabularSynthConfig, stage_seed: int) -> None:
    """Every refusal `read()` would make, without Ray: for a check before a run starts. It reads the
    whole table (as the stage does) and fits nothing."""
    prepare(config, stage_seed)


def _check_generated_types(meta: TableMeta, schema: pa.Schema, where: str) -> None:
    for column in meta.generated:
        type_ = schema.field(column).type
        if not (pa.types.is_integer(type_) or pa.types.is_string(type_) or pa.types.is_large_string(type_)):
            raise SpecError(f"{where}: column {column!r} ({type_}) would get fresh values (role id, primary "
                            "key or never_copy), which needs an integer or string column; "
                            "set its role in metadata.columns")  # fmt: skip


def typed_conditions(conditions: dict[str, Any], meta: TableMeta, train: pd.DataFrame, where: str,
                     extrapolate: bool = False) -> dict[str, Any]:  # fmt: skip
    """Condition values in their column's type; a categorical value must occur in the training split,
    a numerical one must lie within its range unless `extrapolate`."""
    typed = {}
    for column, value in conditions.items():
        if column not in meta.learned:
            raise SpecError(f"{where}: conditions.{column}: the column gets fresh values, so it cannot be fixed")
        values = train[column]
        try:
            typed[column] = _typed(value, values)
        except (TypeError, ValueError):
            raise SpecError(f"{where}: conditions.{column}: {value!r} does not fit the column's type "
                            f"{values.dtype}") from None  # fmt: skip
        role = meta.columns[column]
        if role in ("categorical", "boolean") and not (values == typed[column]).any():
            seen = ", ".join(map(repr, sorted(values.dropna().unique().tolist(), key=str)[:20]))
            raise SpecError(f"{where}: conditions.{column}: {value!r} never occurs in the training rows "
                            f"(they have: {seen})")  # fmt: skip
        if role in ("numerical", "datetime") and not extrapolate:
            _check_within_range(column, typed[column], values, where)
    return typed


def _check_within_range(column: str, value: Any, values: pd.Series, where: str) -> None:
    low, high = values.min(), values.max()
    point = pd.Timestamp(value) if pd.api.types.is_datetime64_any_dtype(values) else value
    if pd.isna(low) or not low <= point <= high:
        raise SpecError(f"{where}: conditions.{column}: {value!r} is outside the training rows' range "
                        f"[{low}, {high}]; expected a value within it, or set extrapolate_conditions: true")  # fmt: skip


def _typed(value: Any, column: pd.Series) -> Any:
    """YAML's 1 for a float column is 1.0; for an integer column, 1.0 is 1."""
    if pd.api.types.is_bool_dtype(column.dtype):
        if not isinstance(value, bool):
            raise TypeError(value)
        return value
    if pd.api.types.is_integer_dtype(column.dtype):
        if isinstance(value, str) or float(value) != int(value):
            raise ValueError(value)
        return int(value)
    if pd.api.types.is_float_dtype(column.dtype):
        return float(value)
    return value


# ---------------------------------------------------------------- fitting, in one task


def fit_and_save(params, train: pd.DataFrame, meta: TableMeta, constraints: list, seed: int, folder: Path,
                 threads: int) -> float:
    """Fit on the whole training split at once, save to `folder`, return the seconds the fit took."""
    import torch

    torch.set_num_threads(threads)
    synthesizer = make_synthesizer(params)
    started = time.perf_counter()
    synthesizer.fit(train, meta, constraints, seed)
    seconds = time.perf_counter() - started
    save_synthesizer(synthesizer, folder)
    return seconds


# ---------------------------------------------------------------- sampling, in parallel blocks


@dataclass(frozen=True)
class BlockJob:
    """Everything one sampling task needs; the fitted model is read from `folder`."""

    folder: Path
    block: int
    rows: int
    first_row: int
    seed: int
    conditions: dict[str, Any]
    checker: Checker
    guard: NearCopyGuard | None
    max_rounds: int
    meta: TableMeta
    schema: pa.Schema
    record: dict[str, Any]
    threads: int


def sample_block(job: BlockJob) -> tuple[pa.Table, dict[str, int], list[np.ndarray]]:
    """One block's records, its sampling counts, and the keys of each `unique` constraint."""
    import torch

    torch.set_num_threads(job.threads)
    synthesizer = load_synthesizer(job.folder / "synthesizer")
    learned = pa.schema([job.schema.field(c) for c in job.meta.learned])
    finish = lambda frame: to_frame(restore_types(frame, learned))  # noqa: E731 - the user's types, then checks
    frame, stats = sample_valid(synthesizer, job.rows, job.seed, job.conditions, job.checker, job.max_rounds, finish,
                                job.guard)  # fmt: skip
    frame = frame.assign(**fresh_values(job.meta, job.schema, job.rows, job.first_row, job.seed))
    table = records(restore_types(frame, job.schema), job.record)
    keys = [row_keys(frame, list(c.columns)) for c in job.checker.constraints if c.type == "unique"]
    return table, dict(stats), keys


def fresh_values(meta: TableMeta, schema: pa.Schema, rows: int, first_row: int, seed: int) -> dict[str, Any]:
    """Generated columns: the primary key numbers rows across blocks; others draw random values."""
    rng = np.random.default_rng(derive_seed(seed, "fresh"))
    out: dict[str, Any] = {}
    for column in meta.generated:
        is_int = pa.types.is_integer(schema.field(column).type)
        if column == meta.primary_key:
            numbers = np.arange(first_row, first_row + rows, dtype=np.int64)
            out[column] = numbers if is_int else [f"row-{n}" for n in numbers]
        elif is_int:
            out[column] = rng.integers(0, 2**31 - 1, size=rows, dtype=np.int64)
        else:
            out[column] = [f"{v:016x}" for v in rng.integers(0, 2**63 - 1, size=rows, dtype=np.int64)]
    return out


def records(user: pa.Table, record: dict[str, Any]) -> pa.Table:
    """Record columns, then the user's; `id` hashes the row's values."""
    hashes = pd.util.hash_pandas_object(to_frame(user), index=False).to_numpy()
    columns = {
        "id": pa.array([f"{h:016x}" for h in hashes], pa.string()),
        "kind": pa.array(["tabular"] * user.num_rows, pa.string()),
        **{k: pa.array([v] * user.num_rows, pa.int64() if k == "seed" else pa.string()) for k, v in record.items()},
    }
    table = pa.table(columns)
    for field in user.schema:
        table = table.append_column(field, user.column(field.name))
    return table.append_column(DROP_REASON, pa.nulls(user.num_rows, pa.string()))


def mark_rows(table: pa.Table, reasons: dict[int, str]) -> pa.Table:
    """Set `_drop_reason` of the given rows."""
    column = table.column(DROP_REASON).to_pylist()
    for row, reason in reasons.items():
        column[row] = reason
    return table.set_column(table.schema.get_field_index(DROP_REASON), DROP_REASON, pa.array(column, pa.string()))


def cross_block_repeats(keys_per_block: list[list[np.ndarray]], labels: list[str]) -> dict[int, dict[int, str]]:
    """{block: {row: reason}} for rows whose `unique` key an earlier block already holds."""
    seen: list[set[int]] = [set() for _ in labels]
    marked: dict[int, dict[int, str]] = {}
    for block, keys in enumerate(keys_per_block):
        reasons: dict[int, str] = {}
        for i, label in enumerate(labels):
            for row in np.flatnonzero(np.isin(keys[i], list(seen[i]))):
                reasons.setdefault(int(row), f"breaks_{label}")
            seen[i].update(keys[i].tolist())
        if reasons:
            marked[block] = reasons
    return marked


# ---------------------------------------------------------------- the stage


@register
class TabularSynth(FitSampleStage):
    kind = "tabular_synth"
    Config = TabularSynthConfig
    description = "Fit CTGAN, TVAE, GaussianCopula or TabDDPM on a real table; sample with conditions and constraints"
    source = True

    def check_inputs(self) -> None:
        super().check_inputs()
        check_before_run(self.config, self.ctx.stage_seed)  # the table, metadata, constraints

    def fit(self, table: None) -> None:
        """Fit (or keep an earlier run's fit of the same fingerprint) into the model folder."""
        cfg, ctx = self.config, self.ctx
        log.info("tabular_synth: reading the whole table %s: a tabular fit needs every row", cfg.data.describe())
        prepared = prepare(cfg, ctx.stage_seed)
        folder = model_folder(ctx)
        fingerprint = cfg.fit_fingerprint(ctx.stage_seed)
        fit_file = folder / "fit.json"
        if fit_file.exists() and io.read_json(fit_file).get("fingerprint") == fingerprint:
            log.info("tabular_synth: reusing the %s model fitted by an earlier run (%s)", cfg.synthesizer.model, folder)
            return
        log.info("tabular_synth: fitting %s on %d training rows; %d real rows are held out", cfg.synthesizer.model,
                 len(prepared.train), len(prepared.holdout))  # fmt: skip
        io.remove_temp_siblings(folder)
        tmp = io.temp_sibling(folder)
        seconds = fit_and_save(cfg.synthesizer, prepared.train, prepared.meta, cfg.constraints,
                               derive_seed(ctx.stage_seed, "fit"), tmp / "synthesizer", self._threads())  # fmt: skip
        io.write_json_atomic(tmp / "fit.json", {
            "fingerprint": fingerprint, "model": cfg.synthesizer.model, "data": cfg.data.model_dump(mode="json"),
            "metadata": prepared.meta.model_dump(mode="json"), "train_rows": len(prepared.train),
            "holdout_rows": prepared.holdout_rows.tolist(), "fit_seconds": round(seconds, 3),
        })  # fmt: skip
        io.commit_dir(tmp, folder)
        log.info("tabular_synth: fitted %s in %.1f s", cfg.synthesizer.model, seconds)

    def plan(self) -> list[dict]:
        cfg, ctx = self.config, self.ctx
        prepared = prepare(cfg, ctx.stage_seed)
        folder = model_folder(ctx)
        shutil.rmtree(_keys_folder(folder), ignore_errors=True)  # an earlier attempt's
        checker = Checker(cfg.constraints, prepared.train)
        guard = None if cfg.privacy_guard is None else NearCopyGuard(prepared.train, prepared.meta, cfg.privacy_guard)
        model = f"{cfg.synthesizer.model}-{cfg.fit_fingerprint(ctx.stage_seed)[:12]}"
        jobs = self._jobs(folder, prepared, checker, guard, model)
        log.info("tabular_synth: sampling %d rows in %d parallel blocks", cfg.num_rows, len(jobs))
        return [{"job": job} for job in jobs]

    def make(self, block: dict) -> pa.Table:
        """One block's rows; its sampling counts and unique keys go beside the model for `finish`."""
        job: BlockJob = block["job"]
        table, stats, keys = sample_block(job)
        folder = _keys_folder(job.folder)
        folder.mkdir(parents=True, exist_ok=True)
        io.write_json_atomic(folder / f"{job.block:06d}.json", {"stats": stats, "keys": [k.tolist() for k in keys]})
        return table

    def finish(self, parts: list[Path]) -> None:
        """Mark repeats of `unique` keys across blocks; record what sampling did."""
        folder = model_folder(self.ctx)
        blocks = [io.read_json(f) for f in sorted(_keys_folder(folder).glob("*.json"))]
        labels = [c.label for c in self.config.constraints if c.type == "unique"]
        keys = [[np.asarray(k, dtype=np.uint64) for k in b["keys"]] for b in blocks]
        for index, reasons in (cross_block_repeats(keys, labels) if labels else {}).items():
            pq.write_table(mark_rows(pq.read_table(parts[index]), reasons), parts[index])
        self._record_sampling(folder, [b["stats"] for b in blocks])
        shutil.rmtree(_keys_folder(folder), ignore_errors=True)

    def _threads(self) -> int:
        return max(1, int(self.config.resources.num_cpus))

    def _jobs(self, folder: Path, prepared: Prepared, checker: Checker, guard: NearCopyGuard | None,
              model: str) -> list[BlockJob]:  # fmt: skip
        cfg, ctx = self.config, self.ctx
        record = {"generator": self.kind, "run_id": ctx.run_id, "seed": ctx.seed, "model": model}
        starts = range(0, cfg.num_rows, cfg.block_rows)
        return [
            BlockJob(
                folder=folder,
                block=b,
                rows=min(cfg.block_rows, cfg.num_rows - start),
                first_row=start,
                seed=derive_seed(ctx.stage_seed, "block", b),
                conditions=prepared.conditions,
                checker=checker,
                guard=guard,
                max_rounds=cfg.max_sampling_rounds,
                meta=prepared.meta,
                schema=prepared.table.schema,
                record=record,
                threads=self._threads(),
            )
            for b, start in enumerate(starts)
        ]

    def _record_sampling(self, folder: Path, stats: list[dict[str, int]]) -> None:
        total = sum((Counter(s) for s in stats), Counter())
        rejected = {k.removeprefix("rejected:"): n for k, n in sorted(total.items()) if k.startswith("rejected:")}
        summary = {"num_rows": self.config.num_rows, "blocks": len(stats), "conditions": self.config.conditions,
                   "constraints": [c.label for c in self.config.constraints], "sampled": total["sampled"],
                   "privacy_guard": self.config.privacy_guard,
                   "rejected": rejected} | rejection_rates(total["sampled"], rejected)  # fmt: skip
        io.write_json_atomic(folder / "sampling.json", summary)
        self.ctx.count(**total)
        log.info("tabular_synth: sampled %d rows; constraints rejected %.1f%% of those they checked, the privacy "
                 "guard %.1f%% %s", total["sampled"], 100 * summary["constraint_rejection_rate"],
                 100 * summary["near_copy_rate"], rejected or "")  # fmt: skip


def rejection_rates(sampled: int, rejected: dict[str, int]) -> dict[str, float]:
    """The guard's and the constraints' rejection rates, apart: the guard sees every sampled row,
    the constraints only the rows it passed (a near copy is never checked against them)."""
    near_copies = rejected.get(GUARD_LABEL, 0)
    by_constraints = sum(n for label, n in rejected.items() if label != GUARD_LABEL)
    return {"near_copy_rate": near_copies / max(sampled, 1),
            "constraint_rejection_rate": by_constraints / max(sampled - near_copies, 1)}  # fmt: skip


def _keys_folder(folder: Path) -> Path:
    """Where sampling blocks leave their counts and unique keys for `finish`."""
    return folder / "blocks"


def model_folder(ctx: StageContext, stage: str | None = None) -> Path:
    """Where a tabular_synth stage keeps its fitted model, fit.json and sampling.json."""
    return ctx.output_dir / "_models" / (stage or ctx.stage_name)
