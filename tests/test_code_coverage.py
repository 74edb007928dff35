"""code_coverage: candidate calls run traced in a real sandbox; those that add lines or outputs are kept."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from generators.code.coverage import CodeCoverage, CodeCoverageConfig, Probe, choose
from generators.code.execute import ExecutionOptions
from synth.stage import StageContext

SIGN = '''def sign(x):
    """Which side of zero."""
    if x > 0:
        return "positive"
    if x < 0:
        return "negative"
    return "zero"
'''

HALVE = '''def halve(n):
    if n is None:
        raise ValueError("no number")
    while n == 7:
        pass
    return n // 2
'''


def stage(**config) -> CodeCoverage:
    ctx = StageContext(run_name="t", run_id="t-1", seed=0, stage_name="code_coverage", stage_index=3,
                       output_dir=Path("."))  # fmt: skip
    coverage = CodeCoverage(CodeCoverageConfig(**config), ctx)
    coverage.setup()
    return coverage


def test_one_call_per_branch_is_kept_and_the_model_wins_ties():
    calls = ["sign(1)", "sign(2)", "sign(3)", "sign(-1)", "sign(-5)", "sign(0)", "sign(9)"]
    origins = ["fallback:hypothesis", "m", "fallback:docstring", "fallback:hypothesis", "fallback:hypothesis",
               "fallback:hypothesis", "m"]  # fmt: skip
    batch = pa.table({"source": [SIGN], "name": ["sign"], "inputs": [calls], "input_origins": [origins]})
    out = stage(inputs_per_function=8).process(batch).to_pylist()[0]
    assert sorted(out["inputs"]) == ["sign(-1)", "sign(0)", "sign(2)"], "one call per branch; sign(2) is the model's"
    assert out["executable_lines"] == 5 and out["covered_lines"] == 5, "every line but the def and the docstring"


def test_calls_that_hang_are_never_kept_and_a_raising_one_only_for_its_branch():
    calls = ["halve(7)", "halve(None)", "halve(10)", "halve(12)"]
    batch = pa.table({"source": [HALVE], "name": ["halve"], "inputs": [calls], "input_origins": [["m"] * 4]})
    out = stage(inputs_per_function=8, execution=ExecutionOptions(case_timeout_s=0.3)).process(batch).to_pylist()[0]
    assert out["inputs"] == ["halve(10)", "halve(12)", "halve(None)"]
    assert out["_drop_reason"] is None


def test_the_models_calls_go_first_while_they_add_lines_and_outputs_come_after_lines():
    lines = frozenset({1, 2, 3, 4, 5})
    calls = [("ok", "a", frozenset({1, 2, 3, 4})), ("ok", "b", frozenset({1, 2})), ("ok", "c", frozenset({1, 2})),
             ("ok", "b", frozenset({1, 5})), ("raised", "E", frozenset({1, 2, 3, 4, 5}))]  # fmt: skip
    origins = ["fallback:hypothesis", "m", "m", "fallback:docstring", "m"]
    # the model's {1, 2} first though hypothesis' runs more; then lines before outputs: the doctest's
    # {5}, hypothesis' {3, 4}; then the model's new output "c"; the raising call runs nothing new
    assert choose(Probe("ok", lines, calls), origins, 8) == [1, 3, 0, 2]
    assert choose(Probe("ok", lines, calls), origins, 2) == [1, 3]


def test_the_cap_holds_and_a_failed_probe_keeps_the_first_calls():
    probe = Probe("ok", frozenset({2, 3}), [("ok", str(i), frozenset({2})) for i in range(6)])
    assert choose(probe, ["m"] * 6, 3) == [0, 1, 2]
    assert choose(Probe("timeout"), ["m"] * 6, 4) == [0, 1, 2, 3]
    assert choose(Probe("ok", frozenset({2}), [("timeout", "", frozenset()), ("unrepresentable", "", frozenset({2}))]),
                  ["m", "m"], 4) == []  # fmt: skip
