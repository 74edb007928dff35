"""Records a user already has, as a source stage: filter, deduplicate and train on existing data.

`kind: records` reads one of:

- a Parquet file, or a folder of Parquet files (read in file-name order);
- a JSONL file (one JSON object per line);
- a Hugging Face `datasets` folder written by `Dataset.save_to_disk` (a `DatasetDict` folder
  takes `split:`, default `train`).

`record_kind:` says what the records are (`instruct`, `code`, `tabular`, `image`); without it the
columns decide: `instruction` + `response` is code (Case2Code's schema), `instruction` + `output`
instruct, a binary `image` column image, and a table of plain columns tabular. The kind's
required columns are checked before Ray starts.

The records keep every column they have. The contract columns they lack are added: `id` (xxh64
of the row's other columns, so the same content has the same id), `kind`, `generator`
("records"), `run_id`, `seed` and `model` ("records:<file or folder name>"); ones they have (an
earlier synth run's output) are kept as they are. Instruction records without `input` get "".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import xxhash
from pydantic import Field

from synth.errors import SpecError
from synth.records import RECORD_COLUMNS
from synth.registry import register
from synth.spec import StageConfig, existing_path
from synth.stage import BlockStage

RecordKind = Literal["instruct", "code", "tabular", "image"]

REQUIRED = {"instruct": ("instruction", "output"), "code": ("instruction", "response"), "image": ("image", "label")}
"""Columns each kind must have; tabular takes any plain columns."""

InputPath = Annotated[Path, existing_path(Path.exists, "file or folder not found: {path}")]


class RecordsConfig(StageConfig):
    kind: Literal["records"] = "records"
    path: InputPath = Field(description="Parquet file or folder, JSONL file, or a datasets save_to_disk folder")
    record_kind: RecordKind | None = Field(None, description="What the records are (default: from the columns)")
    split: str = Field("train", description="The split of a saved DatasetDict")


def source_format(path: Path) -> str:
    """parquet, jsonl or hf_datasets; anything else is a SpecError naming the path."""
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "hf_datasets"
        if any(path.rglob("*.parquet")):
            return "parquet"
        raise SpecError(f"records: {path}: expected Parquet files or a Hugging Face `save_to_disk` folder in it")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise SpecError(f"records: {path}: expected a .parquet, .jsonl file or a folder, got {suffix or 'no suffix'!r}")


def _load_hf(path: Path, split: str):
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        if split not in data:
            raise SpecError(f"records: {path}: split: {split!r} is not saved there (splits: {', '.join(data)})")
        data = data[split]
    return data


def columns(config: RecordsConfig) -> dict[str, pa.DataType | None]:
    """The records' columns (with types where the format says them), read cheaply."""
    path, fmt = config.path, source_format(config.path)
    if fmt == "parquet":
        files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
        schema = pq.read_schema(files[0])
        return dict(zip(schema.names, schema.types))
    if fmt == "hf_datasets":
        schema = _load_hf(path, config.split).data.schema
        return dict(zip(schema.names, schema.types))
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SpecError(f"{path}:{line_no}: not valid JSON: {exc.msg}") from None
                if not isinstance(first, dict):
                    raise SpecError(f"{path}:{line_no}: expected a JSON object per line")
                return dict.fromkeys(first)
    raise SpecError(f"{path}: no records")


def record_kind(config: RecordsConfig, found: dict[str, pa.DataType | None]) -> str:
    """The kind given, checked against the columns, or the one the columns show."""
    kind = config.record_kind or _infer_kind(found)
    if kind is None:
        raise SpecError(f"records: cannot tell what the records in {config.path} are from their columns "
                        f"({', '.join(found)}); set record_kind: instruct, code, tabular or image")
    missing = [c for c in REQUIRED.get(kind, ()) if c not in found]
    if missing:
        raise SpecError(f"records: {config.path}: {kind} records need the columns {', '.join(REQUIRED[kind])}; "
                        f"missing {', '.join(missing)} (columns: {', '.join(found)})")
    return kind


def _infer_kind(found: dict[str, pa.DataType | None]) -> str | None:
    if {"instruction", "response"} <= found.keys():
        return "code"
    if {"instruction", "output"} <= found.keys():
        return "instruct"
    if "image" in found and found["image"] in (pa.binary(), pa.large_binary()):
        return "image"
    plain = all(t is not None and (pa.types.is_primitive(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
                                   or pa.types.is_temporal(t) or pa.types.is_dictionary(t)) for t in found.values())
    return "tabular" if plain and found else None


def with_contract(batch: pa.Table, kind: str, run_id: str, seed: int, model: str) -> pa.Table:
    """Add the contract columns the records lack; keep the ones they have."""
    n = batch.num_rows
    content = [c for c in batch.column_names if c not in RECORD_COLUMNS]
    if kind == "instruct" and "input" not in batch.column_names:
        batch = batch.append_column("input", pa.array([""] * n, pa.string()))
    added = {
        "id": lambda: pa.array(_content_ids(batch.select(content)), pa.string()),
        "kind": lambda: pa.array([kind] * n, pa.string()),
        "generator": lambda: pa.array(["records"] * n, pa.string()),
        "run_id": lambda: pa.array([run_id] * n, pa.string()),
        "seed": lambda: pa.array([seed] * n, pa.int64()),
        "model": lambda: pa.array([model] * n, pa.string()),
    }
    front = []
    for name in RECORD_COLUMNS:
        front.append(batch.column(name) if name in batch.column_names else added[name]())
    rest = [c for c in batch.column_names if c not in RECORD_COLUMNS]
    return pa.table(front + [batch.column(c) for c in rest], names=list(RECORD_COLUMNS) + rest)


def _content_ids(table: pa.Table) -> list[str]:
    rows = table.to_pylist()
    return [xxhash.xxh64_hexdigest(b"\x1f".join(_encode(row[c]) for c in table.column_names)) for row in rows]


def _encode(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()


@register
class Records(BlockStage):
    kind = "records"
    Config = RecordsConfig
    description = "Existing records (Parquet, JSONL, a saved Hugging Face dataset) to filter, dedup and train on"
    source = True

    def check_inputs(self) -> None:
        super().check_inputs()
        record_kind(self.config, columns(self.config))

    def plan(self) -> list[dict]:
        """One block per Parquet file, else one for the JSONL file or the saved dataset."""
        cfg = self.config
        fmt = source_format(cfg.path)
        if fmt == "parquet":
            files = sorted(cfg.path.rglob("*.parquet")) if cfg.path.is_dir() else [cfg.path]
            return [{"format": fmt, "file": str(f)} for f in files]
        return [{"format": fmt, "file": str(cfg.path)}]

    def make(self, block: dict) -> pa.Table:
        cfg, ctx = self.config, self.ctx
        path = Path(block["file"])
        if block["format"] == "parquet":
            table = pq.read_table(path)
        elif block["format"] == "jsonl":
            table = pa_json.read_json(path)
        else:
            table = _load_hf(path, cfg.split).data.table  # memory-mapped Arrow files
        kind = record_kind(cfg, columns(cfg))
        return with_contract(table, kind, ctx.run_id, ctx.seed, f"records:{cfg.path.name}")
