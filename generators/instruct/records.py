"""The instruct record: its Arrow schema, its content id, and how rows become a typed table.

Every record of kind "instruct" has these columns (`INSTRUCT_SCHEMA`):

| column              | type   | meaning                                                          |
|---------------------|--------|------------------------------------------------------------------|
| `id`                | string | xxhash64 hex of instruction, input and output: same text, same id |
| `kind`              | string | always "instruct"                                                |
| `generator`         | string | "self_instruct" or "evol_instruct"                               |
| `run_id`            | string | the run that made it                                             |
| `seed`              | int64  | the run's seed                                                   |
| `model`             | string | the LLM that wrote it (`LLMClient.model_id`)                     |
| `instruction`       | string | the task                                                         |
| `input`             | string | the task's input; "" when the task needs none                    |
| `output`            | string | the answer                                                       |
| `is_classification` | bool   | Self-Instruct's judgement; null for evolved records (not judged) |
| `parent_id`         | string | evolved records: the id of the record evolved; else null         |
| `evol_round`        | int32  | 0 for Self-Instruct, 1.. for the Evol-Instruct round             |
| `evol_operation`    | string | the Evol-Instruct operation; null for Self-Instruct              |

Stages also emit `_drop_reason` (string, null = kept): rejected candidates travel as rows so the
runner counts them per reason and can write them for audit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import xxhash

from synth.records import RECORD_FIELDS
from synth.stage import DROP_REASON

INSTRUCT_SCHEMA = pa.schema(
    [
        *RECORD_FIELDS,
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),
        pa.field("output", pa.string(), nullable=False),
        pa.field("is_classification", pa.bool_()),
        pa.field("parent_id", pa.string()),
        pa.field("evol_round", pa.int32(), nullable=False),
        pa.field("evol_operation", pa.string()),
    ]
)

STAGE_SCHEMA = INSTRUCT_SCHEMA.append(pa.field(DROP_REASON, pa.string()))
"""What the instruct generators return: the record columns plus the drop reason."""


def record_id(instruction: str, input: str, output: str) -> str:
    """Stable content hash; the unit separator keeps ("ab", "c") apart from ("a", "bc")."""
    return xxhash.xxh64_hexdigest("\x1f".join((instruction, input, output)).encode())


def make_record(
    *,
    generator: str,
    run_id: str,
    seed: int,
    model: str,
    instruction: str,
    input: str = "",
    output: str = "",
    is_classification: bool | None = None,
    parent_id: str | None = None,
    evol_round: int = 0,
    evol_operation: str | None = None,
    drop_reason: str | None = None,
) -> dict[str, Any]:
    """One row of `STAGE_SCHEMA`, its id computed from its text."""
    return {
        "id": record_id(instruction, input, output),
        "kind": "instruct",
        "generator": generator,
        "run_id": run_id,
        "seed": seed,
        "model": model,
        "instruction": instruction,
        "input": input,
        "output": output,
        "is_classification": is_classification,
        "parent_id": parent_id,
        "evol_round": evol_round,
        "evol_operation": evol_operation,
        DROP_REASON: drop_reason,
    }


def to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as a table of exactly `STAGE_SCHEMA` (an empty table keeps the schema)."""
    return pa.Table.from_pylist(list(rows), schema=STAGE_SCHEMA)


def is_kept(row: dict[str, Any]) -> bool:
    return row.get(DROP_REASON) is None
