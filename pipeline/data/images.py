"""Image bytes <-> uint8 arrays. Decoding stays uint8 (4x less to move); normalisation happens on the device.

Decoding is the CPU bound of the whole product, so it goes through libjpeg-turbo / libpng
(`torchvision.io.decode_image`) and torch's antialiased uint8 resize: 1.64 ms per ~110 KB
500x375 JPEG to 224 px against 2.53 ms for PIL with torchvision's Resize + CenterCrop
(`python -m benchmarks.decode` measures both and how far their pixels and a model's
predictions differ). PIL stays as the fallback for formats
torchvision does not read (BMP, ...).

Two ways to reach the model's input size, recorded per dataset (`DatasetMeta.resize`):
- `squash`: resize to size x size; only for data already at (or near) size, such as digits.
- `shorter_side_crop`: the eval transform torchvision and timm ImageNet weights expect:
  the shorter side to size / 0.875 (256 for 224, antialiased bilinear), then a centre crop.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as tvf

from pipeline.data.converters import encode_image as encode  # noqa: F401  (the one encoder, torch-free there)
from pipeline.data.shards import RESIZE_MODES
from pipeline.errors import DataError

CROP_FRACTION = 0.875  # ImageNet eval: 224 of 256


def resize_size(image_size: int) -> int:
    """The shorter side before the centre crop: 256 for 224, as in torchvision's and timm's eval transforms."""
    return int(image_size / CROP_FRACTION)


def decode_tensor(data: bytes, channels: int, sample_id: str = "?") -> torch.Tensor:
    """Decode to uint8 [C, H, W] at the stored size, converting the colour mode to `channels`."""
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a truncated JPEG warns and decodes partly: let PIL judge it below
            # torchvision 0.29 marks its codecs deprecated in favour of TorchCodec, which the pinned torch
            # lacks; they remain libjpeg-turbo and libpng, the fastest decoders available here.
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
    except (RuntimeError, UserWarning, ValueError):
        return _decode_with_pil(data, channels, sample_id)


def _decode_with_pil(data: bytes, channels: int, sample_id: str) -> torch.Tensor:
    try:
        image = Image.open(io.BytesIO(data))
        array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"corrupt image for sample {sample_id!r}: {exc}") from exc
    return torch.from_numpy(array[None] if channels == 1 else array.transpose(2, 0, 1).copy())


def fit_size(image: torch.Tensor, size: int, resize: str = "squash") -> torch.Tensor:
    """Bring a decoded uint8 [C, H, W] image to [C, size, size] the way the dataset records (`resize`)."""
    height, width = image.shape[-2:]
    if resize == "squash":
        return image if (height, width) == (size, size) else tvf.resize(image, [size, size], antialias=True)
    if resize != "shorter_side_crop":
        raise DataError(f"unknown resize mode {resize!r}: use one of {RESIZE_MODES}")
    shorter = resize_size(size)
    if min(height, width) != shorter:
        image = tvf.resize(image, [shorter], antialias=True)  # one int: the shorter side, aspect kept
    return tvf.center_crop(image, [size, size])


def decode_one(data: bytes, channels: int, height: int, width: int, sample_id: str = "?",
               resize: str = "squash") -> np.ndarray:
    """Decode one image to uint8 [C, height, width] (a square size for `shorter_side_crop`)."""
    if resize == "squash" and height != width:
        image = decode_tensor(data, channels, sample_id)
        return tvf.resize(image, [height, width], antialias=True).numpy()
    return fit_size(decode_tensor(data, channels, sample_id), height, resize).numpy()


def decode_batch(images, sample_ids, channels: int, size: int, resize: str = "squash") -> np.ndarray:
    """Decode encoded images to one uint8 [B, C, size, size] array."""
    out = np.empty((len(images), channels, size, size), dtype=np.uint8)
    for position, (data, sample_id) in enumerate(zip(images, sample_ids)):
        out[position] = fit_size(decode_tensor(data, channels, sample_id), size, resize).numpy()
    return out
