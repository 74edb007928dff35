"""The code records: the case schema written to the dataset, and the function rows before it.

Every record of kind "code" has these columns (`CODE_SCHEMA`), one record per test case:

| column            | type         | meaning                                                              |
|-------------------|--------------|----------------------------------------------------------------------|
| `id`              | string       | xxhash64 hex of format, instruction and response: same text, same id |
| `kind`            | string       | always "code"                                                        |
| `generator`       | string       | "case2code"                                                          |
| `run_id`          | string       | the run that made it                                                 |
| `seed`            | int64        | the run's seed                                                       |
| `model`           | string       | what proposed the input: the LLM's id, or `fallback:docstring` /     |
|                   |              | `fallback:hypothesis` (doctest calls / drawn from strategies)        |
| `format`          | string       | infer_function, predict_output or complete_function                  |
| `instruction`     | string       | the prompt                                                           |
| `response`        | string       | the answer: the function's source as shown (without its docstring's  |
|                   |              | examples and result comments), or the case's output                  |
| `function_id`     | string       | xxhash64 hex of `source`                                             |
| `function_name`   | string       | the function's name                                                  |
| `module`          | string       | where it came from: a module name (`textwrap`) or a file path        |
| `source`          | string       | the function, with the imports it needs above it; what was executed  |
| `input`           | string       | this case's call, canonical: `name(1, 'a', key=[2])`                 |
| `output`          | string       | `repr` of what the call returned, or `ExceptionType: message`        |
| `output_is_error` | bool         | the call raised (only where the spec allows exceptions as outputs)   |
| `example_inputs`  | list<string> | the calls shown in the instruction (this case first)                 |
| `example_outputs` | list<string> | their outputs, in the same order                                     |

`output` came from running `source` on `input` in the sandbox (`generators.code.execute`),
twice, with different hash seeds (`filters.quality.code_checks`), and nowhere else.

Function rows (one per function, until `case2code` makes cases of them) carry `function_id`,
`name`, `module`, `source`, `lines` (`FUNCTION_SCHEMA`); `code_inputs` adds `inputs` and
`input_origins`, `code_execute` adds `outputs`, `case_status` and `sandbox_*`, `code_checks`
adds `case_ok`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import xxhash

from synth.records import RECORD_FIELDS
from synth.stage import DROP_REASON

CODE_SCHEMA = pa.schema(
    [
        *RECORD_FIELDS,
        pa.field("format", pa.string(), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("function_id", pa.string(), nullable=False),
        pa.field("function_name", pa.string(), nullable=False),
        pa.field("module", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),
        pa.field("output", pa.string(), nullable=False),
        pa.field("output_is_error", pa.bool_(), nullable=False),
        pa.field("example_inputs", pa.list_(pa.string()), nullable=False),
        pa.field("example_outputs", pa.list_(pa.string()), nullable=False),
    ]
)

FUNCTION_SCHEMA = pa.schema(
    [
        pa.field("function_id", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("module", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("lines", pa.int32(), nullable=False),
        pa.field(DROP_REASON, pa.string()),
    ]
)
"""What `code_functions` emits: candidate functions, the statically rejected ones with a reason."""


def content_id(*parts: str) -> str:
    """Stable content hash; the unit separator keeps ("ab", "c") apart from ("a", "bc")."""
    return xxhash.xxh64_hexdigest("\x1f".join(parts).encode())


def to_case_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as a table of exactly `CODE_SCHEMA` (an empty table keeps the schema)."""
    return pa.Table.from_pylist(rows, schema=CODE_SCHEMA)
