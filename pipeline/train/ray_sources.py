"""Worker side of the data path: each Ray Train worker's share of every set, as BatchSources, decoded once.

A worker owns a fixed share of each set's read units (`assign_units`, the same on every
worker, so each sample belongs to exactly one worker). A pass (an epoch) visits the
worker's units in a seeded order and shuffles rows within windows of consecutive units, so
the batches depend only on the seed: not on which read task finished first, not on the data
mode, and not on whether the rows came from Ray Data or from memory. The first pass over a
set reads it (Ray Data tasks in stream mode, the driver's decoded row groups in memory mode);
when the set fits the worker's budget (`--cache-mb`) its decoded rows stay in memory (on the
GPU for a GPU worker) and later passes replay them with no Ray Data pass at all.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from pipeline.data.sources import concat, fold_short_last
from pipeline.train.data_modes import DEFAULT_CACHE_MB  # noqa: F401  (defined torch-free)

# Rows are shuffled within windows of consecutive units of at least this many rows (a streamed pass cannot
# shuffle a whole set). 2,048 digits are 2 MB, but 2,048 decoded 224 px images are 300 MB per worker, so the
# window is capped in bytes too.
SHUFFLE_WINDOW_ROWS = 2048
SHUFFLE_WINDOW_BYTES = 64 * 1024**2


def shuffle_window_rows(row_bytes: int | None) -> int:
    """Rows of a shuffle window for rows of `row_bytes` bytes (unknown: the row cap alone)."""
    if not row_bytes:
        return SHUFFLE_WINDOW_ROWS
    return max(256, min(SHUFFLE_WINDOW_ROWS, SHUFFLE_WINDOW_BYTES // row_bytes))


def assign_units(units, world: int) -> list[list[int]]:
    """Unit positions per rank: each unit to the rank holding the fewest rows so far (ties: the lowest rank).

    Deterministic, so every worker computes the same split without talking to the others, and a
    sample is read by exactly one worker in every pass.
    """
    loads, owned = [0] * world, [[] for _ in range(world)]
    for position, unit in enumerate(units):
        rank = loads.index(min(loads))
        owned[rank].append(position)
        loads[rank] += len(unit.rows)
    return owned


@dataclass
class InputStats:
    """Images a worker's sources delivered, and seconds its loop waited for them (read, decode, shuffle)."""

    images: int = 0
    wait_seconds: float = 0.0

    @contextlib.contextmanager
    def uncounted(self):
        """Leave what is read inside this block out (a sweep's per-epoch evaluation inside the unlearning phase)."""
        images, wait = self.images, self.wait_seconds
        try:
            yield
        finally:
            self.images, self.wait_seconds = images, wait


class DecodedCache:
    """A worker's memory budget for decoded sets kept after their first pass, on the worker's device."""

    def __init__(self, max_bytes: int, device: torch.device | None = None):
        self.free, self.device = max_bytes, device

    def reserve(self, nbytes: int) -> bool:
        """Claim `nbytes`; False (nothing claimed) when it does not fit what is left."""
        if nbytes > self.free:
            return False
        self.free -= nbytes
        return True

    def release(self, nbytes: int) -> None:
        self.free += nbytes

    def place(self, block: dict) -> dict:
        if self.device is None or self.device.type == "cpu":
            return block
        return {**block, "image": block["image"].to(self.device)}


def held_bytes(block: dict) -> int:
    """The memory a kept block holds: images, labels, forget flags and its sample ids (fixed-width strings).

    Not the images alone: for 8x8 digits the ids and labels take more than the pixels, and a budget that
    counted pixels only used about twice `--cache-mb`."""
    return sum(value.element_size() * value.nelement() if torch.is_tensor(value) else np.asarray(value).nbytes
               for value in block.values())


