"""Image filters: blank and saturated images, perceptual-hash duplicates, memorised training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from filters.quality.image_checks import (
    ImageChecks,
    ImageChecksConfig,
    Memorisation,
    MemorisationConfig,
    PhashDedup,
    PhashDedupConfig,
    duplicate_flags,
    phash,
)  # fmt: skip
from generators.image.phantoms import CLASSES, draw_phantom
from generators.image.records import make_record, to_table
from synth.stage import DROP_REASON, StageContext

CTX = StageContext(run_name="t", run_id="t-0", seed=0, stage_name="check", stage_index=0, output_dir=Path("."))


def table_of(images: list[np.ndarray]) -> pa.Table:
    return to_table([make_record(p, label="normal", label_id=0, generator="test", run_id="t", seed=0, model="m",
                                 source="test") for p in images])  # fmt: skip


def phantom(seed: int) -> np.ndarray:
    return draw_phantom(seed, 32, CLASSES[seed % 3]).pixels


def test_blank_saturated_and_undecodable_images_are_dropped():
    flat = np.full((32, 32), 90, np.uint8)
    burnt = phantom(1).copy()
    burnt[:16] = 255
    table = table_of([phantom(0), flat, burnt, phantom(2)])
    table = table.set_column(table.schema.get_field_index("image"), "image",
                             pa.array([*table.column("image").to_pylist()[:3], b"\x89PNG broken"], pa.binary()))  # fmt: skip
    out = ImageChecks(ImageChecksConfig(), CTX).process(table)
    assert out.column(DROP_REASON).to_pylist() == [None, "blank", "saturated", "undecodable"]
    assert out.column("pixel_std").to_pylist()[1] == 0.0
    assert out.column("saturated_fraction").to_pylist()[2] >= 0.5


def test_phash_sees_through_noise_but_not_across_images():
    image = phantom(3)
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    assert (phash(image) ^ phash(noisy)).bit_count() <= 1
    assert (phash(image) ^ phash(phantom(4))).bit_count() > 1
    assert duplicate_flags([0b1111, 0b1110, 0b0000, 0b1111], max_distance=1) == [False, True, False, True]


def test_phash_dedup_stage_keeps_the_first_of_each_duplicate():
    images = [phantom(5), phantom(6), phantom(5), phantom(7), phantom(6)]
    out = PhashDedup(PhashDedupConfig(), CTX).transform(pa.concat_tables([table_of(images[:2]), table_of(images[2:])]))
    assert out.column(DROP_REASON).to_pylist() == [None, None, "phash_duplicate", None, "phash_duplicate"]
    assert len(out.column("phash").to_pylist()[0]) == 16


def test_memorisation_drops_copies_of_training_images(tmp_path):
    train = table_of([phantom(i) for i in range(40)])
    pq.write_table(train.select(["id", "image"]), tmp_path / "train.parquet")
    stage = Memorisation(MemorisationConfig(reference=tmp_path / "train.parquet"), CTX)
    stage.setup()
    noisy = np.clip(phantom(9) + np.random.default_rng(0).normal(0, 4, (32, 32)), 0, 255).astype(np.uint8)
    out = stage.process(table_of([phantom(9), phantom(1000), noisy]))
    assert out.column(DROP_REASON).to_pylist() == ["near_copy", None, "near_copy"]
    assert out.column("nearest_real_id").to_pylist()[0] == train.column("id").to_pylist()[9]
    ratios = out.column("memorisation_ratio").to_pylist()
    assert ratios[0] == 0.0 and ratios[1] > 0.5
