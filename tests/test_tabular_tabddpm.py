"""TabDDPM: the diffusion's math checked against exact answers, then fit / sample / save / load,
conditional sampling and seeds on a small mixed table (tiny network, few steps), and the
categorical columns of a mixed table: their frequencies, every category, and their dependence
on the class."""

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


@pytest.mark.parametrize(("steps", "eta", "tolerance"), [(None, 1.0, 0.06), (None, 0.0, 0.06), (20, 0.0, 0.1)])
def test_gaussian_sampler_with_the_exact_denoiser_returns_the_data_distribution(steps, eta, tolerance):
    """For data ~ N(0, 1), E[noise | x_t] = sqrt(1 - ᾱ_t) x_t; sampling with it must give N(0, 1),
    over every timestep (DDPM's posterior noise or DDIM's none) and over a fifth of them, where
    the first-order steps lose a few percent of the variance."""
    diffusion = GaussianMultinomialDiffusion(num_numerical=2, num_classes=[], num_timesteps=100)

    def exact(x, t, y):
        return diffusion.sqrt_1m_alpha_bar[t][:, None] * x

    out = diffusion.sample(exact, None, Fixed([], []), 3000, torch.Generator().manual_seed(0), steps, eta)
    assert out.x_num.mean(0).abs().max() < 0.06
    assert (out.x_num.std(0) - 1).abs().max() < tolerance


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


def test_categorical_draws_follow_their_probabilities():
    """Gumbel-max per column: the empirical frequencies are the given ones, in every column."""
    diffusion = GaussianMultinomialDiffusion(num_numerical=0, num_classes=[3, 2], num_timesteps=10)
    probs = torch.tensor([0.2, 0.5, 0.3, 0.9, 0.1])
    draws = diffusion.sample_categorical(probs.log().expand(20000, -1), torch.Generator().manual_seed(0))
    index = diffusion.to_indices(draws)
    assert torch.allclose(torch.bincount(index[:, 0], minlength=3) / 20000.0, probs[:3], atol=0.015)
    assert torch.allclose(torch.bincount(index[:, 1], minlength=2) / 20000.0, probs[3:], atol=0.015)


def test_forward_noise_keeps_a_category_then_forgets_it():
    """q(x_t | x_0): mostly x_0 at the first step, uniform over the column's categories at the last."""
    diffusion = GaussianMultinomialDiffusion(num_numerical=0, num_classes=[4], num_timesteps=100)
    x0 = diffusion.log_onehot(torch.full((8000, 1), 2))
    g = torch.Generator().manual_seed(0)
    first = diffusion.to_indices(diffusion.sample_categorical(diffusion.q_pred(x0, torch.zeros(8000, dtype=torch.long)), g))
    last = diffusion.to_indices(diffusion.sample_categorical(diffusion.q_pred(x0, torch.full((8000,), 99)), g))
    assert (first == 2).float().mean() > 0.99
    assert torch.allclose(torch.bincount(last[:, 0], minlength=4) / 8000.0, torch.full((4,), 0.25), atol=0.02)


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


def test_training_length_follows_the_table_size():
    """`epochs` passes over the rows (a small table is memorised long before it is learned better),
    within 100 and 1,000 steps; `steps` overrides it."""
    model = TabDDPM(TabDDPMParams(device="cpu"))  # 200 passes of 256-row batches
    assert model.training_steps(275) == 215  # penguins' training split
    assert model.training_steps(20) == 100 and model.training_steps(50_000) == 1000
    assert TabDDPM(TabDDPMParams(steps=40, device="cpu")).training_steps(50_000) == 40


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


# ---------------------------------------------------------------- categorical columns of a mixed table


def categorical_table(rows: int = 600, seed: int = 0) -> tuple[pd.DataFrame, TableMeta]:
    """Uneven categories (one at 4%), a colour that depends on the class, and a number beside them."""
    rng = np.random.default_rng(seed)
    label = rng.choice(["a", "b"], rows, p=[0.6, 0.4])
    colour = np.where(label == "a", rng.choice(["red", "green", "blue"], rows, p=[0.8, 0.15, 0.05]),
                      rng.choice(["red", "green", "blue"], rows, p=[0.05, 0.25, 0.7]))  # fmt: skip
    frame = pd.DataFrame({
        "size": rng.choice(["S", "M", "L", "XL"], rows, p=[0.5, 0.3, 0.16, 0.04]),
        "colour": colour,
        "x": rng.normal(0, 1, rows) + (label == "b") * 2,
        "label": label,
    })  # fmt: skip
    roles = {"size": "categorical", "colour": "categorical", "x": "numerical", "label": "categorical"}
    return frame, TableMeta(columns=roles, target="label")


def total_variation(real: pd.Series, synthetic: pd.Series) -> float:
    shares = pd.DataFrame({"real": real.value_counts(normalize=True), "synthetic": synthetic.value_counts(normalize=True)})
    return 0.5 * float(shares.fillna(0).diff(axis=1)["synthetic"].abs().sum())


@pytest.fixture(scope="module")
def categorical_fit() -> tuple[TabDDPM, pd.DataFrame]:
    torch.set_num_threads(1)
    frame, meta = categorical_table()
    model = TabDDPM(TabDDPMParams(steps=400, num_timesteps=50, layers=[64, 64], dim_t=32, device="cpu"))
    model.fit(frame, meta, [], seed=0)
    return model, frame


def test_category_frequencies_are_near_the_training_ones(categorical_fit):
    model, frame = categorical_fit
    sample = model.sample(2000, seed=1)
    for column in ("size", "colour", "label"):
        assert total_variation(frame[column], sample[column]) < 0.08, column


def test_strided_sampling_keeps_the_category_frequencies(categorical_fit):
    """A tenth of the timesteps (the multinomial posterior of the strided chain) is as faithful."""
    model, frame = categorical_fit
    model.params = model.params.model_copy(update={"sample_steps": 5})
    try:
        sample = model.sample(2000, seed=4)
    finally:
        model.params = model.params.model_copy(update={"sample_steps": None})
    for column in ("size", "colour", "label"):
        assert total_variation(frame[column], sample[column]) < 0.08, column


def test_every_category_is_reachable(categorical_fit):
    model, frame = categorical_fit
    sample = model.sample(2000, seed=2)
    for column in ("size", "colour", "label"):
        assert set(sample[column]) == set(frame[column]), column
    assert 0.01 < (sample["size"] == "XL").mean() < 0.08  # the 4% category, neither lost nor inflated


def test_class_conditional_sampling_keeps_each_class_categories(categorical_fit):
    """Fixing the class gives that class's colours (red for a, blue for b), not the pooled ones."""
    model, frame = categorical_fit
    for label in ("a", "b"):
        sample = model.sample(800, seed=3, conditions={"label": label})
        assert (sample["label"] == label).all()
        assert total_variation(frame.loc[frame["label"] == label, "colour"], sample["colour"]) < 0.1, label
