"""Ingest measurement: images/s delivered as training batches by Ray Data into Ray Train workers, and by a
plain torch DataLoader reading the same row groups with the same decode, plus peak memory while each runs.

Both paths read the same `ReadUnit`s (one Parquet row group each) through the same `ReadAndDecode`, so the
comparison isolates how the work is scheduled and moved, not what work is done.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from pipeline.train.datasets import ReadAndDecode

BATCH_SIZE = 64


@dataclass
class PassTiming:
    """One pass: images and seconds in all, and how long until its first batch (start-up, apart from the rest)."""

    images: int
    seconds: float
    first_batch_seconds: float = 0.0
    first_batch_images: int = 0
    stages: dict | None = None  # Ray Data's own account of the pass (ray_data_stages), the Ray path only

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def after_first_batch(self) -> tuple[int, float]:
        return self.images - self.first_batch_images, self.seconds - self.first_batch_seconds


@dataclass
class IngestResult:
    passes: list[PassTiming]
    peak_driver_mb: float = 0.0
    peak_workers_mb: float = 0.0
    peak_object_store_mb: float | None = None
    spilled_mb: float | None = None
    startup_seconds: float | None = None  # the job's start-up before pass 1 (Ray: Ray, the Train worker, data workers)

    @property
    def steady_images_per_second(self) -> float:
        """Later passes (the first also starts processes and warms caches), or the only one."""
        later = self.passes[1:] or self.passes
        return sum(p.images for p in later) / sum(p.seconds for p in later)

    @property
    def streaming_images_per_second(self) -> float:
        """Every pass after its first batch: the rate once data flows, with each pass's start-up left out."""
        images, seconds = (sum(values) for values in zip(*(p.after_first_batch for p in self.passes)))
        return images / seconds if seconds else 0.0


class _UnitsInOrder(torch.utils.data.IterableDataset):
    """DataLoader worker k of n decodes the units at positions k, k + n, ... of `units`, one block each: the
    DataLoader's round robin over its workers then delivers the blocks in the order of `units`."""

    def __init__(self, decode: ReadAndDecode):
        self.decode = decode

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for block in self.decode.blocks(range(worker, len(self.decode.units), workers)):
            # Tensors travel through shared memory, the DataLoader's own fast path; the ids as they are.
            yield {**block, "image": torch.from_numpy(block["image"]), "label": torch.from_numpy(block["label"])}


class LoaderUnits:
    """The DataLoader baseline as a unit reader: a fresh DataLoader per pass (its default, non-persistent workers)
    with `processes` worker processes. Plugged into the same UnitSource as the Ray path, so both paths shuffle,
    window and batch the rows in the training worker exactly alike: they differ only in who reads and decodes."""

    def __init__(self, channels: int, size: int, resize: str, processes: int):
        self.channels, self.size, self.resize, self.processes = channels, size, resize, processes

    def blocks(self, units: list) -> Iterator[dict]:
        # One block per unit (a unit is at most one row group), which the round robin's order needs.
        decode = ReadAndDecode(units, self.channels, self.size, self.resize, forget_flag=False,
                               block_rows=max(len(unit.rows) for unit in units))
        return iter(torch.utils.data.DataLoader(_UnitsInOrder(decode), batch_size=None, num_workers=self.processes,
                                                prefetch_factor=4 if self.processes else None))


def timed_passes(source, passes: int, seed: int, barrier=lambda: None, account=lambda: None,
                 between_passes: float = 0.0) -> list[PassTiming]:
    """`passes` shuffled passes of training batches from `source`, each timed from its start to its first batch
    and to its end (between `barrier`s, so that with several workers a pass ends when the slowest ends);
    `account()` adds what the source itself knows of the pass. `between_passes` seconds of idle time follow
    each pass but the last, outside its time: an epoch's evaluation and checkpoint, on the GPU or elsewhere."""
    timings = []
    for epoch in range(passes):
        if epoch and between_passes:
            time.sleep(between_passes)
        barrier()
        started, images, first = time.perf_counter(), 0, None
        for batch in source.batches(BATCH_SIZE, shuffle=True, seed=seed + epoch):
            images += len(batch["label"])
            if first is None:
                first = (time.perf_counter() - started, images)
        barrier()
        timings.append(PassTiming(images, time.perf_counter() - started, *(first or (0.0, 0)), account()))
    return timings


def dataloader_passes(units: list, channels: int, size: int, resize: str, processes: int, passes: int,
                      seed: int = 0, between_passes: float = 0.0) -> list[PassTiming]:
    """Passes of a plain DataLoader with `processes` worker processes, delivered as training batches."""
    from pipeline.train.ray_sources import DecodedCache, InputStats, UnitSource, shuffle_window_rows

    source = UnitSource(units, LoaderUnits(channels, size, resize, processes), DecodedCache(0), InputStats(),
                        shuffle_window_rows(channels * size * size), channels * size * size)
    return timed_passes(source, passes, seed, between_passes=between_passes)


