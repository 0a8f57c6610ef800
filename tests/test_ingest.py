"""The streaming ingest path: row-group read units, exactly-once delivery across workers from S3, and bench-ingest."""

import json

import numpy as np
import pytest

from pipeline.data.converters import prepare
from pipeline.data.shards import read_index, read_meta
from pipeline.data.splits import make_splits
from pipeline.train.datasets import RowSelector, Selection, build_datasets, read_layout, read_units


@pytest.fixture(scope="module")
def digits_hard_on_s3(s3_server):
    """digits-hard shards on the local S3 server, in row groups of at most 256 rows (several read units)."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="ingest-stream")
    uri = "s3://ingest-stream/digits-hard"
    prepare("digits-hard", uri, seed=0)
    meta = read_meta(uri)
    return uri, meta, make_splits(read_index(uri, meta), "random:0.1", 3407, meta.num_classes)


def test_read_units_cover_the_selection_and_skip_row_groups_without_it(digits_hard_uri):
    meta = read_meta(digits_hard_uri)
    layout = read_layout(digits_hard_uri, meta)
    assert len(layout.row_groups) > 1 and sum(g[3] for g in layout.row_groups) == len(layout.ids)
    keep = np.zeros(len(layout.ids), dtype=bool)
    keep[[3, 5]] = True  # two rows, both in the first row group
    units = read_units(layout, keep, np.zeros_like(keep))
    assert len(units) == 1 and units[0].row_group == 0 and list(units[0].rows) == [3, 5]
    everything = read_units(layout, *RowSelector(Selection(), frozenset()).mask(layout.ids, layout.splits))
    assert sum(len(u.rows) for u in everything) == len(layout.ids)


def _ids_per_worker_and_epoch(datasets, names, workers, epochs=2, shuffle=True):
    import ray.train
    import torch.distributed as dist
    from ray.train.torch import TorchTrainer

    from pipeline.train.ray_sources import LosslessDataConfig, ShardSource

    def loop(config):
        seen = {name: [] for name in names}
        for epoch in range(epochs):
            for name in names:
                source = ShardSource(ray.train.get_dataset_shard(name), row_bytes=32 * 32)
                ids = [i for b in source.batches(16, shuffle=shuffle, seed=epoch) for i in b["sample_id"]]
                everyone = [None] * dist.get_world_size() if dist.is_initialized() else None
                if everyone is None:
                    seen[name].append([ids])
                    continue
                dist.all_gather_object(everyone, ids)
                seen[name].append(everyone)
        return seen

    return TorchTrainer(loop, scaling_config=ray.train.ScalingConfig(num_workers=workers), datasets=datasets,
                        dataset_config=LosslessDataConfig()).fit().return_value


def test_stream_mode_from_s3_gives_every_sample_to_exactly_one_of_two_workers_each_epoch(ray_session, digits_hard_on_s3):
    uri, meta, splits = digits_hard_on_s3
    names = ["forget", "mixed@0.3", "test"]
    datasets = build_datasets(uri, meta, splits, names, 32, [0.3], mode="stream")
    memory = build_datasets(uri, meta, splits, names, 32, [0.3], mode="memory")
    seen = _ids_per_worker_and_epoch(datasets, names, workers=2)
    for name in names:
        expected = sorted(row["sample_id"] for row in memory[name].iter_rows())
        assert len(expected) == len(set(expected)) > 0
        for per_worker in seen[name]:  # one entry per epoch
            assert sorted(i for ids in per_worker for i in ids) == expected  # each exactly once, none dropped
            assert all(len(ids) > 0 for ids in per_worker)  # both workers got a share
    assert sorted(seen["forget"][0][0] + seen["forget"][0][1]) == sorted(splits.forget_ids)


def test_stream_and_memory_modes_hold_the_same_rows_with_the_same_pixels(ray_session, digits_hard_uri):
    meta = read_meta(digits_hard_uri)
    splits = make_splits(read_index(digits_hard_uri, meta), "random:0.1", 3407, meta.num_classes)
    names = ["forget", "mixed@0.3", "unseen"]
    by_mode = {mode: build_datasets(digits_hard_uri, meta, splits, names, 32, [0.3], mode=mode)
               for mode in ("stream", "memory")}
    for name in names:
        stream, memory = (_by_sample_id(by_mode[mode][name]) for mode in ("stream", "memory"))
        assert stream.keys() == memory.keys()
        for column in stream:
            np.testing.assert_array_equal(stream[column], memory[column])


def _by_sample_id(dataset) -> dict:
    """A dataset's columns in sample-id order (read tasks finish in any order)."""
    batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    columns = {column: np.concatenate([b[column] for b in batches]) for column in batches[0]}
    order = np.argsort(columns["sample_id"])
    return {column: values[order] for column, values in columns.items()}


def test_bench_ingest_runs_end_to_end_and_writes_its_figures(ray_session, digits_hard_uri, tmp_path, capsys):
    from jobs import bench_ingest

    out = tmp_path / "ingest.json"
    assert bench_ingest.main(["--data", digits_hard_uri, "--passes", "2", "--processes", "1",
                              "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Ray Data / DataLoader:" in printed
    figures = json.loads(out.read_text())
    train_images = read_meta(digits_hard_uri).counts["train"]
    for path in ("dataloader", "ray_data"):
        passes = figures["results"][path]["passes"]
        assert [p["images"] for p in passes] == [train_images, train_images]
        assert figures["results"][path]["steady_images_per_second"] > 0


def test_bench_ingest_refuses_bad_arguments(digits_hard_uri, capsys):
    from jobs.bench_ingest import main
    from jobs.common import run_main

    assert run_main(main, ["--data", digits_hard_uri, "--passes", "0"]) == 2
    assert "--passes" in capsys.readouterr().err
