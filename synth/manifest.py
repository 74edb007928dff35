"""Provenance: what `_manifest.json` records about how a dataset was made, as pydantic models.

The manifest is written last, by atomic rename; its presence marks a finished dataset. Its JSON
is part of the output contract: `Manifest` writes and reads the same keys as the plain dict it
replaced, and every module that reads a manifest reads it through `Manifest.read`.
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MANIFEST = "_manifest.json"

TRACKED_PACKAGES = (
    "synth", "torch", "ray", "pyarrow", "transformers", "diffusers", "datasketch", "ctgan", "sdv", "pydantic",
)


class StageReport(BaseModel):
    """One stage's record counts, drops by reason, time and counters (LLM tokens and the like).

    Written into the stage's `_SUCCESS.json` and into the manifest's `stages`."""

    index: int
    name: str
    kind: str
    rows_in: int
    rows_out: int
    kept: int
    dropped: dict[str, int]
    seconds: float
    fingerprint: str
    counters: dict[str, float] = Field(default_factory=dict)
    resumed: bool = False

    def to_json(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict) -> StageReport:
        return cls.model_validate(data)


class Manifest(BaseModel):
    """`_manifest.json`: what a finished dataset is, and how it was made."""

    model_config = ConfigDict(populate_by_name=True)

    name: str
    run_id: str
    seed: int
    records: int
    columns: dict[str, str] = Field(alias="schema", description="Column name -> Arrow type of OUTPUT/data")
    files: list[str]
    stages: list[StageReport]
    drops: dict[str, dict[str, int]] = Field(description="Stage -> drop reason -> records")
    llm: dict[str, float] = Field(description="LLM_COUNTERS summed over the stages")
    spec: dict
    spec_file: str | None
    spec_fingerprint: str
    inputs: dict[str, dict[str, str]] = Field(description="Stage -> file read -> sha256 of its content")
    versions: dict[str, str]
    git_revision: str | None
    ray: str
    started_at: str
    finished_at: str

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        return cls.model_validate(json.loads((folder / MANIFEST).read_text()))


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    """The project checkout's commit (with `-dirty` when it has changes), if it is one."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


LLM_COUNTERS = ("llm_requests", "llm_cache_hits", "llm_backend_calls", "llm_paid_by_earlier_attempts",
                "llm_prompt_tokens", "llm_completion_tokens", "llm_cost_usd")
"""`llm_backend_calls`, the tokens and the cost count every call this run paid for, in this attempt
or an earlier one that was killed (`llm_paid_by_earlier_attempts` of them); `llm_cache_hits` are
answers another run paid for."""


def llm_totals(stages: list[StageReport]) -> dict[str, float]:
    return {key: sum(s.counters.get(key, 0) for s in stages) for key in LLM_COUNTERS}
