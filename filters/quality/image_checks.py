"""Image filters: blank and saturated images, perceptual-hash duplicates, memorised training images.

- `image_checks` (per batch): `pixel_mean`, `pixel_std` and `saturated_fraction` (share of pixels
  at 255) per image; drops `undecodable`, `blank` (std below `min_std`) and `saturated`.
- `image_phash_dedup` (a whole-table job): a 64-bit DCT perceptual hash per image (`phash`, hex): the image
  at 32x32, its 2-D DCT, the 8x8 lowest frequencies against their median. Walking the rows in
  order, a row within `max_distance` bits of an earlier kept row is dropped as `phash_duplicate`.
  The default, 1, is below what distinct images reach here: among 600 procedural phantoms at
  32 px the nearest pair is 2 bits apart (5% of images have a neighbour within 4 bits).
  Only the hashes (8 bytes a row) are gathered in the driver; images stay in the object store.
- `image_memorisation` (per batch, an actor pool): the nearest training image of each sample,
  by RMS pixel distance at `compare_size` px. Its distance over the median nearest-neighbour
  distance among the training images themselves is `memorisation_ratio`; below `max_ratio`
  the sample is a near copy and is dropped as `near_copy`. Real images of this kind are never
  that close to each other, so a ratio near 0 means the model reproduced one it saw. Pixel
  distance is not shift-invariant: a copy moved by a few pixels is not caught.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.fft
from PIL import Image
from pydantic import Field

from generators.image.diffusion import model_root, split_paths
from generators.image.records import decode_png
from synth.errors import SynthError
from synth.registry import register
from synth.spec import StageConfig
from synth.stage import FilterStage, TableStage, mark_dropped, set_column

log = logging.getLogger(__name__)


def _decode_or_none(data: bytes) -> np.ndarray | None:
    try:
        return decode_png(data)
    except Exception:  # noqa: BLE001 - any undecodable bytes become a counted drop, not a crash
        return None


# ---------------------------------------------------------------- blank and saturated


class ImageChecksConfig(StageConfig):
    kind: Literal["image_checks"] = "image_checks"
    min_std: float = Field(4.0, ge=0, description="Pixel std (0-255) below which an image is blank")
    max_saturated: float = Field(0.25, ge=0, le=1, description="Share of pixels at 255 above which it is saturated")


@register
class ImageChecks(FilterStage):
    kind = "image_checks"
    Config = ImageChecksConfig
    description = "Drop undecodable, blank (flat) and saturated images; adds pixel statistics"

    def score(self, batch: pa.Table) -> tuple[dict, list[str | None]]:
        means, stds, saturated, reasons = [], [], [], []
        for data in batch.column("image").to_pylist():
            pixels = _decode_or_none(data)
            if pixels is None:
                means.append(None), stds.append(None), saturated.append(None), reasons.append("undecodable")
                continue
            means.append(float(pixels.mean()))
            stds.append(float(pixels.std()))
            saturated.append(float(np.mean(pixels == 255)))
            reasons.append(self._reason(stds[-1], saturated[-1]))
        columns = {"pixel_mean": pa.array(means, pa.float32()), "pixel_std": pa.array(stds, pa.float32()),
                   "saturated_fraction": pa.array(saturated, pa.float32())}  # fmt: skip
        return columns, reasons

    def _reason(self, std: float, saturated: float) -> str | None:
        if std < self.config.min_std:
            return "blank"
        if saturated > self.config.max_saturated:
            return "saturated"
        return None


# ---------------------------------------------------------------- perceptual-hash duplicates


def phash(pixels: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an (H, W) uint8 image."""
    small = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    low = scipy.fft.dctn(small, norm="ortho")[:8, :8].ravel()
    return int(np.packbits(low > np.median(low)).view(">u8")[0])


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy < 2 has no bitwise_count)."""
    return np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1).sum(1)


def duplicate_flags(hashes: list[int], max_distance: int) -> list[bool]:
    """True for each hash within `max_distance` bits of an earlier kept one."""
    kept = np.empty(len(hashes), np.uint64)
    count, flags = 0, []
    for value in hashes:
        near = count and int(_popcount(kept[:count] ^ np.uint64(value)).min()) <= max_distance
        flags.append(bool(near))
        if not near:
            kept[count] = value
            count += 1
    return flags


class PhashDedupConfig(StageConfig):
    kind: Literal["image_phash_dedup"] = "image_phash_dedup"
    max_distance: int = Field(1, ge=0, le=32, description="Hamming distance (of 64 bits) that counts as a duplicate")


def _with_phash(batch: pa.Table) -> pa.Table:
    hashes = []
    for data in batch.column("image").to_pylist():
        pixels = _decode_or_none(data)
        hashes.append(None if pixels is None else f"{phash(pixels):016x}")
    return set_column(batch, "phash", pa.array(hashes, pa.string()))


@register
class PhashDedup(TableStage):
    kind = "image_phash_dedup"
    Config = PhashDedupConfig
    description = "Drop images whose perceptual hash is within max_distance bits of an earlier image's"

    def transform(self, table: pa.Table) -> pa.Table:
        """Every image is compared with every earlier one: one task holding every image."""
        table = _with_phash(table)
        hashes = [int(h, 16) if h else None for h in table.column("phash").to_pylist()]
        flags = iter(duplicate_flags([h for h in hashes if h is not None], self.config.max_distance))
        all_flags = [next(flags) if h is not None else False for h in hashes]
        log.info("image_phash_dedup: %d of %d images are near duplicates", sum(all_flags), len(hashes))
        return mark_dropped(table, ["phash_duplicate" if f else None for f in all_flags])


# ---------------------------------------------------------------- memorisation


class MemorisationConfig(StageConfig):
    kind: Literal["image_memorisation"] = "image_memorisation"
    model: str = Field("diffusion", description="The diffusion stage whose training images to compare with")
    reference: Path | None = Field(None, description="A Parquet file of image records to compare with instead")
    compare_size: int = Field(32, ge=4, description="Both sides are resized to this many px before comparing")
    max_ratio: float = Field(0.5, ge=0, description="Drop when nearest distance / typical real distance is below")


def _vectors(images: list[bytes], size: int) -> np.ndarray:
    """(N, size*size) float32 pixels in [0, 1]."""
    out = np.empty((len(images), size * size), np.float32)
    for i, data in enumerate(images):
        pixels = decode_png(data)
        if pixels.shape != (size, size):
            pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
        out[i] = pixels.reshape(-1) / 255.0
    return out


def nearest(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and RMS distance of each query's nearest reference vector."""
    d2 = (queries**2).sum(1)[:, None] + (reference**2).sum(1)[None, :] - 2 * queries @ reference.T
    index = d2.argmin(1)
    return index, np.sqrt(np.maximum(d2[np.arange(len(queries)), index], 0) / queries.shape[1])


