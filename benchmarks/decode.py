"""Benchmark: decode cost per image and how far the fast path's pixels and predictions are from PIL's.

    python -m benchmarks.decode [--data URI] [--images 300] [--image-size 224] [--model CHECKPOINT]

Images: the first `--images` train images of a shard dataset, or (default) freshly generated
`synthetic-imagenet` JPEGs (about 500x375, quality 90, ~110 KB). Per image, on one thread:
- before: the project's former path, PIL decode + PIL bilinear resize straight to size x size;
- PIL reference: PIL decode + torchvision's `Resize(resize) + CenterCrop(size)` on the PIL image, what
  torchvision/timm ImageNet weights were evaluated with;
- after: the project's path (`pipeline.data.images`: libjpeg-turbo through torchvision, torch's
  antialiased uint8 resize, centre crop).
Prints ms per image and images/s for each, the pixel difference after vs the PIL reference, and, with
`--model` (a project checkpoint whose input size is `--image-size`), the model's top-1 agreement on the
two decodes. No assertion: the figures are the result.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from pipeline.data.images import decode_tensor, fit_size, resize_size


def sample_images(data: str | None, count: int) -> list[bytes]:
    if data is None:
        from pipeline.data.converters import IMAGENET_JPEG_QUALITY, encode_image, realistic_image

        return [encode_image(realistic_image(k % 10, k, 0), "JPEG", IMAGENET_JPEG_QUALITY) for k in range(count)]
    from pipeline.data.shards import read_meta, read_table

    table = read_table(data, read_meta(data), ["image", "split"])
    train = [image for image, split in zip(table.column("image").to_pylist(), table.column("split").to_pylist())
             if split == "train"]
    return train[:count]


def before(data: bytes, size: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(image).transpose(2, 0, 1)


def pil_reference(size: int):
    transform = transforms.Compose([transforms.Resize(resize_size(size)), transforms.CenterCrop(size)])

    def run(data: bytes) -> np.ndarray:
        return np.asarray(transform(Image.open(io.BytesIO(data)).convert("RGB"))).transpose(2, 0, 1)

    return run


def after(data: bytes, size: int) -> np.ndarray:
    return fit_size(decode_tensor(data, 3), size, "shorter_side_crop").numpy()


def timed(function, images: list[bytes]) -> tuple[float, np.ndarray]:
    function(images[0])  # first call loads codecs
    started = time.perf_counter()
    out = np.stack([function(data) for data in images])
    return (time.perf_counter() - started) / len(images), out


def top1_agreement(checkpoint: str, first: np.ndarray, second: np.ndarray) -> float:
    from pipeline.models import load_checkpoint

    model = load_checkpoint(checkpoint)[0].eval()
    with torch.no_grad():
        predictions = [torch.cat([model(torch.from_numpy(x[i:i + 64])).argmax(1) for i in range(0, len(x), 64)])
                       for x in (first, second)]
    return float((predictions[0] == predictions[1]).float().mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="shard dataset URI (default: generated synthetic-imagenet JPEGs)")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--model", help="project checkpoint for the top-1 agreement (input size --image-size)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # per-image cost on one core, as in one decode task or DataLoader worker
    images = sample_images(args.data, args.images)
    size = args.image_size
    print(f"{len(images)} images, mean {np.mean([len(b) for b in images]) / 1024:.0f} KB, "
          f"sizes e.g. {[Image.open(io.BytesIO(b)).size for b in images[:3]]}, to {size} px")
    seconds_before, _ = timed(lambda data: before(data, size), images)
    seconds_reference, reference = timed(pil_reference(size), images)
    seconds_after, ours = timed(lambda data: after(data, size), images)
    for label, seconds in (("before: PIL decode + squash", seconds_before),
                           ("PIL + Resize/CenterCrop", seconds_reference),
                           ("after: torchvision + torch", seconds_after)):
        print(f"{label:<30}{seconds * 1000:8.2f} ms/image{1 / seconds:8.0f} images/s")
    print(f"after / PIL reference speed-up: {seconds_reference / seconds_after:.2f}x "
          f"(vs before: {seconds_before / seconds_after:.2f}x)")
    difference = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    print(f"pixels after vs PIL reference: mean |diff| {difference.mean():.3f}, max {difference.max()}, "
          f"share differing {np.mean(difference > 0):.3f}, share > 1 level {np.mean(difference > 1):.4f}")
    if args.model:
        print(f"top-1 agreement of {args.model} on the two decodes: {top1_agreement(args.model, ours, reference):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
