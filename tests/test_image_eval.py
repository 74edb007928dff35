"""Evaluation parts: the FID formula, offline Inception features, the baseline, the grid, the classifier."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from generators.image.evaluate import (
    InceptionFeatures,
    class_grid,
    class_mean_baseline,
    classify,
    frechet_distance,
    train_classifier,
)  # fmt: skip
from generators.image.phantoms import CLASSES, draw_phantom


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # 2 cores shared with other tests: threads would only wait on each other


def test_frechet_distance_matches_the_sqrtm_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(1.0, 2.0, size=(30, 6))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    wide = rng.normal(size=(10, 50))  # fewer images than dimensions: still exact and real
    assert frechet_distance(wide, wide + 1) == pytest.approx(50, rel=1e-9)


def test_inception_features_load_offline_from_the_wheel():
    images = np.stack([draw_phantom(i, 16, "normal").pixels for i in range(2)])
    features = InceptionFeatures()(images)
    assert features.shape == (2, 2048) and np.isfinite(features).all() and not np.allclose(*features)


def test_class_mean_baseline_follows_each_class():
    images = np.stack([np.full((8, 8), 50 if i % 2 else 200, np.uint8) for i in range(10)])
    out = class_mean_baseline(images, np.arange(10) % 2, np.array([1, 0, 1]), seed=0)
    assert out.tolist() == [[[50] * 8] * 8, [[200] * 8] * 8, [[50] * 8] * 8]  # no spread, no noise


def test_class_grid_has_a_row_per_class():
    images = np.stack([draw_phantom(i, 16, CLASSES[i % 3]).pixels for i in range(9)])
    grid = Image.open(io.BytesIO(class_grid(images, np.arange(9) % 3, list(CLASSES), per_class=2, tile=20)))
    assert grid.height == 3 * 22 and grid.width > 2 * 22


def test_classifier_learns_lesions_from_real_images():
    labels = np.arange(300) % 3
    images = np.stack([draw_phantom(i, 32, CLASSES[k]).pixels for i, k in enumerate(labels)])
    model = train_classifier(images, labels, 3, steps=150, seed=0, batch_size=32)
    test_labels = np.arange(60) % 3
    test = np.stack([draw_phantom(10_000 + i, 32, CLASSES[k]).pixels for i, k in enumerate(test_labels)])
    probs, features = classify(model, test)
    assert features.shape == (60, 128)
    assert np.mean(probs.argmax(1) == test_labels) > 0.6  # chance is 0.33
