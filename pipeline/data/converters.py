"""Sources turned into shards: `digits`, `digits-hard`, `synthetic`, `imagefolder:PATH`.

Every converter yields (sample_id, label, image_bytes, split) rows and is
deterministic per seed; `prepare` streams them into a ShardWriter.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from pipeline import storage
from pipeline.data.images import encode
from pipeline.data.shards import DatasetMeta, ShardWriter
from pipeline.errors import DataError

Row = tuple[str, int, bytes, str]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def stratified_split(labels: np.ndarray, train: int, val: int, seed: int) -> list[str]:
    """Assign each sample train/val/test: `train` and `val` in total, stratified by class, seeded."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=object)
    classes = np.unique(labels)
    train_share, val_share = train / len(labels), val / len(labels)
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(train_share * len(members)))
        n_val = int(round(val_share * len(members)))
        assignment[members[:n_train]] = "train"
        assignment[members[n_train:n_train + n_val]] = "val"
        assignment[members[n_train + n_val:]] = "test"
    return list(assignment)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # 8x8, values 0..16
    return images, digits.target.astype(np.int64)


def digits_rows(seed: int) -> tuple[DatasetMeta, Iterator[Row]]:
    images, labels = _load_digits()
    splits = stratified_split(labels, train=1077, val=360, seed=seed)
    meta = DatasetMeta(name="digits", num_classes=10, class_names=[str(i) for i in range(10)],
                       height=8, width=8, channels=1, encoding="png", mean=[0.3], std=[0.4])
    rows = ((f"digits-{i:05d}", int(labels[i]), encode(images[i]), splits[i]) for i in range(len(labels)))
    return meta, rows


