"""Ray Data sets for the unlearning splits, streamed from shards (local or s3://).

read_parquet streams the shards; one `map_batches` selects the rows of a split
(before decoding, so unused images are never decoded) and decodes the rest to
uint8 arrays. Forget ids are broadcast with the function; seeded subsets hash
(seed, salt, sample_id), so every read task decides alone. Small data skips the
streaming read: it is decoded once and each set is held in the object store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline import storage
from pipeline.data.images import decode_batch
from pipeline.data.shards import DatasetMeta, read_table, shard_uris
from pipeline.data.splits import STORED_SPLITS, Splits, hash_unit
from pipeline.methods.harness import RETAIN_SALT


@dataclass(frozen=True)
class Selection:
    """Which rows of the shards a dataset keeps; `forget_flag` adds `is_forget` (the mixed set)."""

    stored_split: str | None = None  # "train" / "val" / "test"
    forget: bool | None = None  # True: only D_f; False: only outside D_f; None: either
    retain_ids: frozenset | None = None  # explicit D_r (limited:F/R) instead of "train minus forget"
    retain_fraction: float = 1.0
    seed: int = 0
    forget_flag: bool = False


class RowSelector:
    """The row mask of a Selection over a batch's sample ids and stored splits."""

    def __init__(self, selection: Selection, forget_ids: frozenset):
        self.selection, self.forget_ids = selection, forget_ids

    def mask(self, ids: np.ndarray, splits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows to keep, rows in D_f)."""
        s = self.selection
        in_forget = np.fromiter((i in self.forget_ids for i in ids), dtype=bool, count=len(ids))
        keep = np.ones(len(ids), dtype=bool) if s.stored_split is None else splits == s.stored_split
        in_retain = ~in_forget
        if s.retain_ids is not None:
            in_retain &= np.fromiter((i in s.retain_ids for i in ids), dtype=bool, count=len(ids))
        if s.retain_fraction < 1.0:
            in_retain &= np.fromiter((hash_unit(s.seed, RETAIN_SALT, i) < s.retain_fraction for i in ids),
                                     dtype=bool, count=len(ids))
        if s.forget is True:
            keep &= in_forget
        elif s.forget is False:
            keep &= in_retain
        elif s.stored_split == "train":
            keep &= in_forget | in_retain
        return keep, in_forget

    def output(self, rows: np.ndarray, images: np.ndarray, labels: np.ndarray, ids: np.ndarray,
               splits: np.ndarray, in_forget: np.ndarray) -> dict:
        out = {"image": images, "label": labels[rows].astype(np.int64), "sample_id": ids[rows].astype(str),
               "split": splits[rows].astype(str)}
        if self.selection.forget_flag:
            out["is_forget"] = in_forget[rows]
        return out


class SelectAndDecode(RowSelector):
    """map_batches over raw shard rows: keep the selected rows, decode only their images to uint8 [B, C, H, W]."""

    def __init__(self, selection: Selection, forget_ids: frozenset, channels: int, height: int, width: int):
        super().__init__(selection, forget_ids)
        self.shape = (channels, height, width)

    def __call__(self, batch: pa.Table) -> dict:
        ids = np.asarray(batch.column("sample_id").to_pylist(), dtype=object)
        splits = np.asarray(batch.column("split").to_pylist(), dtype=object)
        keep, in_forget = self.mask(ids, splits)
        rows = np.flatnonzero(keep)
        encoded = batch.column("image").take(pa.array(rows)).to_pylist() if len(rows) else []
        images = decode_batch(encoded, ids[rows], *self.shape)
        return self.output(rows, images, batch.column("label").to_numpy(), ids, splits, in_forget)


class SelectDecoded(RowSelector):
    """map_batches over already decoded rows (numpy batches): only the selection, no decoding."""

    def __call__(self, batch: dict) -> dict:
        ids, splits = batch["sample_id"].astype(object), batch["split"].astype(object)
        keep, in_forget = self.mask(ids, splits)
        rows = np.flatnonzero(keep)
        return self.output(rows, batch["image"][rows], batch["label"], ids, splits, in_forget)


def subset_name(name: str, retain_fraction: float) -> str:
    """`retain@0.3`: the seeded 30 % subset of D_r (and `mixed@0.3`: D_f with it); the full sets keep plain names."""
    return name if retain_fraction >= 1 else f"{name}@{retain_fraction:g}"


def selections(splits: Splits | None, retain_fractions=()) -> dict[str, Selection]:
    """The named sets a run can ask for."""
    if splits is None:  # plain training: all of train, plus the stored evaluation splits
        return {"train": Selection(stored_split="train"),
                **{name: Selection(stored_split=stored) for name, stored in STORED_SPLITS.items() if name != "train"}}
    retain_ids = frozenset(splits.retain_ids) if splits.retain_ids is not None else None
    common = {"retain_ids": retain_ids, "seed": splits.seed}
    named = {
        "forget": Selection(stored_split="train", forget=True, **common),
        "retain_all": Selection(stored_split="train", forget=False, **common),
        "mixed": Selection(stored_split="train", forget_flag=True, **common),
        "unseen": Selection(stored_split=STORED_SPLITS["unseen"]),
        "test": Selection(stored_split=STORED_SPLITS["test"]),
    }
    for fraction in set(retain_fractions) - {1.0}:
        named[subset_name("retain", fraction)] = Selection(stored_split="train", forget=False,
                                                           retain_fraction=fraction, **common)
        named[subset_name("mixed", fraction)] = Selection(stored_split="train", retain_fraction=fraction,
                                                          forget_flag=True, **common)
    return named


def read_decoded(uri: str, meta: DatasetMeta, selection: Selection, forget_ids: frozenset, image_size: int,
                 batch_rows: int = 256):
    """A lazy, streaming Ray Dataset of one selection, decoded to the model's input size."""
    import ray.data

    fs, _ = storage.resolve(uri)
    paths = [storage.resolve(u)[1] for u in shard_uris(uri, meta)]
    dataset = ray.data.read_parquet(paths, filesystem=fs, columns=["sample_id", "label", "image", "split"])
    decode = SelectAndDecode(selection, forget_ids, meta.channels, image_size, image_size)
    return dataset.map_batches(decode, batch_format="pyarrow", batch_size=batch_rows)


