"""The decode-once cache and the data modes change how rows arrive, never which: identical weights either way."""

import copy

import numpy as np
import pytest
import torch

from pipeline.data.shards import read_index, read_meta
from pipeline.data.splits import make_splits
from tests.conftest import CPU, FORGET_SPEC, SEED

# Two epochs each: the second is the one the cache replays.
METHODS = [("lotus", {"epochs": 2}), ("scrub", {"epochs": 2})]
CONFIGURATIONS = [("memory", 0), ("memory", 64), ("stream", 0), ("stream", 64)]  # (data mode, cache MB)


def unlearned_weights(plans: dict, original_uri: str) -> dict:
    """{(mode, cache MB, method): state dict} after each method from the original, on this worker's sources.

    Runs in the test process (one worker) or inside a Ray Train worker (DDP across them).
    """
    from pipeline.runs.unlearn import _roles
    from pipeline import distributed
    from pipeline.methods import create_method
    from pipeline.distributed import unwrap
    from pipeline.methods.base import UnlearnData
    from pipeline.models import load_checkpoint
    from pipeline.train.ray_sources import worker_sources

    original = load_checkpoint(original_uri)[0]
    out = {}
    for mode, cache_mb in CONFIGURATIONS:
        sources, _ = worker_sources(plans[mode], cache_mb, CPU)
        for name, config in METHODS:
            model = copy.deepcopy(original)
            if distributed.world_size() > 1:
                import ray.train.torch

                model = ray.train.torch.prepare_model(model, move_to_device=False)
            torch.manual_seed(SEED)
            method = create_method(name, config, seed=SEED, log=None)
            roles = _roles(method.retain_fraction)
            data = UnlearnData(forget=sources[roles["forget"]], retain=sources[roles["retain"]],
                               mixed=sources[roles["mixed"]], unseen=sources[roles["unseen"]], num_classes=10)
            method.unlearn(model, original, data, CPU)
            # numpy, not tensors: Ray Train does not return tensors from a worker.
            out[(mode, cache_mb, name)] = {key: value.numpy().copy() for key, value in unwrap(model).state_dict().items()}
    return out


@pytest.fixture(scope="module")
def plans(ray_session, digits_hard_uri):
    from pipeline.runs.unlearn import _roles
    from pipeline.train.datasets import plan_sets

    meta = read_meta(digits_hard_uri)
    splits = make_splits(read_index(digits_hard_uri, meta), FORGET_SPEC, SEED, meta.num_classes)
    names = sorted({name for fraction in (0.3, 1.0) for name in _roles(fraction).values()})
    return {mode: plan_sets(digits_hard_uri, meta, splits, names, 32, [0.3], mode=mode) for mode in ("memory", "stream")}


def assert_all_identical(weights: dict) -> None:
    for name, _ in METHODS:
        reference = weights[(*CONFIGURATIONS[0], name)]
        for mode, cache_mb in CONFIGURATIONS[1:]:
            state = weights[(mode, cache_mb, name)]
            different = [key for key in reference if not np.array_equal(reference[key], state[key])]
            assert not different, f"{name}: {mode} with cache {cache_mb} MB differs in {different[:3]}"


def test_one_worker_same_weights_in_every_mode_with_and_without_the_cache(plans, original_checkpoint, original_model):
    weights = unlearned_weights(plans, original_checkpoint)
    assert_all_identical(weights)
    moved = weights[("memory", 0, "lotus")]
    assert any(not np.array_equal(moved[k], v.numpy()) for k, v in original_model.state_dict().items())  # it did unlearn


def test_two_workers_same_weights_in_every_mode_with_and_without_the_cache(plans, original_checkpoint):
    import ray.train
    from ray.train.torch import TorchTrainer

    def loop(config):
        from tests.test_decode_once import unlearned_weights

        return unlearned_weights(config["plans"], config["original"])

    result = TorchTrainer(loop, train_loop_config={"plans": plans, "original": original_checkpoint},
                          scaling_config=ray.train.ScalingConfig(num_workers=2)).fit()
    assert_all_identical(result.return_value)


class _BlocksInMemory:
    """A reader handing out prepared numpy blocks, one per unit (what a streamed or stored read delivers)."""

    def __init__(self, blocks: dict):
        self.by_unit = blocks

    def blocks(self, units):
        return (self.by_unit[id(unit)] for unit in units)


def _digits_sized_source(cache_bytes: int):
    """A UnitSource over 3 units of 100 8x8 grey images with ids as long as the digits shards' ('digits/train/0001')."""
    from types import SimpleNamespace

    from pipeline.train.ray_sources import DecodedCache, InputStats, UnitSource

    units = [SimpleNamespace(rows=np.arange(100)) for _ in range(3)]
    blocks = {id(unit): {"image": np.full((100, 1, 8, 8), k, dtype=np.uint8), "label": np.arange(100) % 10,
                         "sample_id": np.array([f"digits/train/{k * 100 + i:04d}" for i in range(100)])}
              for k, unit in enumerate(units)}
    cache = DecodedCache(cache_bytes)
    return UnitSource(units, _BlocksInMemory(blocks), cache, InputStats(), window_rows=256, row_bytes=64), cache


def test_the_cache_budget_counts_ids_and_labels_not_only_pixels():
    pixels = 300 * 64
    source, cache = _digits_sized_source(int(pixels * 1.5))  # room for the pixels, not for what a kept row holds
    for epoch in range(2):
        assert len([i for b in source.batches(64, shuffle=True, seed=epoch) for i in b["sample_id"]]) == 300
    assert source.cached is False and not source.kept and cache.free == int(pixels * 1.5)  # nothing held back

    source, cache = _digits_sized_source(10**6)
    list(source.batches(64, shuffle=True, seed=0))
    per_row = 64 + 8 + 4 * len("digits/train/0000")  # pixels, an int64 label, a fixed-width id
    assert source.cached and len(source.kept) == 3 and source.kept_bytes == 300 * per_row == 10**6 - cache.free
    assert per_row / 64 > 2  # pixels alone were under half of what the cache held
