"""Batches mix classes at ImageNet shape: prepare stores each split in a seeded random order.

A streamed pass shuffles rows only within windows of consecutive row groups (about 445 rows at 224 px),
so shards stored class by class (ImageFolder's sorted paths, the synthetic plans) gave batches of a few
classes. These tests read prepared shards through the real stream path (read units, the Ray Data read
task's ReadAndDecode, UnitSource's windows at the 224 px row size) and count the classes per batch.
"""

import json
import math
import warnings

import numpy as np
import pytest
from PIL import Image

from pipeline import storage
from pipeline.data.converters import SyntheticSpec, prepare, source_for
from pipeline.data.shards import META_FILE, SPLITS, read_index, read_meta
from pipeline.train.datasets import ReadAndDecode, plan_sets
from pipeline.train.ray_sources import DecodedCache, InputStats, UnitSource, shuffle_window_rows

BATCH = 64
CLASSES = 1000
ROW_BYTES_224 = 3 * 224 * 224  # a decoded 224 px RGB row: what sizes the shuffle window in training
DECODE_SIZE = 8  # the images are tiny; only the window needs the 224 px row size


class InProcessUnits:
    """The stream path's reader without Ray: each unit read and decoded as a Ray Data read task does it."""

    def __init__(self, plan):
        self.plan = plan

    def blocks(self, units: list):
        decode = ReadAndDecode(list(units), self.plan.channels, self.plan.size, self.plan.resize, forget_flag=False)
        return decode.blocks(range(len(units)))


def classes_per_batch(uri: str, epochs: int = 2) -> float:
    """Mean distinct labels per full batch of 64 over shuffled passes of the train split, one worker."""
    meta = read_meta(uri)
    plan = plan_sets(uri, meta, None, ["train"], DECODE_SIZE, mode="stream")
    window = shuffle_window_rows(ROW_BYTES_224)
    assert window < 500  # the 224 px window: about two 256-row row groups
    source = UnitSource(list(plan.sets["train"].units), InProcessUnits(plan), DecodedCache(0), InputStats(), window,
                        ROW_BYTES_224)
    counts = [len(np.unique(batch["label"].numpy())) for seed in range(epochs)
              for batch in source.batches(BATCH, shuffle=True, seed=seed) if len(batch["label"]) == BATCH]
    return float(np.mean(counts))


def uniform_classes_per_batch(labels: np.ndarray) -> float:
    """Expected distinct labels in 64 rows drawn uniformly without replacement from `labels`."""
    rows = len(labels)
    return sum(1 - math.comb(rows - count, BATCH) / math.comb(rows, BATCH) for count in np.bincount(labels) if count)


def assert_uniformly_mixed(uri: str) -> None:
    index = read_index(uri, read_meta(uri))
    train = index.filter(np.asarray(index.column("split").to_pylist()) == "train")
    uniform = uniform_classes_per_batch(train.column("label").to_numpy())
    measured = classes_per_batch(uri)
    print(f"{CLASSES} classes, {train.num_rows} train rows: {measured:.1f} classes per batch of {BATCH} "
          f"(a uniform shuffle: {uniform:.1f})")
    assert uniform > 60
    assert measured >= 0.9 * uniform


def test_synthetic_imagenet_plan_gives_batches_as_mixed_as_a_uniform_shuffle(tmp_path):
    # The synthetic plans go class by class, like synthetic-imagenet's (which shares them); 8 px JPEGs keep
    # 16,000 rows cheap. With only 16 rows per class the old class-by-class order already gave 28.5 classes.
    spec = SyntheticSpec(classes=CLASSES, size=DECODE_SIZE, train_per_class=16, val_per_class=0, test_per_class=0)
    prepare("synthetic", str(tmp_path / "syn"), seed=0, synthetic=spec, procs=1)
    assert_uniformly_mixed(str(tmp_path / "syn"))


def _image_folder(root, classes: int, train_per_class: int, val_classes: int = 2) -> None:
    """`root/train/<class>/<k>.png` (8 px, solid grey: only the labels matter here) and a small val."""
    pixels = Image.fromarray(np.full((DECODE_SIZE, DECODE_SIZE), 128, np.uint8))
    for split, count, per_class in (("train", classes, train_per_class), ("val", val_classes, 2)):
        for c in range(count):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for k in range(per_class):
                pixels.save(folder / f"{k}.png")


def test_imagefolder_gives_batches_as_mixed_as_a_uniform_shuffle(tmp_path):
    """ImageNet-1k's layout: sorted paths are class by class; 8 images per class made the old order give 41.8."""
    _image_folder(tmp_path / "folder", CLASSES, train_per_class=8)
    prepare(f"imagefolder:{tmp_path / 'folder'}", str(tmp_path / "shards"), seed=0)
    assert_uniformly_mixed(str(tmp_path / "shards"))


def test_imagefolder_row_order_is_fixed_by_the_seed_alone(tmp_path, monkeypatch):
    """The order depends on (seed, sample id), not on how the store lists files (S3 and local folders differ),
    so a rerun plans the same shards and prepare resumes; each split is contiguous, train first."""
    _image_folder(tmp_path / "folder", classes=5, train_per_class=6, val_classes=5)
    source = f"imagefolder:{tmp_path / 'folder'}"
    planned = source_for(source, seed=0).plan()[1]
    listed = storage.list_files
    monkeypatch.setattr(storage, "list_files", lambda *args, **kwargs: list(reversed(listed(*args, **kwargs))))
    assert source_for(source, seed=0).plan()[1] == planned
    assert source_for(source, seed=1).plan()[1] != planned
    splits = [row.split for row in planned]
    assert splits == sorted(splits, key=SPLITS.index) and set(splits) == set(SPLITS)
    train_ids = [row.sample_id for row in planned if row.split == "train"]
    assert train_ids != sorted(train_ids) and len({row.label for row in planned[:6]}) > 1  # not class by class


def test_shards_stored_class_by_class_warn_when_read(tmp_path, digits_hard_uri):
    uri = str(tmp_path / "syn")
    prepare("synthetic", uri, seed=0, synthetic=SyntheticSpec(classes=3, size=8, train_per_class=4), procs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_meta(uri).extra["row_order"] == "seeded-shuffle"
        read_meta(digits_hard_uri)  # digits were never stored class by class
    meta_uri = storage.join(uri, META_FILE)
    body = json.loads(storage.read_text(meta_uri))
    del body["extra"]["row_order"]  # what shards prepared before the seeded order look like
    storage.write_text(meta_uri, json.dumps(body))
    with pytest.warns(UserWarning, match=r"stores its rows class by class .*--overwrite"):
        read_meta(uri)