# Decoded data below this is read once by the driver and held in Ray's object store (see build_datasets).
IN_MEMORY_LIMIT_BYTES = 256 * 1024**2
BLOCKS_PER_SMALL_SET = 16
DATA_MODES = ("auto", "memory", "stream")


def decoded_bytes(meta: DatasetMeta, image_size: int) -> int:
    return sum(meta.counts.values()) * meta.channels * image_size * image_size


def build_datasets(uri: str, meta: DatasetMeta, splits: Splits | None, names, image_size: int,
                   retain_fractions=(), mode: str = "auto") -> dict:
    """{name: Ray Dataset} for the named selections (see `selections`).

    `stream`: every set streams from the shards each epoch (read_parquet, then one
    map_batches that selects its rows and decodes only those). `memory`: the driver
    reads and decodes the shards once and each set becomes its own materialised
    dataset. Ray Data costs seconds per pipeline and about half a second per pass
    on top of the work, which on small data is many times the work itself; `auto`
    (the default) picks `memory` when the decoded data is under 256 MiB.
    """
    if mode not in DATA_MODES:
        raise ValueError(f"data mode must be one of {DATA_MODES}, not {mode!r}")
    available = selections(splits, retain_fractions)
    forget_ids = frozenset(splits.forget_ids) if splits else frozenset()
    if mode == "stream" or (mode == "auto" and decoded_bytes(meta, image_size) >= IN_MEMORY_LIMIT_BYTES):
        return {name: read_decoded(uri, meta, available[name], forget_ids, image_size) for name in names}
    decoded = SelectAndDecode(Selection(), forget_ids, meta.channels, image_size, image_size)(read_table(uri, meta))
    return {name: in_memory_dataset(SelectDecoded(available[name], forget_ids)(decoded)) for name in names}


def in_memory_dataset(columns: dict):
    """A materialised Ray Dataset of numpy columns, in up to 16 blocks so streaming_split gives every worker a share."""
    import ray.data
    from ray.data.block import BlockAccessor

    rows = len(columns["label"])
    chunks = np.array_split(np.arange(rows), max(1, min(BLOCKS_PER_SMALL_SET, rows)))
    return ray.data.from_arrow([BlockAccessor.batch_to_block({key: value[chunk] for key, value in columns.items()})
                                for chunk in chunks])