class StreamedUnits:
    """Stream mode: units read and decoded by Ray Data tasks, delivered in the order asked for.

    `read_ahead(units)` starts reading the first units of the next pass before it is asked for (see
    `UnitSource._read_ahead`); `blocks` takes them if the pass starts with those units, else drops them.
    """

    def __init__(self, channels: int, size: int, resize: str, forget_flag: bool):
        self.channels, self.size, self.resize, self.forget_flag = channels, size, resize, forget_flag
        self.last_datasets: list = []  # the latest pass's Ray Datasets: `unlearn bench-ingest` reads their statistics
        self.ahead: _StartedRead | None = None

    def _start(self, units: list) -> "_StartedRead":
        from pipeline.train.datasets import streamed_dataset

        return _StartedRead(units, streamed_dataset(units, self.channels, self.size, self.resize, self.forget_flag))

    def read_ahead(self, units: list) -> None:
        self.drop_ahead()
        self.ahead = self._start(units)

    def drop_ahead(self) -> None:
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            ahead.close()

    def blocks(self, units: list) -> Iterator[dict]:
        ahead, self.ahead = self.ahead, None
        if ahead is not None and [id(u) for u in ahead.units] != [id(u) for u in units[:len(ahead.units)]]:
            ahead.close()
            ahead = None
        rest = units[len(ahead.units):] if ahead is not None else units
        # The rest starts now, behind the read-ahead units' tasks (submitted first, so Ray runs them first).
        started = self._start(rest) if rest else None
        parts = [part for part in (ahead, started) if part is not None]
        self.last_datasets = [part.dataset for part in parts]
        return per_unit(itertools.chain.from_iterable(parts), [len(unit.rows) for unit in units])


class _StartedRead:
    """A Ray Data pass over `units` whose execution has started: a thread asks for its first block at once, and
    Ray Data's executor then runs its read tasks ahead of the consumer within its object store budget."""

    def __init__(self, units: list, dataset):
        self.units, self.dataset = units, dataset
        self._batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
        self._first: list = []
        self._thread = threading.Thread(target=self._take_first, daemon=True)
        self._thread.start()

    def _take_first(self) -> None:
        try:
            self._first.append(("block", next(self._batches)))
        except StopIteration:
            pass
        except BaseException as error:  # raised to the consumer, where it belongs
            self._first.append(("error", error))

    def __iter__(self) -> Iterator[dict]:
        self._thread.join()
        for kind, value in self._first:
            if kind == "error":
                raise value
            yield value
        yield from self._batches

    def close(self) -> None:
        """Stop the read: Ray Data shuts its executor down when the iterator is closed."""
        self._thread.join()
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()


class StoredUnits:
    """Memory mode: units taken from row groups the driver decoded into Ray's object store."""

    def __init__(self, groups: dict, forget_flag: bool):
        self.groups, self.forget_flag = groups, forget_flag

    def blocks(self, units: list) -> Iterator[dict]:
        import ray

        for unit in units:
            group = ray.get(self.groups[(unit.shard, unit.row_group)])
            block = {key: group[key][unit.rows] for key in ("image", "label", "sample_id")}
            if self.forget_flag:
                block["is_forget"] = unit.is_forget
            yield block


def per_unit(blocks: Iterable[dict], sizes: list[int]) -> Iterator[dict]:
    """The rows of `blocks`, regrouped into one block per unit (`sizes` rows each), whatever Ray Data's blocks."""
    blocks, pending = iter(blocks), []
    for size in sizes:
        while sum(block_rows(b) for b in pending) < size:
            pending.append(next(blocks))
        joined = concat(pending)
        yield take(joined, slice(0, size))
        rest = take(joined, slice(size, None))
        pending = [rest] if block_rows(rest) else []


