"""The image record: its Arrow schema, PNG bytes in and out, and the content id.

Every record of kind "image" has these columns (`IMAGE_SCHEMA`); stages add their own after them
(a split, filter scores):

| column      | type   | meaning                                                              |
|-------------|--------|----------------------------------------------------------------------|
| `id`        | string | xxhash64 hex of the PNG bytes: same pixels, same id                  |
| `kind`      | string | always "image"                                                       |
| `generator` | string | "phantom_images", "image_folder" or "diffusion"                      |
| `run_id`    | string | the run that made it                                                 |
| `seed`      | int64  | the seed the image was drawn from (phantoms, samples); run seed else |
| `model`     | string | the method or model that made it ("phantom-v1", "file", a model id)  |
| `image`     | binary | an 8-bit grayscale PNG                                               |
| `label`     | string | the class name; for samples, the label that was requested            |
| `label_id`  | int32  | the class index in the generator's (or model's) class list           |
| `width`     | int32  | pixels                                                               |
| `height`    | int32  | pixels                                                               |
| `source`    | string | where it came from: "phantom/head/ct", a file path, "ddim25/cfg3.0"  |

Images are single-channel 8-bit: medical slices are grayscale, and DICOM's wider values are
windowed to 8 bits when read (`generators.image.folder`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash
from PIL import Image

from synth.records import RECORD_FIELDS

IMAGE_SCHEMA = pa.schema(
    [
        *RECORD_FIELDS,
        pa.field("image", pa.binary(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("label_id", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)


def encode_png(pixels: np.ndarray) -> bytes:
    """An (H, W) uint8 array as PNG bytes; the same pixels always give the same bytes."""
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"expected an (H, W) uint8 array, got {pixels.dtype} of shape {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG (or any Pillow-readable) bytes as an (H, W) uint8 grayscale array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def decode_many(images: Iterable[bytes]) -> np.ndarray:
    """Same-sized PNGs as one (N, H, W) uint8 array."""
    arrays = [decode_png(b) for b in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"expected images of one size, got {sorted(sizes)}")
    return np.stack(arrays) if arrays else np.zeros((0, 0, 0), np.uint8)


def image_id(png: bytes) -> str:
    return xxhash.xxh64_hexdigest(png)


def make_record(
    pixels: np.ndarray, *, label: str, label_id: int, generator: str, run_id: str, seed: int, model: str, source: str
) -> dict[str, Any]:
    """One row of `IMAGE_SCHEMA` from pixels; the id is the hash of the PNG."""
    png = encode_png(pixels)
    return {
        "id": image_id(png),
        "kind": "image",
        "generator": generator,
        "run_id": run_id,
        "seed": seed,
        "model": model,
        "image": png,
        "label": label,
        "label_id": label_id,
        "width": pixels.shape[1],
        "height": pixels.shape[0],
        "source": source,
    }


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as a table of exactly `IMAGE_SCHEMA` (an empty table keeps the schema)."""
    return pa.Table.from_pylist(rows, schema=IMAGE_SCHEMA)
