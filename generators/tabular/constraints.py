"""Constraints a spec puts on synthetic rows, and the rejection loop that meets them.

Four kinds, by `type:`:

- `range`: a numerical column within [min, max] (either bound may be left out; `strict` excludes
  the bounds).
- `inequality`: column `low` ≤ column `high` (< with `strict`); numerical or datetime columns.
- `combinations`: the values of these discrete columns (categorical, boolean, or numerical with
  whole-number values, such as a coded education level) appear together only as listed in
  `allowed`, or, without `allowed`, only as they do in the training data. Every allowed value
  must occur in the training rows: a synthesizer never makes an unseen one.
- `unique`: no two rows share the values of these columns.

A null passes `range` and `inequality`, as in SDV. SDV models are handed SDV's own constraints
where SDV has one (`Inequality`, `FixedCombinations`); ranges hold there because SDV keeps each
column within its training minimum and maximum, and the training rows are checked to meet every
range. TabDDPM meets them by rejection. Either way every sampled batch passes through `Checker`,
so no output row breaks a constraint, and each rejection is counted under the constraint it broke.
`sample_valid` gives up, naming the rejection rate, as soon as the rate shows the rows cannot be
reached.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from generators.tabular.data import TableMeta
from synth.errors import SpecError, SynthError
from synth.spec import StrictModel
from synth.stage import derive_seed

Scalar = Union[bool, int, float, str]


class RangeConstraint(StrictModel):
    type: Literal["range"] = "range"
    column: str
    min: float | None = None
    max: float | None = None
    strict: bool = Field(False, description="Exclude the bounds themselves")

    @model_validator(mode="after")
    def _bounds(self) -> RangeConstraint:
        if self.min is None and self.max is None:
            raise ValueError("a range needs `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    @property
    def columns(self) -> list[str]:
        return [self.column]

    @property
    def label(self) -> str:
        return f"range({self.column})"

    roles: ClassVar[tuple[str, ...]] = ("numerical",)

    def holds(self, frame: pd.DataFrame) -> np.ndarray:
        values = pd.to_numeric(frame[self.column], errors="coerce").to_numpy(dtype=float)
        ok = np.ones(len(values), dtype=bool)
        if self.min is not None:
            ok &= (values > self.min) if self.strict else (values >= self.min)
        if self.max is not None:
            ok &= (values < self.max) if self.strict else (values <= self.max)
        return ok | np.isnan(values)

    def sdv(self, meta: TableMeta) -> None:
        return None  # SDV keeps values within the (checked) training range


class InequalityConstraint(StrictModel):
    type: Literal["inequality"] = "inequality"
    low: str
    high: str
    strict: bool = Field(False, description="low < high rather than low <= high")

    @property
    def columns(self) -> list[str]:
        return [self.low, self.high]

    @property
    def label(self) -> str:
        return f"inequality({self.low}{'<' if self.strict else '<='}{self.high})"

    roles: ClassVar[tuple[str, ...]] = ("numerical", "datetime")

    def holds(self, frame: pd.DataFrame) -> np.ndarray:
        low, high = frame[self.low], frame[self.high]
        ok = (low < high) if self.strict else (low <= high)
        return (ok | low.isna() | high.isna()).to_numpy(dtype=bool)

    def sdv(self, meta: TableMeta):
        from sdv.cag import Inequality

        return Inequality(self.low, self.high, strict_boundaries=self.strict)


class CombinationsConstraint(StrictModel):
    type: Literal["combinations"] = "combinations"
    columns: list[str] = Field(min_length=2)
    allowed: list[list[Scalar | None]] | None = Field(
        None, description="Allowed value tuples; default: those in the training data"
    )

    @model_validator(mode="after")
    def _widths(self) -> CombinationsConstraint:
        for i, combo in enumerate(self.allowed or []):
            if len(combo) != len(self.columns):
                raise ValueError(f"allowed[{i}] has {len(combo)} values for {len(self.columns)} columns")
        return self

    @property
    def label(self) -> str:
        return f"combinations({','.join(self.columns)})"

    roles: ClassVar[tuple[str, ...]] = ("categorical", "boolean", "numerical")

    def holds(self, frame: pd.DataFrame, allowed: set[tuple]) -> np.ndarray:
        return np.array([combo in allowed for combo in row_tuples(frame, self.columns)], dtype=bool)

    def sdv(self, meta: TableMeta):
        """SDV's FixedCombinations takes only categorical and boolean columns; others: rejection alone."""
        if any(meta.columns[c] not in ("categorical", "boolean") for c in self.columns):
            return None
        from sdv.cag import FixedCombinations

        return FixedCombinations(list(self.columns))


