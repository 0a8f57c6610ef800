"""The decode path: torchvision's codecs + torch's antialiased resize, against the torchvision/PIL reference."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from pipeline.data.images import decode_batch, decode_one, decode_tensor, encode, fit_size, resize_size
from pipeline.errors import DataError


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image: smooth gradients and blotches plus fine noise (JPEG must work for its bytes)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * (xx * 0.8 + yy * 0.6))[..., None] * rng.uniform(0.3, 1, 3)
    blotches = np.kron(rng.uniform(0, 1, (height // 8 + 1, width // 8 + 1, 3)), np.ones((8, 8, 1)))[:height, :width]
    image = 0.6 * base + 0.3 * blotches + 0.1 * rng.uniform(0, 1, (height, width, 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("width, height", [(500, 375), (375, 500), (500, 333), (640, 480), (300, 450)])
def test_shorter_side_then_crop_equals_torchvision_resize_256_center_crop_224(width, height):
    data = encode(_photo(width, height), "JPEG")
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    expected = np.asarray(reference(Image.open(io.BytesIO(data)).convert("RGB"))).transpose(2, 0, 1).astype(int)
    ours = decode_one(data, 3, 224, 224, resize="shorter_side_crop").astype(int)
    assert ours.shape == (3, 224, 224)
    assert np.abs(ours - expected).max() <= 1  # within one intensity level


def test_resize_size_is_the_imagenet_convention():
    assert resize_size(224) == 256 and resize_size(64) == 73


def test_squash_keeps_an_image_at_size_untouched_and_squashes_others():
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    np.testing.assert_array_equal(decode_one(encode(pixels), 1, 8, 8)[0], pixels)
    squashed = decode_batch([encode(_photo(40, 20))], ["a"], 3, 16, "squash")
    assert squashed.shape == (1, 3, 16, 16) and squashed.dtype == np.uint8


def test_colour_modes_are_converted_to_the_datasets_channels():
    grey = encode(np.full((10, 12), 77, np.uint8))
    assert decode_tensor(grey, 3).shape == (3, 10, 12)
    assert decode_tensor(encode(_photo(12, 10), "JPEG"), 1).shape == (1, 10, 12)


def test_formats_torchvision_cannot_read_fall_back_to_pil():
    buffer = io.BytesIO()
    Image.fromarray(_photo(20, 10)).save(buffer, format="BMP")
    image = decode_tensor(buffer.getvalue(), 3)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), _photo(20, 10))


@pytest.mark.parametrize("data", [b"not an image at all", encode(_photo(64, 48), "JPEG")[:300]])
def test_corrupt_or_truncated_images_name_the_sample(data):
    with pytest.raises(DataError, match="corrupt image for sample 'broken-3'"):
        decode_tensor(data, 3, "broken-3")


def test_unknown_resize_mode_is_an_error():
    with pytest.raises(DataError, match="unknown resize mode"):
        fit_size(torch.zeros(3, 10, 10, dtype=torch.uint8), 8, "stretch")
