"""Converters: digits-hard, synthetic ImageNet-shaped shards, and a streamed ImageFolder."""

import numpy as np
import pytest
from PIL import Image

from pipeline.data.converters import SyntheticSpec, digits_hard_rows, prepare
from pipeline.data.images import decode_one
from pipeline.data.local import load_sources
from pipeline.data.shards import read_index, read_meta
from pipeline.errors import DataError


def test_digits_hard_is_deterministic_per_seed_and_sized(digits_hard_uri):
    meta = read_meta(digits_hard_uri)
    assert meta.counts == {"train": 800, "val": 497, "test": 500} or sum(meta.counts.values()) == 1797
    assert meta.counts["train"] == 800 and (meta.height, meta.width, meta.channels) == (32, 32, 1)
    first = [row for _, row in zip(range(5), digits_hard_rows(0)[1])]
    again = [row for _, row in zip(range(5), digits_hard_rows(0)[1])]
    other = [row for _, row in zip(range(5), digits_hard_rows(1)[1])]
    assert first == again and [r[2] for r in first] != [r[2] for r in other]
    image = decode_one(first[0][2], 1, 32, 32)
    assert image.std() > 10  # clutter and noise, not a blank canvas


def test_synthetic_shards_are_learnable_patterns(tmp_path):
    spec = SyntheticSpec(classes=4, size=32, train_per_class=3, val_per_class=2, test_per_class=2)
    meta = prepare("synthetic", str(tmp_path / "syn"), seed=5, synthetic=spec)
    assert meta.counts == {"train": 12, "val": 8, "test": 8} and meta.channels == 3 and meta.encoding == "jpeg"
    sources, _ = load_sources(str(tmp_path / "syn"))
    images, labels = sources["train"].images.float(), sources["train"].labels
    # same-class images are closer (on average colour) than different-class ones: there is signal to learn
    means = images.mean(dim=(2, 3))
    same = [(means[i] - means[j]).norm() for i in range(12) for j in range(12) if i < j and labels[i] == labels[j]]
    diff = [(means[i] - means[j]).norm() for i in range(12) for j in range(12) if labels[i] != labels[j]]
    assert float(np.mean(same)) < float(np.mean(diff))


def _image_folder(root, classes=("cat", "dog"), per_class=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{k}.jpg")


def test_imagefolder_converter(tmp_path):
    _image_folder(tmp_path / "folder")
    meta = prepare(f"imagefolder:{tmp_path / 'folder'}", str(tmp_path / "shards"), seed=0)
    assert meta.class_names == ["cat", "dog"] and meta.counts["train"] == 8
    assert meta.counts["val"] + meta.counts["test"] == 8  # val halves into D_u and D_test
    index = read_index(str(tmp_path / "shards"), meta)
    assert "train/dog/3.jpg" in index.column("sample_id").to_pylist()
    source_bytes = (tmp_path / "folder" / "train" / "cat" / "0.jpg").read_bytes()
    sources, _ = load_sources(str(tmp_path / "shards"))
    assert sources["train"].images.shape[1:] == (3, 12, 12)
    assert source_bytes  # stored as at the source, decoded on read


def test_imagefolder_without_images_is_an_error(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no images under"):
        prepare(f"imagefolder:{tmp_path / 'empty'}", str(tmp_path / "out"))


def test_unknown_source_is_an_error(tmp_path):
    with pytest.raises(DataError, match="unknown source 'cifar'"):
        prepare("cifar", str(tmp_path / "out"))
