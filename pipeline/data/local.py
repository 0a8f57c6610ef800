"""Load a (small) shard dataset into memory as TensorSources: for tests and in-process runs, not for ImageNet."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.images import decode_batch
from pipeline.data.shards import DatasetMeta, read_meta, read_table, verify_checksums
from pipeline.data.sources import TensorSource
from pipeline.data.splits import STORED_SPLITS, Splits, make_splits, stored_split_mask

SPLIT_NAMES = ("forget", "retain", "unseen", "test", "train")


def load_sources(uri: str, splits: Splits | None = None, spec: str | None = None, seed: int = 0,
                 meta: DatasetMeta | None = None, verify: bool = True) -> tuple[dict[str, TensorSource], Splits | None]:
    """Decode every image once and return {split name: TensorSource}; only `train/unseen/test` without a spec."""
    meta = meta or read_meta(uri)
    if verify:
        verify_checksums(uri, meta)
    table = read_table(uri, meta)
    if splits is None and spec:
        splits = make_splits(table.select(["sample_id", "label", "split"]), spec, seed, meta.num_classes)
    ids = np.asarray(table.column("sample_id").to_pylist(), dtype=object)
    images = torch.from_numpy(decode_batch(table.column("image").to_pylist(), ids, meta.channels, meta.height,
                                           meta.resize))
    everything = TensorSource(images, torch.from_numpy(table.column("label").to_numpy().astype(np.int64)), ids)
    if splits is None:
        return {name: everything.subset(stored_split_mask(table, name)) for name in STORED_SPLITS}, None
    return {name: everything.subset(splits.select(table, name)) for name in SPLIT_NAMES}, splits

