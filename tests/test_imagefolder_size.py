"""An ImageFolder of small images is prepared and trained at its own size (issue 34: 32 px digits were silently
trained at 224 px through the ImageNet resize-and-crop, 49x the pixels, the border lost). Images that share one
square size keep it, whole; `--image-size` is honoured; images of several sizes keep the ImageNet transform; prepare
prints what it chose. The decoded tensors are compared with the source pixels through the reader the Ray datasource
uses; one small Ray test trains a model at the images' size."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from jobs import prepare
from pipeline.data.converters import IMAGENET_MEAN, IMAGENET_STD, _load_digits, hard_digit
from pipeline.data.shards import read_meta
from tests.test_bench import run_job

CLASSES, TRAIN, VAL = 4, 6, 4


def write_folder(root: pathlib.Path, size_of=lambda index: 32) -> dict[str, np.ndarray]:
    """digits-hard's real 32x32 grey digits as an ImageFolder of PNGs (train/<class>/, val/<class>/); returns
    {sample id: the pixels written}. `size_of(index)` resizes some to other sizes."""
    digits, labels = _load_digits()
    written, index = {}, 0
    for label in range(CLASSES):
        for split, count in (("train", TRAIN), ("val", VAL)):
            folder = root / split / f"digit{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(count):
                pixels = hard_digit(int(np.flatnonzero(labels == label)[number]), digits, seed=0)
                size = size_of(index)
                image = Image.fromarray(pixels)
                image = image if size == 32 else image.resize((size, size + 8))
                image.save(folder / f"{number}.png")
                written[f"{split}/digit{label}/{number}.png"] = np.asarray(image)
                index += 1
    return written


def decoded(uri: str, size: int | None = None) -> dict[str, np.ndarray]:
    """Every stored image as the training reader decodes it (pipeline/train/datasets.py's ReadAndDecode, the Ray
    datasource's own work) at the dataset's input size: {sample id: uint8 [C, H, W]}."""
    from pipeline.train.datasets import ReadAndDecode, read_layout, read_units

    meta = read_meta(uri)
    layout = read_layout(uri, meta)
    everything = np.ones(len(layout.ids), dtype=bool)
    units = read_units(layout, everything, ~everything)
    reader = ReadAndDecode(units, meta.channels, size or meta.height, meta.resize, forget_flag=False)
    return {sample_id: image for block in reader.blocks(range(len(units)))
            for sample_id, image in zip(block["sample_id"], block["image"])}


@pytest.fixture
def digits_folder(tmp_path, monkeypatch):
    written = write_folder(tmp_path / "digits32")
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    return written


def test_a_32px_imagefolder_keeps_its_own_size_and_pixels_and_prepare_says_so(digits_folder):
    status, printed = run_job(prepare.main, ["--source", "imagefolder:digits32", "--out", "shards", "--procs", "1"])
    assert status == 0, printed
    meta = read_meta("shards")
    assert (meta.height, meta.width, meta.channels, meta.resize) == (32, 32, 1, "squash")
    probed = np.concatenate([digits_folder[k].ravel() for k in sorted(digits_folder) if k.startswith("train/")])
    assert meta.mean[0] == pytest.approx(probed.mean() / 255, abs=0.03) and meta.mean != IMAGENET_MEAN[:1]
    assert "model input 32x32, 1 channel(s), whole images, no crop; normalisation mean" in printed
    assert "all 16 probed images are 32x32: their own size, kept, no resize or crop" in printed
    images = decoded("shards")
    assert sorted(images) == sorted(digits_folder)
    for sample_id, image in images.items():  # the model sees exactly the user's pixels
        np.testing.assert_array_equal(image[0], digits_folder[sample_id], err_msg=sample_id)


def test_image_size_is_honoured_for_an_imagefolder_and_resizes_whole_images(digits_folder):
    status, printed = run_job(prepare.main, ["--source", "imagefolder:digits32", "--out", "shards", "--procs", "1",
                                             "--image-size", "16"])
    assert status == 0, printed
    meta = read_meta("shards")
    assert (meta.height, meta.resize, meta.extra["image_size"]) == (16, "squash", 16)
    assert "each resized whole to 16 px as asked, no crop" in printed
    image = decoded("shards")["train/digit0/0.png"][0]
    whole = np.asarray(Image.fromarray(digits_folder["train/digit0/0.png"]).resize((16, 16), Image.BILINEAR))
    assert image.shape == (16, 16) and np.abs(image.astype(int) - whole.astype(int)).mean() < 8  # not a crop


def test_images_of_several_sizes_keep_the_imagenet_transform(tmp_path, monkeypatch):
    write_folder(tmp_path / "mixed", size_of=lambda index: 32 + 8 * (index % 3))
    monkeypatch.chdir(tmp_path)
    status, printed = run_job(prepare.main, ["--source", "imagefolder:mixed", "--out", "shards", "--procs", "1"])
    assert status == 0, printed
    meta = read_meta("shards")
    assert (meta.height, meta.resize, meta.mean, meta.std) == (224, "shorter_side_crop", IMAGENET_MEAN[:1],
                                                                 IMAGENET_STD[:1])
    assert "of several sizes: the ImageNet eval transform (shorter side to 256 px, centre crop 224)" in printed
    status, printed = run_job(prepare.main, ["--source", "imagefolder:mixed", "--out", "small", "--procs", "1",
                                             "--image-size", "48"])
    assert status == 0 and read_meta("small").height == 48 and "centre crop 48" in printed


def test_a_bad_image_size_is_refused_before_any_work(digits_folder, capsys):
    from jobs.common import run_main

    assert run_main(prepare.main, ["--source", "imagefolder:digits32", "--out", "shards", "--image-size", "0"]) == 2
    assert "--image-size must be 1 or more, not 0" in capsys.readouterr().err
    assert not pathlib.Path("shards").exists()


def test_a_32px_imagefolder_trains_at_32px(ray_session, digits_folder):
    """Through Ray Train: the model is built for the images' own size and normalisation."""
    from jobs import train
    from pipeline.models import load_checkpoint

    assert run_job(prepare.main, ["--source", "imagefolder:digits32", "--out", "shards", "--procs", "1"])[0] == 0
    status, printed = run_job(train.main, ["--data", "shards", "--out", "original", "--epochs", "1",
                                           "--max-failures", "0"])
    assert status == 0, printed
    meta, (_, spec, _) = read_meta("shards"), load_checkpoint("original/model.pt")
    assert (spec.image_size, spec.channels, list(spec.mean), list(spec.std)) == (32, 1, meta.mean, meta.std)


def test_an_image_the_probe_missed_at_another_size_is_named(tmp_path, monkeypatch):
    """train/digit0/1.png is not among the 16 probed of 24 training images: prepare keeps 32 px and names it."""
    write_folder(tmp_path / "almost", size_of=lambda index: 40 if index == 1 else 32)
    monkeypatch.chdir(tmp_path)
    status, printed = run_job(prepare.main, ["--source", "imagefolder:almost", "--out", "shards", "--procs", "1"])
    assert status == 0 and read_meta("shards").height == 32
    assert "WARNING: 1 of 40 images are not 32x32 (e.g. train/digit0/1.png, 40x48)" in printed
