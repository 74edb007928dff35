"""Provenance: what `_manifest.json` records about how a dataset was made.

The manifest is written last, by atomic rename; its presence marks a finished dataset.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

MANIFEST = "_manifest.json"

TRACKED_PACKAGES = (
    "synth", "torch", "ray", "pyarrow", "transformers", "diffusers", "datasketch", "ctgan", "sdv", "pydantic",
)


@dataclass
class StageReport:
    """One stage's record counts, drops by reason, time and counters (LLM tokens and the like)."""

    index: int
    name: str
    kind: str
    rows_in: int
    rows_out: int
    kept: int
    dropped: dict[str, int]
    seconds: float
    fingerprint: str
    counters: dict[str, float] = field(default_factory=dict)
    resumed: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> StageReport:
        return cls(**data)


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
