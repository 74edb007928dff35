"""Which text a quality filter scores: the configured columns joined, or the record's answer.

The default is the answer column of the record kind, since that is what a model wrote and what
degenerates (loops, truncation, symbol soup): `response` for code records, `output` for instruct
records, else `text`. Several columns are joined with newlines; nulls count as "".
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_TEXT_COLUMNS = ("response", "output", "text")
"""Tried in this order; the first string column the data has is scored."""


def resolve_columns(schema: pa.Schema, columns: list[str] | None) -> tuple[str, ...]:
    """Check configured columns against the data, or pick the default."""
    if columns:
        for name in columns:
            if name not in schema.names:
                raise ValueError(f"text_columns: column {name!r} is not in the data; its columns are {schema.names}")
            if not _is_string(schema.field(name).type):
                raise ValueError(f"text_columns: column {name!r} is {schema.field(name).type}, expected a string")
        return tuple(columns)
    for name in DEFAULT_TEXT_COLUMNS:
        if name in schema.names and _is_string(schema.field(name).type):
            return (name,)
    raise ValueError(
        f"set text_columns: the data has none of the default columns {list(DEFAULT_TEXT_COLUMNS)}; "
        f"its columns are {schema.names}"
    )


def texts(batch: pa.Table, columns: tuple[str, ...]) -> list[str]:
    """One string per row: the columns joined by newlines."""
    parts = [batch.column(name).combine_chunks().fill_null("").cast(pa.large_string()) for name in columns]
    joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, pa.scalar("\n", pa.large_string()))
    return joined.to_pylist()


def _is_string(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)
