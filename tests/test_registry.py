"""The registry maps each built-in kind to the module that registers it, and imports lazily."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from synth.registry import BUILTIN_STAGES, all_stages, stage_class

ROOT = Path(__file__).resolve().parent.parent


def test_each_builtin_kind_is_registered_by_the_module_the_map_names():
    stages = all_stages()
    assert set(BUILTIN_STAGES) <= set(stages)
    for kind, module in BUILTIN_STAGES.items():
        assert stages[kind].__module__ == module, kind
        assert stages[kind].kind == kind


def test_an_unknown_kind_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown stage kind 'no_such_stage'.*self_instruct"):
        stage_class("no_such_stage")


def test_loading_an_instruct_spec_imports_no_model_library():
    probe = (
        "import sys; from synth.run_spec import load_spec; load_spec('pipelines/instruct.yaml'); "
        "print(sorted(m for m in ('torch', 'transformers', 'sdv', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
