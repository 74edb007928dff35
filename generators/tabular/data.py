"""The real table: where it comes from, what its columns are, and how synthetic rows get its types back.

- `TableSource` (spec): a CSV or Parquet file, or a scikit-learn bundled set by name. `load_table`
  reads it whole (a tabular fit needs every row) and rejects what cannot be learned, each with a
  one-line error naming the file, line or column: an empty table, a column that is null in every
  row, a CSV row with more or fewer fields than the header.
- `TableMeta`: each column's role, inferred with SDV's metadata detection and overridden by the
  spec (`MetadataOverrides`): learned columns (numerical, categorical, boolean, datetime) go to
  the synthesizer; generated ones (`id`, the primary key, `never_copy`) get fresh values and never
  a real one.
- `split_holdout`: the real rows kept away from the fit, chosen from the seed before fitting.
- `check_mixed_columns`, `check_learnable`: refuse a text column that also holds numbers (unless
  the spec gives its role) and a training split too small, or too duplicated, to learn from.
- `to_frame` / `restore_types`: Arrow table to pandas for the models and back, to the user's own
  column types and order.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from synth.errors import SpecError
from synth.spec import InputFile, StrictModel

log = logging.getLogger(__name__)

SKLEARN_SETS = ("breast_cancer", "wine", "diabetes", "iris")
Sdtype = Literal["numerical", "categorical", "boolean", "datetime", "id"]
LEARNED: tuple[Sdtype, ...] = ("numerical", "categorical", "boolean", "datetime")
_SDV_TO_ROLE = {"numerical": "numerical", "categorical": "categorical", "ordinal": "categorical",
                "boolean": "boolean", "datetime": "datetime"}  # fmt: skip
"""SDV's detected sdtypes we learn; any other (id, email, unknown...) is generated, never copied."""


class TableSource(StrictModel):
    """Exactly one of `path` (CSV or Parquet) or `sklearn` (a bundled scikit-learn set)."""

    path: InputFile | None = Field(None, description="CSV or Parquet file, relative to the spec file")
    sklearn: Literal[SKLEARN_SETS] | None = Field(None, description="A scikit-learn bundled set by name")
    format: Literal["auto", "csv", "parquet"] = Field("auto", description="auto: from the file suffix")
    rename: dict[str, str] = Field(default_factory=dict, description="Input column -> output column")

    @model_validator(mode="after")
    def _one_source(self) -> TableSource:
        if (self.path is None) == (self.sklearn is None):
            raise ValueError("give exactly one of `path` (a CSV or Parquet file) or `sklearn` (a bundled set)")
        return self

    def describe(self) -> str:
        return str(self.path) if self.path else f"sklearn:{self.sklearn}"

    @property
    def file_format(self) -> str:
        if self.format != "auto" or self.path is None:
            return self.format
        return "parquet" if self.path.suffix.lower() in (".parquet", ".pq") else "csv"

    def column_names(self) -> list[str]:
        """The columns after `rename`, read cheaply (header or schema only)."""
        if self.sklearn:
            names = list(_sklearn_frame(self.sklearn).columns)
        elif self.file_format == "parquet":
            names = pq.read_schema(self.path).names
        else:
            with open(self.path, newline="") as f:
                names = next(csv.reader(f), [])
        unknown = sorted(set(self.rename) - set(names))
        if unknown:
            check_columns({"data.rename": unknown[0]}, names, self.describe())
        return [self.rename.get(n, n) for n in names]

    def fingerprint(self) -> str:
        """Changes when the table's content changes, so a refit follows a new file."""
        if self.sklearn:
            import sklearn

            return f"sklearn:{self.sklearn}:{sklearn.__version__}"
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- loading and checks


def load_table(source: TableSource) -> pa.Table:
    """The whole table, renamed, checked; dictionary columns decoded to their values."""
    if source.sklearn:
        table = pa.Table.from_pandas(_sklearn_frame(source.sklearn), preserve_index=False)
    elif source.file_format == "parquet":
        table = pq.read_table(source.path)
    else:
        table = _read_csv(source.path)
    table = table.rename_columns([source.rename.get(n, n) for n in table.column_names])
    table = table.replace_schema_metadata(None)
    check_table(table, source.describe())
    return table.cast(pa.schema([_plain_field(f) for f in table.schema]))


def _sklearn_frame(name: str) -> pd.DataFrame:
    from sklearn import datasets

    return getattr(datasets, f"load_{name}")(as_frame=True).frame


