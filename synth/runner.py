"""The runner: executes a spec's stages on Ray Data, materialises each, resumes, writes the sink.

Layout of an output folder:

    OUTPUT/_run.json                 the spec being run (guards against mixing two specs)
    OUTPUT/_stages/NN-name/          each finished stage's rows (with `_drop_reason`) + _SUCCESS.json
    OUTPUT/_cache/                   LLM responses by request hash, shared by every worker
    OUTPUT/_dropped/name/            dropped rows with their reason (when `write_dropped`)
    OUTPUT/_reports/name/            a filter's drops by reason and score histograms; other reports
    OUTPUT/data/part-*.parquet       the dataset: kept rows only
    OUTPUT/README.md                 the dataset card
    OUTPUT/_manifest.json            provenance; written last, marks the dataset finished

A map stage runs on numbered units of its input (synth/units.py), each written as its own part,
so the order of the records does not depend on which Ray worker finishes first.

A stage whose _SUCCESS.json carries its fingerprint (the spec up to that stage and the content of
the files it and the stages before it read) is not run again: a killed run restarts from the first
unfinished stage. Before Ray starts and before the output folder is touched, every stage checks
its inputs (`Stage.check_inputs`), so bad input fails in one line and leaves nothing behind.

Training stages (`TrainStage`, last in the spec) run once the dataset is written, on
`OUTPUT/data`; a rerun of a spec whose dataset is finished runs only them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data

from synth import failures, io, units
from synth.card import write_card
from synth.errors import OutputExistsError, SpecError, SynthError
from synth.filter_report import write_filter_report
from synth.inputs import check_llm_backend, content_hash, llm_fields
from synth.manifest import MANIFEST, Manifest, StageReport, git_revision, llm_totals, package_versions
from synth.ray_session import init_ray
from synth.registry import stage_class
from synth.run_spec import RunSpec, spec_to_dict
from synth.spec import StageConfig
from synth.stage import (
    DROP_REASON,
    BlockStage,
    FilterStage,
    FitSampleStage,
    GlobalStage,
    MapStage,
    Stage,
    StageContext,
    TableStage,
    TrainStage,
)

log = logging.getLogger(__name__)

RUN_FILE = "_run.json"
SUCCESS = "_SUCCESS.json"


@ray.remote(num_cpus=0)
class RunStats:
    """Counters that stage workers add to (LLM tokens, drops inside generators...)."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def add(self, stage: str, counters: dict[str, float]) -> None:
        for key, value in counters.items():
            self.counters[stage][key] += value

    def get(self, stage: str) -> dict[str, float]:
        return dict(self.counters.get(stage, {}))


class Progress:
    """Hooks the CLI implements to show long work; the default says nothing."""

    def stage_started(self, index: int, total: int, name: str, kind: str) -> None: ...
    def stage_finished(self, report: StageReport) -> None: ...
    def message(self, text: str) -> None: ...


@dataclass
class RunResult:
    output: Path
    manifest: Manifest | None
    """None when the run stopped early (`until_stage`): the dataset is not written yet."""
    stages: list[StageReport]


