"""The columns every record has, whatever its kind: the README's output contract."""

from __future__ import annotations

import pyarrow as pa

RECORD_FIELDS = (
    pa.field("id", pa.string(), nullable=False),  # a stable hash of the record's content
    pa.field("kind", pa.string(), nullable=False),  # instruct, code, tabular, image
    pa.field("generator", pa.string(), nullable=False),  # the stage kind that made it
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("model", pa.string(), nullable=False),  # what wrote it: an LLM's id, a synthesizer
)
RECORD_COLUMNS = tuple(f.name for f in RECORD_FIELDS)