def _paste_max(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    region = canvas[top:top + patch.shape[0], left:left + patch.shape[1]]
    np.maximum(region, patch[: region.shape[0], : region.shape[1]], out=region)


def _scaled_rotated(image: np.ndarray, size: int, angle: float) -> np.ndarray:
    pil = Image.fromarray(image).resize((size, size), Image.BILINEAR)
    pil = pil.rotate(angle, resample=Image.BILINEAR, expand=False)
    return np.asarray(pil, dtype=np.float32) / 255.0


def hard_digit(index: int, images: np.ndarray, seed: int, canvas: int = 32) -> np.ndarray:
    """One digits-hard image: the digit scaled, rotated and placed over clutter from other digits, plus noise."""
    rng = np.random.default_rng([seed, index])
    out = np.zeros((canvas, canvas), dtype=np.float32)
    for _ in range(rng.integers(2, 5)):  # 2-4 fragments of other digits
        other = images[rng.integers(len(images))]
        size = int(rng.integers(6, 13))
        fragment = _scaled_rotated(other, size, rng.uniform(-180, 180)) * rng.uniform(0.3, 0.6)
        _paste_max(out, fragment, int(rng.integers(0, canvas - size + 1)), int(rng.integers(0, canvas - size + 1)))
    size = int(rng.integers(12, 21))
    digit = _scaled_rotated(images[index], size, rng.uniform(-30, 30))
    _paste_max(out, digit, int(rng.integers(0, canvas - size + 1)), int(rng.integers(0, canvas - size + 1)))
    out += rng.normal(0.0, 0.1, out.shape).astype(np.float32)
    return (np.clip(out, 0.0, 1.0) * 255).round().astype(np.uint8)


def digits_hard_rows(seed: int) -> tuple[DatasetMeta, Iterator[Row]]:
    images, labels = _load_digits()
    splits = stratified_split(labels, train=800, val=498, seed=seed)
    meta = DatasetMeta(name="digits-hard", num_classes=10, class_names=[str(i) for i in range(10)],
                       height=32, width=32, channels=1, encoding="png", mean=[0.2], std=[0.25])
    rows = ((f"dh-{i:05d}", int(labels[i]), encode(hard_digit(i, images, seed)), splits[i])
            for i in range(len(labels)))
    return meta, rows


@dataclass
class SyntheticSpec:
    classes: int = 10
    size: int = 64
    train_per_class: int = 20
    val_per_class: int = 5
    test_per_class: int = 5


def _class_pattern(c: int, seed: int, size: int) -> tuple[np.ndarray, np.random.Generator]:
    rng = np.random.default_rng([seed, 1_000_003, c])
    colour = rng.uniform(0.2, 1.0, 3)
    angle, frequency = rng.uniform(0, math.pi), rng.uniform(2, 8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    grating = 0.5 + 0.5 * np.sin(2 * math.pi * frequency * (xx * math.cos(angle) + yy * math.sin(angle)))
    return grating[..., None] * colour[None, None, :], rng


def synthetic_image(c: int, index: int, seed: int, size: int) -> np.ndarray:
    """A class-dependent coloured grating, shifted and noised per sample: learnable and forgettable."""
    pattern, _ = _class_pattern(c, seed, size)
    rng = np.random.default_rng([seed, c, index])
    shifted = np.roll(pattern, shift=(int(rng.integers(size)), int(rng.integers(size))), axis=(0, 1))
    image = 0.7 * shifted + 0.3 * rng.uniform(0, 1, shifted.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def synthetic_rows(seed: int, spec: SyntheticSpec) -> tuple[DatasetMeta, Iterator[Row]]:
    meta = DatasetMeta(name=f"synthetic-{spec.classes}x{spec.size}", num_classes=spec.classes,
                       class_names=[f"class{c:04d}" for c in range(spec.classes)], height=spec.size,
                       width=spec.size, channels=3, encoding="jpeg",
                       mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    per_split = (("train", spec.train_per_class), ("val", spec.val_per_class), ("test", spec.test_per_class))

    def rows():
        for split, per_class in per_split:
            for c in range(spec.classes):
                for k in range(per_class):
                    index = {"train": 0, "val": 1, "test": 2}[split] * 10_000_000 + k  # unique per split
                    yield (f"syn-{split}-{c:04d}-{k:06d}", c,
                           encode(synthetic_image(c, index, seed, spec.size), "JPEG"), split)

    return meta, rows()


def imagefolder_rows(root: str, seed: int) -> tuple[DatasetMeta, Iterator[Row]]:
    """`root/train/<class>/*`, `root/val/<class>/*`; val is split in halves (D_u, D_test) by a seeded hash."""
    from pipeline.data.splits import hash_unit

    train_files = [f for f in storage.list_files(storage.join(root, "train")) if f.lower().endswith(IMAGE_SUFFIXES)]
    if not train_files:
        raise DataError(f"imagefolder {root}: no images under {storage.join(root, 'train')}/<class>/")
    val_files = [f for f in storage.list_files(storage.join(root, "val")) if f.lower().endswith(IMAGE_SUFFIXES)]

    def class_of(uri: str) -> str:
        return uri.replace("\\", "/").rstrip("/").split("/")[-2]

    class_names = sorted({class_of(f) for f in train_files})
    label_of = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({class_of(f) for f in val_files} - set(label_of))
    if unknown:
        raise DataError(f"imagefolder {root}: val has classes missing from train: {unknown[:10]}")
    with Image.open(io.BytesIO(storage.read_bytes(train_files[0]))) as probe:
        width, height = probe.size
        channels = 1 if probe.mode == "L" else 3
    meta = DatasetMeta(name=os.path.basename(str(root).rstrip("/")) or "imagefolder", num_classes=len(class_names),
                       class_names=class_names, height=height, width=width, channels=channels,
                       encoding="source", mean=[0.485, 0.456, 0.406][:channels], std=[0.229, 0.224, 0.225][:channels])

    def rows():
        for uri in train_files:
            rel = "/".join(uri.replace("\\", "/").split("/")[-3:])
            yield rel, label_of[class_of(uri)], storage.read_bytes(uri), "train"
        for uri in val_files:
            rel = "/".join(uri.replace("\\", "/").split("/")[-3:])
            split = "val" if hash_unit(seed, "val-half", rel) < 0.5 else "test"
            yield rel, label_of[class_of(uri)], storage.read_bytes(uri), split

    return meta, rows()


def rows_for_source(source: str, seed: int, synthetic: SyntheticSpec | None = None) -> tuple[DatasetMeta, Iterator[Row]]:
    if source == "digits":
        return digits_rows(seed)
    if source == "digits-hard":
        return digits_hard_rows(seed)
    if source == "synthetic":
        return synthetic_rows(seed, synthetic or SyntheticSpec())
    if source.startswith("imagefolder:"):
        return imagefolder_rows(source.split(":", 1)[1], seed)
    raise DataError(f"unknown source {source!r}: use digits, digits-hard, synthetic or imagefolder:PATH")


def prepare(source: str, out: str, seed: int = 0, synthetic: SyntheticSpec | None = None,
            overwrite: bool = False, shard_bytes: int = 256 * 1024**2,
            progress: Callable[[int], None] | None = None) -> DatasetMeta:
    meta, rows = rows_for_source(source, seed, synthetic)
    meta.extra["source"], meta.extra["seed"] = source, seed
    writer = ShardWriter(out, meta, shard_bytes=shard_bytes, overwrite=overwrite)
    for count, row in enumerate(rows, start=1):
        writer.add(*row)
        if progress and count % 1000 == 0:
            progress(count)
    return writer.close()
