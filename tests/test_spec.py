"""Spec loading: every mistake a user makes gets one line naming the file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import stages_for_tests  # noqa: F401 - registers the test stages
from synth.errors import SpecError
from synth.run_spec import load_spec

GOOD = """\
name: numbers
seed: 3
stages:
  - kind: test_numbers
    count: 10
  - kind: test_drop_multiples
    of: 2
"""


def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_spec_loads_with_stage_configs(tmp_path):
    spec = load_spec(spec_file(tmp_path, GOOD))
    assert spec.seed == 3
    assert spec.stages[1].of == 2
    assert spec.stage_names == ["test_numbers", "test_drop_multiples"]
    assert spec.llm["default"].backend == "local"


def test_fingerprint_follows_what_decides_records(tmp_path):
    base = load_spec(spec_file(tmp_path, GOOD))
    other_seed = load_spec(spec_file(tmp_path, GOOD.replace("seed: 3", "seed: 4")))
    other_output = load_spec(spec_file(tmp_path, GOOD + "output: elsewhere\n"))
    assert base.fingerprint() != other_seed.fingerprint()
    assert base.fingerprint() == other_output.fingerprint()
    assert base.fingerprint(0) == load_spec(spec_file(tmp_path, GOOD.replace("of: 2", "of: 5"))).fingerprint(0)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = spec_file(tmp_path, GOOD.replace("    count: 10", "    count: [10"))
    message = error_of(path)
    assert message.startswith(f"{path}:")
    assert "malformed YAML" in message


def test_unknown_key_names_its_path_and_line(tmp_path):
    message = error_of(spec_file(tmp_path, GOOD.replace("    of: 2", "    of: 2\n    eof: 3")))
    assert ":8: stages[1].eof: unknown key" in message


def test_unknown_top_level_key(tmp_path):
    message = error_of(spec_file(tmp_path, GOOD + "sed: 4\n"))
    assert "sed: unknown key" in message


def test_wrong_type_says_what_was_expected(tmp_path):
    message = error_of(spec_file(tmp_path, GOOD.replace("count: 10", "count: ten")))
    assert ":5: stages[0].count:" in message
    assert "integer" in message and "'ten'" in message


def test_unknown_stage_kind_lists_known_ones(tmp_path):
    message = error_of(spec_file(tmp_path, GOOD.replace("kind: test_numbers", "kind: test_numbrs")))
    assert ":4: stages[0].kind: unknown stage kind 'test_numbrs'" in message
    assert "test_numbers" in message


def test_missing_spec_file(tmp_path):
    assert "spec file not found" in error_of(tmp_path / "nope.yaml")


def test_duplicate_stage_names(tmp_path):
    text = GOOD + "  - kind: test_drop_multiples\n"
    assert "duplicate stage name 'test_drop_multiples'" in error_of(spec_file(tmp_path, text))


def test_cli_prints_one_line_and_exits_2(tmp_path):
    path = spec_file(tmp_path, "name: x\nstages:\n  - kind: no_such_stage\n")
    proc = subprocess.run([sys.executable, "-m", "synth", "generate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{path}:3: stages[0].kind: unknown stage kind 'no_such_stage'" in proc.stderr.replace("\n", "")


TRAINING = """\
  steps: 4
  warmup_steps: 1
  model: {base: scratch}
  data: {format: pretrain}
"""


def test_a_train_section_is_the_train_stage_written_apart(tmp_path):
    as_stage = load_spec(spec_file(tmp_path, GOOD + "  - kind: train\n" + TRAINING.replace("  ", "    ", 4)))
    as_section = load_spec(spec_file(tmp_path, GOOD + "train:\n" + TRAINING))
    assert as_section == as_stage
    assert [s.kind for s in as_stage.stages] == ["test_numbers", "test_drop_multiples", "train"]
    assert [s.kind for s in as_stage.record_stages] == ["test_numbers", "test_drop_multiples"]
    assert as_stage.train_stages[0].steps == 4
    # training decides a model, not the records: the records' fingerprint leaves it out
    assert as_stage.fingerprint() == load_spec(spec_file(tmp_path, GOOD)).fingerprint()


def test_training_comes_after_every_stage_that_makes_records(tmp_path):
    text = GOOD.replace("  - kind: test_drop_multiples", "  - kind: train\n" + TRAINING.replace("  ", "    ", 4)
                        + "  - kind: test_drop_multiples")
    assert error_of(spec_file(tmp_path, text)).endswith(
        ":6: stages[1]: a train stage trains on the finished dataset: it must come after every stage that makes records")


def test_training_is_described_once(tmp_path):
    text = GOOD + "  - kind: train\n" + TRAINING.replace("  ", "    ", 4) + "train:\n" + TRAINING
    assert "train: the spec has a `kind: train` stage already; describe the training once" in error_of(
        spec_file(tmp_path, text))


def test_a_mistake_in_the_train_section_names_the_section(tmp_path):
    path = spec_file(tmp_path, GOOD + "train:\n  steps: many\n")
    assert error_of(path) == f"{path}:9: train.steps: input should be a valid integer, unable to parse string " \
                             "as an integer, got 'many'"


def test_a_train_stage_reading_other_data_fails_before_anything_runs(tmp_path):
    from synth.runner import check_inputs

    other = tmp_path / "elsewhere"
    other.mkdir()
    training = TRAINING.replace("data: {format: pretrain}", f"data: {{path: {other}}}")
    spec = load_spec(spec_file(tmp_path, GOOD + "train:\n" + training))
    with pytest.raises(SpecError, match=r"stage 'train': data.path: leave it out in a pipeline"):
        check_inputs(spec)
