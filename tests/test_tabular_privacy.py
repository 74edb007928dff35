"""Privacy in the tabular report: NNDR beside DCR, anonymeter's attack risks, and the card's
warning when synthetic rows sit closer to the training rows than real holdout rows do; and the
sampling's privacy guard, which rejects near copies of training rows.

The attacks are checked on their two extremes: copies of the training rows (what a memorising
model writes) must show a high singling-out and linkability risk; fresh rows from the same
distribution must not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from generators.tabular.constraints import Checker, sample_valid
from generators.tabular.data import TableMeta
from generators.tabular.evaluate import attack_risks, evaluate
from generators.tabular.guard import NearCopyGuard
from generators.tabular.report import render
from generators.tabular.source import rejection_rates
from synth.errors import SynthError

ROLES = {"height": "numerical", "weight": "numerical", "age": "numerical", "city": "categorical", "smoker": "boolean"}
META = TableMeta(columns=ROLES, target="smoker")


def population(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    height = rng.normal(170, 10, rows)
    return pd.DataFrame({
        "height": height.round(1),
        "weight": (height - 100 + rng.normal(0, 8, rows)).round(1),
        "age": rng.integers(18, 90, rows),
        "city": rng.choice(["paris", "lyon", "nice", "lille"], rows),
        "smoker": rng.random(rows) < 0.3,
    })  # fmt: skip


@pytest.fixture(scope="module")
def tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, holdout, fresh): three independent draws of one population."""
    return population(300, 0), population(150, 1), population(300, 2)


def test_copies_sit_on_training_rows_and_fresh_rows_do_not(tables):
    train, holdout, fresh = tables
    copies = evaluate(train, holdout, train.sample(frac=1, random_state=0), META, attacks=0).privacy
    assert copies["dcr_median"] == 0 and copies["exact_copy_rate"] == 1 and copies["nndr_median"] == 0
    new = evaluate(train, holdout, fresh, META, attacks=0).privacy
    assert new["exact_copy_rate"] == 0
    assert abs(new["nndr_median"] - new["holdout_nndr_median"]) < 0.1
    assert abs(new["dcr_median"] - new["holdout_dcr_median"]) < 0.3 * new["holdout_dcr_median"]


def test_attacks_find_copied_training_rows_and_not_fresh_ones(tables):
    train, holdout, fresh = tables
    copied = attack_risks(train, holdout, train.sample(frac=1, random_state=0), META, 100, seed=0)
    independent = attack_risks(train, holdout, fresh, META, 100, seed=0)
    for kind in ("singling_out", "linkability"):
        assert copied[kind]["ci"][0] > 0.5, kind  # even the interval's low end
        assert independent[kind]["risk"] < 0.2, kind
        assert copied[kind]["attacks"] == 100
    assert copied["inference"]["secret"] == "smoker"


def summary(dcr: float, holdout_dcr: float, attacks: dict | None) -> dict:
    privacy = {"dcr_median": dcr, "exact_copy_rate": 0.0, "nndr_median": 0.8, "holdout_dcr_median": holdout_dcr,
               "holdout_exact_copy_rate": 0.0, "holdout_nndr_median": 0.8, "closer_than_holdout_p5": 0.05}  # fmt: skip
    fit = {"synthetic_rows": 10, "model": "tabddpm", "fit_seconds": 1.0, "train_rows": 8, "source": "t.csv",
           "holdout_rows": 2}  # fmt: skip
    quality = {"score": 0.9, "column_shapes": 0.9, "column_pair_trends": 0.9}
    return {"fit": fit, "quality": quality, "utility": None, "privacy": privacy, "attacks": attacks,
            "sampling": None}  # fmt: skip


def test_card_warns_when_synthetic_rows_sit_closer_than_the_holdout():
    risk = {"risk": 0.04, "ci": [0.0, 0.1], "attacks": 50}
    attacks = {"singling_out": risk, "linkability": risk, "inference": risk | {"secret": "smoker"}}
    closer = render("report", summary(0.01, 0.03, attacks), META, [])
    assert "**Warning: synthetic rows sit closer to the training rows than the real holdout rows do**" in closer
    assert "| singling out (a predicate true of exactly one training row) | 0.040 | 0.000 to 0.100 | 50 |" in closer
    assert "guessing `smoker`" in closer and "median NNDR" in closer
    farther = render("report", summary(0.05, 0.03, None), META, [])
    assert "Warning" not in farther and "Attack risks: not measured" in farther


