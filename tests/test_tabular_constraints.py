"""Constraints and the SDV synthesizers: every kind rejects what breaks it and counts it, the
rejection loop meets them all or says why not, and SDV models fit, sample with conditions and
constraints, save and load, and repeat themselves from a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter

from generators.tabular.constraints import Checker, Constraint, check_constraints, sample_valid
from generators.tabular.data import TableMeta
from generators.tabular.synthesizers import load_synthesizer, make_synthesizer, parse_params, save_synthesizer
from synth.errors import SpecError, SynthError

CONSTRAINTS = TypeAdapter(list[Constraint])


def table(rows: int = 150, seed: int = 0) -> tuple[pd.DataFrame, TableMeta]:
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 50, rows)
    frame = pd.DataFrame({
        "low": low, "high": low + rng.uniform(0, 30, rows), "age": rng.integers(18, 90, rows),
        "city": rng.choice(["paris", "lyon", "nice"], rows), "coast": rng.random(rows) < 0.5,
    })  # fmt: skip
    frame.loc[frame["city"] == "lyon", "coast"] = False  # lyon is never on the coast
    roles = {"low": "numerical", "high": "numerical", "age": "numerical", "city": "categorical", "coast": "boolean"}
    return frame, TableMeta(columns=roles, target="city")


def constraints(*items: dict) -> list:
    return CONSTRAINTS.validate_python(list(items))


SOME = constraints(
    {"type": "range", "column": "age", "min": 18, "max": 89},
    {"type": "inequality", "low": "low", "high": "high"},
    {"type": "combinations", "columns": ["city", "coast"]},
)


def breaks(frame: pd.DataFrame) -> dict[str, int]:
    return {
        "range": int((~frame["age"].between(18, 89)).sum()),
        "inequality": int((frame["low"] > frame["high"]).sum()),
        "combinations": int(((frame["city"] == "lyon") & frame["coast"].astype(bool)).sum()),
    }


# ---------------------------------------------------------------- the checker


def test_checker_rejects_each_kind_and_counts_it_under_the_first_broken():
    train, _ = table()
    bad = pd.DataFrame({"low": [1.0, 5.0, 1.0, 1.0], "high": [2.0, 4.0, 2.0, 2.0], "age": [30, 30, 95, 30],
                        "city": ["paris", "paris", "paris", "lyon"], "coast": [True, True, True, True]})  # fmt: skip
    keep, rejected = Checker(SOME, train).keep(bad)
    assert keep.tolist() == [True, False, False, False]
    assert rejected == {"range(age)": 1, "inequality(low<=high)": 1, "combinations(city,coast)": 1}


def test_allowed_combinations_from_the_spec_replace_the_training_ones():
    train, _ = table()
    only = constraints({"type": "combinations", "columns": ["city", "coast"], "allowed": [["nice", True]]})
    frame = pd.DataFrame({"city": ["nice", "nice", "paris"], "coast": [True, False, True]})
    assert Checker(only, train).keep(frame)[0].tolist() == [True, False, False]


def test_uniqueness_holds_across_the_batches_one_checker_sees():
    checker = Checker(constraints({"type": "unique", "columns": ["age"]}), table()[0])
    first, rejected = checker.keep(pd.DataFrame({"age": [1, 2, 2, 3]}))
    second, _ = checker.keep(pd.DataFrame({"age": [3, 4]}))
    assert first.tolist() == [True, True, False, True] and rejected == {"unique(age)": 1}
    assert second.tolist() == [False, True]


def test_nulls_pass_range_and_inequality():
    checker = Checker(SOME[:2], table()[0])
    frame = pd.DataFrame({"low": [np.nan, 1.0], "high": [1.0, np.nan], "age": [np.nan, 40]})
    assert checker.keep(frame)[0].tolist() == [True, True]


def test_constraints_must_fit_the_roles_and_hold_on_the_training_rows():
    train, meta = table()
    wrong_role = r"constraints\[0\] range\(city\): column 'city' is categorical; expected a learned numerical"
    with pytest.raises(SpecError, match=wrong_role):
        check_constraints(constraints({"type": "range", "column": "city", "min": 0}), meta, train, "t.csv")
    with pytest.raises(SpecError, match=r"inequality\(high<=low\) is broken by 150 of 150 training rows"):
        check_constraints(constraints({"type": "inequality", "low": "high", "high": "low"}), meta, train, "t.csv")
    with pytest.raises(ValueError, match="min 5.0 is above max 1.0"):
        constraints({"type": "range", "column": "age", "min": 5, "max": 1})


class NoisySynthesizer:
    """Rows like the training rows but with every column shuffled on its own: breaks constraints often."""

    def __init__(self, train: pd.DataFrame):
        self.train = train

    def sample(self, rows, seed, conditions=None):
        rng = np.random.default_rng(seed)
        return pd.DataFrame({c: rng.choice(self.train[c].to_numpy(), rows) for c in self.train.columns})


def test_rejection_loop_meets_every_constraint_and_reports_the_rate():
    train, _ = table()
    rows, stats = sample_valid(NoisySynthesizer(train), 300, 0, {}, Checker(SOME, train), 20, lambda f: f)
    assert len(rows) == 300 and breaks(rows) == {"range": 0, "inequality": 0, "combinations": 0}
    rejected = sum(n for k, n in stats.items() if k.startswith("rejected:"))
    assert stats["sampled"] >= 300 + rejected and stats["rejected:inequality(low<=high)"] > 0


def test_rejection_loop_gives_up_with_the_constraint_to_blame():
    train, _ = table()
    impossible = constraints({"type": "range", "column": "age", "min": 200})
    blame = r"rejected 50 of 50 sampled rows \(100.0%; most by range\(age\), 50\): kept 0 of 50 rows in 1 rounds.*"
    with pytest.raises(SynthError, match=blame + "max_sampling_rounds"):
        sample_valid(NoisySynthesizer(train), 50, 0, {}, Checker(impossible, train), 1, lambda f: f)


# ---------------------------------------------------------------- SDV synthesizers


SDV_MODELS = [
    {"model": "gaussian_copula"},
    {"model": "ctgan", "epochs": 2, "batch_size": 50, "pac": 5, "generator_dim": [16], "discriminator_dim": [16]},
    {"model": "tvae", "epochs": 2, "batch_size": 50, "compress_dims": [16], "decompress_dims": [16]},
]


@pytest.mark.parametrize("params", SDV_MODELS, ids=lambda p: p["model"])
def test_sdv_models_save_load_and_repeat_from_a_seed(params, tmp_path):
    train, meta = table()
    model = make_synthesizer(parse_params(params))
    model.fit(train, meta, [], seed=0)
    save_synthesizer(model, tmp_path)
    loaded = load_synthesizer(tmp_path)
    assert loaded.name == params["model"]
    pd.testing.assert_frame_equal(model.sample(40, seed=3), loaded.sample(40, seed=3))
    assert not model.sample(40, seed=3).equals(model.sample(40, seed=4))


def test_sdv_model_meets_constraints_and_conditions():
    train, meta = table()
    model = make_synthesizer(parse_params({"model": "gaussian_copula"}))
    model.fit(train, meta, SOME, seed=0)
    conditions = {"city": "nice"}
    rows, stats = sample_valid(model, 120, 1, conditions, Checker(SOME, train), 20, lambda f: f)
    assert breaks(rows) == {"range": 0, "inequality": 0, "combinations": 0}
    assert (rows["city"] == "nice").all()
    assert stats["sampled"] >= 120
