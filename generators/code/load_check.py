"""The load check: import each function in the sandbox before anything is spent on its inputs.

A function whose source cannot run on its own there (a third-party package the sandbox's
interpreter lacks, an import from its own repository, a module-level line that raises) makes no
case, however good its inputs. `code_load_check` runs each function's source with no calls in a
sandbox (`generators.code.execute.run_all`, so the same harness and sandbox as `code_execute`) and
drops those that do not load as `load_error`, or as `load_<status>` when the sandbox run itself
failed (a timeout while importing, say). `load_detail` says why (`ModuleNotFoundError: ...`).
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

from generators.code.execute import ExecutionOptions, SandboxServerStage, execution_server, run_all
from synth.registry import register
from synth.sandbox.forkserver import ForkServer
from synth.spec import StageConfig
from synth.stage import FilterStage


class CodeLoadCheckConfig(StageConfig):
    kind: Literal["code_load_check"] = "code_load_check"
    execution: ExecutionOptions = ExecutionOptions()


def load_reason(status: str) -> str | None:
    """The drop reason for a run of no calls that ended with `status`."""
    if status == "ok":
        return None
    return status if status == "load_error" else f"load_{status}"


@register
class CodeLoadCheck(SandboxServerStage, FilterStage):
    kind = "code_load_check"
    Config = CodeLoadCheckConfig
    description = "Load each function in the sandbox with no inputs; drop those that cannot load"

    def start_server(self) -> ForkServer | None:
        return execution_server(self.sandbox, self.config.execution, hash_seed=0)

    def score(self, batch: pa.Table) -> tuple[dict[str, pa.Array | list], list[str | None]]:
        rows = [{**row, "inputs": []} for row in batch.select(["source", "name"]).to_pylist()]
        runs = run_all(self.sandbox, rows, self.config.execution, 0, self.server)
        return {"load_detail": pa.array([r.detail for r in runs], pa.string())}, [load_reason(r.status) for r in runs]
