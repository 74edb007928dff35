"""Input the tabular stage refuses, each with one line naming the file, the column and what was
expected (the CLI prints it and exits 2), and the rejection loop giving up early with its rate.

Each case used to finish with exit 0 and wrong rows: a condition outside the data written into
every row, a one-row table copied back, a column of numbers and text sampled as one value, an
impossible allowed combination sampled for many minutes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import TypeAdapter
from typer.testing import CliRunner

from generators.tabular.constraints import Checker, Constraint, sample_valid
from generators.tabular.source import TabularSynthConfig, check_before_run
from synth.cli import app
from synth.errors import SpecError, SynthError


def people(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    level = rng.integers(9, 17, rows)
    return pd.DataFrame({
        "age": rng.integers(18, 70, rows),
        "education_num": level,
        "education": np.where(level >= 13, "Bachelors", "HS-grad"),
        "hours": rng.normal(40, 8, rows).round(1),
        "income": rng.choice(["<=50K", ">50K"], rows),
    })  # fmt: skip


def config(tmp_path: Path, frame: pd.DataFrame, **stage) -> TabularSynthConfig:
    path = tmp_path / "people.csv"
    frame.to_csv(path, index=False)
    return TabularSynthConfig.model_validate({"data": {"path": str(path)}, **stage})


def refused(cfg: TabularSynthConfig, match: str) -> str:
    with pytest.raises(SpecError, match=match) as info:
        check_before_run(cfg, stage_seed=0)
    message = str(info.value)
    assert "\n" not in message and "people.csv" in message
    return message


def test_numerical_condition_outside_the_training_range(tmp_path):
    refused(config(tmp_path, people(), conditions={"age": 200}),
            r"conditions.age: 200 is outside the training rows' range \[\d+, \d+\]; expected a value within it, "
            r"or set extrapolate_conditions: true")  # fmt: skip
    check_before_run(config(tmp_path, people(), conditions={"age": 200}, extrapolate_conditions=True), 0)
    check_before_run(config(tmp_path, people(), conditions={"age": 30}), 0)


def test_column_of_numbers_and_text(tmp_path):
    frame = people().astype({"age": object})
    frame.loc[[3, 7], "age"] = "?"
    refused(config(tmp_path, frame), r"column 'age' mixes numbers \(like '\d+'\) and text \(like '\?'\); "
            r"expected one or the other: clean the column, or declare it with metadata.columns.age: categorical")
    check_before_run(config(tmp_path, frame, metadata={"columns": {"age": "categorical"}}), 0)


def test_table_too_small_to_learn_from(tmp_path):
    refused(config(tmp_path, people(1), holdout_fraction=0),
            r"1 training rows \(holdout_fraction 0.0\) are too few to learn from; expected at least 10")
    refused(config(tmp_path, people(2)), r"holdout_fraction 0.2 of 2 rows leaves no train or no holdout row")


def test_table_of_duplicated_rows(tmp_path):
    frame = pd.concat([people(3)] * 40, ignore_index=True)
    refused(config(tmp_path, frame), r"the 96 training rows are copies of only 3 distinct rows .*expected at least "
            r"10 distinct rows")


def test_combinations_take_numerically_coded_categories(tmp_path):
    pair = {"type": "combinations", "columns": ["education", "education_num"]}
    check_before_run(config(tmp_path, people(), constraints=[pair]), 0)
    refused(config(tmp_path, people(), constraints=[pair | {"columns": ["education", "hours"]}]),
            r"constraints\[0\] combinations\(education,hours\): column 'hours' is numerical with fractional "
            r"values; expected a categorical, boolean or whole-number column")  # fmt: skip


def test_impossible_allowed_combination_is_refused_before_sampling(tmp_path):
    allowed = {"type": "combinations", "columns": ["education", "income"],
               "allowed": [["Bachelors", ">50K"], ["Doctorate", ">50K"]]}  # fmt: skip
    refused(config(tmp_path, people(), constraints=[allowed]),
            r"constraints\[0\].allowed\[1\]: 'Doctorate' never occurs in column 'education' of the training rows, "
            r"so no synthetic row can have it; expected one of: 'Bachelors', 'HS-grad'")  # fmt: skip


class Shuffled:
    """Rows drawn column by column from the training rows; counts what it was asked for."""

    def __init__(self, train: pd.DataFrame):
        self.train, self.asked = train, 0

    def sample(self, rows, seed, conditions=None):
        self.asked += rows
        rng = np.random.default_rng(seed)
        return pd.DataFrame({c: rng.choice(self.train[c].to_numpy(), rows) for c in self.train.columns})


def test_rejection_loop_gives_up_early_with_the_rejection_rate():
    """A combination the model almost never makes: it stops after two rounds, not twenty."""
    train = people(200)
    rare = [{"type": "range", "column": "age", "min": 69}, {"type": "range", "column": "hours", "min": 60}]
    checker = Checker(TypeAdapter(list[Constraint]).validate_python(rare), train)
    model = Shuffled(train)
    with pytest.raises(SynthError, match=r"constraints rejected \d+ of \d+ sampled rows \((99|100)\.\d%; most by "
                       r"range\(age\), \d+\): kept \d+ of 100 rows after 2 rounds, and with under 2% of rows kept the "
                       r"rest cannot be reached; loosen the constraints or conditions"):  # fmt: skip
        sample_valid(model, 100, 0, {}, checker, 20, lambda f: f)
    assert model.asked <= 100 + 50 * 100 + 100


def test_the_cli_prints_one_line_and_exits_2(ray_session, tmp_path):
    people().to_csv(tmp_path / "people.csv", index=False)
    stage = {"kind": "tabular_synth", "data": {"path": "people.csv"}, "conditions": {"age": 200}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "t", "output": str(tmp_path / "out"), "stages": [stage]}))
    result = CliRunner().invoke(app, ["generate", str(spec)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "people.csv: conditions.age: 200 is outside" in errors[0]
