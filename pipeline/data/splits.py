"""Unlearning splits (D_f, D_r, D_u, D_test) from a forget spec, deterministic per seed.

Seeded choices hash (seed, salt, sample_id), so they are order-free and any
worker can repeat them without coordination.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.data.id_lists import check_training_ids, read_sample_ids
from pipeline.errors import DataError

UNSEEN_SPLIT = "val"
TEST_SPLIT = "test"


def hash_unit(seed: int, salt: str, sample_id: str) -> float:
    """A number in [0, 1) fixed by (seed, salt, sample_id)."""
    digest = hashlib.blake2b(f"{seed}|{salt}|{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def hash_subset(ids, fraction: float, seed: int, salt: str) -> list[str]:
    """The ids whose hash falls below `fraction`: about that fraction, chosen by the seed."""
    return [i for i in ids if hash_unit(seed, salt, i) < fraction]


STORED_SPLITS = {"unseen": UNSEEN_SPLIT, "test": TEST_SPLIT, "train": "train"}


def stored_split_mask(index: pa.Table, name: str) -> np.ndarray:
    """Rows of a split that needs no forget spec: unseen (val), test, train."""
    if name not in STORED_SPLITS:
        raise DataError(f"unknown split name {name!r}")
    return index.column("split").to_numpy(zero_copy_only=False) == STORED_SPLITS[name]


@dataclass(frozen=True)
class Splits:
    """Which sample ids form each set. `retain_ids` None means "train minus forget"."""

    spec: str
    seed: int
    forget_ids: tuple[str, ...]
    retain_ids: tuple[str, ...] | None
    forget_classes: tuple[int, ...] = ()
    counts: tuple[tuple[str, int], ...] = ()

    @property
    def class_unlearning(self) -> bool:
        return bool(self.forget_classes)

    def count(self, name: str) -> int:
        return dict(self.counts)[name]

    def select(self, index: pa.Table, name: str) -> np.ndarray:
        """Boolean mask of `index` rows belonging to split `name` (forget/retain/unseen/test/train)."""
        ids = index.column("sample_id").to_numpy(zero_copy_only=False)
        split = index.column("split").to_numpy(zero_copy_only=False)
        is_train = split == "train"
        in_forget = _members(ids, self.forget_ids)
        if name == "forget":
            return is_train & in_forget
        if name == "retain":
            if self.retain_ids is None:
                return is_train & ~in_forget
            return is_train & _members(ids, self.retain_ids)
        return stored_split_mask(index, name)


def _members(ids: np.ndarray, chosen) -> np.ndarray:
    """Which of `ids` are in `chosen`: a set lookup per id (np.isin on object arrays takes minutes at ImageNet size)."""
    chosen = set(chosen)
    return np.fromiter((i in chosen for i in ids), dtype=bool, count=len(ids))


def _train_by_class(index: pa.Table) -> dict[int, list[str]]:
    mask = np.asarray(index.column("split").to_numpy(zero_copy_only=False) == "train")
    ids = index.column("sample_id").to_numpy(zero_copy_only=False)[mask]
    labels = index.column("label").to_numpy()[mask]
    by_class: dict[int, list[str]] = defaultdict(list)
    for sample_id, label in zip(ids, labels):
        by_class[int(label)].append(sample_id)
    return by_class


def _ranked(ids: list[str], seed: int, salt: str) -> list[str]:
    return sorted(ids, key=lambda i: (hash_unit(seed, salt, i), i))


def _parse_fraction(text: str) -> float:
    try:
        fraction = float(text)
    except ValueError:
        raise DataError(f"forget spec random:{text}: the fraction must be a number, e.g. random:0.1") from None
    if not 0 < fraction < 1:
        raise DataError(f"forget spec random:{text}: the fraction must lie strictly between 0 and 1")
    return fraction


def _random(by_class, arg: str, seed: int):
    fraction = _parse_fraction(arg)
    forget = []
    for ids in by_class.values():
        take = max(1, int(round(fraction * len(ids))))
        forget += _ranked(ids, seed, "forget")[:take]
    return forget, None, ()


def _classes(by_class, arg: str, num_classes: int):
    try:
        classes = sorted({int(c) for c in arg.split(",") if c.strip()})
    except ValueError:
        raise DataError(f"forget spec class:{arg}: expected comma-separated class indices, e.g. class:3,7") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or not classes:
        raise DataError(f"forget spec class:{arg}: classes must lie in 0..{num_classes - 1} (got {bad or 'none'})")
    forget = [i for c in classes for i in by_class.get(c, [])]
    return forget, None, tuple(classes)


def _limited(by_class, arg: str, seed: int):
    try:
        n_forget, n_retain = (int(part) for part in arg.split("/"))
    except ValueError:
        raise DataError(f"forget spec limited:{arg}: expected two counts, e.g. limited:5/45") from None
    if n_forget <= 0 or n_retain < 0:
        raise DataError(f"forget spec limited:{arg}: counts must be positive")
    forget, retain = [], []
    for ids in by_class.values():
        ranked = _ranked(ids, seed, "limited")
        forget += ranked[:n_forget]
        retain += ranked[n_forget:n_forget + n_retain]
    return forget, tuple(sorted(retain)), ()


def _deletion_request(index: pa.Table, path: str):
    checked = check_training_ids(index, read_sample_ids(path))
    problem = checked.problem(f"deletion request {path}")
    if problem:
        raise DataError(problem)
    return list(checked.train), None, ()


def make_splits(index: pa.Table, spec: str, seed: int, num_classes: int) -> Splits:
    """Resolve a forget spec (`random:0.1`, `class:3,7`, `ids:FILE`, `limited:5/45`) against a shard index."""
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise DataError(f"bad forget spec {spec!r}: use random:FRACTION, class:C1,C2, ids:FILE or limited:F/R")
    by_class = _train_by_class(index)
    if kind == "random":
        forget, retain, classes = _random(by_class, arg, seed)
    elif kind == "class":
        forget, retain, classes = _classes(by_class, arg, num_classes)
    elif kind == "limited":
        forget, retain, classes = _limited(by_class, arg, seed)
    elif kind == "ids":
        forget, retain, classes = _deletion_request(index, arg)
    else:
        raise DataError(f"bad forget spec {spec!r}: unknown kind {kind!r} (random, class, ids, limited)")
    return build_splits(index, spec, seed, forget, retain, classes)


def build_splits(index: pa.Table, spec: str, seed: int, forget, retain=None, classes=()) -> Splits:
    """Splits from chosen forget ids (and retain ids, None for "train minus forget"), with their counts checked."""
    if not forget:
        raise DataError(f"forget spec {spec!r} selects no training samples: the forget set is empty")
    splits = Splits(spec=spec, seed=seed, forget_ids=tuple(sorted(forget)), retain_ids=retain, forget_classes=classes)
    counts = tuple((name, int(splits.select(index, name).sum())) for name in ("forget", "retain", "unseen", "test"))
    if dict(counts)["retain"] == 0:
        raise DataError(f"forget spec {spec!r} leaves no training samples to retain")
    return Splits(**{**splits.__dict__, "counts": counts})
