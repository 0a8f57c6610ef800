"""Build a method's UnlearnData from in-memory sources (tests, in-process runs).

The Ray Train glue builds the same sets with Ray Data filters; both choose the
retain subset by hashing (seed, "retain", sample_id), so they agree sample for sample.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.sources import TensorSource, mixed
from pipeline.data.splits import hash_unit
from pipeline.methods.base import UnlearnData

RETAIN_SALT = "retain"


def retain_subset_mask(sample_ids, fraction: float, seed: int) -> np.ndarray:
    if fraction >= 1.0:
        return np.ones(len(sample_ids), dtype=bool)
    return np.array([hash_unit(seed, RETAIN_SALT, i) < fraction for i in sample_ids], dtype=bool)


def unlearn_data(sources: dict[str, TensorSource], method, seed: int, num_classes: int = 10,
                 forget_classes: tuple[int, ...] = ()) -> UnlearnData:
    """UnlearnData for `method`: D_r cut to its `retain_fraction`, plus the mixed forget ∪ retain source."""
    retain = sources["retain"]
    retain = retain.subset(retain_subset_mask(retain.sample_ids, method.retain_fraction, seed))
    return UnlearnData(forget=sources["forget"], retain=retain, mixed=mixed(sources["forget"], retain),
                       unseen=sources.get("unseen"), num_classes=num_classes, forget_classes=forget_classes)
