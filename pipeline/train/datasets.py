"""The unlearning sets as read plans (driver side), and the Ray Data read that streams them from shards.

The driver reads the shards' index columns and footers once and decides, for every
set, which rows of which Parquet row group it keeps: a list of read units. Streaming a
set is then one parallel Ray Data task per unit: the task reads only those rows' image
bytes and decodes them to uint8 arrays. No file listing, no footer reads and no row
filtering happen per pass, and row groups a set does not touch (most of ImageNet, for a
limited-access forget set) are never fetched. Small data skips the streaming read: the
driver decodes its row groups once into Ray's object store. Both modes use the same
units, so the workers (pipeline/train/ray_sources.py) see the same rows in the same order.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from pipeline.data.images import decode_batch
from pipeline.data.shards import DatasetMeta, open_shard, read_shard_part, read_table, shard_uris
from pipeline.data.splits import STORED_SPLITS, Splits
from pipeline.methods.harness import retain_subset_mask
from pipeline.train.data_modes import DATA_MODES, IN_MEMORY_LIMIT_BYTES  # noqa: F401  (defined torch-free)


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
    """The row mask of a Selection over the shards' sample ids and stored splits (all rows: the retain subset is
    an exact share of all of D_r)."""

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
            # Exactly round(fraction · |D_r|) ids, chosen over all of D_r as in process (harness.retain_subset_mask):
            # `ids` must be every row of the shards, as plan_sets passes them.
            candidates = np.flatnonzero(in_retain & (splits == STORED_SPLITS["train"]))
            chosen = np.zeros(len(ids), dtype=bool)
            chosen[candidates[retain_subset_mask(ids[candidates], s.retain_fraction, s.seed)]] = True
            in_retain &= chosen
        if s.forget is True:
            keep &= in_forget
        elif s.forget is False:
            keep &= in_retain
        elif s.stored_split == "train":
            keep &= in_forget | in_retain
        return keep, in_forget


@dataclass(frozen=True)
class ShardLayout:
    """Every train/val/test row in file order, and the Parquet row groups that hold them."""

    ids: np.ndarray  # sample_id (object)
    splits: np.ndarray  # stored split (object)
    row_groups: tuple[tuple[str, int, int, int], ...]  # (shard URI, row group, first row, rows)


def read_layout(uri: str, meta: DatasetMeta) -> ShardLayout:
    """The index columns of every shard plus each shard's row-group sizes (footers only, no image bytes)."""
    index = read_table(uri, meta, ["sample_id", "split"])
    groups, first = [], 0
    for shard_uri in shard_uris(uri, meta):
        footer = open_shard(shard_uri).metadata
        for group in range(footer.num_row_groups):
            rows = footer.row_group(group).num_rows
            groups.append((shard_uri, group, first, rows))
            first += rows
    return ShardLayout(np.asarray(index.column("sample_id").to_pylist(), dtype=object),
                       np.asarray(index.column("split").to_pylist(), dtype=object), tuple(groups))


@dataclass(frozen=True)
class ReadUnit:
    """One Parquet row group and the rows of it a set keeps: the unit of work of a streaming read."""

    shard: str
    row_group: int
    rows: np.ndarray  # positions inside the row group
    is_forget: np.ndarray


def read_units(layout: ShardLayout, keep: np.ndarray, in_forget: np.ndarray) -> list[ReadUnit]:
    """A unit per row group with kept rows; row groups without any are never read (their images never fetched)."""
    units = []
    for shard, group, first, count in layout.row_groups:
        rows = np.flatnonzero(keep[first:first + count])
        if len(rows):
            units.append(ReadUnit(shard, group, rows, in_forget[first + rows]))
    return units


def read_row_group(unit: ReadUnit, columns: list[str]) -> pa.Table:
    """The unit's rows of its row group. Storage that keeps failing in a way that may pass raises
    StorageUnavailableError, which a Ray Train run survives through --max-failures; a corrupt shard, DataError."""
    table = read_shard_part(unit.shard, f"row group {unit.row_group} of shard",
                            lambda: open_shard(unit.shard).read_row_group(unit.row_group, columns=columns))
    return table.take(pa.array(unit.rows))