class UnitSource:
    """A worker's share of one set as a BatchSource (see the module docstring)."""

    def __init__(self, units: list, reader, cache: DecodedCache, stats: InputStats, window_rows: int,
                 row_bytes: int, rank: int = 0):
        self.units, self.reader, self.cache, self.stats = units, reader, cache, stats
        self.window_rows, self.rank = window_rows, rank
        self.image_bytes = sum(len(unit.rows) for unit in units) * row_bytes
        self.kept: dict[int, dict] = {}  # unit position -> decoded block, while the set holds a place in the cache
        self.kept_bytes = 0  # what `kept` claims of the cache (held_bytes)
        self.cached: bool | None = None  # decided on the first pass
        self.read_ahead = True  # off only to measure what it buys (`unlearn bench-ingest --no-read-ahead`)

    def __len__(self) -> int:
        return sum(len(unit.rows) for unit in self.units)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[dict]:
        rng = np.random.default_rng([seed, self.rank]) if shuffle else None
        order = rng.permutation(len(self.units)) if shuffle else np.arange(len(self.units))
        # Training passes come with seeds seed, seed + 1, ...: the next one's first units are read while this
        # one ends (see _read_ahead).
        blocks = self._blocks(order, next_seed=seed + 1 if shuffle else None)
        if not shuffle:
            return self._counted(rebatch(blocks, batch_size))
        chunks = shuffled_windows(blocks, self.window_rows, rng)
        return self._counted(fold_short_last(rebatch(chunks, batch_size), batch_size))

    def _counted(self, batches: Iterator[dict]) -> Iterator[dict]:
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            self.stats.wait_seconds += time.perf_counter() - started
            if batch is None:
                return
            self.stats.images += len(batch["label"])
            yield batch

    def close(self) -> None:
        """Drop what was read ahead for a pass that will not come (the end of a job)."""
        drop_ahead = getattr(self.reader, "drop_ahead", None)
        if drop_ahead is not None:
            drop_ahead()

    def _blocks(self, order: np.ndarray, next_seed: int | None = None) -> Iterator[dict]:
        """The units' blocks in `order`: from memory when kept, else read (and kept if the set has a place)."""
        if self.cached is None:  # a set whose images alone exceed what is left never starts keeping
            self.cached = self.image_bytes <= self.cache.free
        missing = [self.units[position] for position in order if position not in self.kept]
        read = self.reader.blocks(missing) if missing else iter(())
        for number, position in enumerate(order):
            if number == len(order) - 1 and next_seed is not None:
                # This pass's last read tasks are running: the next pass's queue up behind them and take the
                # CPUs as this pass's tail frees them.
                self._read_ahead(next_seed)
            block = self.kept.get(position)
            if block is None:
                block = as_tensors(next(read))
                if self.cached:
                    block = self._keep(position, block)
            yield block

    def _read_ahead(self, seed: int) -> None:
        """Start reading the first units of the pass with `seed` (what the next epoch asks for), so that its first
        batch does not wait for Ray Data to plan the pass and run its first tasks: this pass's last window is
        still being batched, and the epoch's evaluation and checkpoint come before the next pass.

        Only for a set that streams every pass (not kept in the decode-once cache). Only the units of two shuffle
        windows: if the next pass asks for something else (the last epoch), that much decoding is wasted."""
        read_ahead = getattr(self.reader, "read_ahead", None)
        if self.cached or read_ahead is None or not self.read_ahead:
            return
        order = np.random.default_rng([seed, self.rank]).permutation(len(self.units))
        units, rows = [], 0
        for position in order:
            if rows >= 2 * self.window_rows:
                break
            units.append(self.units[position])
            rows += len(self.units[position].rows)
        read_ahead(units)

    def _keep(self, position: int, block: dict) -> dict:
        """Keep a block of the first pass within the budget; a set that turns out not to fit keeps nothing."""
        size = held_bytes(block)
        if not self.cache.reserve(size):
            self.cache.release(self.kept_bytes)
            self.kept, self.kept_bytes, self.cached = {}, 0, False
            return block
        self.kept_bytes += size
        self.kept[position] = self.cache.place(block)
        return self.kept[position]


def shuffled_windows(blocks: Iterable[dict], window_rows: int, rng: np.random.Generator) -> Iterator[dict]:
    """Consecutive blocks joined into windows of at least `window_rows` rows, each window's rows permuted."""
    window, rows = [], 0
    for block in blocks:
        window.append(block)
        rows += block_rows(block)
        if rows >= window_rows:
            yield _permuted(concat(window), rng)
            window, rows = [], 0
    if window:
        yield _permuted(concat(window), rng)


def _permuted(block: dict, rng: np.random.Generator) -> dict:
    return take(block, torch.from_numpy(rng.permutation(block_rows(block))))


def rebatch(chunks: Iterable[dict], batch_size: int) -> Iterator[dict]:
    """Batches of exactly `batch_size` rows (the last may be smaller) cut from consecutive chunks."""
    carry = None
    for chunk in chunks:
        if carry is not None:
            chunk = concat([carry, chunk])
        rows = block_rows(chunk)
        full = rows - rows % batch_size
        for start in range(0, full, batch_size):
            yield take(chunk, slice(start, start + batch_size))
        carry = take(chunk, slice(full, rows)) if full < rows else None
    if carry is not None:
        yield carry


