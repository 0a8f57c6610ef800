"""The real Ray path: shards -> Ray Train workers -> checkpoints and resume (exactly-once reads: tests/test_ingest.py)."""

import pytest

from jobs import train
from pipeline.runs.train import train as run_training
from pipeline.data.converters import prepare
from pipeline.data.local import load_sources
from pipeline.methods.accuracy import accuracy
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
    return run_training(train.train_spec(train.parser().parse_args(["--data", data, "--out", str(out), "--max-failures", "0",
                                                                   *extra])))


def test_small_cnn_trained_through_ray_from_s3_reaches_90_percent_and_resumes(ray_session, digits_uri, tmp_path):
    # Streamed, as large data is (Ray Data read tasks over S3, one per row group); the resumed run holds the
    # small data in memory, the default for it: both paths must feed the same training.
    first = _train(digits_uri, tmp_path / "run", "--epochs", "1", "--data-mode", "stream")
    assert first["epochs_run"] == 1
    # The same run URI with more epochs resumes from the epoch-1 checkpoint: only epochs 2 and 3 run.
    resumed = _train(digits_uri, tmp_path / "run", "--epochs", "3")
    assert resumed["epochs_run"] == 3 and len(resumed["history"]) == 2  # three in all, two in this run
    # Its two epoch checkpoints were written and reported, and timed apart from the training itself.
    assert resumed["epoch_report_seconds"] > 0 and resumed["unlearn_seconds"] > 0
    model, spec, _ = load_checkpoint(str(tmp_path / "run" / "model.pt"))
    sources, _ = load_sources(digits_uri)
    assert spec.image_size == 8 and accuracy(model, sources["test"], CPU) >= 0.90
    assert resumed["evaluation"]["test"] >= 0.90
