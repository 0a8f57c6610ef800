"""Converters: digits-hard, synthetic (square and ImageNet-shaped) shards, and an ImageFolder kept byte for byte."""

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data.converters import SyntheticSpec, digits_hard_rows, prepare, rows_for_source, source_for
from pipeline.data.images import decode_one
from pipeline.data.local import load_sources
from pipeline.data.shards import ShardWriter, read_index, read_meta, read_table
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


def test_planned_prepare_writes_the_same_shard_as_the_streaming_writer(digits_hard_uri, tmp_path):
    meta, rows = rows_for_source("digits-hard", 0)
    writer = ShardWriter(str(tmp_path / "streamed"), meta)
    for row in rows:
        writer.add(*row)
    assert writer.close().shards == read_meta(digits_hard_uri).shards  # one shard, byte for byte


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


def _image_folder(root, classes=("cat", "dog"), per_class=4, sizes=((12, 12),), mode="RGB"):
    """Random images, (width, height) cycling through `sizes`; returns {relative path: file bytes}."""
    rng = np.random.default_rng(0)
    files = {}
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                width, height = sizes[k % len(sizes)]
                shape = (height, width) if mode == "L" else (height, width, 3)
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"{k}.jpg", quality=95)
                files[f"{split}/{name}/{k}.jpg"] = (folder / f"{k}.jpg").read_bytes()
    return files


def test_imagefolder_converter(tmp_path):
    _image_folder(tmp_path / "folder")
    meta = prepare(f"imagefolder:{tmp_path / 'folder'}", str(tmp_path / "shards"), seed=0)
    assert meta.class_names == ["cat", "dog"] and meta.counts["train"] == 8
    assert meta.counts["val"] + meta.counts["test"] == 8  # val halves into D_u and D_test
    index = read_index(str(tmp_path / "shards"), meta)
    assert "train/dog/3.jpg" in index.column("sample_id").to_pylist()
    sources, _ = load_sources(str(tmp_path / "shards"))
    # every image is 12x12: their own size, whole (tests/test_imagefolder_size.py; several sizes take 224 below)
    assert sources["train"].images.shape[1:] == (3, 12, 12) and meta.resize == "squash"


def test_imagefolder_keeps_each_file_byte_for_byte_at_its_own_size(tmp_path):
    sizes = ((40, 30), (25, 50), (64, 48))
    files = _image_folder(tmp_path / "folder", per_class=3, sizes=sizes)
    meta = prepare(f"imagefolder:{tmp_path / 'folder'}", str(tmp_path / "shards"), seed=0)
    assert (meta.resize, meta.height, meta.width, meta.channels) == ("shorter_side_crop", 224, 224, 3)
    table = read_table(str(tmp_path / "shards"), meta, ["sample_id", "image", "width", "height"])
    assert sorted(table.column("sample_id").to_pylist()) == sorted(files)
    for row in table.to_pylist():
        stored = files[row["sample_id"]]
        assert hashlib.sha256(row["image"]).digest() == hashlib.sha256(stored).digest()  # never re-encoded
        assert (row["width"], row["height"]) == Image.open(io.BytesIO(stored)).size
    assert {(row["width"], row["height"]) for row in table.to_pylist()} == set(sizes)


def test_imagefolder_of_grey_images_has_one_channel(tmp_path):
    _image_folder(tmp_path / "folder", sizes=((20, 16),), mode="L")
    meta = prepare(f"imagefolder:{tmp_path / 'folder'}", str(tmp_path / "shards"), seed=0)
    assert meta.channels == 1 and meta.mean == [0.485] and meta.resize == "shorter_side_crop"


def test_imagefolder_corrupt_file_names_the_sample(tmp_path):
    _image_folder(tmp_path / "folder")
    (tmp_path / "folder" / "train" / "dog" / "2.jpg").write_bytes(b"\x00 not a jpeg")
    with pytest.raises(DataError, match="corrupt image for sample 'train/dog/2.jpg'"):
        prepare(f"imagefolder:{tmp_path / 'folder'}", str(tmp_path / "shards"), seed=0)


def test_synthetic_imagenet_is_imagenet_shaped_and_deterministic(tmp_path):
    spec = SyntheticSpec(classes=3, train_per_class=6, val_per_class=1, test_per_class=1)
    meta = prepare("synthetic-imagenet", str(tmp_path / "syn"), seed=2, synthetic=spec)
    assert meta.counts == {"train": 18, "val": 3, "test": 3}
    assert (meta.resize, meta.height, meta.width, meta.channels, meta.encoding) == ("shorter_side_crop", 224, 224,
                                                                                     3, "jpeg")
    table = read_table(str(tmp_path / "syn"), meta, ["sample_id", "label", "image", "width", "height"])
    sizes = list(zip(table.column("width").to_pylist(), table.column("height").to_pylist()))
    assert len(set(sizes)) >= 3 and all(300 <= side <= 500 for size in sizes for side in size)
    assert (500, 375) in sizes
    mean_kb = np.mean([len(image) for image in table.column("image").to_pylist()]) / 1000
    print(f"synthetic-imagenet: mean JPEG {mean_kb:.0f} KB over {table.num_rows} images")
    assert 80 <= mean_kb <= 140  # ImageNet's average is about 110 KB
    first = table.to_pylist()[0]
    assert Image.open(io.BytesIO(first["image"])).size == (first["width"], first["height"])
    source = source_for("synthetic-imagenet", 2, spec)
    key = source.plan()[1][0].key
    assert source.image(key) == first["image"]  # a function of (seed, class, index) alone
    assert source_for("synthetic-imagenet", 3, spec).image(key) != first["image"]
    # class signal: same-class images agree on mean colour more than images of different classes
    colours = [np.asarray(Image.open(io.BytesIO(image)), np.float32).mean(axis=(0, 1))
               for image in table.column("image").to_pylist()]
    labels = table.column("label").to_pylist()
    pairs = [(i, j) for i in range(len(labels)) for j in range(i)]
    same = [np.linalg.norm(colours[i] - colours[j]) for i, j in pairs if labels[i] == labels[j]]
    diff = [np.linalg.norm(colours[i] - colours[j]) for i, j in pairs if labels[i] != labels[j]]
    assert np.mean(same) < np.mean(diff)


def test_imagefolder_without_images_is_an_error(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no images under"):
        prepare(f"imagefolder:{tmp_path / 'empty'}", str(tmp_path / "out"))


def test_unknown_source_is_an_error(tmp_path):
    with pytest.raises(DataError, match="unknown source 'cifar'"):
        prepare("cifar", str(tmp_path / "out"))
