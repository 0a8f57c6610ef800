"""Sources turned into shards: `digits`, `digits-hard`, `synthetic`, `synthetic-imagenet`, `imagefolder:PATH`.

A source first plans its rows cheaply and deterministically per seed (sample id,
label, split, and a key that makes the image bytes: a file URI or generator
indices), then makes the bytes of any row on demand. The plan's order is the stored
order: sources that list rows class by class plan them in a seeded random order
(`in_seeded_order`), since readers shuffle only within a few consecutive row groups.
`prepare` hands the plan to pipeline/data/prepare.py, which cuts it into shards and
builds them in parallel, resumably. Sources are pickled to its worker processes, so they hold only settings.
"""

from __future__ import annotations

import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from statistics import NormalDist
from typing import Callable, Iterator, NamedTuple

import numpy as np
from PIL import Image

from pipeline import storage
from pipeline.data.prepare import convert, spread
from pipeline.data.shards import ROW_ORDER_SHUFFLED, SPLITS, DatasetMeta, image_header
from pipeline.data.splits import hash_unit
from pipeline.errors import DataError

Row = tuple[str, int, bytes, str]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SOURCES = "digits, digits-hard, synthetic, synthetic-imagenet or imagefolder:PATH"


class PlannedRow(NamedTuple):
    sample_id: str
    label: int
    split: str
    key: object  # what the source needs to make the image bytes: a file URI, or generator indices


class Source:
    """A dataset to convert: `plan()` lists its rows without making any image; `image(key)` makes one."""

    def describe(self) -> dict:
        """What identifies this conversion (source, seed, generator settings): stored in `_meta.json`."""
        raise NotImplementedError

    def plan(self) -> tuple[DatasetMeta, list[PlannedRow]]:
        raise NotImplementedError

    def image(self, key) -> bytes:
        raise NotImplementedError

    def images(self, keys: list) -> list[bytes]:
        return [self.image(key) for key in keys]


