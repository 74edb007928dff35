"""Per-filter reports: records kept and dropped by reason, and a histogram of each score column.

For a filter stage, `write_filter_report` writes `OUTPUT/_reports/<stage>/report.md` and one
`<column>.png` per score column; the dataset card includes report.md (`synth.card`). Score
columns are the integer and float columns the filter added: those in its Parquet output and not
in its input stage's (a column it overwrote is not plotted again). Each histogram stacks the
records the filter kept on those it dropped, so a threshold shows where it cuts. The columns are
streamed from Parquet in batches, twice (ranges, then counts), so no process holds a whole column.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from synth import io
from synth.manifest import StageReport
from synth.stage import DROP_REASON

BINS = 30


def score_columns(stage_dir: Path, input_dir: Path) -> list[str]:
    """Numeric columns in the stage's output that its input did not have."""
    before = set(io.dataset_schema(input_dir).names)
    schema = io.dataset_schema(stage_dir)
    numeric = [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
    return [name for name in numeric if name not in before]


def write_filter_report(target: Path, report: StageReport, stage_dir: Path, input_dir: Path) -> None:
    columns = score_columns(stage_dir, input_dir)
    dataset = pads.dataset([str(f) for f in io.parquet_files(stage_dir)], format="parquet")
    ranges = _ranges(dataset, columns)
    target.mkdir(parents=True, exist_ok=True)
    plots = {}
    for name, (kept, dropped, edges) in _histograms(dataset, ranges).items():
        plots[name] = _file_name(name)
        _plot(target / plots[name], name, kept, dropped, edges, log=_spans_decades(ranges[name]))
    (target / "report.md").write_text(render(report, ranges, plots))


def _ranges(dataset: pads.Dataset, columns: list[str]) -> dict[str, dict]:
    """Per column: non-null count, nulls, min, max and sum, in one pass."""
    out = {name: {"count": 0, "nulls": 0, "min": np.inf, "max": -np.inf, "sum": 0.0} for name in columns}
    for batch in dataset.to_batches(columns=columns) if columns else []:
        for name in columns:
            values = batch.column(name)
            stats, valid = out[name], len(values) - values.null_count
            stats["nulls"] += values.null_count
            if valid:
                low, high = pc.min_max(values).values()
                stats["count"] += valid
                stats["min"], stats["max"] = min(stats["min"], low.as_py()), max(stats["max"], high.as_py())
                stats["sum"] += pc.sum(values.cast(pa.float64())).as_py()
    return out


def _edges(stats: dict, integer: bool) -> np.ndarray:
    low, high = stats["min"], stats["max"]
    if integer and high - low < BINS:  # one bar per value
        return np.arange(low - 0.5, high + 1.5)
    if low == high:
        return np.array([low - 0.5, high + 0.5])
    if _spans_decades(stats):
        return np.geomspace(low, high, BINS + 1)
    return np.linspace(low, high, BINS + 1)


def _spans_decades(stats: dict) -> bool:
    """Perplexities and the like: linear bins would put nearly every record in the first."""
    return stats["min"] > 0 and stats["max"] / stats["min"] >= 100


def _histograms(dataset: pads.Dataset, ranges: dict[str, dict]) -> dict[str, tuple[np.ndarray, ...]]:
    """Per column with values: (kept counts, dropped counts, bin edges), in one pass."""
    names = [name for name, stats in ranges.items() if stats["count"]]
    edges = {name: _edges(ranges[name], pa.types.is_integer(dataset.schema.field(name).type)) for name in names}
    kept = {name: np.zeros(len(edges[name]) - 1, np.int64) for name in names}
    dropped = {name: np.zeros(len(edges[name]) - 1, np.int64) for name in names}
    for batch in dataset.to_batches(columns=[*names, DROP_REASON]) if names else []:
        was_dropped = pc.is_valid(batch.column(DROP_REASON)).to_numpy(zero_copy_only=False)
        for name in names:
            values = batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            valid = ~np.isnan(values)
            kept[name] += np.histogram(values[valid & ~was_dropped], edges[name])[0]
            dropped[name] += np.histogram(values[valid & was_dropped], edges[name])[0]
    return {name: (kept[name], dropped[name], edges[name]) for name in names}


def _plot(path: Path, name: str, kept: np.ndarray, dropped: np.ndarray, edges: np.ndarray, log: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2.6), dpi=100)
    widths, lefts = np.diff(edges), edges[:-1]
    ax.bar(lefts, kept, widths, align="edge", label="kept", color="#4c72b0")
    ax.bar(lefts, dropped, widths, bottom=kept, align="edge", label="dropped here", color="#dd8452")
    if log:
        ax.set_xscale("log")
    ax.set_title(name, fontsize=10)
    ax.set_ylabel("records")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _file_name(column: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", column) + ".png"


def render(report: StageReport, ranges: dict[str, dict], plots: dict[str, str]) -> str:
    """The report's Markdown: counts by reason, a table of the scores, the histograms."""

    def share(n: int) -> str:
        return f"{100 * n / report.rows_in:.1f}%" if report.rows_in else "-"

    lines = [f"`{report.kind}`: kept {report.kept} of {report.rows_in} records ({share(report.kept)}).", ""]
    if report.dropped:
        lines += ["| dropped because | records | share |", "|---|---|---|"]
        lines += [f"| {reason} | {n} | {share(n)} |" for reason, n in report.dropped.items()]
        lines.append("")
    if ranges:
        lines += ["| score | min | mean | max | null |", "|---|---|---|---|---|"]
        for name, s in ranges.items():
            if s["count"]:
                lines.append(
                    f"| `{name}` | {s['min']:.4g} | {s['sum'] / s['count']:.4g} | {s['max']:.4g} | {s['nulls']} |"
                )
            else:
                lines.append(f"| `{name}` | - | - | - | {s['nulls']} |")
        lines.append("")
    if plots:
        lines += [" ".join(f"![{name}]({file})" for name, file in plots.items()), ""]
    return "\n".join(lines)
