"""BatchSource over a Ray Train dataset shard, and a DataConfig that never drops a sample."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from ray.train import DataConfig


# Ray's local shuffle buffer counts rows. 2,048 digits are 2 MB, but 2,048 decoded 224 px images are 300 MB
# per worker, which pinned that much of the object store and made a shuffled pass spill: the buffer is
# therefore capped in bytes too.
SHUFFLE_BUFFER_ROWS = 2048
SHUFFLE_BUFFER_BYTES = 64 * 1024**2


def shuffle_buffer_rows(row_bytes: int | None) -> int:
    """Rows of the local shuffle buffer for rows of `row_bytes` bytes (unknown: the row cap alone)."""
    if not row_bytes:
        return SHUFFLE_BUFFER_ROWS
    return max(256, min(SHUFFLE_BUFFER_ROWS, SHUFFLE_BUFFER_BYTES // row_bytes))


class ShardSource:
    """A Ray Data iterator seen as a BatchSource: each `batches` call streams one pass (an epoch)."""

    def __init__(self, iterator, row_bytes: int | None = None):
        self.iterator, self.shuffle_buffer = iterator, shuffle_buffer_rows(row_bytes)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[dict]:
        for batch in self.iterator.iter_batches(
                batch_size=batch_size, batch_format="numpy",
                local_shuffle_buffer_size=self.shuffle_buffer if shuffle else None,
                local_shuffle_seed=seed if shuffle else None):
            if len(batch["label"]) == 0:
                continue
            # Ray Data hands out read-only views of the object store; torch wants a writable array.
            out = {"image": torch.from_numpy(np.require(batch["image"], requirements=["C", "W"])),
                   "label": torch.from_numpy(batch["label"].astype(np.int64)),
                   "sample_id": batch["sample_id"]}
            if "is_forget" in batch:
                out["is_forget"] = torch.from_numpy(batch["is_forget"].astype(bool))
            yield out


def _import_decode_path() -> None:
    import pipeline.train.datasets  # noqa: F401  (torch, torchvision's codecs, pyarrow)


def warm_up_data_workers(limit: int = 64) -> None:
    """From rank 0, start a Ray worker process per free CPU (up to `limit`) importing the decode path; no waiting.

    A fresh Ray worker spends seconds importing torch and torchvision before it decodes its first
    image, while a DataLoader's forked workers inherit those imports: the first pass of a stream
    ran at a third of the later ones. Ray reuses a worker only for tasks of the same runtime env,
    and Ray Train gives its workers their own (env vars), which the read tasks they start inherit:
    so the warm-up must start from inside the Train worker, not from the driver. It then overlaps
    the method's set-up (model and checkpoint loading).
    """
    import ray

    from pipeline import distributed

    if distributed.rank() != 0:
        return
    task = ray.remote(num_cpus=1)(_import_decode_path)
    for _ in range(min(limit, int(ray.available_resources().get("CPU", 0)))):
        task.remote()


class LosslessDataConfig(DataConfig):
    """Split every dataset across workers with `equal=False`.

    Ray Train's default `streaming_split(..., equal=True)` may drop rows that do
    not divide evenly: harmless for plain training data, wrong for a forget set
    (every sample must be unlearned) and for evaluation (every sample counted).
    Unequal shards are safe here because the method loop pads with zero-weight
    steps (`methods.base.synchronized`).
    """

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        for name, dataset in datasets.items():
            dataset = dataset.copy(dataset)
            if dataset.name is None:
                dataset.set_name(name)
            dataset.context.execution_options = self._resolve_execution_options(name)
            if world_size == 1:
                output[0][name] = dataset.iterator()
                continue
            hints = worker_node_ids if self._enable_shard_locality else None
            for rank, split in enumerate(dataset.streaming_split(world_size, equal=False, locality_hints=hints)):
                output[rank][name] = split
        return output
