"""Build a method's UnlearnData from in-memory sources (tests, in-process runs).

The Ray Train glue builds the same sets from its data plan (pipeline/train/datasets.py); both choose the
retain subset with `retain_subset_mask` over all of D_r, so they agree sample for sample.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.sources import TensorSource, mixed
from pipeline.data.splits import hash_unit
from pipeline.methods.base import UnlearnData

RETAIN_SALT = "retain"


def subset_size(fraction: float, count: int) -> int:
    """round(fraction · count), halves rounded up (not Python's round-half-to-even)."""
    return min(count, int(np.floor(fraction * count + 0.5)))


def retain_subset_mask(sample_ids, fraction: float, seed: int) -> np.ndarray:
    """Exactly round(fraction · |D_r|) of D_r's ids, chosen by the seed (the LoTUS paper takes exactly 30 %).

    `sample_ids` must be all of D_r: the ids with the smallest hash of (seed, "retain", id) are taken (ties,
    which 64-bit hashes make all but impossible, by id), so the choice depends on the set of ids only, not on
    their order, and the driver, every worker and an in-process run pick the same samples.
    """
    ids = np.asarray(sample_ids, dtype=object)
    if fraction >= 1.0:
        return np.ones(len(ids), dtype=bool)
    keys = np.fromiter((hash_unit(seed, RETAIN_SALT, i) for i in ids), dtype=np.float64, count=len(ids))
    order = np.lexsort((ids.astype(str), keys))  # by hash, then by id
    mask = np.zeros(len(ids), dtype=bool)
    mask[order[:subset_size(fraction, len(ids))]] = True
    return mask


def unlearn_data(sources: dict[str, TensorSource], method, seed: int, num_classes: int = 10,
                 forget_classes: tuple[int, ...] = ()) -> UnlearnData:
    """UnlearnData for `method`: D_r cut to its `retain_fraction`, plus the mixed forget ∪ retain source."""
    retain = sources["retain"]
    retain = retain.subset(retain_subset_mask(retain.sample_ids, method.retain_fraction, seed))
    return UnlearnData(forget=sources["forget"], retain=retain, mixed=mixed(sources["forget"], retain),
                       unseen=sources.get("unseen"), num_classes=num_classes, forget_classes=forget_classes)
