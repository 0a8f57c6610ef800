"""Image bytes <-> uint8 arrays. Decoding stays uint8 (4x less to move); normalisation happens on the device."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import DataError


def encode(array: np.ndarray, fmt: str = "PNG", quality: int = 90) -> bytes:
    """Encode an HxW (grey) or HxWx3 (RGB) uint8 array."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(array))
    image.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def decode_one(data: bytes, channels: int, height: int, width: int, sample_id: str = "?") -> np.ndarray:
    """Decode to uint8 [C, H, W], converting colour mode and resizing when the stored size differs."""
    try:
        image = Image.open(io.BytesIO(data))
        image = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"corrupt image for sample {sample_id!r}: {exc}") from exc
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def decode_batch(images, sample_ids, channels: int, height: int, width: int) -> np.ndarray:
    out = np.empty((len(images), channels, height, width), dtype=np.uint8)
    for position, (data, sample_id) in enumerate(zip(images, sample_ids)):
        out[position] = decode_one(data, channels, height, width, sample_id)
    return out
