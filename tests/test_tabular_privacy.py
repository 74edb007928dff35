"""Privacy in the tabular report: NNDR beside DCR, anonymeter's attack risks, and the card's
warning when synthetic rows sit closer to the training rows than real holdout rows do.

The attacks are checked on their two extremes: copies of the training rows (what a memorising
model writes) must show a high singling-out and linkability risk; fresh rows from the same
distribution must not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from generators.tabular.data import TableMeta
from generators.tabular.evaluate import attack_risks, evaluate
from generators.tabular.report import render

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
