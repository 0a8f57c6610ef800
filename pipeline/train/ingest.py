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

import numpy as np
import torch

from pipeline.train.datasets import ReadAndDecode

BATCH_SIZE = 64


@dataclass
class PassTiming:
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass
class IngestResult:
    passes: list[PassTiming]
    peak_driver_mb: float = 0.0
    peak_workers_mb: float = 0.0
    peak_object_store_mb: float | None = None
    spilled_mb: float | None = None

    @property
    def steady_images_per_second(self) -> float:
        """Later passes (the first also starts processes and warms caches), or the only one."""
        later = self.passes[1:] or self.passes
        return sum(p.images for p in later) / sum(p.seconds for p in later)


class _UnitsForWorker(torch.utils.data.IterableDataset):
    """The DataLoader side: DataLoader worker k decodes units k, k + n, k + 2n, ... (each unit exactly once)."""

    def __init__(self, decode: ReadAndDecode, epoch: int, seed: int):
        self.decode, self.epoch, self.seed = decode, epoch, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.decode.units))
        for block in self.decode.blocks(order[worker::workers]):
            yield {"image": torch.from_numpy(block["image"]), "label": torch.from_numpy(block["label"])}


def dataloader_passes(decode: ReadAndDecode, processes: int, passes: int, seed: int = 0) -> list[PassTiming]:
    """Passes of a plain DataLoader with `processes` worker processes (batches of up to BATCH_SIZE images)."""
    timings = []
    for epoch in range(passes):
        started, images = time.perf_counter(), 0
        loader = torch.utils.data.DataLoader(_UnitsForWorker(decode, epoch, seed), batch_size=None,
                                             num_workers=processes, prefetch_factor=4 if processes else None)
        for batch in loader:
            images += len(batch["label"])
        timings.append(PassTiming(images, time.perf_counter() - started))
    return timings


def ray_worker_loop(config: dict) -> list[dict]:
    """Ray Train worker: iterate this worker's share of "train" as training does, timing each pass between barriers.

    The decode-once cache is off: every pass streams, which is what this measures.
    """
    from pipeline import distributed
    from pipeline.train.ray_sources import warm_up_data_workers, worker_sources

    warm_up_data_workers()
    source = worker_sources(config["data_plan"], cache_mb=0)[0]["train"]
    timings = []
    for epoch in range(config["passes"]):
        distributed.barrier()
        started, images = time.perf_counter(), 0
        for batch in source.batches(BATCH_SIZE, shuffle=config["shuffle"], seed=config["seed"] + epoch):
            images += len(batch["label"])
        distributed.barrier()
        seconds = time.perf_counter() - started
        timings.append({"images": int(distributed.all_reduce_sum(torch.tensor(float(images))).item()),
                        "seconds": seconds})
    return timings


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