def encode_image(array: np.ndarray, fmt: str = "PNG", quality: int = 90) -> bytes:
    """Encode an HxW (grey) or HxWx3 (RGB) uint8 array with PIL (also `pipeline.data.images.encode`).

    It lives here, not beside the decoder, because that module imports torch, which would cost
    every prepare worker process about 3 s of start-up for nothing."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(array))
    image.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def in_seeded_order(meta: DatasetMeta, rows: list[PlannedRow], seed: int) -> tuple[DatasetMeta, list[PlannedRow]]:
    """Rows train, then val, then test, each split in a random order fixed by (seed, sample_id), and the meta
    marked with that order.

    A streamed pass shuffles rows only within about two row groups at 224 px, so rows stored class by
    class (ImageFolder's sorted paths, the synthetic plans) gave batches of a few classes; in this order
    they hold as many as a uniform shuffle's (tests/test_class_mix.py). The order is decided on the plan
    alone, before any image is made, and does not depend on the order the source listed its files in:
    a rerun plans the same shards, so prepare still resumes. Splits stay apart so that reading val or
    test touches only their own row groups.
    """
    split_rank = {split: rank for rank, split in enumerate(SPLITS)}  # an unknown split sorts last; prepare refuses it
    ordered = sorted(rows, key=lambda row: (split_rank.get(row.split, len(SPLITS)),
                                            hash_unit(seed, "row-order", row.sample_id)))
    meta.extra["row_order"] = ROW_ORDER_SHUFFLED
    return meta, ordered


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


# ---------------------------------------------------------------- digits, digits-hard

@lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as uint8 0..255 (loaded once per process; treat as read-only)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # 8x8, values 0..16
    return images, digits.target.astype(np.int64)


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


def _digits_plan(name: str, id_prefix: str, train: int, val: int, seed: int, size: int, mean: float, std: float):
    """(meta, rows) of a dataset made from sklearn's digits: a stratified train/val/test split, one row per digit."""
    _, labels = _load_digits()
    splits = stratified_split(labels, train=train, val=val, seed=seed)
    meta = DatasetMeta(name=name, num_classes=10, class_names=[str(i) for i in range(10)], height=size, width=size,
                       channels=1, encoding="png", mean=[mean], std=[std])
    return meta, [PlannedRow(f"{id_prefix}-{i:05d}", int(labels[i]), splits[i], i) for i in range(len(labels))]


@dataclass(frozen=True)
class DigitsSource(Source):
    seed: int

    def describe(self) -> dict:
        return {"source": "digits", "seed": self.seed}

    def plan(self):
        return _digits_plan("digits", "digits", train=1077, val=360, seed=self.seed, size=8, mean=0.3, std=0.4)

    def image(self, index: int) -> bytes:
        return encode_image(_load_digits()[0][index])


@dataclass(frozen=True)
class DigitsHardSource(Source):
    seed: int

    def describe(self) -> dict:
        return {"source": "digits-hard", "seed": self.seed}

    def plan(self):
        return _digits_plan("digits-hard", "dh", train=800, val=498, seed=self.seed, size=32, mean=0.2, std=0.25)

    def image(self, index: int) -> bytes:
        return encode_image(hard_digit(index, _load_digits()[0], self.seed))


# ---------------------------------------------------------------- synthetic, synthetic-imagenet

@dataclass
class SyntheticSpec:
    classes: int = 10
    size: int | None = None  # the input-size hint; None: 64 for `synthetic`, 224 for `synthetic-imagenet`
    train_per_class: int = 20
    val_per_class: int = 5
    test_per_class: int = 5


SPLIT_INDEX_BASE = {"train": 0, "val": 10_000_000, "test": 20_000_000}  # generator index unique across splits


def _synthetic_plan(prefix: str, spec: SyntheticSpec) -> list[PlannedRow]:
    """Split by split, class by class (the sources store them `in_seeded_order`): rows keyed by (class,
    generator index)."""
    per_split = (("train", spec.train_per_class), ("val", spec.val_per_class), ("test", spec.test_per_class))
    return [PlannedRow(f"{prefix}-{split}-{c:04d}-{k:06d}", c, split, (c, SPLIT_INDEX_BASE[split] + k))
            for split, per_class in per_split for c in range(spec.classes) for k in range(per_class)]


def _class_params(c: int, seed: int) -> tuple[np.ndarray, float, float]:
    """A class's colour, grating angle and frequency (cycles per image side)."""
    rng = np.random.default_rng([seed, 1_000_003, c])
    colour = rng.uniform(0.2, 1.0, 3)
    angle, frequency = rng.uniform(0, math.pi), rng.uniform(2, 8)
    return colour, angle, frequency


def _class_pattern(c: int, seed: int, size: int) -> np.ndarray:
    colour, angle, frequency = _class_params(c, seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    grating = 0.5 + 0.5 * np.sin(2 * math.pi * frequency * (xx * math.cos(angle) + yy * math.sin(angle)))
    return grating[..., None] * colour[None, None, :]


def synthetic_image(c: int, index: int, seed: int, size: int) -> np.ndarray:
    """A class-dependent coloured grating, shifted and noised per sample: learnable and forgettable."""
    pattern = _class_pattern(c, seed, size)
    rng = np.random.default_rng([seed, c, index])
    shifted = np.roll(pattern, shift=(int(rng.integers(size)), int(rng.integers(size))), axis=(0, 1))
    image = 0.7 * shifted + 0.3 * rng.uniform(0, 1, shifted.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


# ImageNet's commonest stored sizes (width, height) and how often each is drawn; the rest of the time
# any size with both sides in 300..500.
IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333))
IMAGENET_SIZE_SHARES = (0.55, 0.15, 0.15)
IMAGENET_JPEG_QUALITY = 90
# Per-pixel grain (standard deviation on 0..1) that brings quality-90 JPEGs of these sizes to ImageNet's
# ~110 KB average (tests/test_converters.py measures it): the cost of decoding them is then realistic too.
GRAIN_SIGMA = 0.105
# Standard normal quantiles of 256 evenly spaced probabilities: random bytes become Gaussian grain by lookup,
# several times faster than drawing normals.
_GAUSSIAN_LOOKUP = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], dtype=np.float32)


