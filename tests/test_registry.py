"""The registry maps each built-in kind to the module that registers it, imports lazily, and keeps
training stages and training configs together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from synth.registry import BUILTIN_STAGES, all_stages, register, stage_class
from synth.spec import StageConfig, TrainStageConfig
from synth.stage import MapStage, TrainStage

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


class LooseTrainConfig(StageConfig):
    kind: Literal["loose_train"] = "loose_train"


class LooseTrain(TrainStage):
    """A training stage whose config is a record stage's: the spec loader would run it as one."""

    kind = "loose_train"
    Config = LooseTrainConfig


class MisplacedConfig(TrainStageConfig):
    kind: Literal["misplaced_train_config"] = "misplaced_train_config"


class Misplaced(MapStage):
    """A record stage whose config is a training stage's: the loader would hold it back until the data is written."""

    kind = "misplaced_train_config"
    Config = MisplacedConfig


def test_a_train_stage_needs_a_train_stage_config_and_the_error_names_the_class():
    with pytest.raises(TypeError, match=r"^LooseTrain is a TrainStage: its Config \(LooseTrainConfig\) must be based "
                                        r"on synth\.spec\.TrainStageConfig$"):  # fmt: skip
        register(LooseTrain)
    with pytest.raises(TypeError, match=r"^Misplaced\.Config \(MisplacedConfig\) is a TrainStageConfig"):
        register(Misplaced)
    for kind in ("loose_train", "misplaced_train_config"):
        with pytest.raises(KeyError, match="unknown stage kind"):
            stage_class(kind)  # neither was registered
    assert issubclass(stage_class("train").Config, TrainStageConfig)  # the LLM training stage passes
