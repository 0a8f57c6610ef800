"""Metrics (and RF-JSD's floor) on 2 gloo workers equal those in one process; plus the tiny models and data the
metric tests share.

Spawned workers import this module, so it imports only what they need (no scipy,
no pytest, no conftest): on a busy 2-core machine every import costs seconds.
"""

import json
import socket
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pipeline.data.sources import TensorSource
from pipeline.metrics import evaluate, summarize
from pipeline.metrics.floor import floor_metrics, original_floor, plan_floor_draws, whole_split_floor

CPU = torch.device("cpu")
TINY_SPLIT_SIZES = {"forget": 61, "retain": 101, "test": 73, "unseen": 67}  # odd: 2-worker shards are uneven


class TinyClassifier(nn.Module):
    """uint8 8x8 images -> logits with a single linear layer: fast enough for a 2-process test."""

    def __init__(self, num_classes: int, seed: int, pixels: int = 64, scale: float = 4.0):
        super().__init__()
        with torch.random.fork_rng():  # seeded weights without moving the global RNG other tests rely on
            torch.manual_seed(seed)
            self.linear = nn.Linear(pixels, num_classes)
        with torch.no_grad():
            self.linear.weight.mul_(scale)  # peaked, model-specific softmaxes, so divergences are far from 0

    def forward(self, images):
        return self.linear(images.float().flatten(1) / 255.0)


def random_source(size: int, num_classes: int, seed: int, prefix: str) -> TensorSource:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (size, 1, 8, 8), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (size,), generator=generator)
    return TensorSource(images, labels, [f"{prefix}-{i}" for i in range(size)])


def tiny_setup(num_classes: int = 5):
    """Three different tiny models and four random splits."""
    models = {"unlearned": TinyClassifier(num_classes, 1), "original": TinyClassifier(num_classes, 2),
              "gold": TinyClassifier(num_classes, 3)}
    sources = {name: random_source(size, num_classes, seed, name)
               for seed, (name, size) in enumerate(TINY_SPLIT_SIZES.items())}
    return models, sources


def keep_shard(source: TensorSource, rank: int, world_size: int) -> TensorSource:
    """This worker's part of a split: index parity for 2 workers, no sample dropped or repeated."""
    return source.subset(np.arange(len(source)) % world_size == rank)


def tiny_evaluation(batch_size: int, rank: int = 0, world_size: int = 1, num_classes: int = 5):
    models, sources = tiny_setup(num_classes)
    shards = {name: keep_shard(source, rank, world_size) for name, source in sources.items()}
    return evaluate(models, shards, CPU, num_classes, batch_size=batch_size)


def tiny_floor_plan(sources, num_classes: int = 5):
    """Draws planned from ids and labels only, as the `unlearn eval` driver plans them from the shard index."""
    def class_counts(name):
        return np.bincount(sources[name].labels.numpy(), minlength=num_classes)

    test = sources["test"]
    return plan_floor_draws(test.sample_ids, test.labels.numpy(), class_counts("forget"), class_counts("unseen"),
                            draws=30, seed=4)


def tiny_summary_with_floor(batch_size: int, rank: int = 0, world_size: int = 1, num_classes: int = 5) -> dict:
    """The summary plus the floor, each worker running the original over its own D_test shard."""
    models, sources = tiny_setup(num_classes)
    shards = {name: keep_shard(source, rank, world_size) for name, source in sources.items()}
    result = evaluate(models, shards, CPU, num_classes, batch_size=batch_size)
    unseen = result.stats("original", "unseen")
    floor = original_floor(models["original"], shards["test"], tiny_floor_plan(sources, num_classes),
                           unseen.class_prob_sums, unseen.class_counts, CPU, batch_size)
    return {**summarize(result, seed=0), **floor_metrics(floor)}


def in_process_floor(num_classes: int = 5):
    """The floor from whole-split probabilities in one process (what `unlearn validate-rfjsd` computes)."""
    models, sources = tiny_setup(num_classes)
    return whole_split_floor(models["original"], sources, CPU, draws=30, seed=4)


def assert_same_metrics(a, b, tolerance: float = 1e-6, path: str = "summary"):
    """Floats within `tolerance`, relative to their size where above 1 (RF-JSD is in units of 1e-4, in the
    thousands: float32 logits that differ in their last bits with the batch a sample shares move it by ~1e-5);
    everything else (None, bools, ints, class lists, keys) exactly equal."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, a, b)
        for key in a:
            assert_same_metrics(a[key], b[key], tolerance, f"{path}.{key}")
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= tolerance * max(1.0, abs(a), abs(b)), (path, a, b)
    else:
        assert a == b and type(a) is type(b), (path, a, b)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _evaluate_on_worker(rank: int, world_size: int, port: int, out_path: str) -> None:
    """One gloo process: evaluates its half; rank 0 summarises (no collectives in summarize) and writes the summary."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        summary = tiny_summary_with_floor(batch_size=16, rank=rank, world_size=world_size)
        if rank == 0:
            with open(out_path, "w") as out:
                json.dump(summary, out)
    finally:
        dist.destroy_process_group()


def test_every_metric_is_the_same_on_one_and_two_workers(tmp_path):
    single = tiny_summary_with_floor(batch_size=32)
    out_path = str(tmp_path / "rank0.json")
    mp.spawn(_evaluate_on_worker, args=(2, free_port(), out_path), nprocs=2, join=True)
    with open(out_path) as written:
        two_workers = json.load(written)
    assert_same_metrics(two_workers, single)
    assert single["split_sizes"] == TINY_SPLIT_SIZES  # every sample counted once across the two shards
    assert single["gold"] is True and single["jsd"] > 0 and single["rf_jsd"] > 0 and single["mia"] is not None
    # The floor: the same draws summed over two D_test shards as over the whole split in one process.
    floor = in_process_floor()
    for key, value in (("rf_jsd_floor", floor.mean), ("rf_jsd_floor_std", floor.std)):
        assert abs(two_workers[key] - value) <= 1e-8 * value, (key, two_workers[key], value)  # float32 batchings
    assert single["rf_jsd_floor_draws"] == 30 and single["rf_jsd_floor_std"] > 0
