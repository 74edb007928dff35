"""generators.code.prompts and filters.quality.code_checks on hand-made function rows (no sandbox, no Ray)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from filters.quality.code_checks import CodeChecksConfig, drop_reason, same_results
from generators.code.prompts import Case2Code, Case2CodeConfig, format_case, partial_function
from generators.code.records import to_case_table
from synth.stage import StageContext

SOURCE = '''import math

def circle(r: float) -> float:
    """Area of a circle of radius r."""
    if r < 0:
        raise ValueError("negative radius")
    area = math.pi * r * r
    return round(area, 2)
'''

ROW = {
    "function_id": "f1", "name": "circle", "module": "geometry", "source": SOURCE,
    "inputs": ["circle(1)", "circle(2)", "circle(-1)", "circle(0.5)", "circle('x')"],
    "input_origins": ["m", "m", "fallback:docstring", "fallback:hypothesis", "m"],
    "outputs": ["3.14", "12.57", "ValueError: negative radius", "0.79", "unrepresentable"],
    "case_status": ["ok", "ok", "raised", "ok", "unrepresentable"],
    "case_ok": [True, True, False, True, False],
}  # fmt: skip


def stage(**config) -> Case2Code:
    ctx = StageContext(run_name="t", run_id="t-1", seed=5, stage_name="case2code", stage_index=5, output_dir=Path("."))
    return Case2Code(Case2CodeConfig(**config), ctx)


def test_one_record_per_usable_case_with_a_seeded_format():
    records = [record for record, reason in stage().cases(ROW)]
    assert [r["input"] for r in records] == ["circle(1)", "circle(2)", "circle(0.5)"]
    assert records == [record for record, _ in stage().cases(ROW)], "same seed, same records"
    table = to_case_table(records)
    assert table.num_rows == 3 and table.column("kind").to_pylist() == ["code"] * 3
    assert [r["model"] for r in records] == ["m", "m", "fallback:hypothesis"]


@pytest.mark.parametrize("fmt", ["infer_function", "predict_output", "complete_function"])
def test_each_format_shows_what_it_should(fmt):
    instruction, response = format_case(fmt, ROW, [1, 0, 2], random.Random(0), SOURCE.strip())
    if fmt == "predict_output":
        assert "circle(2)" in instruction and "def circle" in instruction and response == "12.57"
        assert "circle(1)" not in instruction
    else:
        assert response == SOURCE.strip()
        assert ">>> circle(2)\n12.57" in instruction and "ValueError: negative radius" in instruction
    if fmt == "infer_function":
        assert "math.pi" not in instruction
    if fmt == "complete_function":
        assert "def circle(r: float) -> float:" in instruction and "return round" not in instruction


def test_partial_function_keeps_header_and_docstring_and_cuts_the_rest():
    for seed in range(10):
        partial = partial_function(SOURCE, "circle", random.Random(seed))
        assert partial.startswith("import math\n\ndef circle") and '"""Area of a circle of radius r."""' in partial
        assert "return round" not in partial


def test_only_chosen_formats_are_made():
    records = [record for record, _ in stage(formats={"predict_output": 1.0}).cases(ROW)]
    assert {r["format"] for r in records} == {"predict_output"}
    with pytest.raises(ValueError, match="at least one of them > 0"):
        Case2CodeConfig(formats={"predict_output": 0.0})


@pytest.mark.parametrize(
    ("sandbox", "statuses", "outputs", "allow", "reason"),
    [
        ("timeout", [], [], False, "sandbox_timeout"),
        ("ok", ["raised", "timeout"], ["E: x", ""], False, "all_inputs_raise"),
        ("ok", ["unrepresentable", "too_long", "raised"], ["object", "xxx", "E: x"], False, "unrepresentable_outputs"),
        ("ok", ["ok", "ok", "raised"], ["1", "1", "E: x"], False, "all_outputs_identical"),
        ("ok", ["ok", "ok", "raised"], ["1", "1", "E: x"], True, None),
        ("ok", ["ok", "raised"], ["1", "E: x"], False, "too_few_cases"),
        ("ok", ["ok", "ok"], ["1", "2"], False, None),
    ],
)  # fmt: skip
def test_code_checks_reasons(sandbox, statuses, outputs, allow, reason):
    assert drop_reason(sandbox, statuses, outputs, CodeChecksConfig(allow_exceptions=allow)) == reason


def test_determinism_compares_usable_cases_only():
    first = (["ok", "ok", "raised"], ["1", "2", "E: at 0x7f01"])
    assert same_results(first, (["ok", "ok", "raised"], ["1", "2", "E: at 0x7f99"]), [True, True, False])
    assert not same_results(first, (["ok", "ok", "raised"], ["1", "3", "E: at 0x7f01"]), [True, True, False])
    assert not same_results(first, (["ok", "timeout", "raised"], ["1", "", "E"]), [True, True, False])
