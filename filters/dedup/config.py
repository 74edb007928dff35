"""Spec fields every dedup stage shares: what text to compare, which record to keep, old data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from synth.spec import StageConfig, existing_path

ExistingData = Annotated[
    Path, existing_path(Path.exists, "not found: {path} (expected an earlier synth output folder, a Parquet folder or file)")
]
ModelFolder = Annotated[Path, existing_path(Path.exists, "not found: {path} (expected a sentence-transformers model folder)")]


class DedupConfig(StageConfig):
    text_columns: list[str] | None = Field(
        None,
        min_length=1,
        description="Columns joined into the text compared; default: instruction, input, output for "
        "instruct records, code (with code normalisation) for code records, else text",
    )
    code: bool | None = Field(None, description="Normalise as Python source; default: true for code records")
    prefer_column: str | None = Field(
        None, description="Numeric column: among duplicates the highest is kept (then the lowest id)"
    )
    partitions: int | None = Field(None, ge=1, description="Reduce tasks of the shuffle; default: one per CPU")


class AgainstConfig(DedupConfig):
    against: list[ExistingData] = Field(
        default_factory=list,
        description="Earlier outputs: new records duplicating one of theirs are dropped (duplicate_of_existing)",
    )
