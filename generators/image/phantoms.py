"""A procedural medical-style image set: CT- and MR-like slices of head and abdomen phantoms.

There is no medical image set offline, so the project draws its own. Each image comes from its
own seed (`derive_seed(stage_seed, index)`), so any image can be re-made alone and the set does
not depend on how Ray splits it into blocks. Labels are balanced: image i has class i mod C.

An image, step by step (`draw_phantom`):

1. Anatomy, drawn at twice the size and averaged down (anti-aliasing), as ellipses with random
   centre, axes, rotation and scale. Head: scalp, skull, brain, two ventricles. Abdomen:
   subcutaneous fat, muscle wall, liver, two kidneys, aorta, spine.
2. Class: `normal` has no lesion; `bright_lesion` has one round lesion brighter than the organ
   around it (a bleed, an enhancing tumour), `dark_lesion` one darker (a cyst, an infarct). The
   lesion sits inside the brain or the liver, 13-19% of the field of view across. It is drawn
   from a generator of its own, so one seed gives the same slice in every class, lesion apart.
3. Modality: CT-like intensities (bone brightest, fat dark) or MR-like, T1-ish ones (fat bright,
   bone and CSF dark). A lesion keeps its sign in both.
4. Tissue texture (smooth random fields), then artefacts, each with `artefact_probability`: CT
   rings and metal streaks; MR bias field and motion ghosting.
5. Noise: Gaussian for CT, Rician for MR, at a level drawn up to `max_noise`; a random window
   (gain, offset); clipped and quantised to 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator
from scipy.ndimage import gaussian_filter, shift

from generators.image.records import make_record, to_table
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import BlockStage, derive_seed

CLASSES = ("normal", "bright_lesion", "dark_lesion")
ANATOMIES = ("head", "abdomen")
MODALITIES = ("ct", "mr")
MODEL = "phantom-v1"

# Tissue intensities in [0, 1] per modality.
TISSUE = {
    "ct": {"fat": 0.22, "csf": 0.32, "brain": 0.5, "liver": 0.6, "kidney": 0.64, "muscle": 0.5,
           "soft": 0.42, "blood": 0.68, "bone": 1.0},
    "mr": {"fat": 0.9, "csf": 0.12, "brain": 0.62, "liver": 0.5, "kidney": 0.4, "muscle": 0.32,
           "soft": 0.45, "blood": 0.08, "bone": 0.06},
}  # fmt: skip
LESION_CONTRAST = 0.38


@dataclass(frozen=True)
class Phantom:
    """One drawn image and what it shows."""

    pixels: np.ndarray  # (H, W) uint8
    label: str
    anatomy: str
    modality: str


class _Canvas:
    """A slice being drawn: coordinates in [-1, 1] under a random pose, and the intensity image."""

    def __init__(self, size: int, rng: np.random.Generator):
        grid = (np.arange(size) + 0.5) / size * 2 - 1
        y, x = np.meshgrid(grid, grid, indexing="ij")
        angle = rng.uniform(-0.26, 0.26)  # about 15 degrees
        scale = rng.uniform(0.85, 1.05)
        dx, dy = rng.uniform(-0.08, 0.08, size=2)
        cos, sin = np.cos(angle), np.sin(angle)
        self.x = (cos * (x - dx) + sin * (y - dy)) / scale
        self.y = (-sin * (x - dx) + cos * (y - dy)) / scale
        self.image = np.zeros((size, size))
        self.rng = rng

    def ellipse(self, cx: float, cy: float, a: float, b: float, angle: float = 0.0) -> np.ndarray:
        cos, sin = np.cos(angle), np.sin(angle)
        u = cos * (self.x - cx) + sin * (self.y - cy)
        v = -sin * (self.x - cx) + cos * (self.y - cy)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0

    def fill(self, mask: np.ndarray, value: float) -> None:
        self.image[mask] = value

    def jitter(self, value: float, spread: float = 0.1) -> float:
        return value * self.rng.uniform(1 - spread, 1 + spread)


def _head(c: _Canvas, t: dict[str, float]) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Scalp, skull, brain and ventricles; returns the brain mask and the ellipse lesions go in."""
    a, b = c.rng.uniform(0.7, 0.8), c.rng.uniform(0.82, 0.92)
    c.fill(c.ellipse(0, 0, a, b), t["fat"])
    c.fill(c.ellipse(0, 0, a - 0.05, b - 0.05), t["bone"])
    brain_a, brain_b = a - 0.05 - c.rng.uniform(0.05, 0.08), b - 0.05 - c.rng.uniform(0.05, 0.08)
    brain = c.ellipse(0, 0, brain_a, brain_b)
    c.fill(brain, c.jitter(t["brain"]))
    spread, size = c.rng.uniform(0.08, 0.14), c.rng.uniform(0.7, 1.3)
    for side in (-1, 1):
        c.fill(c.ellipse(side * spread, -0.05, 0.06 * size, 0.2 * size, side * 0.3), t["csf"])
    return brain, (0.0, 0.0, brain_a * 0.8, brain_b * 0.8)