class ReadAndDecode:
    """Reads units' rows and decodes their images into blocks of at most `block_rows` rows.

    One block per 256-row unit: smaller blocks were merged again by Ray Data (a copy of every
    image) and measured no faster. The Ray datasource and the DataLoader baseline of
    `unlearn bench-ingest` share this, so both do exactly the same work.
    """

    def __init__(self, units: list[ReadUnit], channels: int, size: int, resize: str, forget_flag: bool,
                 block_rows: int = 256):
        self.units, self.forget_flag, self.block_rows = units, forget_flag, block_rows
        self.channels, self.size, self.resize = channels, size, resize

    def blocks(self, numbers) -> Iterator[dict]:
        """The blocks of the units at positions `numbers`, in that order."""
        for number in numbers:
            unit = self.units[int(number)]
            table = read_row_group(unit, ["sample_id", "label", "image"])
            ids = np.asarray(table.column("sample_id").to_pylist(), dtype=object)
            labels = table.column("label").to_numpy().astype(np.int64)
            encoded = table.column("image").to_pylist()
            for start in range(0, len(ids), self.block_rows):
                rows = slice(start, start + self.block_rows)
                block = {"image": decode_batch(encoded[rows], ids[rows], self.channels, self.size, self.resize),
                         "label": labels[rows], "sample_id": ids[rows].astype(str)}
                if self.forget_flag:
                    block["is_forget"] = unit.is_forget[rows]
                yield block


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


@dataclass(frozen=True)
class SetPlan:
    """One named set: its read units in file order, and whether its rows carry `is_forget` (the mixed set)."""

    units: tuple[ReadUnit, ...]
    forget_flag: bool = False

    @property
    def rows(self) -> int:
        return sum(len(unit.rows) for unit in self.units)


@dataclass(frozen=True)
class DataPlan:
    """Everything a worker needs to read any set: the units of each set, how to decode them, and, in memory
    mode, the decoded row groups in Ray's object store. Plain data: it travels in the Train loop config."""

    sets: dict[str, SetPlan]
    channels: int
    size: int
    resize: str
    stored_groups: dict | None = None  # memory mode: (shard URI, row group) -> ObjectRef of its decoded columns
    stored_rows: int = 0  # images the driver decoded for `stored_groups`

    @property
    def row_bytes(self) -> int:
        return self.channels * self.size * self.size

    @property
    def mode(self) -> str:
        return "stream" if self.stored_groups is None else "memory"


def streamed_dataset(units, channels: int, size: int, resize: str, forget_flag: bool):
    """A lazy Ray Dataset that reads and decodes `units` in parallel read tasks (one per row group), delivered in
    the order of `units`.

    The units travel with the read tasks, so a pass lists no files and reads no footers again; it
    starts in well under a second whatever the number of shards. Reading and decoding are one task
    (a datasource), not a read followed by a map, so each unit costs one task and no block in between.
    """
    import ray.data

    source = _row_group_datasource_class()(list(units), channels, size, resize, forget_flag)
    dataset = ray.data.read_datasource(source, override_num_blocks=len(units))
    # Ray Data's per-operator reservation of the object store kept 1.4 of 2 decode tasks running on
    # average (each task's ~40 MB output waited on a share of the budget): a task started only 0.1-0.2 s
    # after the last ended. This one-operator pipeline needs no split of the budget between operators;
    # without it both CPUs decode all the time, and the object store stays bounded by Ray's global
    # limit (`unlearn bench-ingest` prints its peak and the bytes spilled).
    dataset.context.op_resource_reservation_enabled = False
    # Blocks come out in the order of the units, whichever task finishes first: the worker's seeded unit
    # order then fixes the batches, so a streamed pass and a replay from the decode-once cache are the same.
    dataset.context.execution_options.preserve_order = True
    dataset.context.enable_progress_bars = False
    dataset.context.print_on_execution_start = False
    # ... which Ray Data then announces as a warning once per process, in every Train worker.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    return dataset