class UniqueConstraint(StrictModel):
    type: Literal["unique"] = "unique"
    columns: list[str] = Field(min_length=1)

    @property
    def label(self) -> str:
        return f"unique({','.join(self.columns)})"

    roles: ClassVar[tuple[str, ...]] = ("numerical", "categorical", "boolean", "datetime")

    def sdv(self, meta: TableMeta) -> None:
        return None  # SDV has no uniqueness constraint: rejection for every model


Constraint = Annotated[
    Union[RangeConstraint, InequalityConstraint, CombinationsConstraint, UniqueConstraint], Field(discriminator="type")
]


def named_columns(constraints: list[Constraint]) -> dict[str, str]:
    """Every column the constraints name, keyed by where (for unknown-column errors)."""
    named = {}
    for i, c in enumerate(constraints):
        fields = {"column": [c.column]} if isinstance(c, RangeConstraint) else {}
        fields |= {"low": [c.low], "high": [c.high]} if isinstance(c, InequalityConstraint) else {}
        fields |= {"columns": c.columns} if isinstance(c, (CombinationsConstraint, UniqueConstraint)) else {}
        for key, columns in fields.items():
            for j, column in enumerate(columns):
                where = f"constraints[{i}].{key}" + (f"[{j}]" if key == "columns" else "")
                named[where] = column
    return named


def check_constraints(constraints: list[Constraint], meta: TableMeta, train: pd.DataFrame, where: str) -> None:
    """Each constraint fits the columns' roles, and the training rows meet it (else nothing learns it)."""
    learned = set(meta.learned)
    for i, c in enumerate(constraints):
        for column in c.columns:
            role = meta.columns[column]
            if role not in c.roles or column not in learned:
                wanted = " or ".join(c.roles)
                generated = "" if column in learned else " (generated)"
                raise SpecError(f"{where}: constraints[{i}] {c.label}: column {column!r} is {role}{generated}; "
                                f"expected a learned {wanted} column")  # fmt: skip
        if isinstance(c, CombinationsConstraint):
            _check_combinations(c, i, meta, train, where)
        if isinstance(c, InequalityConstraint) and meta.columns[c.low] != meta.columns[c.high]:
            raise SpecError(f"{where}: constraints[{i}] {c.label}: {c.low!r} is {meta.columns[c.low]} but "
                            f"{c.high!r} is {meta.columns[c.high]}; both sides need the same role")  # fmt: skip
        if isinstance(c, (RangeConstraint, InequalityConstraint)):
            broken = np.flatnonzero(~c.holds(train))
            if len(broken):
                raise SpecError(f"{where}: constraints[{i}] {c.label} is broken by {len(broken)} of {len(train)} "
                                f"training rows (first: row {broken[0]}); fix the data or the constraint")  # fmt: skip


def _check_combinations(c: CombinationsConstraint, i: int, meta: TableMeta, train: pd.DataFrame, where: str) -> None:
    """Numerical columns must be discrete (whole numbers), and every allowed value must occur in training."""
    for column in c.columns:
        if meta.columns[column] == "numerical":
            values = pd.to_numeric(train[column], errors="coerce").dropna().to_numpy(dtype=float)
            if not np.all(values == np.round(values)):
                raise SpecError(f"{where}: constraints[{i}] {c.label}: column {column!r} is numerical with "
                                "fractional values; expected a categorical, boolean or whole-number column")  # fmt: skip
    seen = {column: set(row_tuples(train, [column])) for column in c.columns}
    for k, combo in enumerate(c.allowed or []):
        for column, value in zip(c.columns, combo):
            if (value,) not in seen[column]:
                have = ", ".join(sorted((repr(v[0]) for v in seen[column]), key=str)[:20])
                raise SpecError(f"{where}: constraints[{i}].allowed[{k}]: {value!r} never occurs in column "
                                f"{column!r} of the training rows, so no synthetic row can have it; "
                                f"expected one of: {have}")  # fmt: skip


