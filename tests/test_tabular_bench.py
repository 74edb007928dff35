"""The tabular bench's verdict lines count only measured wins: a TSTR that was not measured, or a
run without CTGAN, is "not measured", never a TabDDPM win (bench/tabular.py's `verdict`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "tabular.py"


@pytest.fixture(scope="module")
def verdict():
    spec = importlib.util.spec_from_file_location("bench_tabular", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.verdict


def row(model: str, tstr: float | None = 0.9, quality: float = 0.9, fit: float = 1.0, copies: float = 0.0,
        dcr: float = 0.05, holdout_dcr: float | None = 0.04) -> dict:  # fmt: skip
    return {"table": "t", "model": model, "fit s": fit, "sample s": 0.1, "quality": quality, "TSTR": tstr,
            "copies": copies, "DCR": dcr, "holdout DCR": holdout_dcr}  # fmt: skip


def checks(line: str) -> dict[str, str]:
    """'t: TabDDPM best TSTR yes, no exact copies NO' -> {'best TSTR': 'yes', 'no exact copies': 'NO'}"""
    said = line.split(": TabDDPM ", 1)[1]
    out = {}
    for part in said.split(", "):
        for answer in ("not measured", "yes", "NO"):
            if part.endswith(" " + answer):
                out[part.removesuffix(" " + answer)] = answer
    return out


def test_measured_wins_and_losses_are_said(verdict):
    rows = [row("tabddpm", tstr=0.95, fit=2.0), row("ctgan", tstr=0.8, fit=30.0), row("tvae", tstr=0.97, quality=0.8)]
    assert checks(verdict(rows)[0]) == {"best TSTR": "NO", "best quality": "yes", "fit+sample within CTGAN's": "yes",
                                        "no exact copies": "yes", "DCR not below the holdout's": "yes"}  # fmt: skip


def test_a_missing_tstr_is_not_a_win(verdict):
    for rows in ([row("tabddpm", tstr=None), row("ctgan", tstr=0.5)],    # ours unmeasured
                 [row("tabddpm", tstr=0.99), row("ctgan", tstr=None)]):  # a rival's unmeasured
        assert checks(verdict(rows)[0])["best TSTR"] == "not measured"


def test_a_run_without_ctgan_does_not_pass_the_time_check(verdict):
    said = checks(verdict([row("tabddpm"), row("tvae", fit=100.0)])[0])
    assert said["fit+sample within CTGAN's"] == "not measured"
    assert said["best TSTR"] == "yes"  # against the rival that ran


def test_no_holdout_dcr_and_no_rival_are_not_wins(verdict):
    assert checks(verdict([row("tabddpm", holdout_dcr=None), row("ctgan")])[0])["DCR not below the holdout's"] == (
        "not measured")
    assert verdict([row("tabddpm")]) == []  # nothing to compare with: no line at all