@functools.lru_cache(maxsize=None)
def _row_group_datasource_class():
    """A Ray Data datasource over `ReadUnit`s, each read task reading one row group's kept rows and decoding them.

    Defined on first use: importing ray.data costs seconds, and the in-process paths never need it.
    """
    from ray.data.block import BlockAccessor, BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class _RowGroupDatasource(Datasource):
        def __init__(self, units, channels, size, resize, forget_flag):
            super().__init__()
            self.units, self.channels, self.size, self.resize, self.forget_flag = (
                units, channels, size, resize, forget_flag)

        def estimate_inmemory_data_size(self) -> int:
            return sum(len(u.rows) for u in self.units) * self.channels * self.size * self.size

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            tasks = []
            for unit in self.units:  # one task per unit, whatever `parallelism`: units are the natural grain
                decode = ReadAndDecode([unit], self.channels, self.size, self.resize, self.forget_flag)
                rows = len(unit.rows)
                metadata = BlockMetadata(num_rows=rows, size_bytes=rows * self.channels * self.size * self.size,
                                         input_files=None, exec_stats=None)
                tasks.append(ReadTask(lambda decode=decode: (BlockAccessor.batch_to_block(block)
                                                             for block in decode.blocks([0])), metadata))
            return tasks

    return _RowGroupDatasource


def decoded_bytes(meta: DatasetMeta, image_size: int) -> int:
    return sum(meta.counts.values()) * meta.channels * image_size * image_size


def plan_sets(uri: str, meta: DatasetMeta, splits: Splits | None, names, image_size: int,
              retain_fractions=(), mode: str = "auto") -> DataPlan:
    """The DataPlan of the named selections (see `selections`).

    Every set is a list of read units (the Parquet row groups holding its rows, and which rows),
    the same in both modes. `stream`: workers read and decode their units through Ray Data (see
    `streamed_dataset`). `memory`: the driver decodes every row group a set touches once and puts
    each into Ray's object store; workers take their units' rows from there. Ray Data costs about
    half a second per pass on top of the work, which on small data is many times the work itself;
    `auto` (the default) picks `memory` when the decoded data is under 256 MiB. Either way a worker
    keeps a set it reads repeatedly in memory after its first pass, within `--cache-mb`
    (pipeline/train/ray_sources.py), and the two modes give the same batches.
    """
    if mode not in DATA_MODES:
        raise ValueError(f"data mode must be one of {DATA_MODES}, not {mode!r}")
    available = selections(splits, retain_fractions)
    forget_ids = frozenset(splits.forget_ids) if splits else frozenset()
    layout = read_layout(uri, meta)
    sets = {}
    for name in names:
        selector = RowSelector(available[name], forget_ids)
        units = read_units(layout, *selector.mask(layout.ids, layout.splits))
        sets[name] = SetPlan(tuple(units), selector.selection.forget_flag)
    plan = DataPlan(sets, meta.channels, image_size, meta.resize)
    if mode == "stream" or (mode == "auto" and decoded_bytes(meta, image_size) >= IN_MEMORY_LIMIT_BYTES):
        return plan
    return store_row_groups(plan, layout)


def store_row_groups(plan: DataPlan, layout: ShardLayout) -> DataPlan:
    """Memory mode: decode (once, here) every row group a set touches and put each into Ray's object store."""
    import ray

    used = {(unit.shard, unit.row_group) for set_plan in plan.sets.values() for unit in set_plan.units}
    stored, rows = {}, 0
    for shard, group, _, count in layout.row_groups:
        if (shard, group) not in used:
            continue
        whole = ReadUnit(shard, group, np.arange(count), np.zeros(count, dtype=bool))
        decode = ReadAndDecode([whole], plan.channels, plan.size, plan.resize, forget_flag=False, block_rows=count)
        stored[(shard, group)] = ray.put(next(decode.blocks([0])))
        rows += count
    return DataPlan(plan.sets, plan.channels, plan.size, plan.resize, stored, rows)
