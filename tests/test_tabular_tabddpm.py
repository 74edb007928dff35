"""TabDDPM: the diffusion's math checked against exact answers, then fit / sample / save / load,
conditional sampling and seeds on a small mixed table (tiny network, few steps)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from generators.tabular.data import TableMeta
from generators.tabular.tabddpm import (
    Fixed, GaussianMultinomialDiffusion, QuantileNormal, TabDDPM, TabDDPMParams, TableEncoder,
)  # fmt: skip

TINY = TabDDPMParams(steps=40, num_timesteps=20, layers=[32], dim_t=16, batch_size=64, device="cpu")


def mixed_table(rows: int = 120, seed: int = 0) -> tuple[pd.DataFrame, TableMeta]:
    rng = np.random.default_rng(seed)
    x = rng.normal(50, 10, rows)
    frame = pd.DataFrame({
        "x": np.where(rng.random(rows) < 0.1, np.nan, x),
        "count": rng.integers(0, 5, rows),
        "color": rng.choice(["red", "green", "blue"], rows),
        "flag": rng.random(rows) < 0.3,
        "when": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 300, rows), unit="D"),
        "label": np.where(x > 50, "high", "low"),
    })  # fmt: skip
    roles = {"x": "numerical", "count": "numerical", "color": "categorical", "flag": "boolean",
             "when": "datetime", "label": "categorical"}  # fmt: skip
    return frame, TableMeta(columns=roles, target="label")


@pytest.fixture(scope="module")
def fitted() -> tuple[TabDDPM, pd.DataFrame]:
    torch.set_num_threads(1)
    frame, meta = mixed_table()
    model = TabDDPM(TINY)
    model.fit(frame, meta, [], seed=1)
    return model, frame


# ---------------------------------------------------------------- the math


def test_gaussian_sampler_with_the_exact_denoiser_returns_the_data_distribution():
    """For data ~ N(0, 1), E[noise | x_t] = sqrt(1 - ᾱ_t) x_t; sampling with it must give N(0, 1)."""
    diffusion = GaussianMultinomialDiffusion(num_numerical=2, num_classes=[], num_timesteps=100)

    def exact(x, t, y):
        return diffusion.sqrt_1m_alpha_bar[t][:, None] * x

    out = diffusion.sample(exact, None, Fixed([], []), 3000, torch.Generator().manual_seed(0))
    assert out.x_num.mean(0).abs().max() < 0.06
    assert (out.x_num.std(0) - 1).abs().max() < 0.06


def test_multinomial_posterior_is_a_distribution_per_column_and_exact_at_t0():
    diffusion = GaussianMultinomialDiffusion(num_numerical=0, num_classes=[3, 2], num_timesteps=50)
    x0 = diffusion.log_onehot(torch.tensor([[0, 1], [2, 0]]))
    xt = diffusion.log_onehot(torch.tensor([[1, 1], [2, 1]]))
    for step in (0, 10, 49):
        posterior = diffusion.q_posterior(x0, xt, torch.full((2,), step)).exp()
        for column in (slice(0, 3), slice(3, 5)):
            assert torch.allclose(posterior[:, column].sum(1), torch.ones(2))
    at_zero = diffusion.q_posterior(x0, xt, torch.zeros(2, dtype=torch.long)).exp()
    assert torch.allclose(at_zero, x0.exp(), atol=1e-5)  # x_{-1} is x_0 itself


def test_quantile_transform_round_trips_and_is_standard_normal():
    values = np.random.default_rng(0).exponential(3.0, 3000)
    transform = QuantileNormal.fit(values)
    normal = transform.transform(values)
    assert abs(normal.mean()) < 0.05 and abs(normal.std() - 1) < 0.05
    assert np.allclose(transform.inverse(normal), values, rtol=0.05, atol=0.05)


def test_encoder_flags_numerical_nulls_and_keeps_the_label_apart():
    frame, meta = mixed_table()
    encoder = TableEncoder.fit(frame, meta, conditional=True)
    assert encoder.label == "label" and "label" not in encoder.categorical
    assert "x is null" in encoder.categorical and encoder.numerical == ["x", "count", "when"]
    encoded = encoder.encode(frame)
    decoded = encoder.decode(encoded)
    assert decoded["x"].isna().equals(frame["x"].isna())
    assert (decoded["color"] == frame["color"]).all() and (decoded["label"] == frame["label"]).all()


# ---------------------------------------------------------------- the synthesizer


def test_samples_have_the_learned_columns_and_only_seen_categories(fitted):
    model, frame = fitted
    sample = model.sample(200, seed=3)
    assert list(sample.columns) == list(frame.columns)
    assert set(sample["color"]) <= set(frame["color"]) and set(sample["label"]) <= {"high", "low"}
    assert sample["x"].between(frame["x"].min(), frame["x"].max()).all() or sample["x"].isna().any()
    assert sample["when"].dtype.kind == "M"


def test_same_seed_same_rows_other_seed_other_rows(fitted):
    model, _ = fitted
    pd.testing.assert_frame_equal(model.sample(50, seed=7), model.sample(50, seed=7))
    assert not model.sample(50, seed=7).equals(model.sample(50, seed=8))


def test_save_and_load_round_trip_gives_the_same_rows(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path)
    loaded = TabDDPM.load(tmp_path)
    assert loaded.params == model.params and loaded.losses == model.losses
    pd.testing.assert_frame_equal(loaded.sample(50, seed=11), model.sample(50, seed=11))


def test_conditional_sampling_fixes_every_row(fitted):
    model, _ = fitted
    conditions = {"label": "high", "color": "red", "x": 55.0, "flag": True}
    sample = model.sample(80, seed=5, conditions=conditions)
    for column, value in conditions.items():
        assert (sample[column] == value).all(), column


def test_condition_on_an_unseen_category_names_it(fitted):
    model, _ = fitted
    with pytest.raises(Exception, match=r"condition color='purple': the training data has no such value"):
        model.sample(5, seed=0, conditions={"color": "purple"})


def test_learns_the_class_balance_and_the_class_shift():
    """A few hundred steps are enough to learn P(label) and that x is higher in one class."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    label = rng.random(400) < 0.25
    frame = pd.DataFrame({"x": np.where(label, 5.0, 0.0) + rng.normal(0, 1, 400), "label": label})
    meta = TableMeta(columns={"x": "numerical", "label": "boolean"}, target="label")
    model = TabDDPM(TabDDPMParams(steps=300, num_timesteps=50, layers=[64, 64], dim_t=32, device="cpu"))
    model.fit(frame, meta, [], seed=0)
    sample = model.sample(600, seed=1)
    positive = sample["label"].astype(bool)
    assert abs(positive.mean() - 0.25) < 0.06
    assert sample.loc[positive, "x"].mean() - sample.loc[~positive, "x"].mean() > 3.5
