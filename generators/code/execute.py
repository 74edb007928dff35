"""Execution: run each function on all its inputs in ONE fresh sandbox, and record what came out.

`run_function` is the whole protocol: the harness (`generators.code.harness`) and the function's
inputs go into a sandbox; per input, a status and a text come back (see the harness for the
statuses). One sandbox per function, not per input: a function cannot change another's state
or outputs. By default (`fork_server`) each function's sandbox is forked from a warm zygote
(`synth.sandbox.forkserver`), which spares the interpreter start a `synth.sandbox.Sandbox` run pays;
where a zygote cannot build sandboxes, a warning says so and each function gets a bwrap run.

The `code_execute` stage adds, per function row:
- `outputs` (list<string>): per input, `repr` of the result, the exception, or "";
- `case_status` (list<string>): per input, ok / raised / timeout / unrepresentable / too_long;
- `sandbox_status` (string): "ok", or how the whole run failed: a sandbox status (timeout,
  output_limit, signal, exit_error, program_too_large: the function's source is over the
  limits' `program_kb`, checked before anything runs), `load_error` (the source did not load) or `protocol_error`
  (the run ended before all the harness's lines) or `tampered` (a case's process wrote on its
  result pipe something other than the harness's frame, or something other than the harness
  wrote on the run's stdout); `sandbox_detail` says more;
- `sandbox_seconds` (float64).

It never drops rows: `filters.quality.code_checks` decides. Sandboxes of one batch run
`parallel` at a time: they are processes, the worker's threads only wait on them.
"""

from __future__ import annotations

import ast
import json
import logging
import marshal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field

from generators.code.calls import parse_call
from synth.registry import register
from synth.sandbox.forkserver import PRELOAD, ForkServer, start_fork_server
from synth.sandbox import Sandbox, SandboxLimits, SandboxResult, SandboxUnavailable, program_too_large
from synth.spec import StageConfig, StrictModel
from synth.stage import MapStage, set_column

log = logging.getLogger(__name__)

CASE_STATUSES = ("ok", "raised", "timeout", "unrepresentable", "too_long")
HARNESS_PRELOAD = (*PRELOAD, "_json", "select", "_ctypes")
"""What zygotes import for the harness: shared libraries, ~0.6 ms of CPU each to load in every run."""
_STDERR_TAIL = 300


class ExecutionOptions(StrictModel):
    """How functions run; shared by `code_execute` and the `code_determinism` filter."""

    limits: SandboxLimits = SandboxLimits(wall_s=10, cpu_s=5, memory_mb=512, processes=8)
    case_timeout_s: float = Field(1.0, gt=0, description="Wall time of one input before it counts as timeout")
    max_output_chars: int = Field(300, ge=1, description="Longer result reprs are `too_long`")
    python: str | None = Field(None, description="Interpreter inside the sandbox (default: see synth.sandbox)")
    parallel: int = Field(2, ge=1, description="Sandboxes running at once per worker")
    fork_server: bool = Field(
        True, description="Fork each function's sandbox from a warm zygote (synth.sandbox.forkserver), ~3x faster; "
        "false: start bubblewrap and a fresh interpreter per function"
    )  # fmt: skip

    def sandbox(self) -> Sandbox:
        return Sandbox(self.limits, python=self.python)


@dataclass
class FunctionRun:
    """What one sandbox run of a function gave: the run's status and one (status, text) per input."""

    status: str
    detail: str = ""
    case_status: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def reversed(self) -> FunctionRun:
        """The same run with its cases in reverse order (for a run made on reversed inputs)."""
        return FunctionRun(self.status, self.detail, self.case_status[::-1], self.outputs[::-1], self.seconds)


@cache
def harness_source() -> str:
    return (Path(__file__).parent / "harness.py").read_text()


def run_function(
    sandbox: Sandbox | ForkServer, source: str, name: str, calls: list[str], options: ExecutionOptions, hash_seed: int = 0
) -> FunctionRun:
    """Run `name` from `source` on every call in one fresh sandbox; PYTHONHASHSEED is `hash_seed`."""
    too_large = program_too_large(source, options.limits)
    if too_large:
        return FunctionRun(too_large.status, too_large.detail)
    parsed = [parse_call(call, name) for call in calls]
    payload = marshal.dumps((source, name, parsed, options.case_timeout_s, options.max_output_chars))
    result = sandbox.run_python(harness_source(), payload, env={"PYTHONHASHSEED": str(hash_seed)})
    run = _read_run(result, len(calls))
    run.seconds = result.seconds
    return run


