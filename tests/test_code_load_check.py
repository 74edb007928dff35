"""code_load_check in a real sandbox: what cannot be imported there is dropped before any input is made."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from generators.code.load_check import CodeLoadCheck, CodeLoadCheckConfig
from synth.stage import StageContext

ROWS = [
    ("double", "def double(x):\n    return 2 * x\n"),
    ("spread", "import numpy\n\ndef spread(xs):\n    return float(numpy.std(xs))\n"),
    ("tidy", "from mylib.text import normalise\n\ndef tidy(s):\n    return normalise(s)\n"),
    ("half", "LIMIT = 1 / 0\n\ndef half(x):\n    return x / 2\n"),
    ("slow", "import time\nWAIT = time.sleep(30)\n\ndef slow(x):\n    return x\n"),
]


def test_functions_that_cannot_load_are_dropped_with_why():
    ctx = StageContext(run_name="t", run_id="t-1", seed=0, stage_name="load", stage_index=1, output_dir=Path("."))
    config = CodeLoadCheckConfig(execution={"limits": {"wall_s": 3, "cpu_s": 2, "memory_mb": 256, "processes": 4}})
    stage = CodeLoadCheck(config, ctx)
    stage.setup()
    batch = pa.table({"name": [n for n, _ in ROWS], "source": [s for _, s in ROWS]})
    out = stage.process(batch)
    assert out.column("_drop_reason").to_pylist() == [None, "load_error", "load_error", "load_error", "load_error"]
    detail = out.column("load_detail").to_pylist()
    assert "numpy" in detail[1] and "mylib" in detail[2] and "ZeroDivisionError" in detail[3]
    assert "longer than the case timeout" in detail[4]  # the harness times the load like a call
