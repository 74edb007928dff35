"""The procedural phantom set: labels are balanced and true to the picture, images are reproducible."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest
import yaml

import generators.image.phantoms  # noqa: F401 - registers phantom_images
from generators.image.phantoms import CLASSES, draw_phantom
from generators.image.records import decode_png, image_id
from synth.errors import SpecError
from synth.runner import run
from synth.run_spec import load_spec


def test_one_seed_gives_one_slice_and_the_label_decides_the_lesion():
    normal, bright, dark = (draw_phantom(11, 32, label).pixels.astype(int) for label in CLASSES)
    assert np.array_equal(normal, draw_phantom(11, 32, "normal").pixels)
    brighter, darker = bright - normal, dark - normal
    assert brighter.min() >= 0 and (brighter > 20).sum() >= 6  # a bright blob, nothing darker
    assert darker.max() <= 0 and (darker < -20).sum() >= 6
    assert np.array_equal(brighter > 0, darker < 0)  # the same place in both


def test_anatomy_and_modality_follow_the_options():
    phantoms = [draw_phantom(s, 16, "normal", anatomies=("abdomen",), modalities=("mr",)) for s in range(5)]
    assert {(p.anatomy, p.modality) for p in phantoms} == {("abdomen", "mr")}
    assert all(p.pixels.shape == (16, 16) and p.pixels.dtype == np.uint8 for p in phantoms)
    with pytest.raises(ValueError, match="unknown phantom class 'tumour'"):
        draw_phantom(0, 16, "tumour")


def _spec(tmp_path, **stage):
    path = tmp_path / "spec.yaml"
    spec = {"name": "phantoms", "seed": 3, "output": str(tmp_path / "out"), "stages": [{"kind": "phantom_images", **stage}]}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_stage_writes_balanced_labelled_pngs(ray_session, tmp_path):
    stage = {"count": 10, "size": 16, "classes": ["dark_lesion", "normal"], "images_per_block": 4}
    result = run(load_spec(_spec(tmp_path, **stage)))
    rows = pads.dataset(str(result.output / "data"), format="parquet").to_table().to_pylist()
    assert [r["label"] for r in rows] == ["dark_lesion", "normal"] * 5
    assert [r["label_id"] for r in rows] == [0, 1] * 5
    for row in rows:
        assert decode_png(row["image"]).shape == (16, 16) == (row["height"], row["width"])
        assert row["id"] == image_id(row["image"]) and row["kind"] == "image"
        assert row["source"].startswith("phantom/") and row["generator"] == "phantom_images"
    assert len({r["id"] for r in rows}) == 10


def test_unknown_class_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="unknown class 'tumour'"):
        load_spec(_spec(tmp_path, classes=["normal", "tumour"]))
