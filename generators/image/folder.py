"""Read a folder of PNG or DICOM images, labelled by subfolder or by a CSV, into image records.

- Files: `*.png`, `*.dcm`, `*.dicom`, and files without an extension that carry DICOM's `DICM`
  marker, found recursively; hidden files and other files are skipped.
- Labels: `subfolders` takes each file's first folder under `path` (`path/<label>/.../x.png`);
  `csv` reads `labels_csv`, with columns `file` (relative to `path`) and `label`, and reads only
  the files it lists. `classes` fixes the label list and its order (the `label_id`s); a label
  outside it is an error. Without it, the labels found, sorted.
- Pixels become 8-bit grayscale. DICOM: the modality rescale (slope, intercept), then the file's
  first VOI window (`window: file`; min-max where the file has none) or min-max (`window:
  minmax`), MONOCHROME1 inverted; colour is converted to luminance. 16-bit PNGs: min-max.
- Sizes: without `size`, every image must have the same size (an error lists the sizes found);
  with `size`, each image is padded to a square with black, centred, then resized to `size` px.

Every file is decoded in the driver, where the folder is (workers of a cluster may not see it):
a whole-table job the runner runs there (`on_driver`). An unreadable file is an error naming it.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field, model_validator

from generators.image.records import make_record, to_table
from synth.errors import SynthError
from synth.registry import register
from synth.spec import InputFile, InputFolder, StageConfig
from synth.stage import TableStage

log = logging.getLogger(__name__)

DICOM_SUFFIXES = {".dcm", ".dicom"}


class ImageFolderConfig(StageConfig):
    kind: Literal["image_folder"] = "image_folder"
    path: InputFolder = Field(description="Folder of PNG/DICOM files, relative to the spec file")
    labels: Literal["subfolders", "csv"] = Field("subfolders", description="Where labels come from")
    labels_csv: InputFile | None = Field(None, description="CSV with `file` and `label` columns (labels: csv)")
    classes: list[str] | None = Field(None, min_length=1, description="Known labels, in label_id order")
    size: int | None = Field(None, ge=8, le=4096, description="Pad to square and resize to this many px")
    window: Literal["file", "minmax"] = Field("file", description="DICOM to 8 bits: the file's window, or min-max")

    @model_validator(mode="after")
    def _csv_when_asked(self) -> ImageFolderConfig:
        if (self.labels == "csv") != (self.labels_csv is not None):
            raise ValueError("set `labels_csv:` exactly when `labels: csv`")
        return self


# ---------------------------------------------------------------- finding files and labels


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and (path.suffix.lower() == ".png" or _is_dicom(path))


def labelled_files(cfg: ImageFolderConfig) -> list[tuple[Path, str]]:
    """(file, label) pairs, sorted by path, from subfolders or the CSV."""
    if cfg.labels == "csv":
        pairs = _csv_labels(cfg.path, cfg.labels_csv)
    else:
        pairs = []
        for path in sorted(p for p in cfg.path.rglob("*") if _is_image(p)):
            parts = path.relative_to(cfg.path).parts
            if len(parts) < 2:
                raise SynthError(f"image_folder: {path} is not inside a class subfolder; expected "
                                 f"{cfg.path}/<label>/{path.name} (or use `labels: csv`)")  # fmt: skip
            pairs.append((path, parts[0]))
    if not pairs:
        raise SynthError(f"image_folder: no PNG or DICOM files in {cfg.path} (looked for *.png, *.dcm, *.dicom "
                         "and extensionless files with the DICM marker)")  # fmt: skip
    return pairs


def _csv_labels(root: Path, csv_path: Path) -> list[tuple[Path, str]]:
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"file", "label"} - set(reader.fieldnames or [])
        if missing:
            raise SynthError(f"{csv_path}: expected columns `file` and `label`, missing {sorted(missing)}")
        pairs = []
        for line, row in enumerate(reader, start=2):
            path = root / row["file"]
            if not path.is_file():
                raise SynthError(f"{csv_path}:{line}: file not found: {path}")
            if not row["label"]:
                raise SynthError(f"{csv_path}:{line}: empty label for {row['file']}")
            pairs.append((path, row["label"]))
    return sorted(pairs)


def class_list(pairs: list[tuple[Path, str]], classes: list[str] | None) -> list[str]:
    """The classes in label_id order; a label outside `classes` is an error naming its file."""
    if classes is None:
        return sorted({label for _, label in pairs})
    for path, label in pairs:
        if label not in classes:
            raise SynthError(f"image_folder: unknown label {label!r} for {path}; expected one of: {', '.join(classes)}")
    return list(classes)


# ---------------------------------------------------------------- decoding


def load_pixels(path: Path, window: str = "file") -> np.ndarray:
    """One file as an (H, W) uint8 array; any failure is a SynthError naming the file."""
    kind = "DICOM" if _is_dicom(path) else "PNG"
    try:
        values = _dicom_values(path, window) if kind == "DICOM" else _png_values(path)
    except SynthError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure on a user's file: name the file
        raise SynthError(f"image_folder: {path}: not a readable {kind} image ({type(exc).__name__}: {exc})") from None
    return values


def _png_values(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "F"):
            return _to_uint8(np.asarray(image, dtype=np.float64), None)
        return np.asarray(image.convert("L"), dtype=np.uint8)


def _dicom_values(path: Path, window: str) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise SynthError(f"image_folder: {path}: DICOM file has no pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise SynthError(f"image_folder: {path}: expected one 2-D slice per file, got {ds.NumberOfFrames} frames")
    values = ds.pixel_array.astype(np.float64)
    if values.ndim == 3:  # colour: luminance
        values = values @ np.array([0.299, 0.587, 0.114])
    else:
        values = apply_modality_lut(values, ds).astype(np.float64)
    pixels = _to_uint8(values, _file_window(ds) if window == "file" else None)
    return 255 - pixels if ds.get("PhotometricInterpretation") == "MONOCHROME1" else pixels


def _file_window(ds) -> tuple[float, float] | None:
    """(low, high) of the file's first VOI window, or None."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    c, w = _first(center), _first(width)
    return (c - w / 2, c + w / 2) if w > 0 else None


