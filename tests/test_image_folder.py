"""Reading a folder of PNG and DICOM files: labels from subfolders or a CSV, sizes, clear errors."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import yaml
from PIL import Image

from generators.image.folder import ImageFolder, ImageFolderConfig
from generators.image.records import decode_png
from synth.errors import SynthError
from synth.runner import run
from synth.run_spec import load_spec
from synth.stage import StageContext

warnings.filterwarnings("ignore", module="pydicom")

CTX = StageContext(run_name="t", run_id="t-0", seed=0, stage_name="image_folder", stage_index=0, output_dir=Path("."))


def dicom(name: str) -> Path:
    from pydicom.data import get_testdata_files

    return Path(get_testdata_files(name)[0])


def png(path: Path, size: tuple[int, int] = (24, 24), value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full(size[::-1], value, np.uint8)
    pixels[: size[1] // 2] = 200
    Image.fromarray(pixels).save(path)
    return path


def read(tmp_path: Path, **stage) -> list[dict]:
    spec = {"name": "folder", "output": str(tmp_path / "out"), "stages": [{"kind": "image_folder", **stage}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run(load_spec(path))
    return pads.dataset(str(result.output / "data"), format="parquet").to_table().to_pylist()


def test_subfolder_labels_and_dicom_resized(ray_session, tmp_path):
    images = tmp_path / "images"
    png(images / "normal" / "a.png", (40, 20))
    (images / "lesion").mkdir()
    shutil.copy(dicom("CT_small.dcm"), images / "lesion" / "ct.dcm")
    shutil.copy(dicom("MR_small.dcm"), images / "lesion" / "mr_no_extension")
    rows = read(tmp_path, path=str(images), size=32)
    assert [(r["source"], r["label"], r["label_id"]) for r in rows] == [
        ("lesion/ct.dcm", "lesion", 0), ("lesion/mr_no_extension", "lesion", 0), ("normal/a.png", "normal", 1)]  # fmt: skip
    for row in rows:
        assert decode_png(row["image"]).shape == (32, 32) and (row["width"], row["height"]) == (32, 32)
    padded = decode_png(rows[2]["image"])
    assert padded[0].max() == 0 and padded[16].max() > 0  # a wide image is padded top and bottom


def test_csv_labels_with_known_classes(ray_session, tmp_path):
    images = tmp_path / "images"
    for name in ("x.png", "y.png", "unlisted.png"):
        png(images / name)
    (tmp_path / "labels.csv").write_text("file,label\nx.png,cyst\ny.png,normal\n")
    rows = read(tmp_path, path="images", labels="csv", labels_csv="labels.csv", classes=["normal", "cyst"])
    assert [(r["source"], r["label"], r["label_id"]) for r in rows] == [("x.png", "cyst", 1), ("y.png", "normal", 0)]


def test_mixed_sizes_are_an_error_unless_resized(ray_session, tmp_path):
    images = tmp_path / "images"
    png(images / "a" / "small.png", (16, 16))
    png(images / "a" / "large.png", (32, 32))
    with pytest.raises(SynthError, match=r"differ in size: 16x16 \(1 files, e.g. small.png\), 32x32.*set `size:`"):
        read(tmp_path, path=str(images))


def _empty(d: Path) -> None:
    (d / "normal").mkdir()


def _truncated_png(d: Path) -> None:
    path = png(d / "normal" / "bad.png")
    path.write_bytes(path.read_bytes()[:60])


def _junk_png(d: Path) -> None:
    png(d / "normal" / "junk.png").write_bytes(b"not a png at all")


def _truncated_dicom(d: Path) -> None:
    (d / "normal").mkdir()
    shutil.copy(dicom("MR_truncated.dcm"), d / "normal" / "cut.dcm")


BAD_INPUT = {
    "empty": (_empty, "no PNG or DICOM files in"),
    "truncated_png": (_truncated_png, r"normal/bad.png: not a readable PNG image"),
    "junk_png": (_junk_png, r"normal/junk.png: not a readable PNG image \(UnidentifiedImageError"),
    "truncated_dicom": (_truncated_dicom, r"normal/cut.dcm: not a readable DICOM image .*pixel data is less than"),
    "no_subfolder": (lambda d: png(d / "loose.png"), "loose.png is not inside a class subfolder"),
    "unknown_label": (lambda d: png(d / "tumour" / "t.png"), "unknown label 'tumour' for .*t.png; expected one of: normal, cyst"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_gives_a_clear_error(ray_session, tmp_path, case):
    make, message = BAD_INPUT[case]
    images = tmp_path / "images"
    images.mkdir()
    make(images)
    stage = ImageFolder(ImageFolderConfig.model_validate({"path": str(images), "classes": ["normal", "cyst"]}), CTX)
    with pytest.raises(SynthError, match=message):
        stage.transform(None)


def test_csv_naming_a_missing_file(ray_session, tmp_path):
    png(tmp_path / "images" / "x.png")
    (tmp_path / "labels.csv").write_text("file,label\nx.png,a\ngone.png,b\n")
    with pytest.raises(SynthError, match=r"labels.csv:3: file not found: .*gone.png"):
        read(tmp_path, path="images", labels="csv", labels_csv="labels.csv")


def test_a_folder_with_an_unknown_label_fails_before_ray_and_leaves_no_output(tmp_path, monkeypatch):
    import synth.runner

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a folder the check before it should have refused")

    monkeypatch.setattr(synth.runner, "init_ray", no_ray)
    png(tmp_path / "images" / "normal" / "a.png")
    png(tmp_path / "images" / "tumour" / "t.png")
    with pytest.raises(SynthError, match=r"unknown label 'tumour' for .*t.png; expected one of: normal, cyst"):
        read(tmp_path, path="images", classes=["normal", "cyst"])
    assert not (tmp_path / "out").exists()
