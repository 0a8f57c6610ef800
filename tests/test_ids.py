"""`unlearn ids`: how a user finds the ids of their own samples for a deletion request (issue 34). An ImageFolder's
ids are `train/<class>/<file>`; the ids printed or written are ones `unlearn forget` accepts as they are."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from jobs import ids
from jobs.common import run_main
from pipeline.data.converters import prepare
from pipeline.data.id_lists import check_training_ids, read_sample_ids
from pipeline.data.shards import read_index, read_meta

FILES = {"cat": ["user42_a.png", "user42_b.png", "zoo_1.png"], "dog": ["park.png", "user42_c.png"]}


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> str:
    """A two-class ImageFolder (train and val) of tiny PNGs, prepared into shards."""
    root = tmp_path_factory.mktemp("ids")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, names in FILES.items():
            (root / "photos" / split / label).mkdir(parents=True)
            for name in names:
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "photos" / split / label / name)
    uri = str(root / "shards")
    prepare(f"imagefolder:{root / 'photos'}", uri, seed=0, procs=1, progress=lambda line: None)
    return uri


def run(argv, capsys) -> tuple[int, str, str]:
    status = run_main(ids.main, argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_class_prints_its_training_ids_sorted_one_per_line(folder_data, capsys):
    status, out, err = run(["--data", folder_data, "--class", "cat"], capsys)
    assert status == 0
    assert out.splitlines() == [f"train/cat/{name}" for name in FILES["cat"]]
    assert "3 train id(s)" in err and "unlearn forget" in err


def test_a_pattern_finds_a_users_files_across_classes(folder_data, capsys):
    status, out, _ = run(["--data", folder_data, "--match", "train/*/user42_*"], capsys)
    assert status == 0
    assert out.splitlines() == ["train/cat/user42_a.png", "train/cat/user42_b.png", "train/dog/user42_c.png"]
    # The folder's val/ images are split in two halves (D_u and D_test) by prepare: --split all reaches both.
    status, out, _ = run(["--data", folder_data, "--match", "*/user42_*", "--split", "all", "--class", "1"], capsys)
    assert status == 0 and out.splitlines() == ["train/dog/user42_c.png", "val/dog/user42_c.png"]


def test_the_written_request_is_one_forget_accepts(folder_data, tmp_path, capsys):
    request = tmp_path / "request.txt"
    status, out, err = run(["--data", folder_data, "--match", "train/*/user42_*", "--out", str(request)], capsys)
    assert status == 0 and out == "" and str(request) in err
    index = read_index(folder_data, read_meta(folder_data))
    checked = check_training_ids(index, read_sample_ids(str(request)))
    assert checked.problem("request") is None
    assert sorted(checked.train) == ["train/cat/user42_a.png", "train/cat/user42_b.png", "train/dog/user42_c.png"]
    # A request file is not replaced by accident.
    status, _, err = run(["--data", folder_data, "--class", "dog", "--out", str(request)], capsys)
    assert status == 2 and "exists" in err and "--overwrite" in err
    assert len(read_sample_ids(str(request))) == 3


def test_csv_output_carries_label_and_class_and_reads_back_as_ids(folder_data, tmp_path, capsys):
    table = tmp_path / "request.csv"
    status, _, _ = run(["--data", folder_data, "--class", "dog", "--out", str(table)], capsys)
    assert status == 0
    lines = table.read_text().splitlines()
    assert lines[0] == "sample_id,label,class,split"
    assert lines[1:] == ["train/dog/park.png,1,dog,train", "train/dog/user42_c.png,1,dog,train"]
    assert read_sample_ids(str(table)) == ["train/dog/park.png", "train/dog/user42_c.png"]


def test_limit_keeps_the_first_ids_and_says_how_many_matched(folder_data, capsys):
    status, out, err = run(["--data", folder_data, "--limit", "2"], capsys)
    assert status == 0 and len(out.splitlines()) == 2 and "2 of 5 train id(s)" in err


@pytest.mark.parametrize("argv, words", [
    (["--match", "cat/*"], "no sample of"),  # the split is part of the id: the message shows what ids look like
    (["--class", "bird"], "has no such class; its classes: cat, dog"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--format", "text", "--out", "x.csv"], "forget reads a .csv file as a table"),
    (["--out", "x.parquet"], "give a .txt or .csv file"),
])
def test_mistakes_are_named_with_exit_2(folder_data, capsys, argv, words):
    status, out, err = run(["--data", folder_data, *argv], capsys)
    assert status == 2 and words in err and out == ""
    if argv[:1] == ["--match"]:
        assert "its train ids look like: train/cat/user42_a.png" in err


def test_a_missing_dataset_is_named(tmp_path, capsys):
    status, _, err = run(["--data", str(pathlib.Path(tmp_path) / "none")], capsys)
    assert status == 2 and "no dataset at" in err