@register
class Memorisation(FilterStage):
    kind = "image_memorisation"
    Config = MemorisationConfig
    stateful = True
    description = "Find each sample's nearest training image; drop near copies (memorisation)"

    def setup(self) -> None:
        path = self.config.reference or split_paths(model_root(self.ctx.output_dir, self.config.model))["train"]
        if not Path(path).is_file():
            raise SynthError(f"image_memorisation: no training images at {path}: put a diffusion stage "
                             "before this one and name it in `model:`, or set `reference:`")  # fmt: skip
        table = pq.read_table(path, columns=["id", "image"])
        self.ids = table.column("id").to_pylist()
        self.reference = _vectors(table.column("image").to_pylist(), self.config.compare_size)
        self.typical = self._typical_distance(np.arange(0, len(self.ids), max(1, len(self.ids) // 500)))
        log.info("image_memorisation: %d training images; median real nearest distance %.4f", len(self.ids),
                 self.typical)  # fmt: skip

    def _typical_distance(self, index: np.ndarray) -> float:
        """Median distance from (up to 500) training images to their nearest other training image."""
        probe = self.reference[index]
        d2 = (probe**2).sum(1)[:, None] + (self.reference**2).sum(1)[None, :] - 2 * probe @ self.reference.T
        d2[np.arange(len(index)), index] = np.inf
        return float(np.median(np.sqrt(np.maximum(d2.min(1), 0) / probe.shape[1])))

    def score(self, batch: pa.Table) -> tuple[dict, list[str | None]]:
        index, distance = nearest(_vectors(batch.column("image").to_pylist(), self.config.compare_size), self.reference)
        ratio = distance / max(self.typical, 1e-8)
        columns = {"nearest_real_id": pa.array([self.ids[i] for i in index], pa.string()),
                   "nearest_real_distance": pa.array(distance, pa.float32()),
                   "memorisation_ratio": pa.array(ratio, pa.float32())}  # fmt: skip
        return columns, ["near_copy" if r < self.config.max_ratio else None for r in ratio]
