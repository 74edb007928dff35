"""Small real stages for the runner's failure paths, input checks and behaviour under load: a
source that reads a file of numbers (checked before Ray), a map stage that records its worker's
niceness, one that fails inside its Ray worker (as bad input or as a bug), one that meets an
interpreter error once, one that asks an LLM, and one that keeps a CPU busy until told to stop.

Shipped to Ray workers by value; `python -m synth` finds them through an entry point (see
`plugin_env` in the tests).
"""

from __future__ import annotations

import os
import sys
from typing import Literal

import pyarrow as pa
import ray.cloudpickle

from synth.errors import SpecError, SynthError
from synth.registry import register
from synth.spec import InputFile, StageConfig
from synth.stage import MapStage, TableStage

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def read_numbers(path) -> list[int]:
    numbers = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        try:
            numbers.append(int(line))
        except ValueError:
            raise SpecError(f"{path}:{line_no}: expected a whole number, got {line!r}") from None
    return numbers


@register
class NumbersFile(TableStage):
    """One row per line of a text file of whole numbers."""

    kind = "test_numbers_file"
    source = True

    class Config(StageConfig):
        kind: Literal["test_numbers_file"] = "test_numbers_file"
        path: InputFile

    def check_inputs(self) -> None:
        super().check_inputs()
        read_numbers(self.config.path)

    def transform(self, table: None) -> pa.Table:
        return pa.table({"n": pa.array(read_numbers(self.config.path), pa.int64())})


@register
class Niceness(MapStage):
    """Adds the niceness of the worker process that ran the batch."""

    kind = "test_niceness"

    class Config(StageConfig):
        kind: Literal["test_niceness"] = "test_niceness"

    def process(self, batch):
        return batch.append_column("niceness", pa.array([os.nice(0)] * batch.num_rows, pa.int64()))


@register
class FailInWorker(MapStage):
    """Raises inside its Ray worker: `input` raises a SynthError, `bug` a ZeroDivisionError."""

    kind = "test_fail_in_worker"

    class Config(StageConfig):
        kind: Literal["test_fail_in_worker"] = "test_fail_in_worker"
        error: Literal["input", "bug"] = "bug"
        llm: str | None = None  # names a backend, only so a test can name an undefined one

    def process(self, batch):
        if self.config.error == "input":
            raise SynthError(f"row {batch.column('n')[0]}: the stage cannot use this record")
        return batch.append_column("ratio", pa.array([n / 0 for n in batch.column("n").to_pylist()]))


@register
class InterpreterErrorOnce(MapStage):
    """Raises SystemError (an interpreter-internal error, as a corrupted process gives) on its first
    unit while `marker` exists, removing the marker first, so a retry in another process succeeds."""

    kind = "test_interpreter_error_once"

    class Config(StageConfig):
        kind: Literal["test_interpreter_error_once"] = "test_interpreter_error_once"
        marker: str

    def process(self, batch):
        if os.path.exists(self.config.marker):
            os.unlink(self.config.marker)
            raise SystemError("method: bad call flags")
        return batch.append_column("pid", pa.array([os.getpid()] * batch.num_rows, pa.int64()))


@register
class AskLLM(MapStage):
    """Asks the spec's LLM one short question per row; while `fail_marker` exists, the unit holding
    `fail_on` fails after paying for its answers, as a run killed half way would."""

    kind = "test_ask_llm"

    class Config(StageConfig):
        kind: Literal["test_ask_llm"] = "test_ask_llm"
        llm: str = "default"
        fail_marker: str = ""
        fail_on: int = -1

    def process(self, batch):
        from synth.llm import SamplingParams

        numbers = batch.column("n").to_pylist()
        client = self.ctx.llm(self.config.llm)
        try:
            answers = client.generate([[{"role": "user", "content": f"Say the number {n}."}] for n in numbers],
                                      SamplingParams(max_tokens=3, temperature=0, seed=1))  # fmt: skip
        finally:
            client.close()
        if self.config.fail_on in numbers and os.path.exists(self.config.fail_marker):
            raise RuntimeError("stopped after paying, as a killed run would")
        return batch.append_column("answer", pa.array([a.text for a in answers]))


@register
class BurnCPU(MapStage):
    """Spins a CPU per unit until the file `stop` exists (at most `max_s`); touches `started/<pid>` first."""

    kind = "test_burn_cpu"

    class Config(StageConfig):
        kind: Literal["test_burn_cpu"] = "test_burn_cpu"
        stop: str
        started: str
        max_s: float = 600.0

    def process(self, batch):
        import time
        from pathlib import Path

        Path(self.config.started, str(os.getpid())).touch()
        deadline, spins = time.monotonic() + self.config.max_s, 0
        while not os.path.exists(self.config.stop) and time.monotonic() < deadline:
            for _ in range(100_000):
                spins += 1
        return batch.append_column("spins", pa.array([spins] * batch.num_rows, pa.int64()))