def imagenet_like_size(rng: np.random.Generator) -> tuple[int, int]:
    """A (width, height) drawn like ImageNet's: mostly 500x375, 375x500, 500x333, sometimes anything 300..500."""
    pick = rng.uniform()
    for size, cumulative in zip(IMAGENET_SIZES, np.cumsum(IMAGENET_SIZE_SHARES)):
        if pick < cumulative:
            return size
    return int(rng.integers(300, 501)), int(rng.integers(300, 501))


def realistic_image(c: int, index: int, seed: int) -> np.ndarray:
    """An ImageNet-shaped HxWx3 uint8 image: the class's grating (in cycles per shorter side, so it survives
    the shorter-side resize and centre crop) at a per-sample phase and strength, over smooth random texture
    and fine grain."""
    colour, angle, frequency = _class_params(c, seed)
    rng = np.random.default_rng([seed, c, index])
    width, height = imagenet_like_size(rng)
    step = 2 * math.pi * frequency / min(width, height)
    along_x = step * math.cos(angle) * np.arange(width, dtype=np.float32) + rng.uniform(0, 2 * math.pi)
    along_y = step * math.sin(angle) * np.arange(height, dtype=np.float32)
    # sin(x + y) = sin y cos x + cos y sin x: two outer products instead of a sine per pixel
    wave = np.outer(np.sin(along_y), np.cos(along_x)) + np.outer(np.cos(along_y), np.sin(along_x))
    strength = rng.uniform(0.5, 0.7)
    image = ((0.5 * strength) * (1.0 + wave))[..., None] * colour.astype(np.float32)
    coarse = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    image += np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32) * (0.35 / 255)
    grain = np.frombuffer(rng.bytes(height * width * 3), np.uint8).reshape(height, width, 3)
    image += np.take(_GAUSSIAN_LOOKUP, grain) * GRAIN_SIGMA
    return (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


@dataclass(frozen=True)
class SyntheticSource(Source):
    """Square JPEGs at the input size (`squash`): small and fast, for tests and demos."""
    seed: int
    spec: SyntheticSpec

    def describe(self) -> dict:
        return {"source": "synthetic", "seed": self.seed, "synthetic": asdict(self.spec)}

    def plan(self):
        spec = self.spec
        meta = DatasetMeta(name=f"synthetic-{spec.classes}x{spec.size}", num_classes=spec.classes,
                           class_names=[f"class{c:04d}" for c in range(spec.classes)], height=spec.size,
                           width=spec.size, channels=3, encoding="jpeg", mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return in_seeded_order(meta, _synthetic_plan("syn", spec), self.seed)

    def image(self, key) -> bytes:
        c, index = key
        return encode_image(synthetic_image(c, index, self.seed, self.spec.size), "JPEG")


@dataclass(frozen=True)
class SyntheticImagenetSource(Source):
    """ImageNet-shaped JPEGs (varied sizes around 500x375, ~110 KB each, `shorter_side_crop`): for measuring
    ingest and decode at realistic cost without the real data."""
    seed: int
    spec: SyntheticSpec

    def describe(self) -> dict:
        return {"source": "synthetic-imagenet", "seed": self.seed, "synthetic": asdict(self.spec)}

    def plan(self):
        spec = self.spec
        meta = DatasetMeta(name=f"synthetic-imagenet-{spec.classes}", num_classes=spec.classes,
                           class_names=[f"class{c:04d}" for c in range(spec.classes)], height=spec.size,
                           width=spec.size, channels=3, encoding="jpeg", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                           resize="shorter_side_crop")
        return in_seeded_order(meta, _synthetic_plan("synimg", spec), self.seed)

    def image(self, key) -> bytes:
        c, index = key
        return encode_image(realistic_image(c, index, self.seed), "JPEG", IMAGENET_JPEG_QUALITY)


# ---------------------------------------------------------------- imagefolder

PROBE_IMAGES = 16  # training images, spread over the folder, whose headers (and pixels) decide channels and size
GREY_MODES = ("1", "L", "LA", "I;16")
DEFAULT_CROP = 224  # the ImageNet eval transform's input, for images of several sizes


class InputChoice(NamedTuple):
    """How an ImageFolder's images reach the model: size, resize mode, normalisation, and why (printed by prepare)."""
    size: int
    resize: str
    mean: list[float]
    std: list[float]
    reason: str


def choose_input(sizes: list[tuple[int, int]], pixels: list[np.ndarray], image_size: int | None) -> InputChoice:
    """Images that all share one square size keep it, whole (no crop): they are the user's images, and a 32 px
    image upscaled to 224 costs 49x the pixels for nothing (issue 34). Their normalisation is measured on the
    probed pixels: such data is not ImageNet. Images of several sizes (or not square) take the ImageNet eval
    transform that pretrained weights expect: shorter side to size / 0.875, centre crop, ImageNet mean and std.
    `image_size` (prepare --image-size) sets the input size either way; a shared square size is resized whole to it.

    sizes: (width, height) of each probed image; pixels: the same images as float [H, W, C] arrays in [0, 1]."""
    shared = sorted(set(sizes))
    count = len(sizes)
    if len(shared) == 1 and shared[0][0] == shared[0][1]:
        own = shared[0][0]
        size = image_size or own
        values = np.concatenate([p.reshape(-1, p.shape[-1]) for p in pixels])
        mean = [round(float(v), 4) for v in values.mean(axis=0)]
        std = [round(max(float(v), 1 / 255), 4) for v in values.std(axis=0)]  # a flat probe must not divide by 0
        how = "kept, no resize or crop" if size == own else f"each resized whole to {size} px as asked, no crop"
        return InputChoice(size, "squash", mean, std,
                           f"all {count} probed images are {own}x{own}: their own size, {how}; normalisation "
                           f"measured on their pixels")
    channels = pixels[0].shape[-1] if pixels else 3
    size = image_size or DEFAULT_CROP
    found = "of several sizes" if len(shared) > 1 else f"{shared[0][0]}x{shared[0][1]}, not square"
    return InputChoice(size, "shorter_side_crop", IMAGENET_MEAN[:channels], IMAGENET_STD[:channels],
                       f"the {count} probed images are {found}: the ImageNet eval transform (shorter side to "
                       f"{int(size / 0.875)} px, centre crop {size}) and ImageNet's normalisation, as pretrained "
                       f"weights expect{'' if image_size else '; --image-size sets another size'}")


@dataclass(frozen=True)
class ImageFolderSource(Source):
    """`root/train/<class>/*`, `root/val/<class>/*`; val is split in halves (D_u, D_test) by a seeded hash.

    Images are stored byte for byte as found (never re-encoded), at whatever size they have; how they reach the
    model is chosen from a probe of the training images (choose_input): their own size when they share one
    square size, else the ImageNet eval transform. `image_size` (prepare --image-size) sets the input size."""
    root: str
    seed: int
    image_size: int | None = None
    read_threads: int = 8  # file reads overlap: S3 latency, not bandwidth, bounds one reader

    def describe(self) -> dict:
        asked = {"image_size": self.image_size} if self.image_size else {}  # absent: datasets from before match
        return {"source": f"imagefolder:{self.root}", "seed": self.seed, **asked}

    def _images_under(self, split: str) -> list[str]:
        return [f for f in storage.list_files(storage.join(self.root, split)) if f.lower().endswith(IMAGE_SUFFIXES)]

    def plan(self):
        train_files = self._images_under("train")
        if not train_files:
            raise DataError(f"imagefolder {self.root}: no images under {storage.join(self.root, 'train')}/<class>/")
        val_files = self._images_under("val")
        class_names = sorted({_class_of(f) for f in train_files})
        label_of = {name: i for i, name in enumerate(class_names)}
        unknown = sorted({_class_of(f) for f in val_files} - set(label_of))
        if unknown:
            raise DataError(f"imagefolder {self.root}: val has classes missing from train: {unknown[:10]}")
        channels, choice = self._probe([train_files[i] for i in spread(PROBE_IMAGES, len(train_files))])
        meta = DatasetMeta(name=os.path.basename(str(self.root).rstrip("/")) or "imagefolder",
                           num_classes=len(class_names), class_names=class_names, height=choice.size,
                           width=choice.size, channels=channels, encoding="source", mean=choice.mean, std=choice.std,
                           resize=choice.resize, extra={"input_choice": choice.reason})
        rows = [PlannedRow(_relative_id(uri), label_of[_class_of(uri)], "train", uri) for uri in train_files]
        for uri in val_files:
            split = "val" if hash_unit(self.seed, "val-half", _relative_id(uri)) < 0.5 else "test"
            rows.append(PlannedRow(_relative_id(uri), label_of[_class_of(uri)], split, uri))
        return in_seeded_order(meta, rows, self.seed)  # listed in sorted path order: class by class

    def _probe(self, uris: list[str]) -> tuple[int, InputChoice]:
        """Channels (1 when every probed image is greyscale, else 3: colour images decode to RGB, greys are
        repeated) and the input choice, from the probed images' headers and pixels."""
        images = self.images(uris)
        headers = [image_header(data, _relative_id(uri)) for uri, data in zip(uris, images)]
        channels = 1 if all(mode in GREY_MODES for _, mode in headers) else 3
        pixels = [_pixels(data, channels) for data in images]
        if self.image_size is not None and self.image_size < 1:
            raise DataError(f"--image-size must be 1 or more, not {self.image_size}")
        return channels, choose_input([size for size, _ in headers], pixels, self.image_size)

    def image(self, uri: str) -> bytes:
        return storage.read_bytes(uri)

    def images(self, uris: list[str]) -> list[bytes]:
        with ThreadPoolExecutor(max_workers=self.read_threads) as pool:
            return list(pool.map(storage.read_bytes, uris))


def _pixels(data: bytes, channels: int) -> np.ndarray:
    """An image as float [H, W, channels] in [0, 1], its colour mode converted as the decoder does."""
    with Image.open(io.BytesIO(data)) as image:
        converted = image.convert("L" if channels == 1 else "RGB")
        return np.asarray(converted, dtype=np.float32).reshape(converted.size[1], converted.size[0], channels) / 255


def _class_of(uri: str) -> str:
    return uri.replace("\\", "/").rstrip("/").split("/")[-2]


def _relative_id(uri: str) -> str:
    """`train/<class>/<file>`: the sample id, the same wherever the folder lives."""
    return "/".join(uri.replace("\\", "/").split("/")[-3:])


# ---------------------------------------------------------------- entry points

def source_for(source: str, seed: int = 0, synthetic: SyntheticSpec | None = None) -> Source:
    spec = synthetic or SyntheticSpec()
    if source == "digits":
        return DigitsSource(seed)
    if source == "digits-hard":
        return DigitsHardSource(seed)
    if source == "synthetic":
        return SyntheticSource(seed, replace(spec, size=spec.size or 64))
    if source == "synthetic-imagenet":
        return SyntheticImagenetSource(seed, replace(spec, size=spec.size or 224))
    if source.startswith("imagefolder:"):
        return ImageFolderSource(source.split(":", 1)[1], seed, image_size=spec.size)
    raise DataError(f"unknown source {source!r}: use {SOURCES}")


def rows_for_source(source: str, seed: int,
                    synthetic: SyntheticSpec | None = None) -> tuple[DatasetMeta, Iterator[Row]]:
    """The meta and (sample_id, label, image bytes, split) rows of a source, made one by one in plan order."""
    converter = source_for(source, seed, synthetic)
    meta, plan = converter.plan()
    return meta, ((row.sample_id, row.label, converter.image(row.key), row.split) for row in plan)


def digits_hard_rows(seed: int) -> tuple[DatasetMeta, Iterator[Row]]:
    return rows_for_source("digits-hard", seed)


def prepare(source: str, out: str, seed: int = 0, synthetic: SyntheticSpec | None = None,
            overwrite: bool = False, shard_bytes: int = 256 * 1024**2,
            progress: Callable[[str], None] | None = None, procs: int | None = None,
            progress_every_s: float = 5.0) -> DatasetMeta:
    """Convert `source` into shards at `out`, resuming an interrupted conversion of the same settings.

    procs: worker processes building shards (default: one per CPU; one shard is always built in-process).
    They start by spawn, which imports the calling script again: guard a script's entry point with
    `if __name__ == "__main__":`.
    progress: receives progress lines (images done/total, img/s, ETA) at most every `progress_every_s`."""
    return convert(source_for(source, seed, synthetic), out, overwrite=overwrite, shard_bytes=shard_bytes,
                   procs=procs, progress=progress, progress_every_s=progress_every_s)