def run(
    spec: RunSpec,
    *,
    ray_address: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    spec_file: str | None = None,
    until_stage: int | None = None,
) -> RunResult:
    """Run a validated spec into `spec.output`; resumes an unfinished run of the same spec.

    With `until_stage` (an index into `spec.record_stages`) it stops once that stage is
    materialised and writes no dataset (the result has no manifest); a later call resumes from
    there. Airflow runs a pipeline this way, one task per group of stages, then a last call that
    writes the dataset, then one that trains (`train_on_dataset`).
    """
    records = spec.record_stages
    if until_stage is not None and not 0 <= until_stage < len(records):
        raise ValueError(f"until_stage must index spec.record_stages (0..{len(records) - 1}), got {until_stage}")
    progress = progress or Progress()
    output = Path(spec.output).resolve()
    started = datetime.now(timezone.utc)
    revision = git_revision()  # the code that starts the run, even if the checkout moves during it
    # Everything that can be checked is, before Ray starts and before the output folder is touched.
    inputs = check_inputs(spec, output)
    run_id = inputs.run_id(spec.name)
    if spec.train_stages and not overwrite and until_stage is None and _finished_by(output, inputs):
        # The dataset is done; only training is left (it resumes from its last checkpoint).
        progress.message("dataset already written by this spec; training on it")
        train_on_dataset(spec, ray_address=ray_address)
        return RunResult(output=output, manifest=Manifest.read(output), stages=[])
    _claim_output(output, spec.name, inputs.spec_fingerprint, overwrite)
    where = init_ray(ray_address, spec.ray)
    data_context = ray.data.DataContext.get_current()
    data_context.execution_options.preserve_order = True
    # A stage's own exception, not Ray Data's `UserCodeException` (which loses it on the way back):
    # `failures.explain` turns it into the one line the user sees.
    data_context.raise_original_map_exception = True
    stats = RunStats.remote()
    attempt = uuid.uuid4().hex[:12]

    reports: list[StageReport] = []
    upstream: Path | None = None
    for index, config in enumerate(records[: None if until_stage is None else until_stage + 1]):
        ctx = StageContext(
            run_name=spec.name, run_id=run_id, seed=spec.seed, stage_name=spec.stage_names[index],
            stage_index=index, output_dir=output, llm_specs=dict(spec.llm), stats_actor=stats, attempt=attempt,
        )
        progress.stage_started(index, len(records), ctx.stage_name, config.kind)
        try:
            with _quiet_ray_data_errors():
                report = _run_stage(config, ctx, upstream, inputs.fingerprints[index],
                                    rows_in=reports[-1].kept if reports else 0)
        except Exception as exc:
            # A stage's error arrives wrapped in Ray's; the user gets the stage's own line.
            raise failures.explain(exc, ctx.stage_name, output / failures.LOG_DIR) from exc
        reports.append(report)
        progress.stage_finished(report)
        if report.kept == 0:
            raise SynthError(
                f"stage {report.name!r} kept no records (dropped: {dict(report.dropped) or 'none'}); "
                "nothing is left for the stages after it"
            )
        upstream = _stage_dir(output, index, ctx.stage_name)
    if until_stage is not None:
        return RunResult(output=output, manifest=None, stages=reports)

    progress.message("writing the dataset")
    last_dir = _stage_dir(output, len(records) - 1, reports[-1].name)
    _write_data(output / "data", last_dir)
    _write_filter_reports(output, spec, reports)
    if spec.write_dropped:
        _write_dropped(output, spec, reports)
    manifest = _manifest(spec, spec_file, run_id, where, started, revision, reports, output, inputs)
    write_card(output, manifest)
    io.write_json_atomic(output / MANIFEST, manifest.to_json())
    if spec.train_stages:
        progress.message("training on the dataset")
        train_on_dataset(spec, overwrite=overwrite, ray_address=ray_address)
    return RunResult(output=output, manifest=manifest, stages=reports)


