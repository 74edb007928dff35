"""Inputs chosen for coverage: of a function's candidate calls, keep those that run new lines or give new outputs.

`code_inputs` proposes more calls than a function needs (the model's, the doctests', hypothesis
draws); `code_coverage` runs them all once in one sandbox under a line tracer
(`generators.code.coverage_probe`) and keeps up to `inputs_per_function`, greedily. Each step takes,
among calls that return a value, one that runs lines not yet run; when none does, one that gives
an output not yet seen; when neither, a call that raises is taken only if it runs lines no other
did (an error branch); then it stops, so a function whose calls all do the same thing keeps few.
Within a step's tier the model's calls go first, then the doctests', then hypothesis'
(`ORIGIN_ORDER`), then the call adding the most (new lines, plus one for a new output), then the
earlier call. So a fallback call is kept only for what no model call adds: the model's inputs are
the ones asked for, the fallback's fill in what the model missed (every kept call still adds
lines or an output, and lines before outputs). Calls that time out or return something that is
no literal are never kept. Where the probe run fails as a whole, the first `inputs_per_function` calls are kept as
they are and `code_execute` judges them.

A function none of whose calls returns or raises in time is dropped as `no_usable_inputs`.
Replaces `inputs` and `input_origins` with the chosen calls and adds `executable_lines` and
`covered_lines` (the function's lines, and those the chosen calls run); counts `candidates_<origin>`,
`chosen_<origin>`, `lines_executable`, `lines_covered` and `probe_<status>` for failed probes.
"""

from __future__ import annotations

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
from generators.code.execute import HARNESS_PRELOAD, ExecutionOptions, SandboxServerStage
from synth.sandbox.forkserver import ForkServer, start_fork_server
from synth.registry import register
from synth.sandbox import SandboxResult, SandboxUnavailable
from synth.spec import StageConfig
from synth.stage import MapStage, mark_dropped, set_column

log = logging.getLogger(__name__)

ORIGIN_ORDER = ("model", "fallback:docstring", "fallback:hypothesis")
"""Who wins a tie: any origin not named `fallback:*` is a model."""

_STATUSES = ("ok", "raised", "timeout", "unrepresentable")


class CodeCoverageConfig(StageConfig):
    kind: Literal["code_coverage"] = "code_coverage"
    inputs_per_function: int = Field(8, ge=1, le=100, description="Calls kept per function, at most")
    execution: ExecutionOptions = ExecutionOptions(case_timeout_s=0.5)


@dataclass
class Probe:
    """One traced run of a function on its candidates: per call (status, outcome, lines run)."""

    status: str
    executable: frozenset[int] = frozenset()
    calls: list[tuple[str, str, frozenset[int]]] = field(default_factory=list)


@cache
def probe_source() -> str:
    return (Path(__file__).parent / "coverage_probe.py").read_text()


def probe_function(sandbox, source: str, name: str, calls: list[str], options: ExecutionOptions) -> Probe:
    """Run every call of `name` once, traced, in one fresh sandbox (a `Sandbox` or a fork server)."""
    parsed = [parse_call(call, name) for call in calls]
    payload = marshal.dumps((source, name, parsed, options.case_timeout_s, options.max_output_chars))
    return read_probe(sandbox.run_python(probe_source(), payload), len(calls))


def read_probe(result: SandboxResult, expected: int) -> Probe:
    """The probe's lines, checked: the sandbox's output is untrusted."""
    if not result.ok:
        return Probe(result.status)
    try:
        lines = [_probe_line(line) for line in result.stdout.decode("ascii").splitlines()]
    except (UnicodeDecodeError, ValueError):
        return Probe("protocol_error")
    if lines and lines[0][0] == "load_error":
        return Probe("load_error")
    if not lines or lines[0][0] != "lines" or len(lines) != expected + 1:
        return Probe("protocol_error")
    return Probe("ok", lines[0][2], lines[1:])


def _probe_line(line: str) -> tuple[str, str, frozenset[int]]:
    item = json.loads(line)
    if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and isinstance(item[1], str)
            and isinstance(item[2], list) and all(type(n) is int for n in item[2])):  # fmt: skip
        raise ValueError(f"expected [status, outcome, [lines]], got {line[:80]!r}")
    if item[0] not in (*_STATUSES, "lines", "load_error"):
        raise ValueError(f"unknown status {item[0]!r}")
    return item[0], item[1], frozenset(item[2])


def origin_rank(origin: str) -> int:
    return ORIGIN_ORDER.index(origin) if origin in ORIGIN_ORDER else 0


