"""Execution checks for code functions: keep those whose cases make good, reproducible training data.

`code_checks` reads what `code_execute` recorded and drops a function, first failing check wins:
- `tampered`: the function wrote on the harness's result channel, or forged its lines
  (`generators.code.harness`); nothing it returned is kept;
- `sandbox_<status>`: the sandbox run failed as a whole (timeout, output_limit, signal,
  exit_error, load_error, protocol_error, program_too_large; `sandbox_detail` says more);
- `all_inputs_raise`: every input raised or timed out;
- `unrepresentable_outputs`: no input returned a value that is a Python literal of bounded size
  (and, where exceptions are not allowed as outputs, none is left);
- `too_few_cases`: fewer than `min_cases` usable cases;
- `all_outputs_identical`: fewer than `min_distinct_outputs` different outputs among usable cases.
A case is usable when it returned a representable value, or raised and `allow_exceptions` is on
(the exception is then the expected output). Adds `case_ok` (list<bool>), `usable_cases` and
`distinct_outputs`; counts case statuses as `cases_<status>`.

`code_determinism` runs each function again in a fresh sandbox, with another PYTHONHASHSEED and
its inputs in reverse order, and drops it as `nondeterministic` when any usable case's status or
output differs (time, randomness, ids, set order of strings, state carried from call to call...),
or as `rerun_<status>` when the second run fails.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field

from generators.code.execute import ExecutionOptions, SandboxServerStage, run_all
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import FilterStage


class CodeChecksConfig(StageConfig):
    kind: Literal["code_checks"] = "code_checks"
    allow_exceptions: bool = Field(False, description="An input that raises is a case, its exception the output")
    min_cases: int = Field(2, ge=1, description="Usable cases a function needs")
    min_distinct_outputs: int = Field(2, ge=1, description="Different outputs a function needs")


def usable(status: str, allow_exceptions: bool) -> bool:
    return status == "ok" or (allow_exceptions and status == "raised")


def drop_reason(sandbox_status: str, statuses: list[str], outputs: list[str], config: CodeChecksConfig) -> str | None:
    """Why a function's run makes no cases worth keeping, or None."""
    if sandbox_status == "tampered":
        return "tampered"
    if sandbox_status != "ok":
        return f"sandbox_{sandbox_status}"
    if all(s in ("raised", "timeout") for s in statuses):
        return "all_inputs_raise"
    ok = [o for s, o in zip(statuses, outputs) if usable(s, config.allow_exceptions)]
    if not ok:
        return "unrepresentable_outputs"
    if len(ok) < config.min_cases:
        return "too_few_cases"
    if len(set(ok)) < config.min_distinct_outputs:
        return "all_outputs_identical"
    return None


@register
class CodeChecks(FilterStage):
    kind = "code_checks"
    Config = CodeChecksConfig
    description = "Drop functions that fail in the sandbox, always raise, or give unusable or identical outputs"

    def score(self, batch: pa.Table) -> tuple[dict[str, pa.Array | list], list[str | None]]:
        cfg = self.config
        sandbox = batch.column("sandbox_status").to_pylist()
        statuses = batch.column("case_status").to_pylist()
        outputs = batch.column("outputs").to_pylist()
        case_ok = [[usable(s, cfg.allow_exceptions) for s in row] for row in statuses]
        distinct = [len({o for o, ok in zip(out, oks) if ok}) for out, oks in zip(outputs, case_ok)]
        reasons = [drop_reason(*row, cfg) for row in zip(sandbox, statuses, outputs)]
        counts: dict[str, float] = {}
        for status in (s for row in statuses for s in row):
            counts[f"cases_{status}"] = counts.get(f"cases_{status}", 0) + 1
        self.ctx.count(**counts)
        columns = {
            "case_ok": pa.array(case_ok, pa.list_(pa.bool_())),
            "usable_cases": pa.array([sum(oks) for oks in case_ok], pa.int32()),
            "distinct_outputs": pa.array(distinct, pa.int32()),
        }
        return columns, reasons


class CodeDeterminismConfig(StageConfig):
    kind: Literal["code_determinism"] = "code_determinism"
    execution: ExecutionOptions = ExecutionOptions()
    hash_seed: int = Field(1, ge=0, le=4294967295, description="PYTHONHASHSEED of the second run: not code_execute's")


def same_results(first: tuple[list[str], list[str]], second: tuple[list[str], list[str]], case_ok: list[bool]) -> bool:
    """Whether two runs' (statuses, outputs) agree on every usable case."""
    pairs = zip(case_ok, zip(*first), zip(*second))
    return len(first[0]) == len(second[0]) and all(a == b for ok, a, b in pairs if ok)


@register
class CodeDeterminism(SandboxServerStage, FilterStage):
    kind = "code_determinism"
    Config = CodeDeterminismConfig
    description = "Run each function again in a fresh sandbox with another hash seed; drop it if outputs differ"

    def score(self, batch: pa.Table) -> tuple[dict[str, pa.Array | list], list[str | None]]:
        rows = batch.select(["source", "name", "inputs", "case_status", "outputs", "case_ok"]).to_pylist()
        backwards = [{**row, "inputs": row["inputs"][::-1]} for row in rows]
        cfg = self.config
        runs = run_all(self.sandbox, backwards, cfg.execution, cfg.hash_seed, self.server)
        reruns = [run.reversed() for run in runs]
        reasons = []
        for row, rerun in zip(rows, reruns):
            first, second = (row["case_status"], row["outputs"]), (rerun.case_status, rerun.outputs)
            if rerun.status != "ok":
                reasons.append(f"rerun_{rerun.status}")
            else:
                reasons.append(None if same_results(first, second, row["case_ok"]) else "nondeterministic")
        return {"rerun_seconds": pa.array([r.seconds for r in reruns], pa.float64())}, reasons