def _read_run(result: SandboxResult, expected: int) -> FunctionRun:
    if not result.ok:
        tail = result.stderr.decode(errors="replace").strip()[-_STDERR_TAIL:]
        return FunctionRun(result.status, "; ".join(filter(None, [result.detail, tail])))
    try:  # only the harness writes there: anything else is a forgery
        lines = [_harness_line(line) for line in result.stdout.decode("ascii").splitlines()]
    except (UnicodeDecodeError, ValueError) as exc:
        return FunctionRun("tampered", f"not the harness's output: {str(exc)[:_STDERR_TAIL]}")
    if lines and lines[-1][0] == "tampered":
        return FunctionRun("tampered", lines[-1][1])
    if lines and lines[0][0] == "load_error":
        return FunctionRun("load_error", lines[0][1])
    if not lines or lines[0][0] != "loaded" or len(lines) != expected + 1:
        return FunctionRun("protocol_error", f"expected 'loaded' and {expected} result lines, got {len(lines)} lines")
    statuses, outputs = [s for s, _ in lines[1:]], [t for _, t in lines[1:]]
    return FunctionRun("ok", "", [_checked(s, t) for s, t in zip(statuses, outputs)], outputs)


def _harness_line(line: str) -> tuple[str, str]:
    item = json.loads(line)
    if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
        raise ValueError(f"expected [status, text], got {line[:80]!r}")
    if item[0] not in (*CASE_STATUSES, "loaded", "load_error", "tampered"):
        raise ValueError(f"unknown status {item[0]!r}")
    return item[0], item[1]


def _checked(status: str, text: str) -> str:
    """An `ok` output must parse as a literal here too: the parent does not trust the sandbox's word."""
    if status != "ok":
        return status
    try:
        ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return "unrepresentable"
    return status


def execution_server(sandbox: Sandbox, options: ExecutionOptions, hash_seed: int) -> ForkServer | None:
    """The fork server `run_all` runs functions through: `options.parallel` zygotes with the
    harness compiled and the run's hash seed. None without `options.fork_server`, or where zygotes
    are refused (then each function gets a bubblewrap run). A stage starts it in `setup()` and
    closes it in `teardown()`, so its batches on a worker share the zygotes."""
    if not options.fork_server:
        return None
    env = {"PYTHONHASHSEED": str(hash_seed)}
    return start_fork_server(sandbox, options.parallel, env, HARNESS_PRELOAD, (harness_source(),))


class SandboxServerStage:
    """Mixin of the sandbox stages: `setup()` makes the sandbox and, where the options allow, a
    fork server of it on the worker (`start_server`); `teardown()` closes that server."""

    def start_server(self) -> ForkServer | None:
        return execution_server(self.sandbox, self.config.execution, self.config.hash_seed)

    def setup(self) -> None:
        self.sandbox = self.config.execution.sandbox()
        self.server = self.start_server()

    def teardown(self) -> None:
        if self.server is not None:
            self.server.close()


def run_all(
    sandbox: Sandbox, rows: list[dict], options: ExecutionOptions, hash_seed: int, server: ForkServer | None = None
) -> list[FunctionRun]:
    """`run_function` for each row (`source`, `name`, `inputs`), `options.parallel` at a time,
    through `server` (an `execution_server` of the same options and hash seed) where given; with
    none and `options.fork_server`, through a server started for this call alone."""
    if server is None and options.fork_server:
        server = execution_server(sandbox, options, hash_seed)
        if server is not None:
            with server:
                return run_all(sandbox, rows, options, hash_seed, server)
    if server is None:
        return _run_each(sandbox, rows, options, hash_seed)
    try:
        return _run_each(server, rows, options, hash_seed)
    except SandboxUnavailable as exc:  # a stopped zygote could not start again; still sandboxed, only slower
        log.warning("the fork server stopped working (%s): one bubblewrap sandbox per function", exc)
        return _run_each(sandbox, rows, options, hash_seed)


def _run_each(sandbox: Sandbox | ForkServer, rows: list[dict], options: ExecutionOptions, hash_seed: int) -> list[FunctionRun]:
    def one(row: dict) -> FunctionRun:
        return run_function(sandbox, row["source"], row["name"], row["inputs"], options, hash_seed)

    with ThreadPoolExecutor(options.parallel) as pool:
        return list(pool.map(one, rows))


class CodeExecuteConfig(StageConfig):
    kind: Literal["code_execute"] = "code_execute"
    execution: ExecutionOptions = ExecutionOptions()
    hash_seed: int = Field(0, ge=0, le=4294967295, description="PYTHONHASHSEED of the run")


@register
class CodeExecute(SandboxServerStage, MapStage):
    kind = "code_execute"
    Config = CodeExecuteConfig
    description = "Run every function on its inputs in one sandbox per function, forked from a warm zygote"

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["source", "name", "inputs"]).to_pylist()
        runs = run_all(self.sandbox, rows, self.config.execution, self.config.hash_seed, self.server)
        columns = {
            "outputs": pa.array([r.outputs for r in runs], pa.list_(pa.string())),
            "case_status": pa.array([r.case_status for r in runs], pa.list_(pa.string())),
            "sandbox_status": pa.array([r.status for r in runs], pa.string()),
            "sandbox_detail": pa.array([r.detail for r in runs], pa.string()),
            "sandbox_seconds": pa.array([r.seconds for r in runs], pa.float64()),
        }
        for name, values in columns.items():
            batch = set_column(batch, name, values)
        return batch