def choose(probe: Probe, origins: list[str], count: int) -> list[int]:
    """Indices of the calls kept, in the order chosen (see the module's docstring)."""
    if probe.status != "ok":
        return list(range(min(count, len(origins))))
    covered: set[int] = set()
    outputs: set[str] = set()
    chosen: list[int] = []
    while len(chosen) < count:
        best, best_key = None, None
        for i, (status, outcome, lines) in enumerate(probe.calls):
            if i in chosen or status not in ("ok", "raised"):
                continue
            new_lines = len(lines - covered)
            gain = new_lines + (outcome not in outputs) if status == "ok" else new_lines
            key = (status == "ok", new_lines > 0, -origin_rank(origins[i]), gain, -i)
            if gain > 0 and (best_key is None or key > best_key):
                best, best_key = i, key
        if best is None:
            break
        chosen.append(best)
        covered |= probe.calls[best][2]
        if probe.calls[best][0] == "ok":
            outputs.add(probe.calls[best][1])
    return chosen


def probe_server(sandbox, options: ExecutionOptions) -> ForkServer | None:
    """The fork server `probe_all` forks from (None without `options.fork_server` or where refused);
    the stage starts it in `setup()` and closes it in `teardown()`."""
    if not options.fork_server:
        return None
    return start_fork_server(sandbox, options.parallel, {"PYTHONHASHSEED": "0"}, HARNESS_PRELOAD)


def probe_all(sandbox, rows: list[dict], options: ExecutionOptions, server: ForkServer | None = None) -> list[Probe]:
    """`probe_function` per row, `options.parallel` at a time, forked from `server`'s zygotes where
    given (else from a server for this call alone, where `options.fork_server`)."""

    def each(runner) -> list[Probe]:
        def one(row: dict) -> Probe:
            return probe_function(runner, row["source"], row["name"], row["inputs"], options)

        with ThreadPoolExecutor(options.parallel) as pool:
            return list(pool.map(one, rows))

    if server is None and options.fork_server:
        server = probe_server(sandbox, options)
        if server is not None:
            with server:
                return probe_all(sandbox, rows, options, server)
    if server is None:
        return each(sandbox)
    try:
        return each(server)
    except SandboxUnavailable as exc:  # a stopped zygote could not start again; still sandboxed, only slower
        log.warning("the fork server stopped working (%s): one bubblewrap sandbox per function", exc)
        return each(sandbox)


@register
class CodeCoverage(SandboxServerStage, MapStage):
    kind = "code_coverage"
    Config = CodeCoverageConfig
    description = "Run each function's candidate calls traced in a sandbox; keep those that add lines or outputs"

    def start_server(self) -> ForkServer | None:
        return probe_server(self.sandbox, self.config.execution)

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["source", "name", "inputs", "input_origins"]).to_pylist()
        probes = probe_all(self.sandbox, rows, self.config.execution, self.server)
        picks = [choose(p, row["input_origins"], self.config.inputs_per_function) for p, row in zip(probes, rows)]
        counts: dict[str, float] = {}
        for row, probe, pick in zip(rows, probes, picks):
            for origin in row["input_origins"]:
                counts[f"candidates_{origin}"] = counts.get(f"candidates_{origin}", 0) + 1
            for i in pick:
                counts[f"chosen_{row['input_origins'][i]}"] = counts.get(f"chosen_{row['input_origins'][i]}", 0) + 1
            if probe.status != "ok":
                counts[f"probe_{probe.status}"] = counts.get(f"probe_{probe.status}", 0) + 1
        covered = [len(frozenset().union(*(p.calls[i][2] for i in pick))) if p.status == "ok" else 0
                   for p, pick in zip(probes, picks)]  # fmt: skip
        executable = [len(p.executable) for p in probes]
        counts.update(lines_executable=sum(executable), lines_covered=sum(covered))
        self.ctx.count(**counts)
        strings = pa.list_(pa.string())

        def chosen(column: str) -> pa.Array:
            return pa.array([[row[column][i] for i in pick] for row, pick in zip(rows, picks)], strings)

        columns = {
            "inputs": chosen("inputs"),
            "input_origins": chosen("input_origins"),
            "executable_lines": pa.array(executable, pa.int32()),
            "covered_lines": pa.array(covered, pa.int32()),
        }
        for name, values in columns.items():
            batch = set_column(batch, name, values)
        return mark_dropped(batch, [None if pick else "no_usable_inputs" for pick in picks])
