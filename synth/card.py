"""The dataset card: a README.md beside the data that a person reads before training on it."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from synth import io
from synth.manifest import Manifest

SAMPLE_ROWS = 3
SAMPLE_CHARS = 300


def _cell(value: object) -> str:
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "…"


def _stage_table(manifest: Manifest) -> list[str]:
    lines = ["| # | stage | kind | in | out | dropped | seconds | resumed |", "|---|---|---|---|---|---|---|---|"]
    for s in manifest.stages:
        dropped = ", ".join(f"{reason}: {n}" for reason, n in s.dropped.items()) or "0"
        lines.append(
            f"| {s.index} | {s.name} | {s.kind} | {s.rows_in} | {s.kept} | {dropped} "
            f"| {s.seconds:.1f} | {'yes' if s.resumed else ''} |"
        )
    return lines


def _counters(manifest: Manifest) -> list[str]:
    """What stages counted besides drops (tokens, inputs by source, files skipped...), one line a stage."""
    lines = [
        f"- `{s.name}`: " + ", ".join(f"{k} {v:g}" for k, v in sorted(s.counters.items()))
        for s in manifest.stages if s.counters
    ]  # fmt: skip
    return ["Counted by the stages:", "", *lines, ""] if lines else []


def _by_model(data_dir: Path) -> list[str]:
    """Records per value of `model` (what made each one: a model, or a method such as a fallback)."""
    if not io.parquet_files(data_dir) or "model" not in io.dataset_schema(data_dir).names:
        return []
    counts = Counter(io.read_table(data_dir, ["model"]).column("model").to_pylist())
    total = sum(counts.values()) or 1
    rows = [f"| `{model}` | {n} | {100 * n / total:.1f}% |" for model, n in counts.most_common()]
    return ["Records by `model`:", "", "| model | records | share |", "|---|---|---|", *rows, ""]


def _samples(data_dir: Path) -> list[str]:
    table = io.read_table(data_dir).slice(0, SAMPLE_ROWS)
    lines = []
    for i, row in enumerate(table.to_pylist()):
        lines.append(f"**Record {i}**\n")
        lines += [f"- `{k}`: {_cell(v)}" for k, v in row.items() if not isinstance(v, bytes)]
        lines.append("")
    return lines


def _reports(output: Path) -> list[str]:
    """Stages may leave `_reports/<stage>/report.md` (images beside it, linked by bare name)."""
    lines = []
    for report in sorted((output / "_reports").glob("*/report.md")):
        folder = report.parent.relative_to(output).as_posix()
        text = re.sub(r"\]\((?!https?:|/)([^)]+)\)", lambda m: f"]({folder}/{m.group(1)})", report.read_text())
        lines += [f"### {report.parent.name}", "", text.strip(), ""]
    return ["## Reports", "", *lines] if lines else []


def render_card(output: Path, manifest: Manifest) -> str:
    llm = manifest.llm
    lines = [
        f"# {manifest.name}",
        "",
        f"{manifest.records} records made by `synth` (run `{manifest.run_id}`, seed {manifest.seed}).",
        "",
        "## Loading",
        "",
        "```python",
        "import pyarrow.dataset as ds",
        f'table = ds.dataset("{output}/data", format="parquet").to_table()',
        "```",
        "",
        "## Schema",
        "",
        "| column | type |",
        "|---|---|",
        *[f"| `{name}` | {type_} |" for name, type_ in manifest.columns.items()],
        "",
        "## How it was made",
        "",
        *_stage_table(manifest),
        "",
        *_counters(manifest),
        *_by_model(output / "data"),
    ]
    if llm.get("llm_requests"):
        lines += [
            f"LLM: {int(llm['llm_requests'])} requests, {int(llm['llm_cache_hits'])} from cache, "
            f"{int(llm['llm_prompt_tokens'])} prompt and {int(llm['llm_completion_tokens'])} completion tokens, "
            f"cost ${llm['llm_cost_usd']:.4f}.",
            "",
        ]
    lines += [
        f"Versions: {', '.join(f'{k} {v}' for k, v in manifest.versions.items())}. "
        f"Git revision: {manifest.git_revision or 'unknown'}. The full spec is in `_manifest.json`.",
        "",
        *_reports(output),
        "## Samples",
        "",
        *_samples(output / "data"),
    ]
    return "\n".join(lines)


def write_card(output: Path, manifest: Manifest) -> None:
    if "instruction" in manifest.columns:
        # Instruction data gets its diversity measured (a report the card includes, below).
        from generators.instruct.diversity import write_diversity_report

        write_diversity_report(output, manifest.to_json())
    text = render_card(output, manifest)
    tmp = output / ".README.md.tmp"
    tmp.write_text(text)
    tmp.replace(output / "README.md")