@contextmanager
def _quiet_ray_data_errors() -> Iterator[None]:
    """Ray Data prints a failed task's traceback (and calls a stage's error its own bug) before it
    raises; the runner says it in one line instead and keeps the traceback in a log file."""
    loggers = [logging.getLogger(name) for name in _RAY_DATA_ERROR_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


_RAY_DATA_ERROR_LOGGERS = ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state")


def _finished_by(output: Path, inputs: Inputs) -> bool:
    """The output holds the dataset of this spec made from the input files as they are now."""
    if not (output / MANIFEST).exists():
        return False
    manifest = Manifest.read(output)
    return (manifest.spec_fingerprint == inputs.spec_fingerprint and bool(manifest.stages)
            and manifest.stages[-1].fingerprint == inputs.fingerprints[-1])


# ---------------------------------------------------------------- before Ray


@dataclass
class Inputs:
    """What the checks before Ray found: the fingerprints, computed once here and handed along, and
    the hashes of the input files."""

    spec_fingerprint: str
    """`RunSpec.fingerprint()`: the run's identity (run_id, `_run.json`, the manifest)."""
    fingerprints: list[str]
    """Each stage's: the spec up to it and the content of the files it and the stages before it read."""
    files: dict[str, dict[str, str]]
    """Stage name -> {path: sha256 of its content}; recorded in the manifest."""

    def run_id(self, name: str) -> str:
        return f"{name}-{self.spec_fingerprint[:12]}"


def check_inputs(spec: RunSpec, output: Path | None = None) -> Inputs:
    """Check every stage's inputs and the LLM backends still needed; fingerprint each stage.

    Runs on the driver without Ray. A stage's fingerprint covers the spec up to it and the content
    of every file read by it or by a stage before it: editing a seed file in place reruns the
    stage that reads it and every stage after it.
    """
    output = output or Path(spec.output).resolve()
    spec_fingerprint = spec.fingerprint()
    run_id = f"{spec.name}-{spec_fingerprint[:12]}"
    fingerprints: list[str] = []
    files: dict[str, dict[str, str]] = {}
    needed_llms: set[str] = set()
    for stage in _train_stages(spec, output, run_id):
        stage.check_inputs()  # its model folder, held-out file...; what it trains on is not written yet
    for index, config in enumerate(spec.record_stages):
        name = spec.stage_names[index]
        ctx = StageContext(run_name=spec.name, run_id=run_id, seed=spec.seed, stage_name=name, stage_index=index,
                           output_dir=output, llm_specs=dict(spec.llm))
        stage = stage_class(config.kind)(config, ctx)
        check_resources(stage)
        stage.check_inputs()
        files[name] = {str(p): content_hash(p) for p in stage.input_files()}
        read = {n: files[n] for n in spec.stage_names[: index + 1] if files[n]}
        upto = spec.fingerprint(index)
        # Stages that read no file keep the spec's own fingerprint.
        fingerprints.append(hashlib.sha256(json.dumps({"spec": upto, "inputs": read}, sort_keys=True).encode())
                            .hexdigest() if read else upto)
        if not _is_finished(output, index, name, fingerprints[-1]):
            needed_llms.update(llm_fields(config).values())
    for llm in sorted(needed_llms):
        check_llm_backend(llm, spec.llm[llm])
    return Inputs(spec_fingerprint=spec_fingerprint, fingerprints=fingerprints,
                  files={k: v for k, v in files.items() if v})


def check_resources(stage: Stage) -> None:
    """`resources` a stage's shape would ignore are an error, not silently dropped: `concurrency`
    sizes the actor pool of a stateful stage, `batch_size` the units of a map stage. A global stage
    reads its own `resources` (it schedules itself)."""
    if isinstance(stage, GlobalStage):
        return
    res, name = stage.config.resources, stage.ctx.stage_name
    if res.concurrency != 1 and not getattr(stage, "stateful", False):
        raise SpecError(f"stage {name!r}: resources.concurrency: {stage.kind} runs in tasks, not an actor pool "
                        "(only a stateful stage has one); leave it out")
    if res.batch_size is not None and not isinstance(stage, MapStage):
        raise SpecError(f"stage {name!r}: resources.batch_size: {stage.kind} does not work on batches of the stage "
                        "before (only map and filter stages do); leave it out")


def _is_finished(output: Path, index: int, name: str, fingerprint: str) -> bool:
    done = _stage_dir(output, index, name) / SUCCESS
    return done.exists() and io.read_json(done).get("fingerprint") == fingerprint


def train_on_dataset(spec: RunSpec, *, overwrite: bool = False, ray_address: str | None = None) -> list[Path]:
    """Run the spec's training stages, in order, on its written dataset; returns their model folders."""
    output = Path(spec.output).resolve()
    run_id = f"{spec.name}-{spec.fingerprint()[:12]}"
    return [stage.train(output / "data", overwrite=overwrite, ray_address=ray_address)
            for stage in _train_stages(spec, output, run_id)]


def _train_stages(spec: RunSpec, output: Path, run_id: str) -> list[TrainStage]:
    first = len(spec.record_stages)
    stages = []
    for index, config in enumerate(spec.train_stages, start=first):
        ctx = StageContext(run_name=spec.name, run_id=run_id, seed=spec.seed, stage_name=spec.stage_names[index],
                           stage_index=index, output_dir=output, llm_specs=dict(spec.llm))
        stages.append(stage_class(config.kind)(config, ctx))
    return stages


# ---------------------------------------------------------------- output folder


def _claim_output(output: Path, name: str, spec_fingerprint: str, overwrite: bool) -> None:
    """Refuse to clobber a finished dataset or another spec's unfinished run."""
    ours = (output / MANIFEST).exists() or (output / RUN_FILE).exists()
    if output.exists() and any(output.iterdir()) and not ours:
        raise OutputExistsError(f"{output}: folder is not empty and is not a synth output; choose another --output")
    if ours and overwrite:
        shutil.rmtree(output)
    elif (output / MANIFEST).exists():
        raise OutputExistsError(
            f"{output}: holds a finished dataset ({MANIFEST}); pass --overwrite to replace it or choose another --output"
        )
    elif (output / RUN_FILE).exists():
        previous = io.read_json(output / RUN_FILE).get("fingerprint")
        if previous != spec_fingerprint:
            raise OutputExistsError(
                f"{output}: holds an unfinished run of a different spec or seed; "
                "pass --overwrite to discard it or choose another --output"
            )
        log.info("resuming the unfinished run in %s", output)
    output.mkdir(parents=True, exist_ok=True)
    io.write_json_atomic(output / RUN_FILE, {"name": name, "fingerprint": spec_fingerprint})


def _stage_dir(output: Path, index: int, name: str) -> Path:
    return output / "_stages" / f"{index:02d}-{name}"


# ---------------------------------------------------------------- stages


def _run_stage(
    config: StageConfig, ctx: StageContext, upstream: Path | None, fingerprint: str, rows_in: int
) -> StageReport:
    folder = _stage_dir(ctx.output_dir, ctx.stage_index, ctx.stage_name)
    done = folder / SUCCESS
    if done.exists():
        report = StageReport.from_json(io.read_json(done))
        if report.fingerprint == fingerprint:
            report.resumed = True
            log.info("stage %s: finished in an earlier run, reusing %d records", ctx.stage_name, report.kept)
            return report
    io.remove_temp_siblings(folder)
    started = time.perf_counter()
    stage = stage_class(config.kind)(config, ctx)
    tmp = io.temp_sibling(folder)
    _execute(stage, upstream, tmp)
    total, dropped = io.drop_counts(tmp)
    counters = ray.get(ctx.stats_actor.get.remote(ctx.stage_name)) if ctx.stats_actor else {}
    report = StageReport(
        index=ctx.stage_index, name=ctx.stage_name, kind=config.kind, rows_in=rows_in, rows_out=total,
        kept=total - sum(dropped.values()), dropped=dict(sorted(dropped.items())),
        seconds=round(time.perf_counter() - started, 3), fingerprint=fingerprint, counters=counters,
    )
    io.write_json_atomic(tmp / SUCCESS, report.to_json())
    io.commit_dir(tmp, folder)
    return report


def _execute(stage: Stage, upstream: Path | None, target: Path) -> None:
    """Run one stage from the upstream stage's folder into `target` (a temporary folder), by its shape."""
    if stage.source and upstream is not None:
        raise SynthError(f"stage {stage.ctx.stage_name!r} ({stage.kind}) is a source: it must come first")
    if not stage.source and upstream is None:
        raise SynthError(f"stage {stage.ctx.stage_name!r} ({stage.kind}) needs input: put a source stage first")
    if isinstance(stage, MapStage):
        _run_map_stage(stage, upstream, target)
    elif isinstance(stage, TableStage):
        _run_table_stage(stage, upstream, target)
    elif isinstance(stage, BlockStage):
        if isinstance(stage, FitSampleStage):
            _run_in_one_task(stage, upstream, _fit_job)
        _run_block_stage(stage, target)
    elif isinstance(stage, GlobalStage):
        _write_dataset(stage.apply(_ordered_dataset(upstream)), target)
    else:
        raise TypeError(f"{type(stage).__name__} is not a MapStage, TableStage, BlockStage or GlobalStage")


def ray_options(stage: Stage) -> dict:
    """The one place a stage's `resources` become Ray options, for its tasks, actors and Ray Data
    operators alike: CPUs, GPUs (when asked for), custom resources, the workers' environment."""
    res = stage.config.resources
    options: dict = {"num_cpus": res.num_cpus}
    if res.num_gpus:
        options["num_gpus"] = res.num_gpus
    if res.resources:
        options["resources"] = dict(res.resources)
    if env := stage.worker_env():
        options["runtime_env"] = {"env_vars": env}
    return options


def _write_dataset(ds: ray.data.Dataset, target: Path) -> None:
    ds = ds.map_batches(_with_reason_column, batch_format="pyarrow")
    io.write_parts(ds, target, min_rows_per_file=10_000, row_group_size=units.DEFAULT_UNIT_ROWS)
    if not io.parquet_files(target):
        io.write_empty_part(target, _empty_schema(ds))


def _ordered_dataset(folder: Path) -> ray.data.Dataset:
    """A stage's kept rows for a whole-dataset stage, block by block in the stage's order.

    The driver reads the blocks and hands Ray their references, so their order is fixed here
    rather than by which read task finishes first.
    """
    return ray.data.from_arrow_refs([ray.put(units.read_unit(u)) for u in units.plan_units(folder, None)])


def _write_part(table: pa.Table, target: Path, index: int) -> None:
    pq.write_table(_with_reason_column(table), units.unit_file(target, index), row_group_size=units.DEFAULT_UNIT_ROWS)


@contextmanager
def _set_up(stage: Stage) -> Iterator[Stage]:
    """The stage's setup() and teardown() around its work, on the worker that does it."""
    stage.setup()
    try:
        yield stage
    finally:
        stage.teardown()


# ---------------------------------------------------------------- whole-table jobs


def _read_kept(folder: str | None) -> pa.Table | None:
    """Every kept row of a stage folder, in its order (None for no folder: a source)."""
    if folder is None:
        return None
    tables = [units.read_unit(u) for u in units.plan_units(Path(folder), None)]
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def _table_job(stage_cls: type[TableStage], config: StageConfig, ctx: StageContext, upstream: str | None,
               target: str) -> int:
    with _set_up(stage_cls(config, ctx)) as stage:
        table = stage.transform(_read_kept(upstream))
    Path(target).mkdir(parents=True)
    _write_part(table, Path(target), 0)
    return table.num_rows


def _fit_job(stage_cls: type[FitSampleStage], config: StageConfig, ctx: StageContext, upstream: str | None) -> None:
    with _set_up(stage_cls(config, ctx)) as stage:
        stage.fit(_read_kept(upstream))


def _run_in_one_task(stage: Stage, upstream: Path | None, job, *args) -> object:
    """`job(stage class, config, ctx, upstream folder, *args)` in ONE Ray task with the stage's resources."""
    log.info("%s: one task with every kept row of the stage before (%s)", stage.ctx.stage_name, ray_options(stage))
    task = ray.remote(**ray_options(stage))(job)
    folder = None if upstream is None else str(upstream)
    return ray.get(task.remote(type(stage), stage.config, stage.ctx, folder, *args))


def _run_table_stage(stage: TableStage, upstream: Path | None, target: Path) -> None:
    if stage.on_driver:
        _table_job(type(stage), stage.config, stage.ctx, None if upstream is None else str(upstream), str(target))
    else:
        _run_in_one_task(stage, upstream, _table_job, str(target))


# ---------------------------------------------------------------- block plans


class _Worker:
    """Holds one stage instance on a Ray worker: setup() when it starts, teardown() when it ends.

    Called with a batch of item numbers; `do` makes item i and writes it as part i, so the order
    of the output does not depend on which worker finishes first."""

    def __init__(self, stage_cls: type[Stage], config: StageConfig, ctx: StageContext, items: list, target: str):
        self.stage: Stage | None = stage_cls(config, ctx)
        self.stage.setup()
        self.items, self.target = items, Path(target)

    def __call__(self, batch: pa.Table) -> pa.Table:
        try:
            rows = [self.do(index) for index in batch.column("unit").to_pylist()]
        except SystemError:
            # An interpreter-internal error: this process's memory can't be trusted (CI met one from
            # a freed method definition in a long-reused worker). Ending the process makes Ray retry
            # the units in a fresh worker; what they paid is in the LLM cache, and parts are rewritten.
            log.exception("%s: interpreter error; ending this worker so Ray retries its units", self.stage.ctx.stage_name)
            logging.shutdown()
            os._exit(70)  # EX_SOFTWARE
        return pa.table({"unit": batch.column("unit"), "rows": rows})

    def do(self, index: int) -> int:
        raise NotImplementedError

    def close(self) -> None:
        if self.stage is not None:
            self.stage.teardown()
            self.stage = None

    def __del__(self) -> None:
        # Ray Data deletes an actor's callable when the actor exits gracefully.
        self.close()


class _BlockWorker(_Worker):
    def do(self, index: int) -> int:
        table = self.stage.make(self.items[index])
        _write_part(table, self.target, index)
        return table.num_rows


def _run_block_stage(stage: BlockStage, target: Path) -> None:
    blocks = stage.plan()
    log.info("%s: %d blocks in %s", stage.ctx.stage_name, len(blocks), "an actor pool" if stage.stateful else "tasks")
    target.mkdir(parents=True)
    _map_over(stage, _BlockWorker, blocks, target)
    stage.finish([units.unit_file(target, i) for i in range(len(blocks))])
    if not io.parquet_files(target):
        io.write_empty_part(target, pa.schema([(DROP_REASON, pa.string())]))
    units.unify_parts(target)


def _map_over(stage: Stage, worker: type, items: list, target: Path) -> None:
    """`worker(stage class, config, ctx, items, target)` over the numbered items, one at a time:
    in an actor pool of `resources.concurrency` for a stateful stage, else one task per item (each
    task sets the stage up and tears it down)."""
    if not items:
        return
    work = ray.data.from_items([{"unit": i} for i in range(len(items))], override_num_blocks=len(items))
    args = (type(stage), stage.config, stage.ctx, items, str(target))
    if stage.stateful:
        work = work.map_batches(worker, fn_constructor_args=args, batch_size=1, batch_format="pyarrow",
                                compute=ray.data.ActorPoolStrategy(size=stage.config.resources.concurrency),
                                **ray_options(stage))  # fmt: skip
    else:
        work = work.map_batches(_InTask(worker, args), batch_size=1, batch_format="pyarrow", **ray_options(stage))
    work.materialize()


class _InTask:
    """A worker class run in a task per item: built (setup), used once, closed (teardown)."""

    def __init__(self, worker: type[_Worker], args: tuple):
        self.worker, self.args = worker, args

    def __call__(self, batch: pa.Table) -> pa.Table:
        instance = self.worker(*self.args)
        try:
            return instance(batch)
        finally:
            instance.close()


# ---------------------------------------------------------------- map stages


class _UnitWorker(_Worker):
    """Runs a map stage on units of the stage before; a stateful one says how far it got."""

    rows_done = 0
    started = 0.0

    def do(self, index: int) -> int:
        self.started = self.started or time.perf_counter()
        rows = _run_unit(self.stage, self.items, self.target, index)
        if self.stage.stateful:
            # Model stages take minutes per unit; a line per unit shows they move (Ray forwards it).
            self.rows_done += rows
            log.info("%s: %d rows done by this worker in %.0f s", self.stage.ctx.stage_name, self.rows_done,
                     time.perf_counter() - self.started)
        return rows


def _run_unit(stage: MapStage, plan: list, target: Path, index: int) -> int:
    """Process unit `index` and write its part; returns the input rows done."""
    rows = units.read_unit(plan[index])
    _write_part(stage.process(rows), target, index)
    return rows.num_rows


def _run_map_stage(stage: MapStage, upstream: Path, target: Path) -> None:
    plan = units.plan_units(upstream, stage.config.resources.batch_size)
    target.mkdir(parents=True)
    _map_over(stage, _UnitWorker, plan, target)
    units.unify_parts(target)


def _with_reason_column(batch: pa.Table) -> pa.Table:
    """Every stage output has a string `_drop_reason` (null = kept), so parts share one schema."""
    if DROP_REASON not in batch.column_names:
        return batch.append_column(DROP_REASON, pa.nulls(batch.num_rows, pa.string()))
    column = batch.column(DROP_REASON)
    if column.type != pa.string():
        batch = batch.set_column(batch.schema.get_field_index(DROP_REASON), DROP_REASON, column.cast(pa.string()))
    return batch


def _empty_schema(ds: ray.data.Dataset) -> pa.Schema:
    schema = ds.schema()
    if schema is None:
        return pa.schema([(DROP_REASON, pa.string())])
    return pa.schema(zip(schema.names, schema.types))


# ---------------------------------------------------------------- sink


def _write_data(target: Path, last_stage: Path) -> None:
    io.remove_temp_siblings(target)
    tmp = io.temp_sibling(target)
    io.copy_rows(last_stage, tmp, dropped=False)
    io.commit_dir(tmp, target)


def _write_filter_reports(output: Path, spec: RunSpec, reports: list[StageReport]) -> None:
    """For the card: each filter's drops by reason and histograms of the scores it added."""
    for config, report, before in zip(spec.record_stages[1:], reports[1:], reports):
        if issubclass(stage_class(config.kind), FilterStage):
            stage_dir, input_dir = (_stage_dir(output, r.index, r.name) for r in (report, before))
            write_filter_report(output / "_reports" / report.name, report, stage_dir, input_dir)


def _write_dropped(output: Path, spec: RunSpec, reports: list[StageReport]) -> None:
    for report in reports:
        if not report.dropped:
            continue
        target = output / "_dropped" / report.name
        io.remove_temp_siblings(target)
        tmp = io.temp_sibling(target)
        io.copy_rows(_stage_dir(output, report.index, report.name), tmp, dropped=True)
        io.commit_dir(tmp, target)


def _manifest(
    spec: RunSpec, spec_file: str | None, run_id: str, where: str, started: datetime, revision: str | None,
    reports: list[StageReport], output: Path, inputs: Inputs,
) -> Manifest:
    data_dir = output / "data"
    schema = io.dataset_schema(data_dir)
    return Manifest(
        name=spec.name,
        run_id=run_id,
        seed=spec.seed,
        records=reports[-1].kept,
        columns={name: str(type_) for name, type_ in zip(schema.names, schema.types)},
        files=[f.name for f in io.parquet_files(data_dir)],
        stages=reports,
        drops={r.name: r.dropped for r in reports if r.dropped},
        llm=llm_totals(reports),
        spec=spec_to_dict(spec),
        spec_file=spec_file,
        spec_fingerprint=inputs.spec_fingerprint,
        inputs=inputs.files,
        versions=package_versions(),
        git_revision=revision,
        ray=where,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )

