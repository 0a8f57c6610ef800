"""The real Ray path: Ray Data shards -> Ray Train workers -> checkpoints, resume, no sample lost."""

import numpy as np
import pytest

from jobs import train
from pipeline.data.converters import prepare
from pipeline.data.local import load_sources
from pipeline.methods.base import accuracy
from pipeline.models import load_checkpoint
from tests.conftest import CPU


@pytest.fixture(scope="module")
def digits_uri(s3_server):
    """Digits shards on the local S3 server: Ray Data reads them over HTTP like a real bucket."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="digits-ray")
    uri = "s3://digits-ray/shards"
    prepare("digits", uri, seed=0)
    return uri


def _train(data, out, *extra):
    return train.train(train.parser().parse_args(["--data", data, "--out", str(out), "--max-failures", "0", *extra]))


def test_small_cnn_trained_through_ray_from_s3_reaches_90_percent_and_resumes(ray_session, digits_uri, tmp_path):
    # Streamed, as large data is (read_parquet over S3, decoding in map_batches); the resumed run holds the
    # small data in memory, the default for it: both paths must feed the same training.
    first = _train(digits_uri, tmp_path / "run", "--epochs", "1", "--data-mode", "stream")
    assert first["epochs_run"] == 1
    # The same run URI with more epochs resumes from the epoch-1 checkpoint: only epochs 2 and 3 run.
    resumed = _train(digits_uri, tmp_path / "run", "--epochs", "3")
    assert resumed["epochs_run"] == 2
    # Its two epoch checkpoints were written and reported, and timed apart from the training itself.
    assert resumed["epoch_report_seconds"] > 0 and resumed["unlearn_seconds"] > 0
    model, spec, _ = load_checkpoint(str(tmp_path / "run" / "model.pt"))
    sources, _ = load_sources(digits_uri)
    assert spec.image_size == 8 and accuracy(model, sources["test"], CPU) >= 0.90
    assert resumed["evaluation"]["test"] >= 0.90


def test_every_forget_sample_seen_exactly_once_across_two_workers(ray_session, digits_hard_uri):
    import ray.train
    import torch.distributed as dist
    from ray.train.torch import TorchTrainer

    from pipeline.data.shards import read_index, read_meta
    from pipeline.data.splits import make_splits
    from pipeline.train.datasets import build_datasets
    from pipeline.train.ray_sources import LosslessDataConfig, ShardSource

    meta = read_meta(digits_hard_uri)
    splits = make_splits(read_index(digits_hard_uri, meta), "random:0.1", 3407, 10)

    def loop(config):
        seen = []
        for epoch in range(2):
            ids = [i for b in ShardSource(ray.train.get_dataset_shard("forget")).batches(7) for i in b["sample_id"]]
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, ids)
            seen.append(everyone)
        return seen

    datasets = build_datasets(digits_hard_uri, meta, splits, ["forget"], 32)
    result = TorchTrainer(loop, scaling_config=ray.train.ScalingConfig(num_workers=2), datasets=datasets,
                          dataset_config=LosslessDataConfig()).fit()
    for per_worker in result.return_value:
        all_ids = [i for ids in per_worker for i in ids]
        assert sorted(all_ids) == sorted(splits.forget_ids)  # each exactly once, none dropped
        assert all(len(ids) > 0 for ids in per_worker)  # both workers got a share