# ---------------------------------------------------------------- the privacy guard


def nudged(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with one number moved by a hair: copies in all but name."""
    return frame.assign(height=frame["height"] + 0.01)


def test_guard_rejects_copies_and_rows_nearer_than_real_rows_sit_to_each_other(tables):
    train, _, fresh = tables
    frame = pd.concat([train.head(50), nudged(train.head(50)), fresh.head(100)], ignore_index=True)
    keep, rejected = NearCopyGuard(train, META, quantile=0.05).keep(frame)
    assert not keep[:100].any()  # exact copies, and copies nudged far less than real rows lie apart
    assert keep[100:].mean() > 0.85  # fresh rows of the population: about 95% are as far as real rows
    assert rejected == {"near_copy": int((~keep).sum())}
    copies_only, _ = NearCopyGuard(train, META, quantile=0).keep(frame)
    assert not copies_only[:50].any() and copies_only[50:].all()


class HalfCopying:
    """Half its rows copy the training rows, half come fresh from the population."""

    def __init__(self, train: pd.DataFrame):
        self.train = train

    def sample(self, rows, seed, conditions=None):
        seed %= 2**32
        copies = self.train.sample(rows // 2, random_state=seed, replace=True)
        return pd.concat([copies, population(rows - rows // 2, seed + 100)], ignore_index=True)


def test_sampling_with_the_guard_replaces_the_copies_and_counts_them(tables):
    train, _, _ = tables
    guard = NearCopyGuard(train, META)
    rows, stats = sample_valid(HalfCopying(train), 200, 0, {}, Checker([], train), 20, lambda f: f, guard)
    assert len(rows) == 200
    assert evaluate(train, train.head(0), rows, META, attacks=0).privacy["exact_copy_rate"] == 0
    assert stats["rejected:near_copy"] >= 100 and stats["sampled"] >= 200 + stats["rejected:near_copy"]


def test_card_states_the_guard_rule_and_what_it_rejected():
    sampling = {"num_rows": 100, "blocks": 1, "conditions": {}, "constraints": [], "sampled": 107,
                "privacy_guard": 0.05, "rejected": {"near_copy": 7}}  # fmt: skip
    card = render("report", summary(0.05, 0.03, None) | {"sampling": sampling}, META, [])
    assert ("Privacy guard: 7 of 107 sampled rows (6.5%) were rejected and replaced as near copies (an exact copy "
            "of a training row, or nearer its closest training row (Gower) than 95% of real training rows") in card
    off = render("report", summary(0.05, 0.03, None) | {"sampling": sampling | {"privacy_guard": None}}, META, [])
    assert "Privacy guard" not in off


def test_card_reports_the_constraints_rejection_rate_apart_from_the_guards():
    """200 sampled, 50 near copies, then 15 of the 150 the constraints checked break a range: the
    constraints rejected 10%, not the 32.5% that mixing in the guard's rejections would show."""
    rejected = {"near_copy": 50, "range(age)": 15}
    sampling = {"num_rows": 135, "blocks": 1, "conditions": {}, "constraints": ["range(age)"], "sampled": 200,
                "privacy_guard": 0.05, "rejected": rejected} | rejection_rates(200, rejected)  # fmt: skip
    assert sampling["constraint_rejection_rate"] == 0.1 and sampling["near_copy_rate"] == 0.25
    card = render("report", summary(0.05, 0.03, None) | {"sampling": sampling}, META, [])
    assert ("Constraints: of 150 sampled rows checked (those the privacy guard passed), 10.0% were rejected "
            "and resampled (by constraint: range(age): 15).") in card
    assert "Privacy guard: 50 of 200 sampled rows (25.0%) were rejected" in card


class Copying:
    """Writes nothing but training rows."""

    def __init__(self, train: pd.DataFrame):
        self.train = train

    def sample(self, rows, seed, conditions=None):
        return self.train.sample(rows, random_state=seed % 2**32, replace=True)


def test_a_sampler_that_only_copies_stops_naming_the_guard_not_the_constraints(tables):
    train, _, _ = tables
    with pytest.raises(SynthError, match=r"^the privacy guard rejected \d+ of \d+ sampled rows \(100\.0%; most by "
                       r"near_copy, \d+\): kept 0 of 100 rows after 2 rounds"):  # fmt: skip
        sample_valid(Copying(train), 100, 0, {}, Checker([], train), 20, lambda f: f, NearCopyGuard(train, META))
