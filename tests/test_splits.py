"""Unlearning splits: deterministic per seed, disjoint, counted, and clear errors for bad specs."""

import numpy as np
import pytest

from pipeline.data.shards import read_index, read_meta
from pipeline.data.splits import make_splits
from pipeline.errors import DataError


@pytest.fixture(scope="module")
def index(digits_hard_uri):
    return read_index(digits_hard_uri, read_meta(digits_hard_uri))


def _ids(index, splits, name):
    return set(np.asarray(index.column("sample_id").to_pylist())[splits.select(index, name)])


def test_random_spec_is_stratified_deterministic_and_disjoint(index):
    a = make_splits(index, "random:0.1", 3407, 10)
    assert make_splits(index, "random:0.1", 3407, 10) == a
    assert make_splits(index, "random:0.1", 13, 10).forget_ids != a.forget_ids
    forget, retain, unseen, test = (_ids(index, a, n) for n in ("forget", "retain", "unseen", "test"))
    assert not (forget & retain) and not (forget & unseen) and not (retain & test) and not (unseen & test)
    assert len(forget) + len(retain) == 800 and len(forget) == a.count("forget") == 80
    labels = dict(zip(index.column("sample_id").to_pylist(), index.column("label").to_pylist()))
    per_class = np.bincount([labels[i] for i in forget], minlength=10)
    assert per_class.min() >= 7 and per_class.max() <= 9  # about 10 % of each class's ~80


def test_class_spec_takes_whole_classes(index):
    splits = make_splits(index, "class:3,7", 0, 10)
    labels = dict(zip(index.column("sample_id").to_pylist(), index.column("label").to_pylist()))
    assert {labels[i] for i in splits.forget_ids} == {3, 7}
    assert not any(labels[i] in (3, 7) for i in _ids(index, splits, "retain"))
    assert splits.forget_classes == (3, 7) and splits.class_unlearning


def test_limited_spec_counts_per_class(index):
    splits = make_splits(index, "limited:5/45", 1, 10)
    assert splits.count("forget") == 50 and splits.count("retain") == 450
    assert not set(splits.forget_ids) & set(splits.retain_ids)
    assert make_splits(index, "limited:5/45", 1, 10) == splits


def test_deletion_request_from_file(index, tmp_path):
    wanted = index.column("sample_id").to_pylist()[:0] + [
        i for i, s in zip(index.column("sample_id").to_pylist(), index.column("split").to_pylist()) if s == "train"][:3]
    request = tmp_path / "request.txt"
    request.write_text("# deletion request 42\n" + "\n".join(wanted) + "\n\n")
    splits = make_splits(index, f"ids:{request}", 0, 10)
    assert set(splits.forget_ids) == set(wanted) and splits.count("retain") == 797


def test_unknown_ids_are_listed(index, tmp_path):
    request = tmp_path / "request.txt"
    request.write_text("dh-00000\nnot-a-sample\nalso-missing\n")
    with pytest.raises(DataError, match="2 unknown sample id.*not-a-sample, also-missing"):
        make_splits(index, f"ids:{request}", 0, 10)


def test_ids_outside_train_are_rejected(index, tmp_path):
    val_id = next(i for i, s in zip(index.column("sample_id").to_pylist(), index.column("split").to_pylist())
                  if s == "val")
    request = tmp_path / "request.txt"
    request.write_text(val_id)
    with pytest.raises(DataError, match="outside the train split"):
        make_splits(index, f"ids:{request}", 0, 10)


@pytest.mark.parametrize("spec, message", [
    ("random:0", "strictly between 0 and 1"),
    ("random:abc", "must be a number"),
    ("class:12", r"classes must lie in 0..9"),
    ("class:x", "comma-separated"),
    ("limited:5", "two counts"),
    ("sometimes:3", "unknown kind"),
    ("random", "bad forget spec"),
    ("ids:/no/such/file.txt", "not found"),
])
def test_bad_specs_name_the_problem(index, spec, message):
    with pytest.raises(DataError, match=message):
        make_splits(index, spec, 0, 10)


def test_empty_forget_set_is_an_error(index, tmp_path):
    request = tmp_path / "empty.txt"
    request.write_text("# nothing to delete\n")
    with pytest.raises(DataError, match="forget set is empty"):
        make_splits(index, f"ids:{request}", 0, 10)
