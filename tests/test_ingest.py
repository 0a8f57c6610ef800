"""The streaming ingest path: row-group read units, exactly-once delivery across workers from S3, and bench-ingest."""

import json

import numpy as np
import pytest
import torch

from pipeline.data.converters import prepare
from pipeline.data.shards import read_index, read_meta
from pipeline.data.splits import make_splits
from pipeline.train.datasets import RowSelector, Selection, plan_sets, read_layout, read_units


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


def _passes(plan, name: str, world: int, cache_mb: float = 0, epochs: int = 2, batch_size: int = 16) -> list:
    """[epoch][rank] -> the batches rank `rank` of `world` workers reads of set `name` (ranks emulated here)."""
    from pipeline.train.ray_sources import worker_sources

    per_rank = [worker_sources(plan, cache_mb, rank=rank, world=world)[0][name] for rank in range(world)]
    return [[list(source.batches(batch_size, shuffle=True, seed=epoch)) for source in per_rank]
            for epoch in range(epochs)]


def _ids(batches) -> list:
    return [i for batch in batches for i in batch["sample_id"]]


def test_stream_mode_from_s3_gives_every_sample_to_exactly_one_of_two_workers_each_epoch(ray_session, digits_hard_on_s3):
    uri, meta, splits = digits_hard_on_s3
    names = ["forget", "mixed@0.3", "test"]
    plan = plan_sets(uri, meta, splits, names, 32, [0.3], mode="stream")
    index = read_index(uri, meta)
    ids = np.asarray(index.column("sample_id").to_pylist(), dtype=object)
    expected = {name: sorted(ids[splits.select(index, name)]) for name in ("forget", "test")}
    for name in names:
        epochs = _passes(plan, name, world=2)
        for per_rank in epochs:
            seen = [i for batches in per_rank for i in _ids(batches)]
            assert len(seen) == len(set(seen)) == plan.sets[name].rows  # each exactly once, none dropped
            assert all(len(_ids(batches)) > 0 for batches in per_rank)  # both workers got a share
            if name in expected:
                assert sorted(seen) == expected[name]
        assert _ids(epochs[0][0]) != _ids(epochs[1][0])  # a new order every epoch


def test_stream_memory_and_cached_passes_give_the_same_batches(ray_session, digits_hard_uri):
    """Same ids in the same order and the same pixels, whichever mode, cache on or off, 1 or 2 workers."""
    meta = read_meta(digits_hard_uri)
    splits = make_splits(read_index(digits_hard_uri, meta), "random:0.1", 3407, meta.num_classes)
    names = ["forget", "mixed@0.3", "unseen"]
    plans = {mode: plan_sets(digits_hard_uri, meta, splits, names, 32, [0.3], mode=mode) for mode in ("stream", "memory")}
    assert plans["memory"].mode == "memory" and plans["stream"].mode == "stream"
    for world in (1, 2):
        for name in names:
            runs = [_passes(plans[mode], name, world, cache_mb) for mode in plans for cache_mb in (0, 64)]
            reference = runs[0]
            for run in runs[1:]:
                for epoch, per_rank in enumerate(run):
                    for rank, batches in enumerate(per_rank):
                        expected = reference[epoch][rank]
                        assert [len(b["label"]) for b in batches] == [len(b["label"]) for b in expected]
                        for got, want in zip(batches, expected):
                            assert list(got["sample_id"]) == list(want["sample_id"])
                            assert torch.equal(got["image"], want["image"]) and torch.equal(got["label"], want["label"])
                            if "is_forget" in want:
                                assert torch.equal(got["is_forget"], want["is_forget"])


def test_a_set_over_the_cache_budget_streams_every_pass_and_still_gives_each_sample_once(ray_session, digits_hard_uri):
    from pipeline.train.ray_sources import worker_sources

    meta = read_meta(digits_hard_uri)
    splits = make_splits(read_index(digits_hard_uri, meta), "random:0.1", 3407, meta.num_classes)
    plan = plan_sets(digits_hard_uri, meta, splits, ["forget", "retain_all"], 32, mode="stream")
    # Room for D_f's pixels twice over (they and its ids and labels fit), not for D_r's 9 times as many.
    forget_mb = 2 * plan.sets["forget"].rows * plan.row_bytes / 1024**2
    for rank in range(2):
        sources, stats = worker_sources(plan, cache_mb=forget_mb, rank=rank, world=2)
        for epoch in range(2):
            for name in ("forget", "retain_all"):
                list(sources[name].batches(64, shuffle=True, seed=epoch))
        assert sources["forget"].cached and len(sources["forget"].kept) == len(sources["forget"].units)
        assert sources["retain_all"].cached is False and not sources["retain_all"].kept
    epochs = _passes(plan, "retain_all", world=2, cache_mb=forget_mb)
    for per_rank in epochs:
        ids = [i for batches in per_rank for i in _ids(batches)]
        assert len(ids) == len(set(ids)) == plan.sets["retain_all"].rows