def _read_csv(path: Path) -> pa.Table:
    try:
        return pacsv.read_csv(path)
    except pa.ArrowInvalid as exc:
        ragged = _ragged_row(path)
        if ragged:
            line, expected, got = ragged
            raise SpecError(f"{path}:{line}: expected {expected} fields as in the header, got {got}") from None
        raise SpecError(f"{path}: cannot read as CSV: {str(exc).splitlines()[0]}") from None


def _ragged_row(path: Path) -> tuple[int, int, int] | None:
    """(line, fields in the header, fields on that line) of the first row of another width."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        for row in reader:
            if row and len(row) != len(header):
                return reader.line_num, len(header), len(row)
    return None


def check_table(table: pa.Table, where: str) -> None:
    """Errors for a table nothing can be learned from; each names the table and the column."""
    if table.num_columns == 0:
        raise SpecError(f"{where}: the table has no columns")
    if table.num_rows == 0:
        raise SpecError(f"{where}: the table is empty (no rows under the header {', '.join(table.column_names)})")
    names = table.column_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"{where}: column {dupes[0]!r} appears twice; rename one (data.rename)")
    for name in names:
        if table.column(name).null_count == table.num_rows:
            raise SpecError(f"{where}: column {name!r} is null in every row: nothing to learn; drop it from the table")


def _plain_field(field: pa.Field) -> pa.Field:
    return field.with_type(field.type.value_type) if pa.types.is_dictionary(field.type) else field


# ---------------------------------------------------------------- metadata


class MetadataOverrides(StrictModel):
    """What the spec says about the columns; anything left out is inferred by SDV."""

    columns: dict[str, Sdtype] = Field(default_factory=dict, description="Column -> role, over the detected one")
    primary_key: str | None = Field(None, description="Unique row key: generated fresh, never learned")
    never_copy: list[str] = Field(default_factory=list, description="Columns that get fresh values, never real ones")
    target: str | None = Field(None, description="Label for conditioning and ML utility (sklearn sets: target)")

    def named_columns(self) -> dict[str, str]:
        """Every column this names, keyed by where it is named (for unknown-column errors)."""
        named = {f"metadata.columns.{c}": c for c in self.columns}
        named |= {f"metadata.never_copy[{i}]": c for i, c in enumerate(self.never_copy)}
        named |= {"metadata.primary_key": self.primary_key, "metadata.target": self.target}
        return {where: c for where, c in named.items() if c is not None}


class TableMeta(StrictModel):
    """Each column's role in table order, the primary key, the never-copied columns, the target."""

    columns: dict[str, Sdtype]
    primary_key: str | None = None
    never_copy: tuple[str, ...] = ()
    target: str | None = None

    @property
    def generated(self) -> list[str]:
        """Columns that get fresh values: role `id`, the primary key and `never_copy`."""
        fresh = {self.primary_key, *self.never_copy}
        return [c for c, role in self.columns.items() if role == "id" or c in fresh]

    @property
    def learned(self) -> list[str]:
        generated = set(self.generated)
        return [c for c in self.columns if c not in generated]

    def learned_roles(self) -> dict[str, Sdtype]:
        return {c: self.columns[c] for c in self.learned}

    @property
    def task(self) -> Literal["classification", "regression"] | None:
        """What predicting the target is: None without a target."""
        if self.target is None:
            return None
        return "regression" if self.columns[self.target] in ("numerical", "datetime") else "classification"

    def sdv_metadata(self):
        """The learned columns as SDV single-table metadata (table name `table`)."""
        from sdv.metadata import Metadata

        columns = {c: {"sdtype": role} for c, role in self.learned_roles().items()}
        return Metadata.load_from_dict({"tables": {"table": {"columns": columns}}})


def infer_metadata(frame: pd.DataFrame, overrides: MetadataOverrides, where: str) -> TableMeta:
    """SDV's detection, then the spec's overrides; unknown column names are SpecErrors."""
    check_columns(overrides.named_columns(), list(frame.columns), where)
    from sdv.metadata import Metadata

    with warnings.catch_warnings(), _quiet_logger("sdv"):  # SDV logs the whole detected metadata at INFO
        warnings.simplefilter("ignore")
        detected = Metadata.detect_from_dataframes({"table": frame}).to_dict()["tables"]["table"]
    roles = {c: _SDV_TO_ROLE.get(detected["columns"][c]["sdtype"], "id") for c in frame.columns}
    roles |= overrides.columns
    primary_key = overrides.primary_key or detected.get("primary_key")
    meta = TableMeta(columns=roles, primary_key=primary_key, never_copy=tuple(overrides.never_copy),
                     target=overrides.target)  # fmt: skip
    if meta.target is not None and meta.target not in meta.learned:
        raise SpecError(f"{where}: metadata.target {meta.target!r} is a generated column (role "
                        f"{roles[meta.target]!r}, primary key or never_copy): a target must be learned")  # fmt: skip
    if not meta.learned:
        raise SpecError(f"{where}: no column is left to learn: every column is an id, the primary key or never_copy")
    generated = meta.generated
    if generated:
        log.info("tabular: columns %s get fresh values, never real ones", ", ".join(generated))
    return meta