def _first(value) -> float:
    """A DICOM number, or the first of several (WindowCenter may hold one per window)."""
    return float(value[0]) if isinstance(value, Sequence) and not isinstance(value, str) else float(value)


def _to_uint8(values: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    low, high = window if window else (float(values.min()), float(values.max()))
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)


def fit_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """Pad to a centred square with black, then resize (antialiased) to size x size."""
    h, w = pixels.shape
    side = max(h, w)
    square = np.zeros((side, side), np.uint8)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = pixels
    if side == size:
        return square
    return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


# ---------------------------------------------------------------- the stage


@register
class ImageFolder(TableStage):
    kind = "image_folder"
    Config = ImageFolderConfig
    description = "Read a folder of PNG/DICOM images, labelled by subfolder or CSV, as 8-bit grayscale PNG records"
    source = True
    on_driver = True

    def check_inputs(self) -> None:
        super().check_inputs()
        class_list(labelled_files(self.config), self.config.classes)  # files and labels, before Ray

    def transform(self, table: None) -> pa.Table:
        """Decode every file: images of different sizes are refused only once all are seen."""
        cfg = self.config
        pairs = labelled_files(cfg)
        classes = class_list(pairs, cfg.classes)
        log.info("image_folder: decoding %d files of %d classes from %s", len(pairs), len(classes), cfg.path)
        sizes: dict[tuple[int, int], list[Path]] = {}
        rows = []
        for path, label in pairs:
            pixels = load_pixels(path, cfg.window)
            sizes.setdefault(pixels.shape[::-1], []).append(path)
            if cfg.size is not None:
                pixels = fit_square(pixels, cfg.size)
            rows.append(make_record(pixels, label=label, label_id=classes.index(label), generator="image_folder",
                                    run_id=self.ctx.run_id, seed=self.ctx.seed, model="file",
                                    source=path.relative_to(cfg.path).as_posix()))  # fmt: skip
        if cfg.size is None and len(sizes) > 1:
            found = ", ".join(f"{w}x{h} ({len(p)} files, e.g. {p[0].name})" for (w, h), p in sorted(sizes.items()))
            raise SynthError(f"image_folder: images differ in size: {found}; set `size:` to resize them all")
        self.ctx.count(**{f"label_{label}": n for label, n in Counter(label for _, label in pairs).items()})
        return to_table(rows)