def block_rows(block: dict) -> int:
    return len(block["label"])


def take(block: dict, rows) -> dict:
    """Rows of a block: a slice, or positions (a CPU tensor of indices)."""
    out = {}
    for key, values in block.items():
        if isinstance(rows, slice) or not torch.is_tensor(values):
            out[key] = values[rows if isinstance(rows, slice) else rows.numpy()]
        else:
            out[key] = values.index_select(0, rows.to(values.device))
    return out


def as_tensors(block: dict) -> dict:
    """A decoded numpy block as a batch: torch tensors for images, labels and forget flags; ids stay strings."""
    # Ray hands out read-only views of its object store; torch wants writable memory.
    out = {"image": torch.from_numpy(np.require(block["image"], requirements=["C", "W"])),
           "label": torch.from_numpy(np.asarray(block["label"]).astype(np.int64)),
           "sample_id": np.asarray(block["sample_id"]).astype(str)}
    if "is_forget" in block:
        out["is_forget"] = torch.from_numpy(np.asarray(block["is_forget"]).astype(bool))
    return out


def worker_sources(plan, cache_mb: float = DEFAULT_CACHE_MB, device: torch.device | None = None,
                   rank: int | None = None, world: int | None = None) -> tuple[dict[str, UnitSource], InputStats]:
    """This worker's UnitSource for every set of a DataPlan, sharing one cache budget and one InputStats."""
    from pipeline import distributed

    rank = distributed.rank() if rank is None else rank
    world = distributed.world_size() if world is None else world
    cache, stats = DecodedCache(int(cache_mb * 1024**2), device), InputStats()
    window = shuffle_window_rows(plan.row_bytes)
    sources = {}
    for name, set_plan in plan.sets.items():
        mine = [set_plan.units[position] for position in assign_units(set_plan.units, world)[rank]]
        reader = (StoredUnits(plan.stored_groups, set_plan.forget_flag) if plan.stored_groups is not None
                  else StreamedUnits(plan.channels, plan.size, plan.resize, set_plan.forget_flag))
        sources[name] = UnitSource(mine, reader, cache, stats, window, plan.row_bytes, rank)
    return sources, stats


def _import_decode_path() -> None:
    import pipeline.train.datasets  # noqa: F401  (torch, torchvision's codecs, pyarrow)


def warm_up_data_workers(limit: int = 64) -> list:
    """From rank 0, start a Ray worker process per free CPU (up to `limit`) importing the decode path; on every rank,
    run Ray Data once (`_warm_up_ray_data`).

    A fresh Ray worker spends seconds importing torch and torchvision before it decodes its first
    image, while a DataLoader's forked workers inherit those imports: the first pass of a stream
    ran at a third of the later ones. Ray reuses a worker only for tasks of the same runtime env,
    and Ray Train gives its workers their own (env vars), which the read tasks they start inherit:
    so the warm-up must start from inside the Train worker, not from the driver. It overlaps the
    method's set-up (model and checkpoint loading); the returned task refs say when it is done.
    """
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from pipeline import distributed

    refs = []
    if distributed.rank() == 0:
        # Outside any placement group: inside a Tune trial the tasks were captured by the trial's group, whose CPUs
        # the Train workers already hold, and `ray.get` on them waited forever (a stream-mode sweep hung).
        task = ray.remote(num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))(
            _import_decode_path)
        refs = [task.remote() for _ in range(min(limit, int(ray.available_resources().get("CPU", 0))))]
    _warm_up_ray_data()
    return refs


def _warm_up_ray_data() -> None:
    """A one-row Ray Data pass in this process. Ray Data's first pass in a process pays for its imports, its
    executor and the cluster's statistics actor: 5.0-5.4 s to a 3,000-image stream's first batch against
    2.8-3.4 s after this (and 1.1-1.5 s in later passes), measured on 2 cores."""
    import ray.data

    dataset = ray.data.range(1, override_num_blocks=1)
    dataset.context.enable_progress_bars = False
    dataset.context.print_on_execution_start = False
    dataset.take_all()