def ray_worker_loop(config: dict) -> dict:
    """Ray Train worker: iterate this worker's share of "train" as training does, timing each pass between barriers.

    The decode-once cache is off: every pass streams, as every epoch does on data bigger than the cache. Pass 1
    starts once the data workers are up (their start-up is the job's, timed apart by the driver).
    """
    import ray

    from pipeline import distributed
    from pipeline.train.ray_sources import warm_up_data_workers, worker_sources

    ray.get(warm_up_data_workers())
    source = worker_sources(config["data_plan"], cache_mb=0)[0]["train"]
    source.read_ahead = config["read_ahead"]
    first_pass_at = time.time()  # wall clock, for the driver's figures (one machine: the same clock)
    timings = timed_passes(source, config["passes"], config["seed"], distributed.barrier,
                           lambda: ray_data_stages(source.reader.last_datasets), config["between_passes"])
    source.close()
    total = distributed.all_reduce_sum(torch.tensor([float(t.images) for t in timings])).tolist()
    return {"first_pass_at": first_pass_at,
            "passes": [{**vars(t), "images": int(images)} for t, images in zip(timings, total)]}


def ray_data_stages(datasets: list) -> dict | None:
    """Where a streamed pass's time went, from Ray Data's own statistics of the pass's datasets (seconds): the read
    tasks' wall and CPU time summed over tasks, and the training worker's time blocked waiting for blocks to be
    produced, fetching them (ray.get) and formatting them. Internal Ray API: None where this Ray lacks it."""
    try:
        summaries = [dataset._get_stats_summary() for dataset in datasets]
        tasks = [op for summary in summaries for op in summary.operators_stats if op.wall_time is not None]
        iterators = [summary.iter_stats for summary in summaries]
        return {"read_tasks": sum(op.wall_time.count for op in tasks),
                "read_task_wall": sum(op.wall_time.sum for op in tasks),
                "read_task_cpu": sum(op.cpu_time.sum for op in tasks),
                "waiting_for_production": sum(i.get_ref_bundles_time.get() for i in iterators),
                "fetching_blocks": sum(i.get_time.get() for i in iterators),
                "formatting": sum(i.format_time.get() for i in iterators)}
    except Exception:  # an internal API: its absence must not break a benchmark
        return None


def unit_costs(units: list, channels: int, size: int, resize: str, sample: int = 2) -> dict:
    """Milliseconds per image to read (Parquet row group, rows taken, column to Python) and to decode, measured
    here in one thread on the first `sample` units: the work either path must do, whoever does it."""
    from pipeline.data.images import decode_batch
    from pipeline.train.datasets import read_row_group

    read = decode = 0.0
    images = 0
    for unit in units[:sample]:
        started = time.perf_counter()
        table = read_row_group(unit, ["sample_id", "label", "image"])
        ids = np.asarray(table.column("sample_id").to_pylist(), dtype=object)
        encoded = table.column("image").to_pylist()
        read_done = time.perf_counter()
        decode_batch(encoded, ids, channels, size, resize)
        read, decode = read + read_done - started, decode + time.perf_counter() - read_done
        images += len(ids)
    return {"read_ms": 1000 * read / images, "decode_ms": 1000 * decode / images, "images": images}


class MemorySampler:
    """Peak memory while a block runs: this process, other processes (Ray's workers or the DataLoader's), Ray's store.

    Process memory is resident minus shared pages (so objects mapped from Ray's shared-memory
    store are not counted once per process that reads them); the store is reported on its own.
    """

    def __init__(self, ray_processes: bool, interval: float = 1.0):
        self.ray_processes, self.interval = ray_processes, interval
        self.peak_driver = self.peak_workers = 0.0
        self.peak_store: float | None = None
        self.spilled: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        self.peak_driver = max(self.peak_driver, _private_mb(me))
        others = me.children(recursive=True)
        if self.ray_processes:
            others = [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("ray::")]
        self.peak_workers = max(self.peak_workers, sum(_private_mb(p) for p in others))
        if self.ray_processes:
            store = _object_store_stats()
            if store is not None:
                self.peak_store = max(self.peak_store or 0.0, store[0])
                self.spilled = store[1]

    def into(self, result: IngestResult) -> IngestResult:
        result.peak_driver_mb, result.peak_workers_mb = self.peak_driver, self.peak_workers
        result.peak_object_store_mb, result.spilled_mb = self.peak_store, self.spilled
        return result


def _private_mb(process) -> float:
    import psutil

    try:
        info = process.memory_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    return (info.rss - getattr(info, "shared", 0)) / 1024**2


def _object_store_stats() -> tuple[float, float] | None:
    """(MiB used now, MiB spilled so far) of Ray's object store, through Ray's internal memory API (None if absent)."""
    try:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        stats = get_memory_info_reply(get_state_from_address(), timeout_seconds=5).store_stats
        return stats.object_store_bytes_used / 1024**2, stats.spilled_bytes_total / 1024**2
    except Exception:  # an internal API: its absence must not break a benchmark
        return None


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