def row_tuples(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    """Rows as tuples of plain Python values (None for nulls), comparable with spec values."""
    values = [frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in columns]
    return [tuple(_plain(v) for v in row) for row in zip(*values)]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def row_keys(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """A 64-bit hash per row of these columns (for uniqueness across batches and blocks)."""
    return pd.util.hash_pandas_object(frame[columns], index=False).to_numpy()


class Checker:
    """Rejects rows that break a constraint, counting each under the first constraint it breaks.

    Uniqueness holds across every batch one checker sees: it remembers the keys it kept.
    """

    def __init__(self, constraints: list[Constraint], train: pd.DataFrame):
        self.constraints = constraints
        self.allowed = {i: {tuple(combo) for combo in c.allowed} if c.allowed is not None
                        else set(row_tuples(train, c.columns))
                        for i, c in enumerate(constraints) if isinstance(c, CombinationsConstraint)}  # fmt: skip
        unique = [i for i, c in enumerate(constraints) if isinstance(c, UniqueConstraint)]
        self.seen: dict[int, set[int]] = {i: set() for i in unique}

    def keep(self, frame: pd.DataFrame) -> tuple[np.ndarray, Counter]:
        keep, rejected = np.ones(len(frame), dtype=bool), Counter()
        for i, c in enumerate(self.constraints):
            if isinstance(c, UniqueConstraint):
                continue  # after the others, so a rejected row does not claim a key
            holds = c.holds(frame, self.allowed[i]) if i in self.allowed else c.holds(frame)
            rejected[c.label] += int(np.sum(keep & ~holds))
            keep &= holds
        for i, seen in self.seen.items():
            keys = row_keys(frame, self.constraints[i].columns)
            fresh = ~pd.Series(keys).duplicated().to_numpy() & ~np.isin(keys, list(seen))
            rejected[self.constraints[i].label] += int(np.sum(keep & ~fresh))
            keep &= fresh
            seen.update(keys[keep].tolist())
        return keep, +rejected


MIN_ACCEPTANCE = 0.02
"""Below this share of sampled rows kept, a round's request is capped (50x what is missing), so
the rows cannot be reached: the loop gives up instead of sampling for every remaining round."""
EVIDENCE_ROWS = 1000
"""Rows sampled before the acceptance rate is trusted enough to give up on."""


def sample_valid(
    synthesizer,
    num_rows: int,
    seed: int,
    conditions: dict[str, Any],
    checker: Checker,
    max_rounds: int,
    finish: Callable[[pd.DataFrame], pd.DataFrame],
    guard=None,
) -> tuple[pd.DataFrame, Counter]:
    """`num_rows` rows meeting every constraint, sampled in rounds of derived seeds.

    Each round asks for what is still missing, scaled up by the acceptance rate so far. `finish`
    brings a sampled frame to its final values (integers rounded...) before the check, so what
    is checked is what is written. `guard` (`generators.tabular.guard`), when given, rejects
    near copies of training rows first. Returns the rows and counts: `sampled`, and
    `rejected:<constraint>` for each constraint (and the guard) that rejected rows. Gives up early once at least
    `EVIDENCE_ROWS` were sampled and fewer than `MIN_ACCEPTANCE` of them were kept.
    """
    parts, have, stats = [], 0, Counter()
    guard_label = guard.label if guard is not None else None
    for round_ in range(max_rounds):
        missing = num_rows - have
        acceptance = have / stats["sampled"] if stats["sampled"] else 1.0
        ask = min(math.ceil(missing / max(acceptance, MIN_ACCEPTANCE) * (1.1 if round_ else 1.0)), 50 * missing + 100)
        frame = finish(synthesizer.sample(ask, derive_seed(seed, "round", round_), conditions).reset_index(drop=True))
        stats["sampled"] += len(frame)
        if guard is not None:
            far, rejected = guard.keep(frame)
            stats.update({f"rejected:{label}": n for label, n in rejected.items()})
            frame = frame[far].reset_index(drop=True)
        keep, rejected = checker.keep(frame)
        stats.update({f"rejected:{label}": n for label, n in rejected.items()})
        parts.append(frame[keep])
        have += int(keep.sum())
        if have >= num_rows:
            return pd.concat(parts, ignore_index=True).iloc[:num_rows], stats
        if stats["sampled"] >= EVIDENCE_ROWS and have / stats["sampled"] < MIN_ACCEPTANCE:
            _give_up(stats, have, num_rows, f"after {round_ + 1} rounds, and with under {MIN_ACCEPTANCE:.0%} of "
                     "rows kept the rest cannot be reached; loosen the constraints or conditions", guard_label)  # fmt: skip
    _give_up(stats, have, num_rows, f"in {max_rounds} rounds; loosen the constraints or conditions, "
             "or raise max_sampling_rounds", guard_label)  # fmt: skip


def _give_up(stats: Counter, have: int, num_rows: int, why: str, guard_label: str | None) -> None:
    sampled = stats["sampled"]
    rejecting = {k.removeprefix("rejected:"): n for k, n in stats.items() if k.startswith("rejected:") and n}
    worst = max(rejecting, key=rejecting.get, default="none")
    by_guard, by_constraints = guard_label in rejecting, any(label != guard_label for label in rejecting)
    who = ("constraints and the privacy guard" if by_guard and by_constraints
           else "the privacy guard" if by_guard else "constraints")  # fmt: skip
    raise SynthError(f"{who} rejected {sampled - have} of {sampled} sampled rows "
                     f"({100 * (sampled - have) / max(sampled, 1):.1f}%; most by {worst}, "
                     f"{rejecting.get(worst, 0)}): kept {have} of {num_rows} rows {why}")  # fmt: skip