def _abdomen(c: _Canvas, t: dict[str, float]) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Fat, muscle wall, organs and spine; returns the liver mask and the ellipse lesions go in."""
    a, b = c.rng.uniform(0.85, 0.95), c.rng.uniform(0.6, 0.75)
    c.fill(c.ellipse(0, 0, a, b), t["fat"])
    wall = c.rng.uniform(0.06, 0.12)
    c.fill(c.ellipse(0, 0, a - wall, b - wall), t["muscle"])
    c.fill(c.ellipse(0, 0, a - wall - 0.04, b - wall - 0.04), t["soft"])
    lx, ly = c.rng.uniform(-0.42, -0.3), c.rng.uniform(-0.12, 0.0)
    la, lb = c.rng.uniform(0.28, 0.36), c.rng.uniform(0.26, 0.34)
    liver = c.ellipse(lx, ly, la, lb, c.rng.uniform(-0.4, 0.4))
    c.fill(liver, c.jitter(t["liver"]))
    for side in (-1, 1):
        c.fill(c.ellipse(side * 0.38, 0.28, 0.1, 0.15, side * 0.4), c.jitter(t["kidney"]))
    c.fill(c.ellipse(0.06, 0.2, 0.055, 0.055), t["blood"])
    c.fill(c.ellipse(0.0, 0.42, 0.12, 0.1), t["bone"])
    return liver, (lx, ly, la * 0.7, lb * 0.7)


def _add_lesion(
    c: _Canvas, organ: np.ndarray, region: tuple[float, float, float, float], sign: int, rng: np.random.Generator
) -> None:
    """One round lesion inside `region` (an ellipse within the organ), `sign` brighter or darker."""
    cx, cy, a, b = region
    r, theta = np.sqrt(rng.uniform(0, 1)), rng.uniform(0, 2 * np.pi)
    radius = rng.uniform(0.13, 0.19)
    mask = c.ellipse(cx + a * r * np.cos(theta), cy + b * r * np.sin(theta), radius, radius * rng.uniform(0.8, 1.2))
    mask &= organ
    contrast = LESION_CONTRAST * rng.uniform(0.8, 1.2)
    c.image[mask] = np.clip(c.image[mask] + sign * contrast, 0.03, 1.0)


def _texture(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    body = image > 0
    field = gaussian_filter(rng.standard_normal(image.shape), sigma=image.shape[0] / 24)
    field /= field.std() + 1e-8
    return image + body * field * rng.uniform(0.01, 0.035)


def _artefacts(image: np.ndarray, modality: str, p: float, rng: np.random.Generator) -> np.ndarray:
    n = image.shape[0]
    y, x = np.mgrid[0:n, 0:n] / n * 2 - 1
    body = image > 0.02
    if modality == "ct":
        if rng.random() < p:  # ring artefact: concentric bands around the rotation centre
            rings = np.sin(np.hypot(x, y) * rng.uniform(20, 40) + rng.uniform(0, 6.3))
            image = image + body * rings * rng.uniform(0.01, 0.03)
        if rng.random() < p:  # metal streaks through a point
            px, py = rng.uniform(-0.4, 0.4, size=2)
            angles = np.arctan2(y - py, x - px)
            streaks = np.cos(angles * rng.integers(3, 7) * 2) ** 8 * np.exp(-np.hypot(x - px, y - py))
            image = image + body * streaks * rng.uniform(0.05, 0.12) * rng.choice([-1, 1])
    else:
        if rng.random() < p:  # coil bias field: smooth multiplicative gradient
            gx, gy = rng.uniform(-0.25, 0.25, size=2)
            image = image * (1 + gx * x + gy * y)
        if rng.random() < p:  # motion ghost along the phase-encode direction
            image = image + rng.uniform(0.06, 0.15) * shift(image, (rng.uniform(3, 8) * n / 64, 0), order=1)
    return image


def _noise(image: np.ndarray, modality: str, max_noise: float, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(0.2, 1.0) * max_noise
    if modality == "mr":  # magnitude of a complex signal: Rician
        return np.hypot(image + sigma * rng.standard_normal(image.shape), sigma * rng.standard_normal(image.shape))
    return image + sigma * rng.standard_normal(image.shape)


def draw_phantom(
    seed: int, size: int, label: str, *, anatomies: tuple[str, ...] = ANATOMIES,
    modalities: tuple[str, ...] = MODALITIES, max_noise: float = 0.04, artefact_probability: float = 0.3,
) -> Phantom:  # fmt: skip
    """One image of class `label`, the same for the same arguments."""
    if label not in CLASSES:
        raise ValueError(f"unknown phantom class {label!r}; expected one of {', '.join(CLASSES)}")
    rng = np.random.default_rng(seed)
    anatomy, modality = str(rng.choice(anatomies)), str(rng.choice(modalities))
    tissue = TISSUE[modality]
    canvas = _Canvas(2 * size, rng)
    organ, region = (_head if anatomy == "head" else _abdomen)(canvas, tissue)
    if label != "normal":  # its own generator: the same seed gives the same slice in every class
        _add_lesion(canvas, organ, region, 1 if label == "bright_lesion" else -1, np.random.default_rng([seed, 1]))
    image = canvas.image.reshape(size, 2, size, 2).mean(axis=(1, 3))
    image = _artefacts(_texture(image, rng), modality, artefact_probability, rng)
    image = _noise(image, modality, max_noise, rng)
    image = image * rng.uniform(0.9, 1.08) + rng.uniform(-0.04, 0.04)
    pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return Phantom(pixels, label, anatomy, modality)


# ---------------------------------------------------------------- the stage


class PhantomImagesConfig(StageConfig):
    kind: Literal["phantom_images"] = "phantom_images"
    count: int = Field(1200, ge=1, description="Images to draw; classes are balanced (image i has class i mod C)")
    size: int = Field(32, ge=8, le=1024, description="Width and height in pixels")
    classes: list[str] = Field(list(CLASSES), min_length=1, description=f"Labels, from: {', '.join(CLASSES)}")
    anatomies: list[Literal["head", "abdomen"]] = Field(list(ANATOMIES), min_length=1)
    modalities: list[Literal["ct", "mr"]] = Field(list(MODALITIES), min_length=1)
    max_noise: float = Field(0.04, ge=0, le=0.5, description="Noise sigma is drawn in [0.2, 1] times this")
    artefact_probability: float = Field(0.3, ge=0, le=1, description="Chance of each artefact of the modality")
    images_per_block: int = Field(256, ge=1, description="Images drawn per block (one task each)")

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in CLASSES]
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r}; expected some of: {', '.join(CLASSES)}")
        if len(set(value)) != len(value):
            raise ValueError("classes must not repeat")
        return value


def draw_block(indices: range, config: PhantomImagesConfig, stage_seed: int, run_id: str) -> pa.Table:
    """Image rows for the image `indices`, each drawn from a seed of its own."""
    rows = []
    for index in indices:
        label_id = index % len(config.classes)
        seed = derive_seed(stage_seed, index)
        p = draw_phantom(
            seed, config.size, config.classes[label_id], anatomies=tuple(config.anatomies),
            modalities=tuple(config.modalities), max_noise=config.max_noise,
            artefact_probability=config.artefact_probability,
        )  # fmt: skip
        rows.append(make_record(p.pixels, label=p.label, label_id=label_id, generator="phantom_images",
                                run_id=run_id, seed=seed, model=MODEL, source=f"phantom/{p.anatomy}/{p.modality}"))  # fmt: skip
    return to_table(rows)


@register
class PhantomImages(BlockStage):
    kind = "phantom_images"
    Config = PhantomImagesConfig
    description = "Procedural CT/MR-like head and abdomen phantoms, labelled normal / bright_lesion / dark_lesion"
    source = True

    def plan(self) -> list[dict]:
        cfg = self.config
        return [{"start": start, "stop": min(start + cfg.images_per_block, cfg.count)}
                for start in range(0, cfg.count, cfg.images_per_block)]  # fmt: skip

    def make(self, block: dict) -> pa.Table:
        return draw_block(range(block["start"], block["stop"]), self.config, self.ctx.stage_seed, self.ctx.run_id)