@contextmanager
def _quiet_logger(name: str):
    """Only warnings from this logger while inside; its level is restored after."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_columns(named: dict[str, str], known: list[str], where: str) -> None:
    """One SpecError for the first name that is not a column: where it is named, and the columns."""
    for place, column in named.items():
        if column not in known:
            raise SpecError(f"{where}: {place}: unknown column {column!r}; the table has: {', '.join(known)}")


# ---------------------------------------------------------------- splits and types


def split_holdout(num_rows: int, fraction: float, seed: int, where: str = "table") -> tuple[np.ndarray, np.ndarray]:
    """(train rows, holdout rows), sorted, from a permutation seeded by `seed`."""
    order = np.random.default_rng(seed).permutation(num_rows)
    holdout = int(round(num_rows * fraction))
    if fraction > 0 and not 0 < holdout < num_rows:
        raise SpecError(f"{where}: holdout_fraction {fraction} of {num_rows} rows leaves no train or no holdout "
                        f"row; expected at least {MIN_TRAIN_ROWS} training rows and one holdout row")  # fmt: skip
    return np.sort(order[holdout:]), np.sort(order[:holdout])


MIN_TRAIN_ROWS = 10
"""Fewer distinct training rows than this and a synthesizer can only copy them back."""


def check_learnable(train: pd.DataFrame, meta: TableMeta, holdout_fraction: float, where: str) -> None:
    """The training split has enough rows, and enough distinct ones, to learn a distribution from."""
    if len(train) < MIN_TRAIN_ROWS:
        raise SpecError(f"{where}: {len(train)} training rows (holdout_fraction {holdout_fraction}) are too few "
                        f"to learn from; expected at least {MIN_TRAIN_ROWS}")  # fmt: skip
    distinct = len(train[meta.learned].drop_duplicates())
    if distinct < MIN_TRAIN_ROWS:
        raise SpecError(f"{where}: the {len(train)} training rows are copies of only {distinct} distinct rows "
                        f"(in the learned columns); expected at least {MIN_TRAIN_ROWS} distinct rows, or the "
                        "synthetic rows can only repeat them")  # fmt: skip


def check_mixed_columns(table: pa.Table, declared: dict[str, Sdtype], where: str) -> None:
    """A text column in which some values are numbers and others are not is refused, unless the spec
    says its role: it is either numbers with stray text (a typo, a missing-value code such as '?')
    or categories that happen to look numeric, and guessing either way writes wrong rows."""
    for field in table.schema:
        if field.name in declared or not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        values = pd.Series(pc.unique(table.column(field.name).drop_null()).to_pylist(), dtype=object)
        is_number = pd.to_numeric(values.str.strip(), errors="coerce").notna().to_numpy()
        if is_number.any() and not is_number.all():
            number, text = values[is_number].iloc[0], values[~is_number].iloc[0]
            raise SpecError(f"{where}: column {field.name!r} mixes numbers (like {number!r}) and text (like "
                            f"{text!r}); expected one or the other: clean the column, or declare it with "
                            f"metadata.columns.{field.name}: categorical")  # fmt: skip


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Pandas for the models: nullable integers become floats, timestamps datetime64."""
    return table.to_pandas(date_as_object=False)


def restore_types(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Synthetic rows in the user's column order and Arrow types (integers rounded)."""
    arrays = [_to_arrow(frame[field.name], field.type) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _to_arrow(values: pd.Series, type_: pa.DataType) -> pa.Array:
    if pa.types.is_integer(type_) and not pd.api.types.is_integer_dtype(values.dtype):
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        array = pa.array(np.round(numbers), from_pandas=True)
        return pc.cast(array, type_, safe=False)
    if pa.types.is_timestamp(type_) or pa.types.is_date(type_):
        values = pd.to_datetime(values)
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        values = values.map(lambda v: v if v is None or isinstance(v, str) or pd.isna(v) else str(v))
    return pa.array(values, from_pandas=True).cast(type_)
