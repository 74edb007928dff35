"""The `synth` command line: generate a dataset from a spec, inspect one, list the stages."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from synth.errors import BugError, SynthError
from synth.manifest import MANIFEST, Manifest, StageReport

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Synthetic training data pipelines on Ray.")
console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    """One line and an exit status: 2 for bad input, 1 for a bug (its line names the traceback's file)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _fail_on_bug(exc: Exception, output: Path | None) -> None:
    from synth.failures import LOG_DIR, bug

    error = exc if isinstance(exc, BugError) else bug(exc, None if output is None else output / LOG_DIR)
    _fail(str(error), code=1)


class _ConsoleProgress:
    def stage_started(self, index: int, total: int, name: str, kind: str) -> None:
        console.print(f"[bold]▶ stage {index + 1}/{total}[/] {name} [dim]({kind})[/]")

    def stage_finished(self, report: StageReport) -> None:
        dropped = sum(report.dropped.values())
        how = "reused from an earlier run" if report.resumed else f"{report.seconds:.1f} s"
        console.print(f"  [green]✓[/] {report.kept} kept, {dropped} dropped, {how}")

    def message(self, text: str) -> None:
        console.print(f"[bold]▶[/] {text}")


def _summary(manifest: Manifest) -> Table:
    table = Table(title=f"{manifest.name}: {manifest.records} records")
    for column in ("stage", "kind", "in", "kept", "dropped (by reason)", "seconds"):
        table.add_column(column, justify="right" if column in ("in", "kept", "seconds") else "left")
    for s in manifest.stages:
        dropped = ", ".join(f"{r}: {n}" for r, n in s.dropped.items()) or "-"
        seconds = "resumed" if s.resumed else f"{s.seconds:.1f}"
        table.add_row(s.name, s.kind, str(s.rows_in), str(s.kept), dropped, seconds)
    return table


@app.command()
def generate(
    spec: Path = typer.Argument(..., help="Pipeline spec (YAML), e.g. pipelines/instruct.yaml"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default: the spec's)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the spec's seed"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Existing Ray cluster (else RAY_ADDRESS)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished dataset in the output folder"),
) -> None:
    """Run a pipeline spec and write a Parquet dataset with its manifest and card."""
    from synth.runner import run
    from synth.run_spec import load_spec

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_spec = None
    try:
        run_spec = load_spec(spec, overrides={"output": output, "seed": seed})
        result = run(run_spec, ray_address=ray_address, overwrite=overwrite, progress=_ConsoleProgress(),
                     spec_file=str(spec))
    except SynthError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug: one line here, the traceback in a file
        _fail_on_bug(exc, None if run_spec is None or not Path(run_spec.output).is_dir() else Path(run_spec.output))
    console.print(_summary(result.manifest))
    console.print(f"dataset: {result.output / 'data'}  card: {result.output / 'README.md'}")


@app.command()
def inspect(
    output: Path = typer.Argument(..., help="A dataset folder written by `synth generate`"),
    rows: int = typer.Option(3, help="Sample records to show"),
) -> None:
    """Show a dataset's schema, counts, drops and a few records."""
    from synth import io

    manifest_file = output / MANIFEST
    if not manifest_file.exists():
        _fail(f"{output}: no {MANIFEST}; not a finished synth dataset")
    manifest = Manifest.read(output)
    console.print(_summary(manifest))
    schema = Table(title="schema")
    schema.add_column("column")
    schema.add_column("type")
    for name, type_ in manifest.columns.items():
        schema.add_row(name, type_)
    console.print(schema)
    _print_reports(output, manifest)
    _print_diversity(output)
    _print_training(output)
    for record in io.read_table(output / "data").slice(0, rows).to_pylist():
        shown = {k: (f"<{len(v)} bytes>" if isinstance(v, bytes) else v) for k, v in record.items()}
        console.print_json(json.dumps(shown, default=str))


def _print_reports(output: Path, manifest: Manifest) -> None:
    """Each stage that left a report (every filter does): its drops by reason, where its files are, and
    the `summary` line of its report.json where it has one (a judge's verdicts, say)."""
    for s in manifest.stages:
        folder = output / "_reports" / s.name
        if not (folder / "report.md").exists():
            continue
        dropped = ", ".join(f"{reason}: {n}" for reason, n in s.dropped.items()) or "none"
        plots = ", ".join(sorted(p.name for p in folder.glob("*.png"))) or "none"
        for line in (f"{s.name}: kept {s.kept} of {s.rows_in}; dropped {dropped}",
                     f"  report: {folder / 'report.md'}", f"  histograms in {folder}: {plots}"):  # fmt: skip
            console.print(line, highlight=False, soft_wrap=True)
        numbers = folder / "report.json"  # a measuring stage's numbers, with a one-line summary
        summary = json.loads(numbers.read_text()).get("summary") if numbers.exists() else None
        if isinstance(summary, str):
            console.print(f"  {summary}", highlight=False, soft_wrap=True)


def _print_diversity(output: Path) -> None:
    """Instruction data: the diversity measured when its card was written."""
    metrics = output / "_reports" / "diversity" / "metrics.json"
    if metrics.exists():
        from generators.instruct.diversity import describe

        console.print(describe(json.loads(metrics.read_text())), highlight=False, soft_wrap=True)
        console.print(f"  report: {metrics.parent / 'report.md'}", highlight=False, soft_wrap=True)


def _print_training(output: Path) -> None:
    """A `synth train` run on this dataset (its default output, OUTPUT/train/): the losses before and after."""
    summary_file = output / "train" / "summary.json"
    if not summary_file.exists():
        return
    summary = json.loads(summary_file.read_text())
    for name, what in (("eval_loss", "eval split"), ("held_out_loss", "held-out human answers")):
        first, last = summary.get(f"{name}_first"), summary.get(f"{name}_last")
        if first is not None and last is not None:
            console.print(f"trained model ({output / 'train'}): loss on the {what} {first:.4f} before training, "
                          f"{last:.4f} after", highlight=False, soft_wrap=True)  # fmt: skip


@app.command("list")
def list_stages() -> None:
    """List the registered stage kinds."""
    from synth.registry import all_stages
    from synth.stage import BlockStage, FilterStage, FitSampleStage, GlobalStage, MapStage, TableStage, TrainStage

    shapes = ((FilterStage, "filter"), (MapStage, "map"), (TableStage, "table"), (FitSampleStage, "fit-sample"),
              (BlockStage, "blocks"), (GlobalStage, "global"), (TrainStage, "train"))
    table = Table(title="stages")
    for column in ("kind", "shape", "description"):
        table.add_column(column)
    for kind, cls in all_stages().items():
        shape = next(name for base, name in shapes if issubclass(cls, base))
        shape = f"source ({shape})" if cls.source else shape
        table.add_row(kind, shape, cls.description or (cls.__doc__ or "").strip().split("\n")[0])
    Console().print(table)


@app.command()
def train(
    spec: Path = typer.Argument(..., help="Training spec (YAML), e.g. pipelines/train_instruct.yaml"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default: the spec's)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the spec's seed"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster for workers > 1"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a training run of another spec or dataset"),
) -> None:
    """Fine-tune or pretrain a model on a Parquet dataset; resumes from the last checkpoint."""
    from synth.train import load_train_spec, run_training

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        train_spec = load_train_spec(spec, overrides={"output": output, "seed": seed})
        model = run_training(train_spec, overwrite=overwrite, ray_address=ray_address)
    except SynthError as exc:
        _fail(str(exc))
    console.print(f"model: {model}  metrics: {model.parent / 'metrics.jsonl'}  plot: {model.parent / 'loss.png'}")


def main() -> None:  # pragma: no cover - console entry for `python -m synth`
    sys.exit(app())