def test_bench_ingest_runs_end_to_end_and_writes_its_figures(ray_session, digits_hard_uri, tmp_path, capsys):
    from jobs import bench_ingest

    out = tmp_path / "ingest.json"
    assert bench_ingest.main(["--data", digits_hard_uri, "--passes", "2", "--processes", "1",
                              "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Ray Data / DataLoader:" in printed and "Ray start-up:" in printed and "read tasks" in printed
    figures = json.loads(out.read_text())
    train_images = read_meta(digits_hard_uri).counts["train"]
    for path in ("dataloader", "ray_data"):
        result = figures["results"][path]
        assert [p["images"] for p in result["passes"]] == [train_images, train_images]
        assert all(0 < p["first_batch_seconds"] < p["seconds"] and 0 < p["first_batch_images"] <= 64
                   for p in result["passes"])
        assert result["steady_images_per_second"] > 0 and result["streaming_images_per_second"] > 0
    assert figures["results"]["ray_data"]["startup_seconds"] > 0
    stages = [p["stages"] for p in figures["results"]["ray_data"]["passes"]]
    assert all(s["read_tasks"] > 0 and s["read_task_cpu"] > 0 for s in stages)  # one Ray Dataset per pass, each read
    assert figures["work_per_image_ms"]["decode_ms"] > 0


def test_the_dataloader_baseline_delivers_the_same_training_batches_as_the_stream(ray_session, digits_hard_uri):
    """bench-ingest compares who reads and decodes, so both paths must hand the worker identical batches."""
    from pipeline.train.ingest import BATCH_SIZE, LoaderUnits
    from pipeline.train.ray_sources import worker_sources

    meta = read_meta(digits_hard_uri)
    plan = plan_sets(digits_hard_uri, meta, None, ["train"], 32, mode="stream")
    stream = worker_sources(plan, cache_mb=0, rank=0, world=1)[0]["train"]
    loader = worker_sources(plan, cache_mb=0, rank=0, world=1)[0]["train"]
    loader.reader = LoaderUnits(plan.channels, plan.size, plan.resize, processes=2)
    for seed in (0, 1):
        got = list(loader.batches(BATCH_SIZE, shuffle=True, seed=seed))
        want = list(stream.batches(BATCH_SIZE, shuffle=True, seed=seed))
        assert [list(b["sample_id"]) for b in got] == [list(b["sample_id"]) for b in want]
        assert all(torch.equal(g["image"], w["image"]) and torch.equal(g["label"], w["label"])
                   for g, w in zip(got, want))


def test_bench_ingest_refuses_bad_arguments(digits_hard_uri, capsys):
    from jobs.bench_ingest import main
    from jobs.common import run_main

    assert run_main(main, ["--data", digits_hard_uri, "--passes", "0"]) == 2
    assert "--passes" in capsys.readouterr().err


def test_the_next_pass_is_read_ahead_and_a_pass_that_asks_for_something_else_drops_it(ray_session, digits_hard_uri):
    from pipeline.train.ray_sources import worker_sources

    meta = read_meta(digits_hard_uri)
    plan = plan_sets(digits_hard_uri, meta, None, ["test"], 32, mode="stream")

    def ids(source, **kwargs):
        return [list(b["sample_id"]) for b in source.batches(16, **kwargs)]

    source = worker_sources(plan, cache_mb=0, rank=0, world=1)[0]["test"]
    fresh = lambda: worker_sources(plan, cache_mb=0, rank=0, world=1)[0]["test"]  # noqa: E731
    ids(source, shuffle=True, seed=3)
    assert source.reader.ahead is not None  # seed 4's first units are being read
    ahead = source.reader.ahead
    assert ids(source, shuffle=True, seed=4) == ids(fresh(), shuffle=True, seed=4)  # taken, same batches
    assert source.reader.last_datasets[0] is ahead.dataset
    assert ids(source, shuffle=True, seed=9) == ids(fresh(), shuffle=True, seed=9)  # seed 5 read ahead, dropped
    assert source.reader.last_datasets[0] is not source.reader.ahead.dataset
    assert ids(source) == ids(fresh())  # an unshuffled pass drops it too and reads in order
    assert source.reader.ahead is None
    source.read_ahead = False
    ids(source, shuffle=True, seed=1)
    assert source.reader.ahead is None
